"""The codec's shape (vocabulary, lengths, layer sizes) and how it runs (batching, threads, beam width)."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

# "repeat": h (plus position signals) at every step, nothing else: the first design, and what a
# manifest without the field means. "autoregressive": also fed the token it wrote at the previous
# step (teacher forcing in training, greedy at decode time), its initial state derived from h.
DECODERS = ("repeat", "autoregressive")
# The autoregressive decoder's "previous token" at step 0 (shifted ids 1..vocab are tokens).
START_ID = 0


@dataclasses.dataclass(frozen=True)
class CodecConfig:
    """Hyper-parameters that fix the network's shape (and so the code format).

    Token ids are integers in ``[0, vocab_size)``; every one of them is a real token.
    The code of a sequence is ``[length, h_1 .. h_hidden]``, ``code_size == hidden_size + 1``.
    """

    vocab_size: int
    max_length: int
    # 192, not 256: on 2 CPU cores a training step at 192 costs about half of one at 224 or 256
    # (docs/MODEL.md), which buys twice the epochs in a time budget and more than pays for the size.
    hidden_size: int = 192
    embedding_size: int = 64
    bidirectional: bool = True
    position_signal: bool = True
    decoder: str = "repeat"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_length", "hidden_size", "embedding_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.bidirectional and self.hidden_size % 2:
            raise ValueError(f"a bidirectional encoder needs an even hidden_size, got {self.hidden_size}")
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {self.decoder!r}")

    @property
    def code_size(self) -> int:
        """Width of a code: the length field plus the encoder state."""
        return self.hidden_size + 1

    def beam_width(self, asked: int) -> int:
        """The beam width decoding uses when ``asked`` for one: a repeat decoder's steps don't see each
        other's choices, so its greedy tokens already are the most likely sequence and it stays at 1."""
        return asked if self.decoder == "autoregressive" else 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        """The fields that a weights fingerprint covers: ``to_dict`` less fields added later at their
        old meaning (``decoder == "repeat"``), so models saved before the field existed keep their fingerprint."""
        data = self.to_dict()
        if data["decoder"] == "repeat":
            del data["decoder"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CodecConfig:
        """Build from a manifest, ignoring keys that are not configuration."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def threads_per_process(threads: int = 0, workers: int = 1) -> int:
    """Threads one worker process runs its model with: ``threads`` if > 0, else its share of the cores.

    The share is the cores this process may use divided by the ``workers`` processes on the machine
    (0 workers: one per core), so N workers do not each start a pool as wide as the machine.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return threads or max(1, cores // (workers or cores))


# Padded tokens (rows x longest row) per model call; measured in docs/BENCHMARKS.md.
DEFAULT_TOKEN_BUDGET = 16384


@dataclasses.dataclass(frozen=True)
class Batching:
    """How a worker runs the codec: batch size in padded tokens (and rows), threads, beam width.

    ``batch_size`` caps the rows per model call. ``tf_threads`` (``--tf-threads``)
    sizes both the numpy engine's thread pool and TensorFlow's; 0 means one share of the
    machine's cores per worker process (``workers``): ``threads_per_process``.
    """

    token_budget: int = DEFAULT_TOKEN_BUDGET
    batch_size: int | None = None
    tf_threads: int = 0
    workers: int = 1
    beam_width: int = 1

    def codec_options(self) -> dict[str, Any]:
        """Keyword arguments for ``loader.load``."""
        return {"token_budget": self.token_budget, "batch_size": self.batch_size,
                "beam_width": self.beam_width, "threads": threads_per_process(self.tf_threads, self.workers)}
