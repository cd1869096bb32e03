"""RunInference with the codec: columnar encoder and decoder ModelHandlers, and the PTransforms around them.

Each handler loads the model once per worker process.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import resource
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.metrics import Metrics
from apache_beam.ml.inference import base as _beam_base
from apache_beam.ml.inference.base import ModelHandler, RunInference
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, PortableOptions, StandardOptions

from seqcodec.model.config import Batching, CodecConfig
from seqcodec.model.manifest import Manifest
from seqcodec.transforms.formats import check_code_dtype, codes_table, tokens_array
from seqcodec.transforms.table_coder import of_tables
from seqcodec.transforms.validate import ERRORS_TAG, METRICS_NAMESPACE, ValidateTokens

# Seconds between two progress lines of one worker (SEQCODEC_PROGRESS_SECONDS overrides).
PROGRESS_SECONDS = float(os.environ.get("SEQCODEC_PROGRESS_SECONDS", "10"))

log = logging.getLogger("seqcodec")

# Beam 2.77 imports `resource` in the same try block as a torch-only module, so without torch
# it loses `resource`, drops RunInference's memory metric and warns on every bundle. Restore it.
if _beam_base.resource is None:
    _beam_base.resource = resource


def flat_tokens(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A list column -> (values, offsets) numpy arrays starting at 0, whatever the slicing."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    lengths = pc.list_value_length(array).to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values = pc.list_flatten(array).to_numpy(zero_copy_only=False)
    return values, offsets



class Progress:
    """Throttled progress of one worker: a log line at most every PROGRESS_SECONDS.

    With ``total`` (the job's rows, given where this worker sees all of them) the line also shows
    the percentage done and an estimate of the time left at the rate so far.
    """

    def __init__(self, done: str, total: int | None = None) -> None:
        self.done, self.total, self.rows, self.started, self.last = done, total, 0, None, 0.0

    def add(self, rows: int) -> None:
        now = time.monotonic()
        if self.started is None:
            self.started = self.last = now
        self.rows += rows
        if now - self.last >= PROGRESS_SECONDS:
            self.last = now
            elapsed = now - self.started
            rate = self.rows / elapsed if elapsed > 0 else 0.0
            if self.total:
                left = f"about {(self.total - self.rows) / rate:.0f}s left" if rate else "time left unknown"
                log.info("progress: %d of %d rows %s (%.1f%%) in %.0fs (%.0f rows/s), %s", self.rows, self.total,
                         self.done, 100 * self.rows / self.total, elapsed, rate, left)
            else:
                log.info("progress: %d rows %s by this worker in %.0fs (%.0f rows/s)", self.rows, self.done, elapsed,
                         rate)


def worker_processes(options: PipelineOptions) -> int:
    """SDK worker processes per machine that the runner will start (0: one per core).

    The DirectRunner says so in its options; Dataflow starts one Python process per vCPU;
    portable runners (Flink, Spark) start ``--sdk_worker_parallelism`` (default 1).
    """
    runner = options.view_as(StandardOptions).runner or "DirectRunner"
    if runner in ("DirectRunner", "direct", "BundleBasedDirectRunner"):
        direct = options.view_as(DirectOptions)
        return direct.direct_num_workers if direct.direct_running_mode == "multi_processing" else 1
    if "Dataflow" in runner:
        return 0
    return options.view_as(PortableOptions).sdk_worker_parallelism or 1


class CodecHandler(ModelHandler[pa.Table, pa.Table, Any]):
    """What the codec handlers share: the model loaded once per worker, and again after a refresh.

    ``update_model_path`` (RunInference's model refresh through a side input, ``model_metadata_pcoll``
    or ``watch_model_pattern``) points the handler at another model directory, which the next
    ``load_model`` loads. With ``reference`` (the config the pipeline was built for) a model whose
    vocabulary, max length or code size differ is refused: the steps before RunInference validate
    and size the rows for those. ``run_inference`` returns lists, so that Beam's OOM protection and
    failed-batch counting see the work (it only wraps the call, not the iteration of a generator).
    """

    def __init__(self, model_dir: str, batching: Batching | int | None, done: str,
                 total_rows: int | None = None, reference: CodecConfig | None = None,
                 **batch_elements: Any) -> None:
        # Each element is already a batch of rows (a row group or a slice): RunInference must not add
        # another, unless a subclass gives BatchElements' arguments of its own.
        super().__init__(**(batch_elements or {"min_batch_size": 1, "max_batch_size": 1}))
        # A plain number is a row cap (``batch_size``); None is the default token budget.
        self.model_dir = model_dir
        self.reference = reference
        self.batching = batching if isinstance(batching, Batching) else Batching(batch_size=batching)
        self.rows = Metrics.counter(METRICS_NAMESPACE, f"rows_{done}")
        self.progress = Progress(done, total_rows)

    def count(self, rows: int) -> None:
        """Rows finished: the ``rows_<done>`` counter and this worker's progress line."""
        self.rows.inc(rows)
        self.progress.add(rows)

    def update_model_path(self, model_path: str | None = None) -> None:
        """RunInference's model refresh: the next ``load_model`` loads ``model_path`` (None or "": no change)."""
        if model_path:
            self.model_dir = model_path

    def load_model(self) -> Any:
        return self.checked(self.load_any())

    def checked(self, model: Any) -> Any:
        """``model`` if its shape is the ``reference``'s (or there is none); ValueError naming both if not."""
        if self.reference is None:
            return model
        fields = ("vocab_size", "max_length", "code_size")
        got = {name: getattr(model.config, name) for name in fields}
        want = {name: getattr(self.reference, name) for name in fields}
        if got != want:
            raise ValueError(f"model directory {self.model_dir}: {got} differs from the model this pipeline was "
                             f"built for ({want}); a refreshed model must keep them")
        return model

    def load_any(self) -> Any:
        """The codec, on the numpy engine where it can run the model (TensorFlow only for what it cannot)."""
        from seqcodec.model.loader import engine_names, load

        codec = load(self.model_dir, **self.batching.codec_options())
        log.info("model %s loaded: %s, %d thread(s)", codec.fingerprint, engine_names(codec), codec.threads)
        return codec

    def get_num_bytes(self, batch: Sequence[pa.Table]) -> int:
        return sum(table.nbytes for table in batch)


class CodecEncoderHandler(CodecHandler):
    """Arrow table of valid (id, tokens) rows in, Arrow table of (id, length, code) out.

    Each element is already a batch (one Parquet row group or a slice of it), so RunInference
    is told not to batch further; inside, the codec sorts the rows by length, pads per bucket
    and runs the encoder (the numpy engine). The model directory may be on any Beam filesystem.
    """

    def __init__(self, model_dir: str, batching: Batching | None = None, total_rows: int | None = None,
                 code_dtype: str = "float32") -> None:
        super().__init__(model_dir, batching, "encoded", total_rows)
        self.code_dtype = np.dtype(code_dtype)

    def run_inference(
        self, batch: Sequence[pa.Table], model: Any, inference_args: dict[str, Any] | None = None
    ) -> list[pa.Table]:
        return [self.encode_table(table, model) for table in batch]

    def encode_table(self, table: pa.Table, model: Any) -> pa.Table:
        codes = model.encode_flat(*flat_tokens(table.column("tokens")))
        self.count(table.num_rows)
        return codes_table(table.column("id").combine_chunks(), codes.astype(self.code_dtype, copy=False))

    def get_metrics_namespace(self) -> str:
        return "seqcodec_encoder"


class CodecEncoderKeepingTokens(CodecEncoderHandler):
    """The encoder's handler, with the input ``tokens`` kept next to each code (for the round trip)."""

    def encode_table(self, table: pa.Table, model: Any) -> pa.Table:
        return super().encode_table(table, model).append_column("tokens", table.column("tokens"))


def for_pipeline(handler: CodecHandler, pcoll: beam.PCollection) -> CodecHandler:
    """A copy of the handler whose thread policy knows how many worker processes the runner starts per machine.

    A copy, so that one handler given to several pipelines (or transforms) is never changed by them.
    """
    placed = copy.copy(handler)
    placed.batching = dataclasses.replace(handler.batching, workers=worker_processes(pcoll.pipeline.options))
    return placed


def run_codec(tables: beam.PCollection, handler: CodecHandler) -> beam.PCollection:
    """RunInference with a codec handler whose thread policy knows the pipeline's worker processes."""
    return tables | "RunInference" >> RunInference(for_pipeline(handler, tables))


class CodecOutputs(NamedTuple):
    """The main output and the dead letters: ``out.main``, ``out.errors`` (or ``out["errors"]``), or
    ``codes, errors = pcoll | EncodeSequences(...)``."""

    main: beam.PCollection
    errors: beam.PCollection

    def __getitem__(self, key):
        return getattr(self, key) if isinstance(key, str) else tuple.__getitem__(self, key)


class EncodeTables(beam.PTransform):
    """Token tables -> code tables, and rejected rows as error tables: validate, then RunInference.

    The job's encode, and ``EncodeSequences``' on a PCollection declared to hold Arrow tables. Tables
    in and out, typed as tables all the way (no routing, Flatten or keys), so Beam moves them with the
    Arrow coder. ``keep_tokens`` keeps each row's tokens beside its code (for the round trip);
    ``total_rows`` puts a percentage in the progress lines.
    """

    def __init__(self, model_dir: str, manifest: Manifest, *, too_long: str = "reject", id_field: str = "id",
                 tokens_field: str = "tokens", batching: Batching | None = None, keep_tokens: bool = False,
                 total_rows: int | None = None, code_dtype: str = "float32") -> None:
        super().__init__()
        check_code_dtype(code_dtype, manifest.max_length)
        self.validator = ValidateTokens(manifest.vocab_size, manifest.max_length, too_long, id_field, tokens_field)
        handler = CodecEncoderKeepingTokens if keep_tokens else CodecEncoderHandler
        self.handler = handler(model_dir, batching, total_rows, code_dtype)

    def expand(self, tables: beam.PCollection) -> CodecOutputs:
        checked = tables | "Validate" >> beam.ParDo(self.validator).with_outputs(ERRORS_TAG, main="valid")
        codes = run_codec(of_tables(checked.valid), self.handler)
        return CodecOutputs(of_tables(codes), of_tables(checked[ERRORS_TAG]))


# -- decoding and the round trip ---------------------------------------------------------------------


def code_matrix(column: pa.ChunkedArray | pa.Array, dtype: Any = np.float32) -> np.ndarray:
    """A valid fixed-size code column -> matrix (N, code_size) of ``dtype`` (None: the column's own)."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    width = array.type.list_size
    values = pc.list_flatten(array).to_numpy(zero_copy_only=False)
    return (values if dtype is None else values.astype(dtype, copy=False)).reshape(-1, width)



def correct_per_row(same: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """How many positions of each row are True in the flat ``same`` mask."""
    cumulative = np.zeros(same.size + 1, dtype=np.int64)
    np.cumsum(same, out=cumulative[1:])
    return cumulative[offsets[1:]] - cumulative[offsets[:-1]]


class CodecDecoderHandler(CodecHandler):
    """Arrow table of valid (id, code) rows in, Arrow table of (id, tokens) out.

    Like the encoder's handler, each element is already a batch; the codec sorts its rows by
    length, cuts them into batches and runs the decoder. With ``compare`` the input
    also holds the original ``tokens``; the output then keeps them as ``original`` and adds
    ``correct``, the number of positions each decoded row got right.
    """

    def __init__(self, model_dir: str, batching: Batching | None = None, compare: bool = False,
                 total_rows: int | None = None) -> None:
        super().__init__(model_dir, batching, "decoded", total_rows)
        self.compare = compare

    def run_inference(
        self, batch: Sequence[pa.Table], model: Any, inference_args: dict[str, Any] | None = None
    ) -> list[pa.Table]:
        return [self.decode_table(table, model) for table in batch]

    def decode_table(self, table: pa.Table, model: Any) -> pa.Table:
        values, offsets = model.decode_flat(code_matrix(table.column("code")))
        columns = {"id": table.column("id").combine_chunks(), "tokens": tokens_array(values, offsets)}
        if self.compare:
            original = table.column("tokens").combine_chunks()
            original_values, original_offsets = flat_tokens(original)
            if not np.array_equal(original_offsets, offsets):
                raise ValueError("decoded lengths differ from the original sequences' lengths")
            columns["original"] = original
            columns["correct"] = pa.array(
                correct_per_row(original_values == values, offsets).astype(np.int32), type=pa.int32()
            )
        self.count(table.num_rows)
        return pa.table(columns)

    def get_metrics_namespace(self) -> str:
        return "seqcodec_decoder"


class DecodeTables(beam.PTransform):
    """Valid code tables -> decoded tables, through RunInference and the codec's batched decoder."""

    def __init__(self, model_dir: str, batching: Batching | None = None, compare: bool = False,
                 total_rows: int | None = None) -> None:
        super().__init__()
        self.handler = CodecDecoderHandler(model_dir, batching, compare, total_rows)

    def expand(self, tables):
        return of_tables(run_codec(tables, self.handler))
