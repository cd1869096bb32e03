"""Time training steps of the codec at several hidden sizes and batch sizes, on the shipped sample.

Every variant trains on the same batches (same seed) after a short warm-up, in one process, so the
ratios between them hold even on a shared machine; run it twice and trust only what repeats.
Run: .venv/bin/python -m bench.step_time --variants 192,128 224,128 256,128 192,128
"""

from __future__ import annotations

import argparse
import time

from seqcodec.model.config import CodecConfig
from seqcodec.model.data import TokenSequences, read_token_sequences
from seqcodec.model.network import build_autoencoder, build_decoder, build_encoder
from seqcodec.model.tfenv import keras
from seqcodec.model.train import bucketed_dataset


def step_time(data: TokenSequences, hidden_size: int, batch_size: int, sequences: int) -> float:
    """Seconds per training step of the default network at this hidden and batch size."""
    config = CodecConfig(vocab_size=int(data.values.max()) + 1, max_length=int(data.lengths.max()),
                         hidden_size=hidden_size)  # fmt: skip
    model = build_autoencoder(build_encoder(config), build_decoder(config))
    loss = keras.losses.SparseCategoricalCrossentropy()
    model.compile(optimizer=keras.optimizers.Adam(2e-3, clipnorm=1.0), loss=loss)
    dataset, _ = bucketed_dataset(data, batch_size, seed=0)
    steps = max(1, sequences // batch_size)
    model.fit(dataset, steps_per_epoch=5, epochs=1, shuffle=False, verbose=0)  # tracing and thread pools
    started = time.perf_counter()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, shuffle=False, verbose=0)
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", default="data/sample/*.parquet")
    parser.add_argument("--variants", nargs="+", default=["192,128", "224,128", "256,128", "192,128"],
                        help="HIDDEN,BATCH pairs, timed in this order")  # fmt: skip
    parser.add_argument("--sequences", type=int, default=38400, help="sequences timed per variant")
    args = parser.parse_args()
    data = read_token_sequences(args.input, "tokens")
    for variant in args.variants:
        hidden, batch = (int(v) for v in variant.split(","))
        seconds = step_time(data, hidden, batch, args.sequences)
        rate = batch / seconds
        print(f"hidden {hidden:4d}  batch {batch:4d}: {seconds * 1000:6.1f} ms/step  {rate:7.0f} sequences/s")


if __name__ == "__main__":
    main()
