"""Compare codec variants at equal epochs on word-level English sentences (data/make_text_sample.py).

All variants see the same batches in the same order (same seed) and train round-robin, one epoch
each per round, so a slow spell of the shared machine hits all of them alike and an early stop
(--time-budget) still leaves every variant with the same number of epochs. After every epoch each
variant round-trips the held-out rows (the 10% that model.train.split holds out: validation and
test halves, no checkpoint is picked from them) through model.train.evaluate. Seconds per epoch
count training steps only; the first epoch includes tracing. The learning rate follows
the per-epoch schedule model.train had when this was measured (2e-3 * 0.85**epoch, floor
2e-3 / 50). Results are rewritten after every round.
Run: .venv/bin/python data/make_text_sample.py --out /tmp/seqcodec-text
     .venv/bin/python bench/text_compare.py --input /tmp/seqcodec-text/sentences.parquet --epochs 8
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

from seqcodec.model.config import CodecConfig  # noqa: E402
from seqcodec.model.data import TokenSequences, read_token_sequences  # noqa: E402
from seqcodec.model.network import Network, build_autoencoder, build_decoder, build_encoder  # noqa: E402
from seqcodec.model.tfenv import keras  # noqa: E402
from seqcodec.model.train import bucketed_dataset, evaluate, split  # noqa: E402

# Every field that differs is spelled out: CodecConfig's defaults are bidirectional + position signal.
VARIANTS = {
    "a": ("h256 uni, no position signal (answer's architecture)",
          dict(hidden_size=256, embedding_size=64, bidirectional=False, position_signal=False)),
    "b": ("h256 uni + position signal",
          dict(hidden_size=256, embedding_size=64, bidirectional=False, position_signal=True)),
    "c": ("h256 bi + position signal (the default shape at the time)",
          dict(hidden_size=256, embedding_size=64, bidirectional=True, position_signal=True)),
    "d": ("h256 bi + position signal, embedding 128",
          dict(hidden_size=256, embedding_size=128, bidirectional=True, position_signal=True)),
}  # fmt: skip


def concat(a: TokenSequences, b: TokenSequences) -> TokenSequences:
    return TokenSequences(
        np.concatenate([a.values, b.values]), np.concatenate([a.offsets, a.offsets[-1] + b.offsets[1:]])
    )


class Run:
    """One variant: its model, network, batch stream and curves."""

    def __init__(self, key: str, config: CodecConfig, train: TokenSequences, batch_size: int, lr: float) -> None:
        keras.utils.set_random_seed(0)
        self.key, self.label, self.config = key, VARIANTS[key][0], config
        encoder, decoder = build_encoder(config), build_decoder(config)
        self.autoencoder = build_autoencoder(encoder, decoder)
        self.optimizer = keras.optimizers.Adam(lr, clipnorm=1.0)
        self.autoencoder.compile(
            optimizer=self.optimizer, loss=keras.losses.SparseCategoricalCrossentropy(), jit_compile=False
        )
        self.network = Network(encoder, decoder, config)
        dataset, self.steps = bucketed_dataset(train, batch_size, seed=0)  # same batches for every variant
        self.batches = iter(dataset)
        self.result = {
            "label": self.label,
            "config": config.to_dict(),
            "params": self.autoencoder.count_params(),
            "train_loss_by_epoch": [],
            "heldout_exact_match_by_epoch": [],
            "heldout_token_accuracy_by_epoch": [],
            "seconds_by_epoch": [],
            "eval_seconds_by_epoch": [],
        }

    def epoch(self, lr: float, heldout: TokenSequences) -> None:
        self.optimizer.learning_rate.assign(lr)
        start, losses = time.monotonic(), []
        for _ in range(self.steps):
            x, y, w = next(self.batches)
            losses.append(float(self.autoencoder.train_on_batch(x, y, sample_weight=w)))
        seconds = time.monotonic() - start
        start = time.monotonic()
        scores = evaluate(self.network.codec(), heldout)
        r = self.result
        r["eval_seconds_by_epoch"].append(round(time.monotonic() - start, 2))
        r["seconds_by_epoch"].append(round(seconds, 2))
        r["train_loss_by_epoch"].append(round(float(np.mean(losses)), 4))
        r["heldout_exact_match_by_epoch"].append(round(scores["exact_match"], 4))
        r["heldout_token_accuracy_by_epoch"].append(round(scores["token_accuracy"], 4))
        print(
            f"[{self.key}] {self.label}: epoch {len(r['seconds_by_epoch'])} loss {r['train_loss_by_epoch'][-1]:.3f}"
            f" exact {scores['exact_match']:.4f} token {scores['token_accuracy']:.4f} ({seconds:.0f}s)",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", default="/tmp/seqcodec-text/sentences.parquet")
    parser.add_argument("--vocab-size", type=int, default=0, help="default: from vocab.json beside --input")
    parser.add_argument("--rows", type=int, default=0, help="use only the first N rows (default: all)")
    parser.add_argument("--variants", default="abcd", help="which of " + ", ".join(VARIANTS))
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument(
        "--time-budget",
        type=float,
        default=None,
        help="start no new round once the last round would overrun this many seconds",
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--lr-decay", type=float, default=0.85)
    parser.add_argument("--out", default="/tmp/text_compare.json")
    args = parser.parse_args()

    data = read_token_sequences(args.input)
    if args.rows > 0:
        data = data.take(np.arange(min(args.rows, len(data))))
    vocab_file = Path(args.input).with_name("vocab.json")
    if args.vocab_size:
        vocab_size = args.vocab_size
    elif vocab_file.exists():
        vocab_size = len(json.loads(vocab_file.read_text())["tokens"])
    else:
        vocab_size = int(data.values.max()) + 1
    train, val, test = split(data, 0.1, seed=0)
    heldout = concat(val, test)
    max_length = int(data.lengths.max())
    report = {
        "input": args.input,
        "rows": len(data),
        "train": len(train),
        "heldout": len(heldout),
        "vocab_size": vocab_size,
        "max_length": max_length,
        "train_mean_length": round(float(train.lengths.mean()), 2),
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "lr_decay": args.lr_decay,
        "note": "seconds are wall time on a shared 2-core machine: noisy; variants are interleaved per epoch",
        "variants": {},
    }
    runs = [
        Run(
            k,
            CodecConfig(vocab_size=vocab_size, max_length=max_length, **VARIANTS[k][1]),
            train,
            args.batch_size,
            args.learning_rate,
        )
        for k in args.variants
    ]
    started = time.monotonic()
    for epoch in range(args.epochs):
        round_start = time.monotonic()
        lr = max(args.learning_rate * args.lr_decay**epoch, args.learning_rate / 50)
        for run in runs:
            run.epoch(lr, heldout)
            report["variants"][run.key] = run.result
        report["epochs_done"] = epoch + 1
        report["total_seconds"] = round(time.monotonic() - started, 1)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
        last_round = time.monotonic() - round_start
        if args.time_budget is not None and time.monotonic() - started + last_round > args.time_budget:
            print(f"stopping after {epoch + 1} epochs: the next round would overrun the time budget", flush=True)
            break
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
    # The endless tf.data generator behind bucketed_dataset keeps a thread alive; leave without waiting on it.
    sys.stdout.flush()
    os._exit(0)
