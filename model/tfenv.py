"""Import TensorFlow and Keras without their start-up noise (set SEQCODEC_TF_LOGS=1 to keep it)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null for the duration.

    TensorFlow's C++ start-up lines (the oneDNN banner, the CPU feature guard) are written
    before absl logging is configured, so TF_CPP_MIN_LOG_LEVEL does not catch all of them;
    only silencing the descriptor itself does.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real descriptor (e.g. captured by a test runner)
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _import_quietly() -> None:
    if os.environ.get("SEQCODEC_TF_LOGS") == "1":
        import tensorflow  # noqa: F401

        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    with _stderr_silenced():
        import tensorflow as tf

        tf.get_logger().setLevel(logging.ERROR)
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)


_import_quietly()

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

__all__ = ["keras", "tf"]
