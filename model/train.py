"""Train a codec on token sequences: length-bucketed batches, masked loss, best-by-exact-match checkpoints."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from seqcodec.model import names
from seqcodec.model.batches import pad_shifted
from seqcodec.model.codec import SequenceCodec
from seqcodec.model.config import START_ID, CodecConfig
from seqcodec.model.data import TokenSequences
from seqcodec.model.heldout import split_table, token_hashes
from seqcodec.model.layers import TiedOutput
from seqcodec.model.manifest import HISTORY_FILE, Manifest
from seqcodec.model.network import (
    Network,
    build_autoencoder,
    build_decoder,
    build_encoder,
    hidden_id,
    tied_decoder,
    untie,
)
from seqcodec.model.scores import baseline_scores, most_frequent_token, percent
from seqcodec.model.similarity import pair_whitening
from seqcodec.model.storage import save_codec
from seqcodec.model.tfenv import keras, tf

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainSettings:
    """How to train (not what the network is: that is CodecConfig)."""

    epochs: int = 200
    time_budget: float | None = 600.0
    validation_fraction: float = 0.1
    batch_size: int = 128
    learning_rate: float = 2e-3  # at the start; annealed to learning_rate / 50 by the end of the run
    seed: int = 0
    dropout: float = 0.0  # on the embeddings and the decoder LSTM's outputs
    word_dropout: float = 0.0  # share of the autoregressive decoder's previous tokens hidden in training
    label_smoothing: float = 0.0
    weight_decay: float = 0.0  # decoupled (AdamW); 0 is plain Adam
    splice: float = 0.0  # share of training rows replaced, each batch, by a splice of two of equal length
    sampled_softmax: int = 0  # training scores the true token and this many sampled ones; 0: the whole vocabulary
    tie_embeddings: bool = False  # the autoregressive decoder reads previous tokens through the encoder's embedding
    tie_output: bool = False  # the output layer scores tokens against the encoder's embedding (a projection)
    near_duplicates: float = 0.0  # weight of the loss that asks an edited copy of a row for the row's code

    def __post_init__(self) -> None:
        for name in ("dropout", "word_dropout", "label_smoothing", "splice"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ValueError(f"{name.replace('_', '-')} must be in [0, 1), got {value}")
        if self.weight_decay < 0:
            raise ValueError(f"weight-decay must be >= 0, got {self.weight_decay}")
        if self.near_duplicates < 0:
            raise ValueError(f"near-duplicates must be >= 0, got {self.near_duplicates}")
        if self.sampled_softmax < 0:
            raise ValueError(f"sampled-softmax must be >= 0, got {self.sampled_softmax}")
        if self.sampled_softmax and self.label_smoothing:
            raise ValueError(f"sampled-softmax ({self.sampled_softmax}) and label-smoothing cannot be combined; "
                             "pass --sampled-softmax 0 to smooth labels")


# ``near_duplicate_loss`` divides cosines by this before its softmax over the batch.
NEAR_DUPLICATE_TEMPERATURE = 0.1
# The edits that make near duplicates (``edited_rows``). Training's contrastive loss sees only dropped and
# inserted tokens (replacements there cost round-trip tokens, docs/MODEL.md); the saved search map is then
# fitted on copies with every kind (``fit_search_map``).
EDITS = ("dropped", "inserted", "replaced", "swapped")
TRAINING_EDITS = EDITS[:2]
# The share of edited copies that get ``most`` edits (the rest 1 to ``most``, uniformly): copies far from
# their row are where search lost to bag of words (3 inserted words, docs/MODEL.md).
MOST_EDITS_SHARE = 0.5
SEARCH_PAIRS = 50_000  # rows and copies ``fit_search_map`` encodes: a few seconds on the numpy engine

# Vocabularies up to this size are treated as characters (letters, bytes), larger ones as words:
# the two kinds of data got different defaults by measurement (docs/MODEL.md).
CHARACTER_VOCAB = 256


def defaults_for(vocab_size: int) -> dict[str, Any]:
    """The measured defaults for a vocabulary of this size: decoder, embedding, batch, regularization, learning rate.

    docs/MODEL.md has the 10-minute runs behind each value.
    """
    if vocab_size <= CHARACTER_VOCAB:
        # On a 57k-word sample the model memorized its training words: dropout, and splicing half the rows
        # (new words it cannot memorize), each lifted held-out words.
        return {"decoder": "repeat", "embedding_size": 64, "batch_size": 128, "dropout": 0.2, "word_dropout": 0.0,
                "label_smoothing": 0.0, "weight_decay": 0.0, "splice": 0.5, "sampled_softmax": 0,
                "tie_embeddings": False, "tie_output": False, "near_duplicates": 0.0, "learning_rate": 2e-3}
    # Words: the decoder that sees its last token, a wider embedding, more updates (batch 64), word
    # dropout so that it leans on the code rather than on its own (possibly wrong) last token, a softmax
    # sampled over 256 words in training (more epochs in a time budget), and the decoder reading
    # its last token through the encoder's embedding and scoring the next against it (each word trains
    # one vector, read or written), starting at a higher learning rate than letters; half the rows spliced,
    # as for letters (the model memorizes sentences too); and the near-duplicate loss, which asks codes to
    # tell the batch's sentences apart (more of them come back whole, at some cost in the tokens of the
    # rest) and leaves a search map. docs/MODEL.md has the runs against the letters' settings on the word
    # sample.
    return {"decoder": "autoregressive", "embedding_size": 128, "batch_size": 64, "dropout": 0.1,
            "word_dropout": 0.3, "label_smoothing": 0.0, "weight_decay": 0.0, "splice": 0.5, "sampled_softmax": 256,
            "tie_embeddings": True, "tie_output": True, "near_duplicates": 0.4, "learning_rate": 4e-3}


class SmoothedSparseCrossEntropy(keras.losses.Loss):
    """Sparse cross-entropy on probabilities with label smoothing: the target gets ``1 - eps`` and
    every token ``eps / vocab`` (keras' sparse loss has no smoothing)."""

    def __init__(self, smoothing: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.smoothing = smoothing

    def call(self, y_true: Any, y_pred: Any) -> Any:
        ops = keras.ops
        log_p = ops.log(ops.clip(y_pred, 1e-7, 1.0))
        picked = ops.take_along_axis(log_p, ops.expand_dims(ops.cast(y_true, "int32"), -1), axis=-1)[..., 0]
        return -(1 - self.smoothing) * picked - self.smoothing * ops.mean(log_p, axis=-1)


def evaluate(codec: SequenceCodec, data: TokenSequences) -> dict[str, float]:
    """Round-trip ``data`` through encode and decode: token accuracy and whole-sequence exact match."""
    if len(data) == 0:
        return {"token_accuracy": float("nan"), "exact_match": float("nan"), "sequences": 0}
    values, offsets = codec.decode_flat(codec.encode_flat(data.values, data.offsets))
    same = values == data.values
    wrong_per_row = np.add.reduceat(~same, offsets[:-1]) if same.size else np.zeros(0)
    return {
        "token_accuracy": float(same.mean()),
        "exact_match": float((wrong_per_row == 0).mean()),
        "sequences": len(data),
    }


def split_rows(rows: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shuffle row numbers and cut them into (train, validation, test): the split ``split`` makes."""
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must be between 0 and 1, got {fraction}")
    order = np.random.default_rng(seed).permutation(rows)
    held = max(2, int(round(rows * fraction)))
    if held >= rows:
        raise ValueError(f"{rows} sequences are too few to hold out {fraction:.0%} and still train")
    return order[held:], order[: held // 2], order[held // 2 : held]


def split(data: TokenSequences, fraction: float, seed: int) -> tuple[TokenSequences, TokenSequences, TokenSequences]:
    """Shuffle and cut into (train, validation, test); validation picks checkpoints, test is reported."""
    return tuple(data.take(rows) for rows in split_rows(len(data), fraction, seed))


def split_record(data: TokenSequences, fraction: float, seed: int) -> pa.Table:
    """The record of ``split``'s roles by token hash that the model directory keeps (``heldout.split_table``)."""
    return split_table(token_hashes(data.values, data.offsets), *split_rows(len(data), fraction, seed))


def teacher_inputs(ids: np.ndarray, config: CodecConfig, word_dropout: float, rng: np.random.Generator) -> np.ndarray:
    """The autoregressive decoder's previous-token input for shifted ids: start, then the ids one step
    late, each real one hidden (``hidden_id``) with probability ``word_dropout``."""
    previous = np.full_like(ids, START_ID)
    previous[:, 1:] = ids[:, :-1]
    if word_dropout:
        hide = rng.random(previous.shape) < word_dropout
        hide[:, 0] = False
        previous[hide & (previous > 0)] = hidden_id(config)
    return previous


def splice_rows(ids: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """Padded ids with about ``share`` of the rows spliced: a row's head, from a random cut, joined
    to the tail of another row of the same length in the batch.

    Splices keep the data's local statistics (letters or words next to ones that follow them in real
    data) but are sequences the model has never seen whole, so it cannot pass by memorizing rows.
    """
    if not share:
        return ids
    lengths = (ids > 0).sum(axis=1)
    order = np.lexsort((rng.random(lengths.size), lengths))  # by length, random within a length
    partner = np.empty_like(order)
    partner[order] = np.roll(order, -1)
    alone = lengths[partner] != lengths  # the last row of a length has no partner of its own length
    cut = rng.integers(1, np.maximum(lengths, 2))
    columns = np.arange(ids.shape[1])
    take = (rng.random(lengths.size) < share) & ~alone & (lengths > 1)
    mask = take[:, None] & (columns >= cut[:, None])
    return np.where(mask, ids[partner], ids)


def edited_rows(ids: np.ndarray, rng: np.random.Generator, most: int = 3,
                kinds: Sequence[str] = TRAINING_EDITS) -> np.ndarray:
    """Padded ids with every row edited as a near duplicate: 1 to ``most`` edits of one of ``kinds``
    (drawn per row; ``EDITS``), ``most`` in 2 rows of 3 (``MOST_EDITS_SHARE``), at random distinct
    positions. Dropped: tokens removed; inserted, replaced: new tokens drawn from the batch's own (so
    frequent ones most); swapped: adjacent pairs.

    A row keeps at least one token and at least two thirds of its own (a 4-token row loses at most one).
    """
    lengths = (ids > 0).sum(axis=1)
    pool = ids[ids > 0]
    rows = []
    for row, length in zip(ids, lengths, strict=True):
        tokens = row[:length]
        # The uniform draw comes first, then the share that gets ``most``: the draws of the measured runs.
        count = int(rng.integers(1, most + 1))
        if rng.random() < MOST_EDITS_SHARE:
            count = most
        # One uniform draw picks the kind: with the two training kinds, the same draws as before the others.
        kind = kinds[int(rng.random() * len(kinds))]
        if kind == "dropped":
            count = min(count, length // 3)
            if count:
                tokens = np.delete(tokens, rng.choice(length, count, replace=False))
        elif kind == "inserted":
            count = min(count, max(1, length // 3))
            places = np.sort(rng.choice(length + 1, count, replace=True))
            tokens = np.insert(tokens, places, rng.choice(pool, count))
        elif kind == "replaced":
            tokens = tokens.copy()
            tokens[rng.choice(length, min(count, length), replace=False)] = rng.choice(pool, min(count, length))
        else:  # swapped
            tokens = tokens.copy()
            for i in rng.choice(max(length - 1, 0), min(count, max(length - 1, 0)), replace=False):
                tokens[[i, i + 1]] = tokens[[i + 1, i]]
        rows.append(tokens)
    out = np.zeros((len(rows), max(len(r) for r in rows)), dtype=ids.dtype)
    for i, tokens in enumerate(rows):
        out[i, : len(tokens)] = tokens
    return out


def word_sharing_order(data: TokenSequences, order: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``order`` stably sorted by a min-hash of each row's tokens under a random ranking of the tokens, drawn
    afresh on each call: two rows end up side by side with about the chance that they share tokens (their
    Jaccard similarity), so near-identical rows of the data tend to share a batch."""
    rank = rng.permutation(int(data.values.max()) + 1)[data.values]
    minhash = np.minimum.reduceat(rank, data.offsets[:-1].clip(max=rank.size - 1))
    return order[np.argsort(minhash[order], kind="stable")]


def bucketed_dataset(
    data: TokenSequences,
    batch_size: int,
    seed: int,
    config: CodecConfig | None = None,
    word_dropout: float = 0.0,
    splice: float = 0.0,
    near_duplicates: bool = False,
) -> tuple[tf.data.Dataset, int]:
    """Batches of similar length, padded to their own longest row, reshuffled every epoch.

    Yields (shifted ids, targets, weights) forever, or ((shifted ids, previous tokens), targets,
    weights) for an autoregressive ``config``; the weights are 0 on padding, so padding costs
    nothing. ``splice``: the share of rows replaced by splices (``splice_rows``). ``near_duplicates``:
    the inputs end with an edited copy of every row (``edited_rows``), and rows within a length are
    grouped by the tokens they share (``word_sharing_order``), so the contrastive loss must also tell
    near-identical rows of the data apart, not only random ones. Returns the dataset and the number of
    batches in one epoch.
    """
    feed_previous = config is not None and config.decoder == "autoregressive"
    lengths = data.lengths
    epoch = [0]

    def batches():
        rng = np.random.default_rng([seed, epoch[0]])
        epoch[0] += 1
        # Random order, then a stable sort by length: equal lengths stay shuffled among themselves.
        order = rng.permutation(lengths.size)
        if near_duplicates:
            order = word_sharing_order(data, order, rng)
        order = order[np.argsort(lengths[order], kind="stable")]
        chunks = [order[i : i + batch_size] for i in range(0, order.size, batch_size)]
        for k in rng.permutation(len(chunks)):
            ids = splice_rows(pad_shifted(data.values, data.offsets, chunks[k]), splice, rng)
            inputs = (ids, teacher_inputs(ids, config, word_dropout, rng)) if feed_previous else (ids,)
            if near_duplicates:
                inputs = (*inputs, edited_rows(ids, rng))
            yield inputs if len(inputs) > 1 else ids, np.maximum(ids - 1, 0), (ids > 0).astype(np.float32)

    spec = tf.TensorSpec([None, None], tf.int32)
    width = 1 + feed_previous + near_duplicates
    signature = ((spec,) * width if width > 1 else spec, spec, tf.TensorSpec([None, None], tf.float32))
    dataset = tf.data.Dataset.from_generator(batches, output_signature=signature).repeat().prefetch(2)
    return dataset, -(-lengths.size // batch_size)


class TimeBudget(keras.callbacks.Callback):
    """Count steps, stop cleanly (after the current batch) once ``seconds`` have passed, report progress.

    The run is planned as ``max_steps`` steps (all epochs), or fewer if the time budget runs
    out first: ``progress()`` is the fraction of the planned steps done, re-estimated from the
    pace so far, so a slower machine stretches the plan instead of cutting it short.
    """

    def __init__(self, seconds: float | None, max_steps: int) -> None:
        super().__init__()
        self.seconds, self.max_steps = seconds, max_steps
        self.start = time.monotonic()
        self.spent = False
        self.steps = 0

    def progress(self) -> float:
        planned = float(self.max_steps)
        elapsed = time.monotonic() - self.start
        if self.seconds is not None and self.steps > 0 and elapsed > 0:
            planned = min(planned, self.steps * self.seconds / elapsed)
        return min(self.steps / planned, 1.0)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.steps += 1
        if self.seconds is not None and time.monotonic() - self.start >= self.seconds:
            self.spent = True
            self.model.stop_training = True


class AnnealLearningRate(keras.callbacks.Callback):
    """Cosine learning rate from ``peak`` to ``peak / 50`` over the planned run, set before every step.

    Tied to the run's plan (time budget or epochs) rather than to epoch numbers, so a
    10-minute run ends at a low rate just as a 45-minute one does.
    """

    def __init__(self, peak: float, budget: TimeBudget) -> None:
        super().__init__()
        self.peak, self.budget = peak, budget

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        floor = self.peak / 50
        rate = floor + (self.peak - floor) * 0.5 * (1 + math.cos(math.pi * self.budget.progress()))
        self.model.optimizer.learning_rate.assign(rate)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is not None:
            logs["learning_rate"] = float(self.model.optimizer.learning_rate.numpy())


class Untie(keras.callbacks.Callback):
    """After each epoch (before ``BestExactMatch`` evaluates): the tied training decoder's weights into
    the standard decoder that the codec runs and saves (``network.untie``)."""

    def __init__(self, trained: keras.Model, decoder: keras.Model) -> None:
        super().__init__()
        self.trained, self.decoder = trained, decoder

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        untie(self.trained, self.decoder)


class BestExactMatch(keras.callbacks.Callback):
    """After each epoch: round-trip the validation set on a codec of the epoch's weights, log it, keep the
    best weights on disk.

    A first epoch cut short by the time budget is no checkpoint: that model has not yet seen
    the data once.
    """

    def __init__(
        self, network: Network, validation: TokenSequences, model_dir: Path, budget: TimeBudget,
        vocab: Sequence[str] | None = None, split: pa.Table | None = None,
    ) -> None:
        super().__init__()
        self.network, self.validation, self.model_dir, self.budget = network, validation, model_dir, budget
        self.vocab, self.split = vocab, split
        self.best: tuple[float, float] = (-1.0, -1.0)
        self.best_epoch = -1
        self.best_weights: list[np.ndarray] | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if epoch == 0 and self.budget.spent:
            return
        scores = evaluate(self.network.codec(), self.validation)
        if logs is not None:
            logs["val_exact_match"] = scores["exact_match"]
            logs["val_token_accuracy"] = scores["token_accuracy"]
        key = (scores["exact_match"], scores["token_accuracy"])
        if key > self.best:
            self.best, self.best_epoch = key, epoch
            self.best_weights = self.model.get_weights()
            # A checkpoint keeps the learned search map alone: fitting it (``fit_search_map``) waits for the end.
            save_codec(self.network, self.model_dir, {"validation": scores, "epoch": epoch + 1, "checkpoint": True},
                       vocab=self.vocab, split=self.split, search=search_map(self.model))


def epoch_line(epoch: int, epochs: int, seconds: float, logs: dict[str, Any]) -> str:
    """One epoch's figures for people: accuracies as percentages, the rest in fixed decimals (never 6.6667e-04)."""
    parts = []
    for key, value in logs.items():
        if "accuracy" in key or "exact_match" in key:
            parts.append(f"{key} {percent(value, 2)}")
        elif key == "learning_rate":
            parts.append(f"{key} {value:.6f}")
        else:
            parts.append(f"{key} {value:.4f}")
    return f"epoch {epoch + 1}/{epochs} ({seconds:.0f} s): " + ", ".join(parts)


class EpochLog(keras.callbacks.Callback):
    """Log ``epoch_line`` after each epoch, in place of Keras' own line (which prints small values as 6.6667e-04)."""

    def __init__(self, epochs: int) -> None:
        super().__init__()
        self.epochs = epochs
        self.start = time.monotonic()

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.start = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        log.info("%s", epoch_line(epoch, self.epochs, time.monotonic() - self.start, logs or {}))


def hints(metrics: dict[str, Any]) -> list[str]:
    """Short advice from a finished run's metrics: where it stands and what to try (may be empty)."""
    out = []
    test, train, baseline = metrics["test"], metrics["train"], metrics["baseline"]
    if metrics["stopped_by_time_budget"] and metrics["best_epoch"] >= metrics["epochs_run"] - 1:
        out.append(
            f"the time budget ended the run while it was still improving (best epoch {metrics['best_epoch']} "
            f"of {metrics['epochs_run']}): a longer --time-budget should do better"
        )
    if test["token_accuracy"] < 2 * baseline["token_accuracy"]:
        out.append(
            f"held-out token accuracy {percent(test['token_accuracy'])} is close to always writing the most "
            f"frequent token ({percent(baseline['token_accuracy'])}): the model has barely learned; "
            "give it more data or time"
        )
    if train["token_accuracy"] - test["token_accuracy"] > 0.15:
        out.append(
            f"training rows round-trip far better than held-out rows ({percent(train['token_accuracy'])} against "
            f"{percent(test['token_accuracy'])} of tokens): the model memorizes; more distinct training "
            "sequences, --dropout, --word-dropout or --splice help"
        )
    return out


class SampledSoftmaxTraining(keras.Model):
    """The autoencoder trained with a sampled softmax (``tf.nn.sampled_softmax_loss``).

    Each step scores the true token and ``samples`` sampled ones instead of the whole vocabulary, so
    steps on large vocabularies cost less (``bench/train_softmax.py``). Only training changes: the
    decoder keeps its full softmax layer, whose weights this trains, for decoding. TensorFlow's
    default sampler is log-uniform, so small ids are drawn most: it suits vocabularies numbered by
    frequency (as the word sample's is) best, and works, less efficiently, for any other numbering.
    """

    def __init__(self, encoder: keras.Model, decoder: keras.Model, samples: int, vocab_size: int,
                 near_duplicates: float = 0.0) -> None:
        super().__init__(name="autoencoder")
        self.encoder = encoder
        self.near_duplicates = near_duplicates  # weight of ``near_duplicate_loss``; its rows end the inputs
        # The decoder up to its output layer; the output layer's weights enter the sampled loss.
        self.hidden = keras.Model(decoder.inputs, decoder.get_layer(names.TOKEN_PROBS).input)
        self.output_layer = decoder.get_layer(names.TOKEN_PROBS)
        self.samples, self.vocab_size = samples, vocab_size
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.near_tracker = keras.metrics.Mean(name="near_duplicate_loss")
        self.search_head = None
        if near_duplicates:
            # The contrastive loss scores a learned linear map of h rather than h itself: searched through
            # it, the codes find near duplicates better than raw h does (docs/MODEL.md). Saved as search.npy.
            size = encoder.output.shape[-1] - 1
            self.search_head = keras.layers.Dense(size, use_bias=False, kernel_initializer="identity",
                                                  name=names.SEARCH_HEAD)
            self.search_head.build((None, size))

    @property
    def metrics(self) -> list[Any]:
        # What fit() logs and resets each epoch.
        return [self.loss_tracker, self.near_tracker] if self.near_duplicates else [self.loss_tracker]

    def _hidden(self, inputs: Any, training: bool) -> tuple[Any, Any]:
        """The decoder's last hidden layer and the codes, for ids or (ids, previous tokens[, edited ids])."""
        inputs = list(inputs) if isinstance(inputs, (tuple, list)) else [inputs]
        if self.near_duplicates:
            inputs = inputs[:-1]
        codes = self.encoder(inputs[0], training=training)
        return self.hidden([codes, *inputs[1:]] if len(inputs) > 1 else codes, training=training), codes

    def call(self, inputs: Any, training: bool = False) -> Any:
        return self.output_layer(self._hidden(inputs, training)[0])

    def train_step(self, data: Any) -> dict[str, Any]:
        inputs, targets, weights = data
        if self.near_duplicates:
            # Outside the tape: the copies' codes are targets that only the rows' codes move towards, and
            # their backward pass is saved (docs/MODEL.md, "The copies' codes as fixed targets").
            edited = self.encoder(inputs[-1], training=True)
        with tf.GradientTape() as tape:
            hidden, codes = self._hidden(inputs, training=True)
            hidden = tf.reshape(hidden, [-1, hidden.shape[-1]])
            if isinstance(self.output_layer, TiedOutput):
                rows, hidden = self.output_layer.rows(), self.output_layer.project(hidden)
            else:
                rows = tf.transpose(self.output_layer.kernel)
            losses = tf.nn.sampled_softmax_loss(
                rows, self.output_layer.bias,
                tf.reshape(tf.cast(targets, tf.int64), [-1, 1]), hidden, self.samples, self.vocab_size)
            weights = tf.reshape(tf.cast(weights, losses.dtype), [-1])
            loss = tf.reduce_sum(losses * weights) / tf.maximum(tf.reduce_sum(weights), 1.0)
            if self.near_duplicates:
                near = near_duplicate_loss(self.search_head(codes[:, 1:]), self.search_head(edited[:, 1:]))
                loss += self.near_duplicates * near
        self.optimizer.apply(tape.gradient(loss, self.trainable_variables), self.trainable_variables)
        self.loss_tracker.update_state(loss)
        if self.near_duplicates:
            self.near_tracker.update_state(near)
        return {metric.name: metric.result() for metric in self.metrics}


def search_map(autoencoder: keras.Model) -> np.ndarray | None:
    """The search map of ``h`` that the near-duplicate loss learned (``SampledSoftmaxTraining``), else None."""
    head = getattr(autoencoder, "search_head", None)
    return None if head is None else np.asarray(head.kernel)


def fit_search_map(codec: SequenceCodec, data: TokenSequences, learned: np.ndarray, seed: int,
                   pairs: int = SEARCH_PAIRS) -> np.ndarray:
    """The search map a model keeps: ``learned`` then ``pair_whitening`` fitted on ``pairs`` draws of rows of
    ``data`` and their edited copies (``edited_pair_codes``).

    The loss learned its map from dropped and inserted tokens only; fitting after training brings in
    replaced and swapped ones without moving the codes themselves.
    """
    rng = np.random.default_rng([seed, 28])
    chunks = np.array_split(rng.choice(len(data), pairs), max(1, pairs // 4096))
    rows, copies = zip(*(edited_pair_codes(codec, data, chunk, rng) for chunk in chunks), strict=True)
    vectors, near = (np.concatenate(c)[:, 1:].astype(np.float64) @ learned for c in (rows, copies))
    return (learned @ pair_whitening(vectors, near)).astype(np.float32)


def edited_pair_codes(codec: SequenceCodec, data: TokenSequences, rows: np.ndarray,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Codes of ``rows`` of ``data`` and of a copy of each with 1-3 edits of any kind (``edited_rows``); rows whose
    copy would overrun the model's max_length (inserted tokens) are left out of both."""
    ids = pad_shifted(data.values, data.offsets, rows)
    edited = edited_rows(ids, rng, kinds=EDITS)
    fits = (edited > 0).sum(axis=1) <= codec.config.max_length
    return codec.encode_flat(*unpadded(ids[fits])), codec.encode_flat(*unpadded(edited[fits]))


def unpadded(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded ids + 1 (``pad_shifted``'s layout) back to Arrow's list layout (values, offsets)."""
    offsets = np.zeros(ids.shape[0] + 1, np.int64)
    np.cumsum((ids > 0).sum(axis=1), out=offsets[1:])
    return ids[ids > 0] - 1, offsets


def near_duplicate_loss(rows: Any, edited: Any) -> Any:
    """Contrastive (InfoNCE) loss: each edited row's vector must be nearer, by cosine, to its own row's
    than to any other row's in the batch. Vectors, not codes: the length field, which the edits change,
    is left out by the caller."""
    rows = tf.math.l2_normalize(rows, axis=-1)
    queries = tf.math.l2_normalize(edited, axis=-1)
    logits = tf.matmul(queries, rows, transpose_b=True) / NEAR_DUPLICATE_TEMPERATURE
    labels = tf.range(tf.shape(logits)[0])
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))


def train_codec(
    data: TokenSequences, config: CodecConfig, settings: TrainSettings, model_dir: str | Path,
    vocab: Sequence[str] | None = None,
) -> Manifest:
    """Train on ``data``, write the best model to ``model_dir`` (with ``vocab``, if given) and return its manifest."""
    model_dir = Path(model_dir)
    keras.utils.set_random_seed(settings.seed)
    train, validation, test = split(data, settings.validation_fraction, settings.seed)
    # Kept with the model so that a round trip on any input can score held-out rows apart from training rows.
    record = split_record(data, settings.validation_fraction, settings.seed)
    log.info(
        "training on %d sequences (validation %d, test %d), vocab %d, max length %d",
        len(train), len(validation), len(test), config.vocab_size, config.max_length,
    )
    encoder = build_encoder(config, settings.dropout)
    decoder = build_decoder(config, settings.dropout)
    # With tied embeddings or output training runs its own decoder; the codec runs (and saves) ``decoder``,
    # which Untie brings up to date after every epoch and once more at the end.
    training_decoder = decoder
    tied = settings.tie_embeddings or settings.tie_output
    if settings.tie_embeddings and config.decoder != "autoregressive":
        raise ValueError("--tie-embeddings needs the autoregressive decoder (--decoder autoregressive)")
    if tied:
        training_decoder = tied_decoder(config, settings.dropout, encoder, settings.tie_embeddings,
                                        settings.tie_output)
    if settings.sampled_softmax and settings.sampled_softmax < config.vocab_size:
        autoencoder = SampledSoftmaxTraining(encoder, training_decoder, settings.sampled_softmax, config.vocab_size,
                                             settings.near_duplicates)
    elif settings.near_duplicates:
        raise ValueError("--near-duplicates needs the sampled softmax (--sampled-softmax N below the vocabulary's "
                         f"size of {config.vocab_size}), the default for word vocabularies")
    else:
        autoencoder = build_autoencoder(encoder, training_decoder)
    if settings.weight_decay:
        optimizer = keras.optimizers.AdamW(settings.learning_rate, weight_decay=settings.weight_decay, clipnorm=1.0)
        # Decay weight matrices only: biases and the learned position signals are offsets, not capacity.
        optimizer.exclude_from_weight_decay(var_names=["bias", "position", "remaining"])
    else:
        optimizer = keras.optimizers.Adam(settings.learning_rate, clipnorm=1.0)
    if settings.label_smoothing:
        loss = SmoothedSparseCrossEntropy(settings.label_smoothing)
    else:
        loss = keras.losses.SparseCategoricalCrossentropy()
    # The sampled trainer computes its own loss and no token accuracy (it never forms every token's score).
    scoring = {} if isinstance(autoencoder, SampledSoftmaxTraining) else {
        "loss": loss, "weighted_metrics": [keras.metrics.SparseCategoricalAccuracy(name="token_accuracy")]}
    # XLA made training steps slower here, not faster (docs/MODEL.md, "Training speed").
    autoencoder.compile(optimizer=optimizer, jit_compile=False, **scoring)
    network = Network(encoder, decoder, config)
    dataset, steps = bucketed_dataset(train, settings.batch_size, settings.seed, config, settings.word_dropout,
                                      settings.splice, settings.near_duplicates > 0)
    budget = TimeBudget(settings.time_budget, settings.epochs * steps)
    best = BestExactMatch(network, validation, model_dir, budget, vocab, record)
    anneal = AnnealLearningRate(settings.learning_rate, budget)
    callbacks = [budget, anneal, *([Untie(training_decoder, decoder)] if tied else []), best, EpochLog(settings.epochs)]
    started = time.monotonic()
    history = autoencoder.fit(
        dataset,
        steps_per_epoch=steps,
        epochs=settings.epochs,
        shuffle=False,
        callbacks=callbacks,
        verbose=0,  # EpochLog writes the epoch lines
    )
    seconds = time.monotonic() - started
    epochs_run = len(history.history.get("loss", []))
    if best.best_weights is None:
        raise ValueError(
            f"the time budget ({settings.time_budget:g}s) ran out before the first epoch ended; "
            "give it more time or train on fewer sequences"
        )
    autoencoder.set_weights(best.best_weights)
    if tied:
        untie(training_decoder, decoder)
    trained = min(budget.steps * settings.batch_size, len(train) * epochs_run)
    codec = network.codec()
    test_scores = evaluate(codec, test)
    # A training sample as large as the test set, round-tripped the same way: the gap to the test
    # figures is how much the model memorized rather than learned.
    train_scores = evaluate(codec, train.take(np.arange(min(len(train), max(len(test), 1000)))))
    baseline = baseline_scores(test.values, test.offsets, most_frequent_token(train.values))
    metrics = {
        "test": test_scores,
        "validation": evaluate(codec, validation),
        "train": train_scores,
        "baseline": baseline,
        "train_sequences": len(train),
        "best_epoch": best.best_epoch + 1,
        "epochs_run": epochs_run,
        "train_seconds": round(seconds, 1),
        "train_sequences_per_second": round(trained / seconds, 1),
        "stopped_by_time_budget": budget.spent,
        "settings": dataclasses.asdict(settings),
    }
    metrics["hints"] = hints(metrics)
    curves = {k: [float(v) for v in vals] for k, vals in history.history.items()}
    learned = search_map(autoencoder)
    search = None
    if learned is not None:
        fitting = time.monotonic()
        search = fit_search_map(codec, train, learned, settings.seed)
        log.info("search map fitted on %d draws of training rows and an edited copy of each (%.0f s)", SEARCH_PAIRS,
                 time.monotonic() - fitting)
    manifest = save_codec(network, model_dir, metrics, vocab=vocab, split=record, search=search)
    (model_dir / HISTORY_FILE).write_text(json.dumps(curves, indent=1) + "\n")
    return manifest
