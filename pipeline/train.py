"""`seqcodec train` and `seqcodec.train(...)`: fit a codec on token sequences and write a model directory."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from seqcodec.model.config import DECODERS, CodecConfig
from seqcodec.model.data import TokenSequences, read_token_sequences, read_vocab
from seqcodec.model.manifest import VOCAB_FILE, Manifest, ModelDirError
from seqcodec.model.scores import percent
from seqcodec.pipeline.runtime import ArgumentParser, HelpFormatter, exit_process, run_cli, setup_logging

log = logging.getLogger("seqcodec.train")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainSpec:
    """What `seqcodec train` was asked for, parsed once: every option but --input and --model-dir.

    The parser owns the defaults. None leaves the choice to the data: the vocabulary's measured default
    (``seqcodec.model.train.defaults_for``), or the size and length the sequences need.
    """

    tokens_column: str
    hidden_size: int
    embedding_size: int | None
    vocab_size: int | None
    max_length: int | None
    bidirectional: bool
    position_signal: bool
    decoder: str | None
    dropout: float | None
    word_dropout: float | None
    label_smoothing: float | None
    weight_decay: float | None
    splice: float | None
    sampled_softmax: int | None
    tie_embeddings: bool | None
    tie_output: bool | None
    near_duplicates: float | None
    epochs: int
    time_budget: float | None  # seconds; 0 or None: no limit
    validation_fraction: float
    batch_size: int | None
    learning_rate: float | None
    seed: int
    vocab: str | os.PathLike | Sequence[str] | None  # a file of one token per line, or the tokens
    overwrite: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrainSpec:
        """The spec from parsed arguments; the options are checked where they are used (``fit``)."""
        return cls(**{field.name: getattr(args, field.name) for field in dataclasses.fields(cls)})


def train(
    input: str | Sequence[Sequence[int]] | Sequence[np.ndarray],
    model_dir: str | os.PathLike,
    *,
    tokens_column: str = "tokens",
    hidden_size: int = CodecConfig.hidden_size,
    embedding_size: int | None = None,
    vocab_size: int | None = None,
    max_length: int | None = None,
    bidirectional: bool = True,
    position_signal: bool = True,
    decoder: str | None = None,
    dropout: float | None = None,
    word_dropout: float | None = None,
    label_smoothing: float | None = None,
    weight_decay: float | None = None,
    splice: float | None = None,
    sampled_softmax: int | None = None,
    tie_embeddings: bool | None = None,
    tie_output: bool | None = None,
    near_duplicates: float | None = None,
    epochs: int = 200,
    time_budget: float | None = 600.0,
    validation_fraction: float = 0.1,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    seed: int = 0,
    vocab: str | os.PathLike | Sequence[str] | None = None,
    overwrite: bool = False,
) -> Manifest:
    """Train a codec and write it to ``model_dir``; returns its Manifest (metrics["test"]: held-out scores).

    ``input`` is a glob (or a directory) of Parquet files with a ``tokens_column``, or the token
    sequences themselves (lists or int arrays). The options are those of ``seqcodec train``,
    with the same defaults; ``time_budget`` 0 or None means no limit. ``decoder``, ``embedding_size``,
    ``batch_size``, ``learning_rate``, ``tie_embeddings``, ``tie_output`` and the regularization options
    left None take the measured default for the vocabulary's size (``seqcodec.model.train.defaults_for``).
    ``model_dir`` is checked before anything is read or trained: a model already there is replaced only
    with ``overwrite``, and then only its own files (other files in the directory are kept). ``vocab``
    (a file of one token per line, line number = id, or the tokens themselves) is stored with the model
    as ``vocab.txt``, so decoding shows words without being told; it sets the vocabulary's size.
    ValueError (one line) for bad options or data.
    """
    # Every keyword is a TrainSpec field (tests/test_library.py holds them to the command's options).
    spec = TrainSpec(**{name: value for name, value in locals().items() if name not in ("input", "model_dir")})
    return fit(input, model_dir, spec)


def fit(input: str | Sequence[Sequence[int]] | Sequence[np.ndarray], model_dir: str | os.PathLike,
        spec: TrainSpec) -> Manifest:
    """``train`` with its options as a TrainSpec: check them and ``model_dir``, read the data, train, write."""
    from seqcodec.model.storage import check_model_dir, own_files
    from seqcodec.model.train import TrainSettings, defaults_for, train_codec  # TensorFlow is imported here

    for name, value in (("epochs", spec.epochs), ("batch_size", spec.batch_size),
                        ("embedding_size", spec.embedding_size)):
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if spec.learning_rate is not None and not spec.learning_rate > 0:
        raise ValueError(f"--learning-rate must be positive, got {spec.learning_rate}")
    if spec.time_budget is not None and spec.time_budget < 0:
        raise ValueError("--time-budget must be >= 0 seconds")
    if not 0 < spec.validation_fraction < 1:
        raise ValueError(f"--validation-fraction must be between 0 and 1, got {spec.validation_fraction}")
    check_model_dir(model_dir, spec.overwrite)
    vocab, vocab_size, max_length = spec.vocab, spec.vocab_size, spec.max_length
    tokens = None
    if vocab is not None:
        tokens = read_vocab(os.fspath(vocab), None) if isinstance(vocab, str | os.PathLike) else list(vocab)
        named = f"--vocab {os.fspath(vocab)}" if isinstance(vocab, str | os.PathLike) else "the vocabulary"
        if not tokens:
            raise ValueError(f"{named} holds no tokens")
        broken = [i for i, token in enumerate(tokens) if len(f"{token}\n".splitlines()) != 1]
        if broken:  # vocab.txt is one token per line: this one would shift every id after it
            raise ValueError(f"{named}: token {broken[0]} holds a line break")
        if vocab_size is not None and vocab_size != len(tokens):
            raise ValueError(f"{named} has {len(tokens)} tokens, but --vocab-size is {vocab_size}")
        vocab_size = len(tokens)
        theirs = Path(model_dir) / VOCAB_FILE
        # A vocab.txt that training did not write is someone's file: replacing it with another list would lose it.
        if (theirs.is_file() and VOCAB_FILE not in own_files(Path(model_dir))
                and read_vocab(str(theirs), None) != tokens):
            raise ModelDirError(f"model directory {model_dir}: holds a {VOCAB_FILE} that is not the model's and "
                                f"differs from {named}; move it away first")
    where = input if isinstance(input, str) else "the sequences"
    data = read_token_sequences(input, spec.tokens_column) if isinstance(input, str) else in_memory(input)
    if len(data) < 4:
        raise ValueError(f"{where}: {len(data)} usable sequences; training needs at least 4")
    seen_vocab = int(data.values.max()) + 1
    vocab_size = vocab_size or seen_vocab
    if vocab_size < seen_vocab:
        limit = f"the vocabulary ({vocab_size} tokens)" if tokens is not None else f"--vocab-size {vocab_size}"
        raise ValueError(f"{where}: token id {seen_vocab - 1} is outside {limit}")
    longest = int(data.lengths.max())
    max_length = max_length or longest
    if max_length < longest:
        keep = data.lengths <= max_length
        log.warning("skipping %d sequences longer than --max-length %d", int((~keep).sum()), max_length)
        data = data.take(keep.nonzero()[0])
    # Options left unset take the measured default for this kind of data (letters or words).
    measured = defaults_for(vocab_size)
    given = {name: getattr(spec, name) for name in measured}
    chosen = {k: default if given[k] is None else given[k] for k, default in measured.items()}
    # Tying is measured with the autoregressive decoder only, so a repeat decoder leaves both off unless
    # asked: --tie-embeddings is then an error (it reads no tokens), --tie-output ties its output layer.
    for name in ("tie_embeddings", "tie_output"):
        if given[name] is None and chosen["decoder"] != "autoregressive":
            chosen[name] = False
    # The near-duplicate loss runs in the sampled-softmax trainer: with that turned off, so is its default.
    if given["near_duplicates"] is None and not 0 < chosen["sampled_softmax"] < vocab_size:
        chosen["near_duplicates"] = 0.0
    config = CodecConfig(
        vocab_size=vocab_size,
        max_length=max_length,
        hidden_size=spec.hidden_size,
        embedding_size=chosen.pop("embedding_size"),
        bidirectional=spec.bidirectional,
        position_signal=spec.position_signal,
        decoder=chosen.pop("decoder"),
    )
    settings = TrainSettings(
        epochs=spec.epochs,
        time_budget=spec.time_budget or None,
        validation_fraction=spec.validation_fraction,
        batch_size=chosen.pop("batch_size"),
        seed=spec.seed,
        **chosen,
    )
    return train_codec(data, config, settings, model_dir, tokens)


def in_memory(sequences: Sequence[Sequence[int]] | Sequence[np.ndarray] | Any) -> TokenSequences:
    """Token sequences given in Python (or as Arrow data) as TokenSequences; empty ones are skipped, as from files."""
    from seqcodec.model.batches import flatten

    data = TokenSequences(*flatten(sequences))
    data = data.take(np.flatnonzero(data.lengths))
    if data.values.size and data.values.min() < 0:
        raise ValueError(f"the sequences hold a negative token id {data.values.min()}")
    return data


def by_vocab(name: str) -> str:
    """A by-vocabulary default for --help: "A up to 256 tokens in the vocabulary, B above" (or just A)."""
    from seqcodec.model.train import CHARACTER_VOCAB, defaults_for

    small, large = defaults_for(CHARACTER_VOCAB)[name], defaults_for(CHARACTER_VOCAB + 1)[name]
    if isinstance(small, bool):
        small, large = ("on" if value else "off" for value in (small, large))
    if small == large:
        return f"{small:g}" if isinstance(small, float) else str(small)
    return f"{small} up to {CHARACTER_VOCAB} tokens in the vocabulary (letters), {large} above (words)"


def parser() -> argparse.ArgumentParser:
    from seqcodec.model.train import TrainSettings

    p = ArgumentParser(prog="seqcodec train", description="Train a sequence codec on Parquet token files.",
                                formatter_class=HelpFormatter)
    p.add_argument("--input", required=True,
                   help="glob of Parquet files, or a directory of them, with a list-of-integers tokens column")
    p.add_argument("--model-dir", required=True, help="where to write the model directory (checked before training)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the model already in --model-dir (only its own files: encoder.keras, decoder.keras, "
                        "manifest.json, history.json, split.parquet, vocab.txt; other files are kept; default: refuse)")
    p.add_argument("--vocab", metavar="FILE",
                   help="one token per line (line number = id): stored with the model as vocab.txt, so decode, "
                        "encode --decode and report show words by default; sets the vocabulary's size")
    p.add_argument("--tokens-column", default="tokens", help="name of the tokens column (default: %(default)s)")
    p.add_argument("--hidden-size", type=int, default=CodecConfig.hidden_size,
                   help="encoder state size; codes are hidden_size + 1 wide (default: %(default)s). Choosing a "
                        "size: docs/MODEL.md \"Fidelity against code size\" has what sizes 64-512 reach on words "
                        "and on letters in 10 minutes, held out and on training rows")
    p.add_argument("--embedding-size", type=int, help=f"token embedding size (default: {by_vocab('embedding_size')})")
    p.add_argument("--vocab-size", type=int, help="default: the --vocab file's size, else largest token id seen + 1")
    p.add_argument("--max-length", type=int, help="default: longest sequence seen")
    p.add_argument("--bidirectional", action=argparse.BooleanOptionalAction, default=True,
                   help="bidirectional encoder LSTM, hidden_size/2 each way (default: on)")
    p.add_argument("--position-signal", action=argparse.BooleanOptionalAction, default=True,
                   help="learned position and steps-to-go signals added to the decoder input (default: on)")
    p.add_argument("--decoder", choices=DECODERS,
                   help="repeat: h and position signals at every step; autoregressive: also the previous token "
                        f"(default: {by_vocab('decoder')})")
    p.add_argument("--dropout", type=float, help=f"on embeddings and decoder outputs (default: {by_vocab('dropout')})")
    p.add_argument("--word-dropout", type=float,
                   help="share of the autoregressive decoder's previous tokens hidden in training "
                        f"(default: {by_vocab('word_dropout')})")
    p.add_argument("--label-smoothing", type=float, help=f"default: {by_vocab('label_smoothing')}")
    p.add_argument("--weight-decay", type=float,
                   help=f"decoupled weight decay, AdamW (default: {by_vocab('weight_decay')})")
    p.add_argument("--splice", type=float,
                   help="share of each batch's rows replaced by a splice of two rows of equal length (the head "
                        "of one, the tail of the other), so the model cannot memorize rows "
                        f"(default: {by_vocab('splice')})")
    p.add_argument("--sampled-softmax", type=int, metavar="N",
                   help="training scores the true token and N sampled ones instead of the whole vocabulary "
                        "(cheaper steps for large vocabularies; decoding is unchanged; N at or above the "
                        f"vocabulary's size, or 0: the whole vocabulary; default: {by_vocab('sampled_softmax')})")
    p.add_argument("--tie-embeddings", action=argparse.BooleanOptionalAction,
                   help="the autoregressive decoder reads its previous tokens through the encoder's embedding "
                        "(shared weights: each word trains one vector, read or written; the saved decoder "
                        f"keeps its own copy, so models load as before; default: {by_vocab('tie_embeddings')})")
    p.add_argument("--tie-output", action=argparse.BooleanOptionalAction,
                   help="the output layer scores tokens against the encoder's embedding through a projection "
                        "(shared weights; the saved decoder holds their product, so models load as before; "
                        f"default: {by_vocab('tie_output')})")
    p.add_argument("--near-duplicates", type=float, metavar="WEIGHT",
                   help="weight of a training loss that asks a copy of each row with 1-3 tokens (3 in two copies of "
                        "three) dropped or inserted to land near the row itself (contrastive, against the batch's "
                        "other rows, batched with rows that share most of its tokens) under a learned map of "
                        "the code; after training the map is fitted to "
                        "copies with tokens replaced and swapped too and kept as search.npy for "
                        "seqcodec.CodeNormalization.from_model; more sentences come back whole, fewer tokens of "
                        "the rest; needs the sampled softmax "
                        f"(default: {by_vocab('near_duplicates')}, 0 without the sampled softmax; docs/MODEL.md "
                        "\"Training for near duplicates\")")
    p.add_argument("--epochs", type=int, default=TrainSettings.epochs,
                   help="at most this many passes over the data (default: %(default)s)")
    p.add_argument("--time-budget", type=float, default=TrainSettings.time_budget,
                   help="seconds; stop cleanly when spent and keep the best model (default: %(default)g; 0: no limit)")
    p.add_argument("--validation-fraction", type=float, default=TrainSettings.validation_fraction,
                   help="held out: half picks the checkpoint, half is the reported test set (default: %(default)s)")
    p.add_argument("--batch-size", type=int, help=f"sequences per training step (default: {by_vocab('batch_size')})")
    p.add_argument("--learning-rate", type=float,
                   help="starting rate, annealed (cosine) to 1/50 of it over the run's epochs or time budget "
                        f"(default: {by_vocab('learning_rate')})")
    p.add_argument("--seed", type=int, default=TrainSettings.seed,
                   help="data split, shuffling and initial weights (default: %(default)s)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging(args.verbose)
    manifest = fit(args.input, args.model_dir, TrainSpec.from_args(args))
    metrics = manifest.metrics
    test, train_rows, baseline = metrics["test"], metrics["train"], metrics["baseline"]
    print(json.dumps({"model_dir": args.model_dir, "fingerprint": manifest.fingerprint, "test": test,
                      "train": train_rows, "baseline": baseline, "hints": metrics["hints"]}))
    log.info("held-out test (%d sequences, never trained on): exact match %s, token accuracy %s; model in %s",
             test["sequences"], percent(test["exact_match"]), percent(test["token_accuracy"]), args.model_dir)
    log.info("training rows (%d of them, same round trip): exact match %s, token accuracy %s",
             train_rows["sequences"], percent(train_rows["exact_match"]), percent(train_rows["token_accuracy"]))
    log.info("baseline, always writing the most frequent token (id %d): exact match %s, token accuracy %s",
             baseline["token"], percent(baseline["exact_match"]), percent(baseline["token_accuracy"]))
    for hint in metrics["hints"]:
        log.info("hint: %s", hint)
    return 0


if __name__ == "__main__":
    exit_process(run_cli(main))
