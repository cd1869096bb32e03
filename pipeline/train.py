"""`seqcodec train`: fit a codec on Parquet token files and write a model directory."""

from __future__ import annotations

import argparse
import json
import logging

from seqcodec.model.config import CodecConfig
from seqcodec.model.data import read_token_sequences
from seqcodec.model.train import TrainSettings, train_codec
from seqcodec.pipeline.errors import check_positive, exit_process, run_cli, setup_logging

log = logging.getLogger("seqcodec.train")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="seqcodec train", description="Train a sequence codec on Parquet token files.")
    p.add_argument("--input", required=True, help="glob of Parquet files with a list-of-integers tokens column")
    p.add_argument("--model-dir", required=True, help="where to write the model directory")
    p.add_argument("--tokens-column", default="tokens")
    p.add_argument("--hidden-size", type=int, default=CodecConfig.hidden_size)
    p.add_argument("--embedding-size", type=int, default=CodecConfig.embedding_size)
    p.add_argument("--vocab-size", type=int, help="default: largest token id seen + 1")
    p.add_argument("--max-length", type=int, help="default: longest sequence seen")
    p.add_argument("--bidirectional", action=argparse.BooleanOptionalAction, default=True,
                   help="bidirectional encoder LSTM, hidden_size/2 each way (default: on)")
    p.add_argument("--position-signal", action=argparse.BooleanOptionalAction, default=True,
                   help="learned position and steps-to-go signals added to the decoder input (default: on)")
    p.add_argument("--epochs", type=int, default=TrainSettings.epochs)
    p.add_argument("--time-budget", type=float, default=TrainSettings.time_budget,
                   help="seconds; stop cleanly when spent and keep the best model (0: no limit)")
    p.add_argument("--validation-fraction", type=float, default=TrainSettings.validation_fraction)
    p.add_argument("--batch-size", type=int, default=TrainSettings.batch_size)
    p.add_argument("--learning-rate", type=float, default=TrainSettings.learning_rate,
                   help="starting rate, annealed (cosine) to 1/50 of it over the run's epochs or time budget")
    p.add_argument("--seed", type=int, default=TrainSettings.seed)
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging(args.verbose)
    check_positive(args, "epochs", "batch_size")
    if not args.learning_rate > 0:
        raise ValueError(f"--learning-rate must be positive, got {args.learning_rate}")
    if args.time_budget is not None and args.time_budget < 0:
        raise ValueError("--time-budget must be >= 0 seconds")
    data = read_token_sequences(args.input, args.tokens_column)
    if len(data) < 4:
        raise ValueError(f"{args.input}: {len(data)} usable sequences; training needs at least 4")
    seen_vocab = int(data.values.max()) + 1
    vocab_size = args.vocab_size or seen_vocab
    if vocab_size < seen_vocab:
        raise ValueError(f"{args.input}: token id {seen_vocab - 1} is outside --vocab-size {vocab_size}")
    longest = int(data.lengths.max())
    max_length = args.max_length or longest
    if max_length < longest:
        keep = data.lengths <= max_length
        log.warning("skipping %d sequences longer than --max-length %d", int((~keep).sum()), max_length)
        data = data.take(keep.nonzero()[0])
    config = CodecConfig(
        vocab_size=vocab_size,
        max_length=max_length,
        hidden_size=args.hidden_size,
        embedding_size=args.embedding_size,
        bidirectional=args.bidirectional,
        position_signal=args.position_signal,
    )
    settings = TrainSettings(
        epochs=args.epochs,
        time_budget=args.time_budget or None,
        validation_fraction=args.validation_fraction,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
    )
    manifest = train_codec(data, config, settings, args.model_dir)
    test = manifest.metrics["test"]
    print(json.dumps({"model_dir": args.model_dir, "fingerprint": manifest.fingerprint, "test": test}))
    log.info(
        "held-out test: exact match %.4f, token accuracy %.4f on %d sequences; model in %s",
        test["exact_match"], test["token_accuracy"], test["sequences"], args.model_dir,
    )
    return 0


if __name__ == "__main__":
    exit_process(run_cli(main))
