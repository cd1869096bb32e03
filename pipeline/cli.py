"""The `seqcodec` command: dispatch to train, encode, decode and report."""

from __future__ import annotations

import importlib
import sys

from seqcodec import __version__
from seqcodec.pipeline.runtime import exit_process, run_cli

COMMANDS = {
    "train": ("seqcodec.pipeline.train", "fit a codec on Parquet token files"),
    "encode": ("seqcodec.pipeline.encode", "Beam job: token Parquet -> length-prefixed codes"),
    "decode": ("seqcodec.pipeline.decode", "Beam job: codes -> token Parquet"),
    "report": ("seqcodec.pipeline.report", "render a finished run as a PNG and an HTML page"),
}


def usage() -> str:
    lines = ["usage: seqcodec COMMAND [options]   (seqcodec COMMAND --help for its options; seqcodec --version)", "",
             "commands:"]
    lines += [f"  {name:<8} {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        return run_cli(lambda _: print(usage()) or 0)
    if argv and argv[0] == "--version":
        return run_cli(lambda _: print(f"seqcodec {__version__}") or 0)
    if not argv:
        print(usage(), file=sys.stderr)
        print("seqcodec: error: no command given", file=sys.stderr)
        return 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"seqcodec: error: unknown command {name!r} (commands: {', '.join(COMMANDS)}; "
              "seqcodec --help)", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return run_cli(module.main, rest)


def entry() -> None:
    """Console-script entry point."""
    exit_process(main())


if __name__ == "__main__":
    entry()
