"""EncodeSequences and DecodeCodes: the codec as Beam transforms for any source and sink, plus a RunInference handler.

Elements may be ``(id, tokens)`` pairs, dicts or ``beam.Row``s (and, for EncodeSequences, Arrow
tables: the job's own path). Per-element input is cut into batches bounded by a token count,
turned into one Arrow table per batch and sent through the same validation (``validate.py``)
and the same RunInference handler (``inference.py``) as the command-line job; the codec then
sorts each batch by length and pads per length bucket.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, PredictionResult, RunInference

from seqcodec.model.config import Batching
from seqcodec.model.manifest import Manifest, read_manifest
from seqcodec.transforms.inference import (
    CodecDecoderHandler,
    CodecHandler,
    CodecOutputs,
    EncodeTables,
    code_matrix,
    for_pipeline,
)
from seqcodec.transforms.table_coder import of_tables
from seqcodec.transforms.validate import (
    ERRORS_TAG,
    METRICS_NAMESPACE,
    MISSING_FIELD,
    NOT_A_CODE,
    NOT_TOKEN_LIST,
    TOO_LONG_CHOICES,
    ValidateCodes,
    _Validate,
)

# Tokens (or code values) per batch of elements: big enough that the codec's per-length
# buckets are full, small enough that a batch's Arrow table stays a few MB.
DEFAULT_BATCH_TOKENS = 65536
PAIR, DICT, ROW = "pair", "dict", "row"


# What element_parts gives for a field that a dict or Row does not have (None is a field set to null).
MISSING = type("Missing", (), {"__repr__": lambda self: "MISSING"})()


def element_parts(element: Any, id_field: str, data_field: str) -> tuple[str, Any, Any]:
    """(form, id, data) of a pair, dict or Row, ``MISSING`` for an absent field; TypeError for anything else
    (a bug in the pipeline, not bad data)."""
    # Beam hands schema'd elements (beam.Row after a coder) on as generated NamedTuples.
    if isinstance(element, beam.Row) or hasattr(element, "_fields"):
        return ROW, getattr(element, id_field, MISSING), getattr(element, data_field, MISSING)
    if isinstance(element, Mapping):
        return DICT, element.get(id_field, MISSING), element.get(data_field, MISSING)
    if isinstance(element, tuple | list) and len(element) == 2:
        return PAIR, element[0], element[1]
    raise TypeError(
        f"expected (id, {data_field}) pairs, dicts or beam.Rows with {id_field!r} and {data_field!r}, "
        f"got {type(element).__name__}"
    )


def field_names(element: Any) -> list[str]:
    """The fields a dict or Row has, for a dead letter's detail."""
    if isinstance(element, Mapping):
        return [str(k) for k in element]
    return list(getattr(element, "_fields", None) or vars(element))


def dead_letter(key: Any, reason: str, detail: str, element: Any) -> dict[str, Any]:
    """An element's dead letter: the job's id, reason and detail, and the element itself as it came in."""
    return {"id": None if key is MISSING else key, "reason": reason, "detail": detail, "input": element}


def element_size(element: Any, id_field: str, data_field: str, limit: int) -> int:
    """A batch's size counts tokens (at least 1 per element), so long sequences make smaller batches.

    Capped at ``limit`` (the batch size): BatchElements flushes an empty batch before an element
    bigger than a whole batch.
    """
    try:
        return min(limit, max(1, len(element_parts(element, id_field, data_field)[2])))
    except TypeError:  # no length (None, a number): checked and rejected later
        return 1


def integer_list(value: Any) -> np.ndarray | list | None:
    """``value`` as something Arrow turns into a list<int64> exactly; ValueError if it is not a list of integers.

    Arrow would silently truncate 1.5 to 1, so floats are refused here. Lists holding None are
    passed on as they are: the shared validation rejects them as ``null_token``.
    """
    if value is None:
        return None
    if isinstance(value, str | bytes | Mapping):
        raise ValueError(f"a {type(value).__name__} is not a list of token ids")
    array = np.asarray(value) if not isinstance(value, np.ndarray) else value
    if array.ndim != 1:
        raise ValueError(f"expected a 1-D list of token ids, got shape {array.shape}")
    if array.dtype.kind in "iu" or array.size == 0:
        return array
    if array.dtype == object and all(
        x is None or (isinstance(x, int | np.integer) and not isinstance(x, bool)) for x in value
    ):
        return list(value)
    raise ValueError(f"token ids must be integers, got {array.dtype}")


def number_list(value: Any) -> np.ndarray | None:
    """A code as float64 values (nulls as NaN are caught by the shared checks); ValueError if not floats.

    Integers are refused as the codec refuses them: a code is floats, an integer list is most
    often token ids, and decoding it would give tokens without an error.
    """
    if value is None:
        return None
    array = np.asarray(value) if not isinstance(value, np.ndarray) else value
    if array.ndim != 1 or not (array.dtype.kind == "f" or array.size == 0):
        raise ValueError(f"a code must be a 1-D list of floats, got {array.dtype} of shape {array.shape}")
    return array.astype(np.float64, copy=False)


class _ToTables(beam.DoFn):
    """A batch of elements -> ``((ids, forms, None), valid table)`` for RunInference; every rejected element
    becomes a dead letter here, where the element itself is still at hand to keep in it.

    Elements without the id or data field, with a null id, or whose data cannot even be read are
    rejected before the table is built; the table's rows then go through the job's validator.
    """

    def __init__(self, id_field: str, data_field: str, convert: Callable[[Any], Any], value_type: pa.DataType,
                 bad_reason: str, validator: _Validate) -> None:
        self.id_field, self.data_field, self.convert = id_field, data_field, convert
        self.value_type, self.bad_reason, self.validator = value_type, bad_reason, validator

    def setup(self) -> None:
        self.validator.setup()
        self.rows_read = Metrics.counter(METRICS_NAMESPACE, "rows_read")

    def process(self, elements: list[Any]):
        ids, forms, data, kept, bad = [], [], [], [], []
        for element in elements:
            form, key, value = element_parts(element, self.id_field, self.data_field)
            absent = [name for name, v in ((self.id_field, key), (self.data_field, value)) if v is MISSING]
            if absent:
                has = ", ".join(map(repr, field_names(element))) or "none"
                detail = f"no field {' or '.join(map(repr, absent))} (the element's fields: {has})"
                bad.append(dead_letter(key, MISSING_FIELD, detail, element))
                continue
            if key is None:  # caught here, not by the validator: its table's ids are the elements' positions
                bad.append(dead_letter(key, "null_id", self.validator.sentences["null_id"], element))
                continue
            try:
                data.append(self.convert(value))
            except ValueError as exc:
                bad.append(dead_letter(key, self.bad_reason, str(exc), element))
                continue
            ids.append(key)
            forms.append(form)
            kept.append(element)
        if bad:  # the validator counts the rows it sees
            self.rows_read.inc(len(bad))
            for letter in bad:
                Metrics.counter(METRICS_NAMESPACE, f"rejected_{letter['reason']}").inc()
                yield beam.pvalue.TaggedOutput(ERRORS_TAG, letter)
        if not ids:
            return
        column = pa.array(data, type=pa.list_(self.value_type))
        good, rejected = self.validator.route(pa.table({self.id_field: np.arange(len(ids)), self.data_field: column}))
        for row in rejected.select(["id", "reason", "detail"]).to_pylist():
            position = row["id"]
            yield beam.pvalue.TaggedOutput(ERRORS_TAG, dead_letter(ids[position], row["reason"], row["detail"],
                                                                   kept[position]))
        if good.num_rows:
            yield (ids, forms, None), good


class _ValidateBatches(beam.DoFn):
    """Arrow tables (the job's path) through the shared validator, keyed for RunInference with a KeyedModelHandler.

    Out: ``((None, None, rejected rows), valid table)``: the output step passes the rejected rows on as they are.
    """

    def __init__(self, validator: _Validate) -> None:
        self.validator = validator

    def setup(self) -> None:
        self.validator.setup()

    def process(self, table: pa.Table):
        good, bad = self.validator.route(table)
        yield (None, None, bad), good


class _Unbatch(beam.DoFn):
    """RunInference's (key, result table) -> per-element results and dead letters (or tables, for tables)."""

    def __init__(self, to_elements: Callable[[list, list, pa.Table], Iterable[Any]]) -> None:
        self.to_elements = to_elements

    def process(self, keyed: tuple[tuple[list | None, list | None, pa.Table | None], pa.Table]):
        (ids, forms, bad), result = keyed
        if ids is None:  # an Arrow table in, Arrow tables out: exactly the job's outputs
            if bad.num_rows:
                yield beam.pvalue.TaggedOutput(ERRORS_TAG, bad)
            if result.num_rows:
                yield result
            return
        if result.num_rows:  # the elements' dead letters left at _ToTables
            yield from self.to_elements(ids, forms, result)


def shaped(form: str, fields: dict[str, Any]) -> Any:
    """An output element in the input's form: (id, value) pair, dict or beam.Row with ``fields``."""
    if form == PAIR:
        values = list(fields.values())
        return values[0], values[-1]
    if form == DICT:
        return fields
    return beam.Row(**fields)


def code_elements(ids: list, forms: list, codes: pa.Table) -> Iterable[Any]:
    """Code table (id = position) -> (id, code) pairs, or dicts/Rows with the code files' id, length, code."""
    matrix = code_matrix(codes.column("code"), dtype=None)  # float32, or float16 with code_dtype="float16"
    positions = codes.column("id").to_numpy(zero_copy_only=False)
    for position, code in zip(positions.tolist(), matrix, strict=True):
        yield shaped(forms[position], {"id": ids[position], "length": int(code[0]), "code": code})


def token_elements(ids: list, forms: list, decoded: pa.Table) -> Iterable[Any]:
    """Decoded table (id = position) -> (id, tokens) pairs, or dicts/Rows with id and tokens (int32 arrays)."""
    tokens = decoded.column("tokens").combine_chunks()
    values = tokens.values.to_numpy(zero_copy_only=False)
    offsets = tokens.offsets.to_numpy(zero_copy_only=False)
    positions = decoded.column("id").to_numpy(zero_copy_only=False)
    for i, position in enumerate(positions.tolist()):
        yield shaped(forms[position], {"id": ids[position], "tokens": values[offsets[i]:offsets[i + 1]]})


class _CodecTransform(beam.PTransform):
    """What EncodeSequences and DecodeCodes share: batch, validate, RunInference, back to elements."""

    def __init__(self, model_dir: str, manifest: Manifest | None, batch_tokens: int, id_field: str,
                 data_field: str) -> None:
        super().__init__()
        if batch_tokens < 1:
            raise ValueError(f"batch_tokens must be at least 1, got {batch_tokens}")
        self.model_dir = model_dir
        self.manifest = manifest if manifest is not None else read_manifest(model_dir)
        self.batch_tokens, self.id_field, self.data_field = batch_tokens, id_field, data_field

    def parts(self) -> tuple[Callable[[_Validate], _ToTables], _Validate, CodecHandler, Callable]:
        raise NotImplementedError

    def expand(self, pcoll):
        make_to_tables, validator, handler, to_elements = self.parts()
        to_tables = make_to_tables(validator)
        if pcoll.element_type == pa.Table:
            return self.expand_tables(pcoll, validator, handler)
        routed = pcoll | "Route" >> beam.Partition(lambda e, _: 0 if isinstance(e, pa.Table) else 1, 2)
        size = functools.partial(element_size, id_field=self.id_field, data_field=self.data_field,
                                 limit=self.batch_tokens)
        batches = (
            routed[1]
            | "Batch" >> beam.BatchElements(min_batch_size=self.batch_tokens, max_batch_size=self.batch_tokens,
                                            element_size_fn=size)
            | "To tables" >> beam.ParDo(to_tables).with_outputs(ERRORS_TAG, main="batches")
        )
        tables = routed[0] | "Validate" >> beam.ParDo(_ValidateBatches(validator))
        results = (
            (tables, batches.batches)
            | "Tables and batches" >> beam.Flatten()
            | "RunInference" >> RunInference(KeyedModelHandler(for_pipeline(handler, pcoll)))
            | "Outputs" >> beam.ParDo(_Unbatch(to_elements)).with_outputs(ERRORS_TAG, main="main")
        )
        errors = (results[ERRORS_TAG], batches[ERRORS_TAG]) | "Errors" >> beam.Flatten()
        return CodecOutputs(results.main, errors)

    def expand_tables(self, tables: beam.PCollection, validator: _Validate, handler: CodecHandler) -> CodecOutputs:
        """A PCollection declared to hold Arrow tables: validate and RunInference, tables all the way."""
        checked = tables | "Validate" >> beam.ParDo(validator).with_outputs(ERRORS_TAG, main="valid")
        results = of_tables(checked.valid) | "RunInference" >> RunInference(for_pipeline(handler, tables))
        return CodecOutputs(of_tables(results), of_tables(checked[ERRORS_TAG]))


class EncodeSequences(_CodecTransform):
    """Token sequences -> length-prefixed codes; rejected rows on the ``errors`` output.

    Input elements: ``(id, tokens)`` pairs, dicts or ``beam.Row``s (fields ``id_field``,
    ``tokens_field``), or Arrow tables (the job's own path, taken whole when the PCollection is
    declared to hold ``pa.Table``; see ``expand_tables``). Output, in the input's form:
    ``(id, code)`` with ``code`` a float32 numpy array of ``hidden_size + 1`` values
    (``code[0]`` is the length); dicts/Rows with ``id``, ``length`` and ``code`` (the code files'
    fields); tables with ``id, length, code`` columns. ``errors``: dicts ``{id, reason, detail, input}``
    (``input``: the element as it came in) with the job's reasons (``seqcodec.REASONS``, plus
    ``not_token_list`` for an element whose tokens are not a list of integers and ``missing_field``
    for a dict or Row without the id or tokens field); Arrow tables in the job's error schema for tables.

    ``batch_tokens`` bounds a batch of elements by its tokens (not rows). ``too_long``: ``reject``
    or ``truncate`` rows over the model's max_length. ``code_dtype="float16"`` halves the codes'
    size (lengths stay exact up to 2048) and can change decodes (docs/MODEL.md, "Codes in float16").
    """

    def __init__(self, model_dir: str, *, too_long: str = "reject", batch_tokens: int = DEFAULT_BATCH_TOKENS,
                 batch_size: int | None = None, id_field: str = "id", tokens_field: str = "tokens",
                 manifest: Manifest | None = None, code_dtype: str = "float32") -> None:
        super().__init__(model_dir, manifest, batch_tokens, id_field, tokens_field)
        if too_long not in TOO_LONG_CHOICES:
            raise ValueError(f"too_long must be one of {', '.join(TOO_LONG_CHOICES)}, got {too_long!r}")
        # The element path and the table path (EncodeTables) are built from the same settings.
        self.tables = EncodeTables(model_dir, self.manifest, too_long=too_long, id_field=id_field,
                                   tokens_field=tokens_field, batching=Batching(batch_size=batch_size),
                                   code_dtype=code_dtype)

    def parts(self):
        return (
            functools.partial(_ToTables, self.id_field, self.data_field, integer_list, pa.int64(), NOT_TOKEN_LIST),
            self.tables.validator,
            self.tables.handler,
            code_elements,
        )

    def expand_tables(self, tables: beam.PCollection, validator: _Validate, handler: CodecHandler) -> CodecOutputs:
        return tables | "Encode tables" >> self.tables


class DecodeCodes(_CodecTransform):
    """Length-prefixed codes -> token sequences; bad codes on the ``errors`` output.

    Input: ``(id, code)`` pairs, dicts or ``beam.Row``s (fields ``id_field``, ``code_field``);
    ``code`` any 1-D floats (float32, float16, a list; integers are not codes). Output, in the input's form:
    ``(id, tokens)`` with ``tokens`` an int32 numpy array of exactly ``code[0]`` tokens, or
    dicts/Rows with ``id`` and ``tokens``. ``errors``: dicts ``{id, reason, detail, input}`` with the
    decode job's reasons (``seqcodec.CODE_REASONS``, plus ``not_a_code`` for a value that is not
    a list of floats and ``missing_field`` as in EncodeSequences). ``beam_width`` > 1 decodes an
    autoregressive model by beam search.
    """

    def __init__(self, model_dir: str, *, batch_tokens: int = DEFAULT_BATCH_TOKENS, batch_size: int | None = None,
                 id_field: str = "id", code_field: str = "code", manifest: Manifest | None = None,
                 batching: Batching | None = None, beam_width: int = 1) -> None:
        super().__init__(model_dir, manifest, batch_tokens, id_field, code_field)
        if beam_width < 1:
            raise ValueError(f"beam_width must be at least 1, got {beam_width}")
        batching = batching or Batching(batch_size=batch_size)
        self.batching = dataclasses.replace(batching, beam_width=beam_width) if beam_width > 1 else batching

    def parts(self):
        m = self.manifest
        return (
            functools.partial(_ToTables, self.id_field, self.data_field, number_list, pa.float64(), NOT_A_CODE),
            ValidateCodes(m.code_size, m.max_length, self.id_field, self.data_field),
            CodecDecoderHandler(self.model_dir, self.batching),
            token_elements,
        )


def sequence_problem(sequence: Any, vocab_size: int, max_length: int) -> str | None:
    """Why a model of ``vocab_size`` and ``max_length`` cannot encode ``sequence``, or None if it can."""
    try:
        array = np.asarray(sequence)
    except (TypeError, ValueError):
        return "not a list of token ids"
    if array.ndim != 1:
        return f"expected a 1-D list of token ids, got shape {array.shape}"
    if array.size == 0:
        return "empty sequence"
    if array.dtype.kind not in "iu":
        return f"token ids must be integers, got {array.dtype}"
    if array.size > max_length:
        return f"length {array.size} is over the model's max_length {max_length}"
    if array.min() < 0 or array.max() >= vocab_size:
        return f"a token id is outside [0, {vocab_size})"
    return None


def sequence_size(element: Any, limit: int, vocab_size: int | None = None, max_length: int | None = None) -> int:
    """A sequence's (or a keyed ``(key, sequence)``'s) share of a RunInference batch: its tokens, in [1, limit].

    With the model's ``vocab_size`` and ``max_length``, a sequence it cannot encode weighs a whole
    batch: BatchElements flushes the batch before it (the sum would pass ``limit``) and after it
    (nothing more fits), so it fails alone and takes no valid sequence with it.
    """
    if isinstance(element, tuple) and len(element) == 2 and hasattr(element[1], "__len__"):
        element = element[1]  # KeyedModelHandler hands its inner handler's size function the pairs
    if vocab_size is not None and max_length is not None and sequence_problem(element, vocab_size, max_length):
        return limit
    try:
        return min(limit, max(1, len(element)))
    except TypeError:
        return 1


class SequenceModelHandler(CodecHandler):
    """RunInference handler for single token sequences: ``RunInference(SequenceModelHandler(model_dir))``.

    Each element is one sequence (a list or int array of token ids); RunInference batches them
    (the batch size counts tokens, up to ``batch_tokens``) and the codec sorts each batch by
    length and pads per length bucket, instead of padding every row to the batch's longest.
    Yields ``PredictionResult(example, inference=code, model_id=fingerprint)``; wrap it in
    ``KeyedModelHandler`` for ``(key, sequence)`` elements. A sequence the model cannot encode is
    put in a batch of its own (``sequence_size``) whose inference fails with a ValueError naming the
    problem: under RunInference's ``with_exception_handling()`` it alone lands in
    ``failed_inferences``. RunInference's model refresh (``model_metadata_pcoll``,
    ``watch_model_pattern``) loads the new model directory, which must keep the vocabulary, max
    length and code size of ``model_dir`` (read here, at construction).
    """

    def __init__(self, model_dir: str, batch_tokens: int = DEFAULT_BATCH_TOKENS, batch_size: int | None = None) -> None:
        config = read_manifest(model_dir).config
        # CodecHandler fixes batches of one table; here RunInference itself batches single sequences.
        # A fixed size: BatchElements' adaptive start (1) would flush an empty batch before the first sequence.
        size = functools.partial(sequence_size, limit=batch_tokens, vocab_size=config.vocab_size,
                                 max_length=config.max_length)
        super().__init__(model_dir, batch_size, "encoded", reference=config, min_batch_size=batch_tokens,
                         max_batch_size=batch_tokens, element_size_fn=size)

    def run_inference(self, batch: Sequence[Any], model: Any,
                      inference_args: dict[str, Any] | None = None) -> list[PredictionResult]:
        for i, sequence in enumerate(batch):
            problem = sequence_problem(sequence, model.config.vocab_size, model.config.max_length)
            if problem:
                raise ValueError(f"sequence {i} of the batch: {problem}")
        codes = model.encode(batch)
        self.count(len(batch))
        return [PredictionResult(example, code, model.fingerprint) for example, code in zip(batch, codes, strict=True)]

    def get_num_bytes(self, batch: Sequence[Any]) -> int:
        return sum(8 * len(tokens) for tokens in batch)

    def get_metrics_namespace(self) -> str:
        return "seqcodec_encoder"
