"""Import TensorFlow and Keras without their start-up noise (set SEQCODEC_TF_LOGS=1 to keep it)."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import sys
from collections.abc import Iterator

from seqcodec.model.errors import TENSORFLOW_MISSING, TensorFlowMissing


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
    if importlib.util.find_spec("tensorflow") is None or importlib.util.find_spec("keras") is None:
        raise TensorFlowMissing(TENSORFLOW_MISSING.format(
            needs="training and networks the numpy engine cannot run need"))
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

from seqcodec.model.config import threads_per_process  # noqa: E402

__all__ = ["configure_threads", "keras", "tf"]


def configure_threads(threads: int = 0, workers: int = 1) -> int:
    """Size TensorFlow's intra- and inter-op thread pools; returns the intra-op width in effect.

    ``threads`` > 0 is taken as is; 0 shares the cores this process may use among ``workers``
    processes on the machine (0 workers: one per core), so N workers do not each start a pool
    as wide as the machine. TensorFlow fixes its pools when it first runs an op: after that
    this only reports (and warns if the pools differ from the request).
    """
    want = threads_per_process(threads, workers)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(want)
        tf.config.threading.set_inter_op_parallelism_threads(want)
    except RuntimeError:  # already initialised in this process (e.g. the model was loaded before)
        current = tf.config.threading.get_intra_op_parallelism_threads() or threads_per_process(0, 1)
        if current != want:
            logging.getLogger("seqcodec").warning(
                "TensorFlow already runs %d threads per op in this process; %d requested", current, want)
        return current
    return want
