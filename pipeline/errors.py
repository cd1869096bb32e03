"""Turn user mistakes into one line on stderr and exit code 2, without a stack trace."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from model.data import InputDataError
from model.storage import ModelDirError

# Errors that mean "the user's input or arguments are wrong": reported in one line.
USER_ERRORS: tuple[type[Exception], ...] = (InputDataError, ModelDirError, ValueError, FileNotFoundError)


class JobError(Exception):
    """A failure the job detected and explained itself (the message is the whole story)."""


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Call ``main`` and map known failures to a one-line message and a non-zero exit code."""
    try:
        return main(argv)
    except (JobError, *USER_ERRORS) as exc:
        print(f"seqcodec: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("seqcodec: interrupted", file=sys.stderr)
        return 130


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
