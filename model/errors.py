"""The errors users see as one line, from every layer (no TensorFlow, no Beam), and one line of any exception."""

from __future__ import annotations


class InputDataError(ValueError):
    """A file or column that cannot be used; the message is one line naming the file."""


class TensorFlowMissing(ImportError, ValueError):
    """TensorFlow is not installed (a slim install): one line saying what needs it and what to install.

    A ValueError too, so that the command line prints it as one line like any user error.
    """


TENSORFLOW_MISSING = "{needs} TensorFlow, which is not installed (a slim install): pip install 'seqcodec[train]'"


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message for a one-line error, or its type name if it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
