"""The numpy inference engine: folded weights, the one LSTM step, encode, greedy and beam decode of a padded batch.

No TensorFlow here. The arithmetic is the Keras layers' (gate order i, f, c, o; sigmoid gates, tanh),
reassociated so that little is left inside the step loop:

- encoder: ``embedding[id] @ W + b`` has one value per token id, so it is a ``(vocab + 1, 4U)`` table and
  each step gathers its row; only ``h @ U`` is left in the loop; padding keeps the state;
- decoder: its input is ``h0 + position[t] + remaining[to_go]``, so ``x @ W`` is ``h0 @ W`` (once per
  row) plus rows of two ``(max_length, 4H)`` tables (and, autoregressive, of a table of the previous
  token); the token is the argmax of the logits (softmax keeps the order).

numpy's ufuncs and matmul release the GIL, so batches run in parallel threads of one process
(``run_batches``). ``weights.py`` builds ``EncoderWeights``/``DecoderWeights`` from saved files or
live Keras layers.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from threadpoolctl import OpenBLASController, ThreadpoolController

from seqcodec.model.config import START_ID


def gate_order(units: int) -> np.ndarray:
    """Columns of Keras' gates (i, f, c, o) in the order (i, f, o, c) that ``lstm_update`` reads."""
    return np.r_[0 : 2 * units, 3 * units : 4 * units, 2 * units : 3 * units]


def gate_columns(array: np.ndarray) -> np.ndarray:
    """Keras' gate columns (i, f, c, o) of a kernel, bias or table -> what ``lstm_update`` reads, float32.

    Reordered to (i, f, o, c), and the sigmoid gates' columns halved: sigmoid(x) = (1 + tanh(x / 2)) / 2,
    so one tanh covers all four gates (faster than exp and a reciprocal, the same values within 1e-7).
    """
    array = np.asarray(array, np.float32)
    units = array.shape[-1] // 4
    out = np.ascontiguousarray(array[..., gate_order(units)])
    out[..., : 3 * units] *= 0.5
    return out


def lstm_update(z: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One LSTM cell step from the pre-activations ``z`` (``gate_columns`` order and scale; overwritten) -> (h, c)."""
    units = c.shape[1]
    np.tanh(z, out=z)
    gates, candidate = z[:, : 3 * units], z[:, 3 * units :]
    gates *= 0.5
    gates += 0.5
    c_new = gates[:, units : 2 * units] * c
    c_new += gates[:, :units] * candidate
    h_new = np.tanh(c_new)
    h_new *= gates[:, 2 * units :]
    return h_new, c_new


def gemm_rows(batch: np.ndarray) -> np.ndarray:
    """``batch`` with its row repeated if it has only one: the same matrix products for any batch.

    numpy multiplies a one-row matrix with BLAS's matrix-vector kernel (GEMV), which sums in another
    order than the matrix-matrix kernel (GEMM) of every bigger batch, so a sequence alone got a code
    slightly off the one it gets among others. Two rows take GEMM, whose rows, on BLAS builds that
    pass ``bit_identical_batching``, do not depend on the row count or on their neighbours, so codes
    and tokens are bit-identical whatever the batching (tests/test_shipped_models.py holds them so).
    """
    return np.repeat(batch, 2, axis=0) if batch.shape[0] == 1 else batch


@functools.cache
def bit_identical_batching() -> bool:
    """Whether this machine's BLAS gives each row of a float32 matrix product the same bits whatever rows
    stand beside it, under the engine's one BLAS thread: then codes and tokens are bit-identical
    whatever the batching (``gemm_rows`` takes care of the one-row case).

    OpenBLAS's SkylakeX kernels do; its Haswell kernels (chosen on AMD EPYC machines, among others)
    round a row by its place in the product, so there batching moves codes within float32 rounding.
    Probed once per process on random matrices of the shapes the engine multiplies.
    """
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(64, 96)).astype(np.float32)
    kernel = rng.normal(size=(96, 384)).astype(np.float32)
    with ONE_BLAS_THREAD:
        whole = rows @ kernel
        return all(np.array_equal(rows[start : start + size] @ kernel, whole[start : start + size])
                   for start in (0, 1, 3, 7) for size in (2, 3, 5, 8, 13, 16, 24, 40))


# -- weights ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EncoderWeights:
    """Per direction (forward, then backward if bidirectional): the input table and the recurrent kernel.

    Gate columns as ``gate_columns`` leaves them: reordered to (i, f, o, c) and the sigmoid gates halved.
    """

    tables: tuple[np.ndarray, ...]
    recurrent: tuple[np.ndarray, ...]

    @classmethod
    def from_arrays(cls, embedding: np.ndarray, lstms: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> (
            EncoderWeights):
        """From the embedding matrix and each direction's (kernel, recurrent kernel, bias), as Keras keeps them."""
        embedding = np.asarray(embedding, np.float32)
        tables = tuple(gate_columns(embedding @ kernel + bias) for kernel, _, bias in lstms)
        recurrent = tuple(gate_columns(rec) for _, rec, _ in lstms)
        return cls(tables, recurrent)

    @property
    def hidden_size(self) -> int:
        return sum(rec.shape[0] for rec in self.recurrent)


@dataclasses.dataclass(frozen=True)
class DecoderWeights:
    """The decoder's step, folded; gate columns as ``gate_columns`` leaves them.

    ``code`` and ``bias`` project ``h0`` once per row; ``position``/``remaining`` (position signal) and
    ``previous`` (autoregressive: one row per shifted previous token) are added per step;
    ``initial`` is the autoregressive decoder's (kernel, bias) of ``initial_h`` and of ``initial_c``.
    ``output`` is the output layer's kernel with its bias as one more row, multiplied by ``[h, 1]``;
    for a low-rank kernel (``--tie-output`` trains one of rank at most the embedding's width) it is
    ``output_left @ output`` in factors, multiplied as ``[h @ output_left, 1] @ output``, fewer operations.
    """

    code: np.ndarray
    bias: np.ndarray
    recurrent: np.ndarray
    output: np.ndarray
    position: np.ndarray | None = None
    remaining: np.ndarray | None = None
    previous: np.ndarray | None = None
    initial: tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None
    output_left: np.ndarray | None = None

    @classmethod
    def from_arrays(cls, lstm: tuple[np.ndarray, np.ndarray, np.ndarray], dense: tuple[np.ndarray, np.ndarray],
                    steps: tuple[np.ndarray, np.ndarray] | None = None, embedding: np.ndarray | None = None,
                    initial: tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None) -> (
            DecoderWeights):
        """From the arrays as Keras keeps them: the LSTM's (kernel, recurrent kernel, bias), the output
        layer's (kernel, bias), the steps layer's (position, remaining) if it has them, and the
        autoregressive decoder's previous-token embedding and ``initial_h``/``initial_c``."""
        kernel, rec, bias = (np.asarray(a, np.float32) for a in lstm)
        units = rec.shape[0]
        w_code = gate_columns(kernel[:units])

        def table(rows: np.ndarray) -> np.ndarray:
            return np.ascontiguousarray(np.asarray(rows, np.float32) @ w_code)

        factors = low_rank_factors(np.asarray(dense[0], np.float32))
        left, right = factors if factors is not None else (None, dense[0])
        return cls(
            code=w_code, bias=gate_columns(bias), recurrent=gate_columns(rec),
            output=np.ascontiguousarray(np.vstack([right, dense[1][None]]), np.float32), output_left=left,
            position=None if steps is None else table(steps[0]),
            remaining=None if steps is None else table(steps[1]),
            previous=None if embedding is None else gate_columns(np.asarray(embedding, np.float32) @ kernel[units:]),
            initial=None if initial is None else tuple(
                (np.asarray(k, np.float32), np.asarray(b, np.float32)) for k, b in initial),
        )


def low_rank_factors(kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(left, right) with ``left @ right == kernel`` to float32 rounding, if the kernel's rank is low
    enough for the two products to cost under 0.9 of one; else None.

    Singular values below 1e-5 of the largest are float32 rounding of a product of narrower matrices
    (a tied output layer's ``projection @ rows.T``), not part of the map: dropping them changes the
    logits by about as much as summing in another order does.
    """
    width, vocab = kernel.shape
    u, s, vt = np.linalg.svd(kernel.astype(np.float64), full_matrices=False)
    rank = int((s > s[0] * 1e-5).sum()) if s.size and s[0] > 0 else 0
    if rank == 0 or rank * (width + 1 + vocab) >= 0.9 * (width + 1) * vocab:
        return None
    return (np.ascontiguousarray(u[:, :rank] * s[:rank], np.float32),
            np.ascontiguousarray(vt[:rank], np.float32))


# -- one padded batch ------------------------------------------------------------------------------


def encode_ids(weights: EncoderWeights, ids: np.ndarray) -> np.ndarray:
    """ids (batch, steps) int32, shifted and right-padded with 0 -> codes (batch, hidden + 1) float32."""
    if ids.shape[0] == 1:
        return encode_ids(weights, gemm_rows(ids))[:1]
    rows, steps = ids.shape
    mask = ids > 0
    codes = np.empty((rows, 1 + weights.hidden_size), np.float32)
    codes[:, 0] = mask.sum(axis=1)
    column = 1
    for direction, (table, rec) in enumerate(zip(weights.tables, weights.recurrent, strict=True)):
        units = rec.shape[0]
        h = np.zeros((rows, units), np.float32)
        c = np.zeros((rows, units), np.float32)
        z = np.empty((rows, 4 * units), np.float32)
        for step in range(steps):
            # The backward direction reads the sequence from its end; padding keeps the state.
            at = step if direction == 0 else steps - 1 - step
            np.matmul(h, rec, out=z)
            z += table[ids[:, at]]
            h_new, c_new = lstm_update(z, c)
            keep = mask[:, at]
            if keep.all():
                h, c = h_new, c_new
            else:
                keep = keep[:, None]
                h, c = np.where(keep, h_new, h), np.where(keep, c_new, c)
        codes[:, column : column + units] = h
        column += units
    return codes


class DecoderState:
    """The decoder's running state over one padded batch of codes: ``step`` advances every row one token.

    Greedy decoding runs it on the codes; beam search on each code repeated once per beam, choosing the
    tokens it feeds back and reordering the rows between steps (``reorder``).
    """

    def __init__(self, weights: DecoderWeights, codes: np.ndarray, lengths: np.ndarray) -> None:
        self.weights, self.lengths = weights, lengths
        state = np.ascontiguousarray(codes[:, 1:], np.float32)
        self.units = state.shape[1]
        self.base = state @ weights.code
        self.base += weights.bias
        if weights.initial is not None:
            (kernel_h, bias_h), (kernel_c, bias_c) = weights.initial
            self.h = np.tanh(state @ kernel_h + bias_h)
            self.c = state @ kernel_c + bias_c
        else:
            self.h = np.zeros_like(state)
            self.c = np.zeros_like(state)
        rows = codes.shape[0]
        self.previous = np.full(rows, START_ID, np.int64) if weights.previous is not None else None
        self.last = None if weights.remaining is None else weights.remaining.shape[0] - 1
        self.z = np.empty_like(self.base)
        left = weights.output_left
        # [h, 1] (or [h @ left, 1]): the output layer's bias rides in its matmul
        self.h_one = np.ones((rows, self.units + 1 if left is None else left.shape[1] + 1), np.float32)
        self.logits = np.empty((rows, weights.output.shape[1]), np.float32)

    def step(self, t: int) -> np.ndarray:
        """Run step ``t`` on the previous tokens fed so far; the logits of every row (reused buffer)."""
        weights, z = self.weights, self.z
        np.matmul(self.h, weights.recurrent, out=z)
        z += self.base
        if self.previous is not None:
            z += weights.previous[self.previous]
        if self.last is not None:
            z += weights.position[t]
            z += weights.remaining[np.clip(self.lengths - 1 - t, 0, self.last)]
        self.h, self.c = lstm_update(z, self.c)
        if weights.output_left is None:
            self.h_one[:, : self.units] = self.h
        else:
            np.matmul(self.h, weights.output_left, out=self.h_one[:, :-1])
        np.matmul(self.h_one, weights.output, out=self.logits)
        return self.logits

    def feed(self, tokens: np.ndarray) -> None:
        """The tokens chosen at this step, read by the next one (autoregressive)."""
        if self.previous is not None:
            self.previous = tokens + 1

    def reorder(self, rows: np.ndarray) -> None:
        """Keep the recurrent state of ``rows``, in that order (beam search's surviving prefixes)."""
        self.h, self.c = self.h[rows], self.c[rows]


def decode_codes(weights: DecoderWeights, codes: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """codes (batch, hidden + 1) and their lengths -> greedy token ids (batch, longest length) int32."""
    if codes.shape[0] == 1:  # as encode_ids: GEMM, not GEMV, for bit-identical rows
        return decode_codes(weights, gemm_rows(codes), gemm_rows(lengths))[:1]
    steps = int(lengths.max(initial=0))
    decoder = DecoderState(weights, codes, lengths)
    tokens = np.zeros((codes.shape[0], steps), np.int32)
    for t in range(steps):
        token = decoder.step(t).argmax(axis=1)
        tokens[:, t] = token
        decoder.feed(token)
    return tokens


def beam_decode_codes(weights: DecoderWeights, codes: np.ndarray, lengths: np.ndarray, width: int) -> np.ndarray:
    """codes and their lengths -> token ids (batch, longest length): beam search over ``width`` beams.

    Each row keeps the ``width`` most likely prefixes (sum of log-probabilities) and returns the best
    one of exactly its own length. Past a row's length its beams are frozen (they take "token 0" at
    no cost, so they neither reorder nor duplicate), which keeps rows independent: a padded batch
    gives each row what it would get alone. Equal scores go to the lower beam, then the lower token,
    as TensorFlow's ``top_k`` orders them. ``width`` 1 chooses what greedy decoding does.

    At most ``width`` tokens of one beam can survive a step, so each beam offers only its ``width``
    best (``width`` argmax passes, far cheaper than partitioning the whole vocabulary) and the row
    keeps the best ``width`` of those ``width``² candidates.
    """
    rows = codes.shape[0]
    steps = int(lengths.max(initial=0))
    decoder = DecoderState(weights, np.repeat(codes, width, axis=0), np.repeat(lengths, width))
    vocab = weights.output.shape[1]
    offers = min(width, vocab)
    # Only beam 0 is alive at the start, or the first step would pick the same token ``width`` times.
    scores = np.full((rows, width), -np.inf, np.float32)
    scores[:, 0] = 0.0
    chosen = np.zeros((rows, width, steps), np.int32)
    beams = np.arange(rows * width)
    every = np.arange(rows)[:, None]
    tokens = np.empty((rows * width, offers), np.int64)
    values = np.empty((rows * width, offers), np.float32)
    for t in range(steps):
        logits = decoder.step(t)
        top = logits.max(axis=1)
        # log-probability = logit - log-sum-exp of the beam's logits
        norm = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))
        for k in range(offers):
            best = logits.argmax(axis=1)
            tokens[:, k] = best
            values[:, k] = logits[beams, best]
            logits[beams, best] = -np.inf
        total = scores[:, :, None] + (values - norm[:, None]).reshape(rows, width, offers)
        token = tokens.reshape(rows, width, offers).copy()
        done = t >= lengths
        if done.any():
            total[done, :, 1:] = -np.inf
            total[done, :, 0] = scores[done]
            token[done] = 0
        parent = np.broadcast_to(np.arange(width)[None, :, None], total.shape)
        flat, token, parent = total.reshape(rows, -1), token.reshape(rows, -1), parent.reshape(rows, -1)
        # Best first; equal scores by the lower (beam, token), as top_k over beam * vocab + token orders them.
        order = np.lexsort((parent * vocab + token, -flat), axis=1)[:, :width]
        scores, parent, token = flat[every, order], parent[every, order], token[every, order].astype(np.int32)
        chosen = chosen[every, parent]
        chosen[:, :, t] = token
        decoder.reorder((every * width + parent).reshape(-1))
        decoder.feed(token.reshape(-1))
    return chosen[:, 0]


class NumpyEncoder:
    """The encode step on fixed weights: padded shifted ids -> codes. Safe to call from many threads."""

    parallel = True  # batches may run in threads at once (numpy releases the GIL)

    def __init__(self, weights: EncoderWeights) -> None:
        self.weights = weights

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        return encode_ids(self.weights, ids)


class NumpyDecoder:
    """The decode step on fixed weights: (codes, lengths) -> padded token ids, greedy or by beam search.

    ``weights`` may be a function that builds them: it runs once, at the first call, so a worker
    that only encodes never folds the decoder (the word model's output layer costs an SVD).
    ``beam_width`` > 1 searches that many beams (an autoregressive decoder; the caller checks).
    """

    parallel = True

    def __init__(self, weights: DecoderWeights | Callable[[], DecoderWeights], beam_width: int = 1) -> None:
        self._weights = weights
        self._lock = threading.Lock()
        self.beam_width = beam_width

    @property
    def weights(self) -> DecoderWeights:
        if callable(self._weights):
            with self._lock:
                if callable(self._weights):
                    self._weights = self._weights()
        return self._weights

    def __call__(self, codes: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        if self.beam_width > 1:
            return beam_decode_codes(self.weights, codes, lengths, self.beam_width)
        return decode_codes(self.weights, codes, lengths)


# -- threads ---------------------------------------------------------------------------------------


class OneBlasThread:
    """A context in which BLAS runs one thread, shared by every caller in the process: the first caller
    in sets the limit, the last one out puts the original count back.

    BLAS's thread count is process-global, while the engine is called from several threads at once
    (an SDK worker runs its DoFns in many threads; ``run_batches`` runs a pool of its own). Entering
    ``threadpool_limits`` per call broke that: a second caller took the first one's limit for the
    original, whichever left first put the wide pool back under the other, and the last one out left
    the process at one thread for good. A counter under a lock keeps the limit while any call runs.
    It is not set once per process at model load instead, because ``seqcodec.load`` is also a
    library call in a user's own process, whose numpy keeps its threads between our calls.

    threadpoolctl lets only one thread (the first to set a limit) change OpenBLAS's pthreads pool and
    silently ignores the others; the first and the last caller here may be different threads, so
    each change is made with that claim cleared before and after. The controller (the scan of the
    loaded libraries) is built once, not per call.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._callers = 0
        self._controller: ThreadpoolController | None = None
        self._limiter: Any = None

    def __enter__(self) -> None:
        with self._lock:
            if self._callers == 0:
                if self._controller is None:
                    self._controller = ThreadpoolController()
                OpenBLASController.clear_controlling_thread(force=True)
                self._limiter = self._controller.limit(limits=1, user_api="blas")
                OpenBLASController.clear_controlling_thread(force=True)
            self._callers += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._callers -= 1
            if self._callers == 0:
                OpenBLASController.clear_controlling_thread(force=True)
                self._limiter.restore_original_limits()
                OpenBLASController.clear_controlling_thread(force=True)
                self._limiter = None


ONE_BLAS_THREAD = OneBlasThread()


def run_batches(run: Callable[[np.ndarray], None], batches: list[np.ndarray], threads: int) -> None:
    """``run`` on every batch, ``threads`` at a time, BLAS held to one thread meanwhile (``OneBlasThread``)."""
    with ONE_BLAS_THREAD:
        if threads > 1 and len(batches) > 1:
            with ThreadPoolExecutor(min(threads, len(batches))) as pool:
                list(pool.map(run, batches))
        else:
            for rows in batches:
                run(rows)
