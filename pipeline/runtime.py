"""The command-line runtime: logging, the worker log relay, argparse classes, exit codes and process exit.

Known failures end as one line on stderr and a documented exit code, without a stack trace.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from seqcodec.model.errors import InputDataError
from seqcodec.model.manifest import ModelDirError

# Errors that mean "the user's input or arguments are wrong": reported in one line.
USER_ERRORS: tuple[type[Exception], ...] = (InputDataError, ModelDirError, ValueError, FileNotFoundError)


# Exit codes of the jobs, for schedulers (also in `seqcodec encode --help`).
EXIT_USAGE = 2
EXIT_TOO_MANY_REJECTS = 3
EXIT_PIPELINE_FAILED = 4
EXIT_CODES_HELP = """exit codes:
  0    the run succeeded and its partition was published (_SUCCESS written last)
  2    bad arguments or input (bad --run-date, missing files, unreadable model, ...): nothing was run
  3    more rows were rejected than --max-error-rate allows (default 0.05): nothing was
       published, the rejected rows are kept in the run directory named in the error line
  4    the pipeline failed, its rows did not add up, or publishing failed: nothing new was published
  75   another run of the same partition holds its lease: this run did not start, touched nothing
  130  interrupted (Ctrl-C); a shell reports 128+N for a run killed by signal N (137: SIGKILL)
  Any failure leaves the previously published partition as it was and prints one line
  `seqcodec: error: ...` saying why.
  With --no-wait the codes above cover only the checks and the submission (0: submitted); the job
  publishes by itself, and its outcome is OUTPUT's summary.json and _SUCCESS, or, if it did not
  publish, the reason in its run directory's summary.json (printed at submission); on the
  in-process DirectRunner the job has ended by then, and its outcome is the exit code.
  With --table, "published" means that the run's Iceberg snapshot was committed, and 75 does not
  occur (tables have no lease: the catalog orders concurrent commits)."""


class UsageError(ValueError):
    """A mistake on the command line (unknown option, missing or bad value): one line, exit 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, except that a mistake raises UsageError (one ``seqcodec: error:`` line) instead of a usage dump,
    and that an abbreviated option is unknown: a crontab line's ``--num-shard`` must not change meaning (or
    become ambiguous) when an option is added."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **{"allow_abbrev": False, **kwargs})

    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)")


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, except that text with its own line breaks (the exit-code epilog) is kept as is."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


class JobError(Exception):
    """A failure the job detected and explained itself (the message is the whole story)."""

    exit_code = EXIT_USAGE


class TooManyRejects(JobError):
    """More rows were rejected than --max-error-rate allows; nothing was published."""

    exit_code = EXIT_TOO_MANY_REJECTS


class PipelineFailed(JobError):
    """The pipeline failed, its row counts did not add up, or the publish failed; nothing new was published."""

    exit_code = EXIT_PIPELINE_FAILED


def check_positive(args: argparse.Namespace, *names: str) -> None:
    """ValueError (one line, exit 2) for an option that must be >= 1."""
    for name in names:
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")


EXIT_INTERRUPTED = 130  # what a shell reports for a process that SIGINT ended (128 + 2)


class Interrupts:
    """Ctrl-C (SIGINT) while a command runs: noted, logging silenced, then KeyboardInterrupt as usual.

    Beam catches the KeyboardInterrupt inside the bundle it interrupts, logs it with its traceback and
    fails the pipeline (which the launcher reports as exit 4); the note lets ``run_cli`` end any such
    failure as what it is, an interruption (exit 130, one line), and silencing logging keeps Beam's
    traceback off the screen. A second Ctrl-C ends the process at once.
    """

    def __init__(self) -> None:
        self.seen = False

    def handle(self, signum: int, frame: Any) -> None:
        if self.seen:
            print("seqcodec: interrupted", file=sys.stderr)
            exit_process(EXIT_INTERRUPTED)
        self.seen = True
        logging.disable(logging.CRITICAL)
        raise KeyboardInterrupt

    def __enter__(self) -> Interrupts:
        # Signal handlers can be set from the main thread only (a command run from another thread keeps Python's).
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self.handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        if self.seen:
            logging.disable(logging.NOTSET)  # for a caller that goes on in this process (tests)


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Call ``main`` and map known failures to a one-line message and a non-zero exit code.

    Ctrl-C anywhere (checks, training, the pipeline and the wait for it) ends as ``seqcodec: interrupted``,
    exit 130, whatever the runner made of it.
    """
    with Interrupts() as interrupts:
        try:
            return main(argv)
        except SystemExit as exc:  # --help and --version end here after printing
            return exc.code if isinstance(exc.code, int) else 0
        except BrokenPipeError:  # `seqcodec ... --help | head`: the reader left; nothing more to say
            quiet_stdout()
            return 0
        except KeyboardInterrupt:
            return interrupted()
        except (JobError, *USER_ERRORS) as exc:
            if interrupts.seen:
                return interrupted()
            print(f"seqcodec: error: {exc}", file=sys.stderr)
            return getattr(exc, "exit_code", EXIT_USAGE)
        except Exception:
            if interrupts.seen:
                return interrupted()
            raise


def interrupted() -> int:
    print("seqcodec: interrupted", file=sys.stderr)
    return EXIT_INTERRUPTED


def quiet_stdout() -> None:
    """Point stdout at /dev/null, so that the final flush of a closed pipe raises nothing."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def exit_process(code: int) -> None:
    """Flush and leave without running C++ static destructors.

    TensorFlow and gRPC (Beam's in-process workers) can still own native threads at interpreter
    exit; tearing them down sometimes aborts with "terminate called without an active exception"
    (exit 134), which would hide the job's real exit code from schedulers. All our output is
    written and closed by now, so skipping the teardown loses nothing.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def setup_logging(verbose: bool = False) -> None:
    """Plain, timestamped progress lines on stderr; third-party chatter kept at WARNING."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    for noisy in ("apache_beam", "absl", "tensorflow", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    relay = logging.getLogger(WORKER_RELAY)
    relay.setLevel(logging.INFO)
    relay.addFilter(worker_line)


# Beam's local job service relays each line a worker process logs (multi-process DirectRunner) as
# "Worker: <the LogEntry protobuf as text>" through this logger.
WORKER_RELAY = "apache_beam.runners.portability.local_job_service"


def worker_line(record: logging.LogRecord) -> bool:
    """Show a relayed worker line as ``worker: MESSAGE``; drop Beam's INFO lines, the workers' and the relay's."""
    if record.msg == "Worker: %s" and len(record.args or ()) == 1:
        from apache_beam.portability.api import beam_fn_api_pb2
        from google.protobuf import text_format

        try:
            entry = text_format.Parse(str(record.args[0]), beam_fn_api_pb2.LogEntry())
        except text_format.ParseError:
            return True
        record.msg, record.args = "worker: %s", (entry.message,)
        # Beam's own INFO lines (logged before the worker applies its log levels) are chatter.
        return record.levelno >= logging.WARNING or "apache_beam" not in entry.log_location
    return record.levelno >= logging.WARNING
