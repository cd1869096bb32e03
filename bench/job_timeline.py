"""Where one encode or decode job's time goes: start-up, each model call and the gaps between, Beam's stages, finalize.

Runs ``seqcodec encode|decode`` in this process with timers around the model calls and around each
bundle the DirectRunner executes, then prints one timeline (seconds from the job's own start, the
moment ``summary.json``'s ``elapsed_seconds`` counts from):

    .venv/bin/python -m bench.job_timeline encode --input FILE --output DIR --model-dir models/default
    .venv/bin/python -m bench.job_timeline --tree /tmp/before-tree encode ...   # an earlier commit's job

All other arguments go to the job; ``--tree`` (first) runs another checkout's job (``git worktree add
DIR REV``), as ``perf_bench --before-tree`` does. A measuring tool: the timers add microseconds, nothing is asserted.
"""

from __future__ import annotations

import functools
import importlib
import sys
import time
from typing import Any

from bench.encode_bench import editable_map


def wrap(owner: Any, name: str, events: list[tuple[float, str]], label: str) -> None:
    """Record ``> label`` and ``< label`` around every call of ``owner.name``."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def timed(*args: Any, **kwargs: Any) -> Any:
        events.append((time.time(), f"> {label}"))
        try:
            return original(*args, **kwargs)
        finally:
            events.append((time.time(), f"< {label}"))

    setattr(owner, name, timed)


def use_tree(tree: str) -> None:
    """Import our packages from ``tree`` from now on (as ``perf_bench.tree_cmd`` does in a child process)."""
    name, root = editable_map()
    finder = importlib.import_module(name)
    finder.MAPPING.update({k: v.replace(root, tree, 1) for k, v in finder.MAPPING.items()})


def main() -> int:
    args = sys.argv[1:]
    if args[:1] == ["--tree"]:
        use_tree(args[1])
        args = args[2:]
    from apache_beam.runners.portability.fn_api_runner import fn_runner

    from seqcodec.model.codec import SequenceCodec
    from seqcodec.pipeline import decode, encode, finalize, job, launch
    from seqcodec.pipeline.cli import main as cli

    events: list[tuple[float, str]] = []
    stages: list[tuple[float, float, str]] = []
    wrap(SequenceCodec, "encode_flat", events, "model call")
    wrap(SequenceCodec, "decode_flat", events, "model call")
    for module in (encode, decode):
        wrap(module, "build_pipeline", events, "build the graph")
    wrap(launch, "launch", events, "run the pipeline")
    wrap(finalize, "account", events, "finalize: account")
    started: list[float] = []
    original_plan = job.make_plan

    def make_plan(*args: Any, **kwargs: Any) -> Any:
        plan = original_plan(*args, **kwargs)
        started.append(plan.started)
        return plan

    for module in (encode, decode):
        module.make_plan = make_plan
    execute = fn_runner.FnApiRunner._execute_bundle

    def timed_bundle(self: Any, context: Any, bundle: Any, *args: Any, **kwargs: Any) -> Any:
        begin = time.time()
        try:
            return execute(self, context, bundle, *args, **kwargs)
        finally:
            stages.append((begin, time.time(), bundle.stage.name))

    fn_runner.FnApiRunner._execute_bundle = timed_bundle
    code = cli(args)
    if not started:
        return code
    zero = started[0]
    print(f"\ntimeline (s from the job's start; exit code {code})")
    calls = [(t - zero, label) for t, label in events]
    call_starts = [t for t, label in calls if label == "> model call"]
    call_ends = [t for t, label in calls if label == "< model call"]
    lines = [(t, label) for t, label in calls if "model call" not in label]
    if call_starts:
        lines += [(call_starts[0], "first model call starts"), (call_ends[-1], "last model call ends")]
    for t, label in sorted(lines):
        print(f"  {t:8.3f}  {label}")
    if call_starts:
        durations = [b - a for a, b in zip(call_starts, call_ends, strict=False)]
        gaps = [b - a for a, b in zip(call_ends, call_starts[1:], strict=False)]
        print(f"  model calls: {len(durations)}, {sum(durations):.2f} s in all "
              f"({min(durations):.3f}-{max(durations):.3f} s each)")
        if gaps:
            print(f"  between calls: {sum(gaps):.2f} s in all ({min(gaps) * 1e3:.0f}-{max(gaps) * 1e3:.0f} ms each)")
    print(f"stages ({len(stages)} bundles), longest first:")
    for begin, end, name in sorted(stages, key=lambda s: s[0] - s[1])[:8]:
        print(f"  {begin - zero:8.3f}  {1e3 * (end - begin):8.1f} ms  {name[:90]}")
    print(f"  all bundles: {sum(end - begin for begin, end, _ in stages):.2f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
