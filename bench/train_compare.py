"""Compare codec variants at equal epochs on the sample, and batch-1 vs bucketed training speed.

Accuracy per epoch does not depend on machine load, so variants are compared by held-out exact
match after each epoch; their cost per epoch is measured as a ratio in the same process.
Run: .venv/bin/python bench/train_compare.py --epochs 6 --rows 40000 --out /tmp/train_compare.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seqcodec.model.batches import pad_shifted  # noqa: E402
from seqcodec.model.config import CodecConfig  # noqa: E402
from seqcodec.model.data import read_token_sequences  # noqa: E402
from seqcodec.model.network import Network, build_autoencoder, build_decoder, build_encoder  # noqa: E402
from seqcodec.model.tfenv import keras  # noqa: E402
from seqcodec.model.train import bucketed_dataset, evaluate, split  # noqa: E402

VARIANTS = {
    "h128 plain (seed architecture)": dict(hidden_size=128, position_signal=False, bidirectional=False),
    "h128 + position signal": dict(hidden_size=128, position_signal=True, bidirectional=False),
    "h128 + position signal + bidirectional": dict(hidden_size=128, position_signal=True, bidirectional=True),
    "h256 + position signal": dict(hidden_size=256, position_signal=True, bidirectional=False),
}


def build(config: CodecConfig, lr: float = 2e-3):
    encoder, decoder = build_encoder(config), build_decoder(config)
    autoencoder = build_autoencoder(encoder, decoder)
    autoencoder.compile(optimizer=keras.optimizers.Adam(lr, clipnorm=1.0),
                        loss=keras.losses.SparseCategoricalCrossentropy(), jit_compile=False)
    return autoencoder, Network(encoder, decoder, config)


def compare_variants(train, val, epochs: int, batch_size: int) -> dict:
    results = {}
    for name, kwargs in VARIANTS.items():
        keras.utils.set_random_seed(0)
        config = CodecConfig(vocab_size=26, max_length=int(train.lengths.max()), embedding_size=64, **kwargs)
        autoencoder, network = build(config)
        dataset, steps = bucketed_dataset(train, batch_size, seed=0)
        curve, seconds = [], []
        iterator = iter(dataset)
        for _ in range(epochs):
            start = time.monotonic()
            for _ in range(steps):
                x, y, w = next(iterator)
                autoencoder.train_on_batch(x, y, sample_weight=w)
            seconds.append(time.monotonic() - start)
            curve.append(evaluate(network.codec(), val)["exact_match"])
            print(f"{name}: epoch {len(curve)} exact {curve[-1]:.4f} ({seconds[-1]:.0f}s)", flush=True)
        results[name] = {"val_exact_match_by_epoch": curve, "seconds_by_epoch": seconds,
                         "params": autoencoder.count_params()}
    return results


def batch1_vs_bucketed(train, steps: int = 60) -> dict:
    """Sequences/s of the answer's loop (one sequence per train_on_batch) vs bucketed batches of 128."""
    config = CodecConfig(vocab_size=26, max_length=int(train.lengths.max()), hidden_size=64, embedding_size=32,
                         position_signal=False)
    autoencoder, _ = build(config)
    dataset, _ = bucketed_dataset(train, 128, seed=0)
    batches = [next(iter(dataset)) for _ in range(5)]
    singles = [pad_shifted(train.values, train.offsets, np.array([i])) for i in range(50)]
    for ids in singles[:3]:
        autoencoder.train_on_batch(ids, np.maximum(ids - 1, 0))
    for x, y, w in batches[:2]:
        autoencoder.train_on_batch(x, y, sample_weight=w)
    rates = {"batch1": [], "bucketed128": []}
    for _ in range(3):  # interleaved rounds: the machine is shared
        start = time.monotonic()
        for ids in singles:
            autoencoder.train_on_batch(ids, np.maximum(ids - 1, 0))
        rates["batch1"].append(len(singles) / (time.monotonic() - start))
        start, n = time.monotonic(), 0
        for x, y, w in batches:
            autoencoder.train_on_batch(x, y, sample_weight=w)
            n += int(x.shape[0])
        rates["bucketed128"].append(n / (time.monotonic() - start))
    best = {k: max(v) for k, v in rates.items()}
    return {"sequences_per_second": best, "ratio": best["bucketed128"] / best["batch1"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", default="data/sample/words.parquet")
    parser.add_argument("--rows", type=int, default=40000)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", default="/tmp/train_compare.json")
    args = parser.parse_args()
    data = read_token_sequences(args.input)
    data = data.take(np.arange(min(args.rows, len(data))))
    train, val, _ = split(data, 0.1, seed=0)
    report = {"rows": len(data), "train": len(train), "validation": len(val)}
    report["speed"] = batch1_vs_bucketed(train)
    print(json.dumps(report["speed"]), flush=True)
    report["variants"] = compare_variants(train, val, args.epochs, args.batch_size)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
    # The endless tf.data generator behind bucketed_dataset keeps a thread alive; leave without waiting on it.
    sys.stdout.flush()
    os._exit(0)
