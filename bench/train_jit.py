"""One training step of the word model with and without XLA (``jit_compile``), on one fixed batch shape.

Builds the word default (autoregressive decoder, hidden 192, embedding 128, vocabulary 4,000,
dropout 0.1, word dropout 0.3), takes one length-bucketed batch of 64 sentences and times
``train_on_batch`` on it, alternating the two settings twice, after a warm-up that holds the
trace (and for XLA the compile, which is counted separately).

    .venv/bin/python -m bench.train_jit [--input data/words/sentences.parquet] [--width 16]
"""

from __future__ import annotations

import argparse
import time

from seqcodec.model.config import CodecConfig
from seqcodec.model.data import read_token_sequences
from seqcodec.model.network import build_autoencoder, build_decoder, build_encoder
from seqcodec.model.tfenv import keras
from seqcodec.model.train import bucketed_dataset

BATCH = 64


def word_step_setup(description: str, extra: dict[str, dict] | None = None) -> tuple[argparse.Namespace, CodecConfig,
                                                                                      tuple]:
    """Command line, the word default's configuration and one training batch of ``--width`` words."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--input", default="data/words/sentences.parquet")
    parser.add_argument("--width", type=int, default=16, help="sentence length of the timed batch")
    parser.add_argument("--steps", type=int, default=30)
    for flag, options in (extra or {}).items():
        parser.add_argument(flag, **options)
    args = parser.parse_args()
    config = CodecConfig(vocab_size=4000, max_length=40, hidden_size=192, embedding_size=128,
                         decoder="autoregressive")
    dataset, _ = bucketed_dataset(read_token_sequences(args.input), BATCH, 0, config, 0.3, 0.0)
    batch = next(b for b in dataset.take(500) if tuple(b[0][0].shape) == (BATCH, args.width))
    return args, config, batch


def main() -> None:
    args, config, batch = word_step_setup(__doc__.splitlines()[0])
    for jit in (False, True, False, True):
        keras.utils.set_random_seed(0)
        model = build_autoencoder(build_encoder(config, 0.1), build_decoder(config, 0.1))
        model.compile(optimizer=keras.optimizers.Adam(2e-3, clipnorm=1.0),
                      loss=keras.losses.SparseCategoricalCrossentropy(), jit_compile=jit)
        start = time.perf_counter()
        model.train_on_batch(*batch)
        first = time.perf_counter() - start
        for _ in range(3):
            model.train_on_batch(*batch)
        start = time.perf_counter()
        for _ in range(args.steps):
            model.train_on_batch(*batch)
        step = (time.perf_counter() - start) / args.steps
        print(f"jit_compile={jit!s:5}  first call {first:5.2f} s  step {1000 * step:6.1f} ms", flush=True)


if __name__ == "__main__":
    main()
