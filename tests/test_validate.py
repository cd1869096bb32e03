"""The job's transforms on their own: ValidateTokens / split_rows, EncodeTables, ReadBatches.

Pipelines are real Beam TestPipelines on the DirectRunner's in-process engine (FnApiRunner, chosen the
way pipeline/options.py does) with assert_that; inputs are real Arrow tables and real Parquet files,
the model is the tiny saved codec from conftest.
"""

import dataclasses
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam import Create, FlatMap, ParDo
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import BeamAssertException, assert_that
from conftest import INT32_LISTS, random_sequences
from helpers_beam import (
    ATOL,
    BAD_ROWS,
    CODE_SIZE,
    EXPECTED_DETAILS,
    EXPECTED_REASON_COUNTS,
    INT64,
    MAX_LEN,
    VOCAB,
    expected_reason,
    mixed_rows,
    write_table,
)

from seqcodec.model.config import Batching
from seqcodec.model.manifest import read_manifest
from seqcodec.pipeline.options import direct_runner
from seqcodec.transforms.formats import error_schema
from seqcodec.transforms.inference import CodecEncoderHandler, EncodeTables, for_pipeline
from seqcodec.transforms.parquet_io import (
    MIN_SPLIT_BYTES,
    InputFiles,
    ReadBatches,
    RowGroups,
    row_group_splits,
    slice_tables,
    split_bytes,
)
from seqcodec.transforms.validate import ERRORS_TAG, METRICS_NAMESPACE, REASONS, ValidateTokens, split_rows

ROWS = mixed_rows(n_valid=30, seed=5)


def make_pipeline() -> BeamTestPipeline:
    options = PipelineOptions([])
    return BeamTestPipeline(runner=direct_runner(options), options=options)


def rows_table(rows, tokens_type=INT32_LISTS, id_type=INT64, names=("id", "tokens")) -> pa.Table:
    return pa.table({names[0]: pa.array([r[0] for r in rows], id_type),
                     names[1]: pa.array([r[1] for r in rows], tokens_type)})


def check(condition: bool, message: str) -> None:
    """assert for matchers that run inside the pipeline (plain assert is skipped under python -O)."""
    if not condition:
        raise BeamAssertException(message)


def counters_of(result) -> dict[str, int]:
    query = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
    out: dict[str, int] = {}
    for c in query["counters"]:
        out[c.key.metric.name] = out.get(c.key.metric.name, 0) + int(c.committed or c.attempted or 0)
    return out


def expected_split(rows, too_long="reject"):
    """(valid (id, tokens) rows, rejected (id, reason, tokens) rows) in input order, from the plain-Python spec."""
    good, bad = [], []
    for row_id, tokens, _ in rows:
        reason = expected_reason(row_id, tokens, too_long)
        if reason is None:
            good.append((row_id, tokens[:MAX_LEN]))
        else:
            bad.append((row_id, reason, tokens))
    return good, bad


def as_rows(good: pa.Table, bad: pa.Table):
    return (list(zip(good.column("id").to_pylist(), good.column("tokens").to_pylist(), strict=True)),
            list(zip(bad.column("id").to_pylist(), bad.column("reason").to_pylist(), bad.column("tokens").to_pylist(),
                     strict=True)))


def test_the_test_data_covers_every_reason():
    assert {r[2] for r in BAD_ROWS} == set(REASONS)
    for row_id, tokens, reason in ROWS:
        assert expected_reason(row_id, tokens) == reason, (row_id, tokens)


# -- ValidateTokens in a pipeline ---------------------------------------------------------------------


@pytest.mark.parametrize("value_type", [pa.int32(), pa.int64()], ids=["int32", "int64"])
def test_validate_tokens_every_reason(value_type):
    tokens_type = pa.list_(value_type)
    table = rows_table(ROWS, tokens_type)
    want_good, want_bad = expected_split(ROWS)

    def check_valid(tables):
        check(len(tables) == 1, f"one valid table per input batch, got {len(tables)}")
        got = tables[0]
        check(got.column_names == ["id", "tokens"], f"columns {got.column_names}")
        check(got.schema.field("tokens").type == tokens_type, f"tokens type changed: {got.schema}")
        got_rows = list(zip(got.column("id").to_pylist(), got.column("tokens").to_pylist(), strict=True))
        check(got_rows == want_good, f"valid rows differ: {got_rows} != {want_good}")

    def check_errors(tables):
        check(len(tables) == 1, f"one error table per input batch, got {len(tables)}")
        got = tables[0]
        check(got.schema == error_schema(pa.int64()), f"error schema {got.schema}")
        rows = got.to_pylist()
        check([(r["id"], r["reason"], r["tokens"]) for r in rows] == want_bad, f"error rows differ: {rows}")
        for r in rows:
            want = EXPECTED_DETAILS.get(r["id"], REASONS[r["reason"]])
            check(r["detail"] == want, f"detail of {r}: want {want!r}")

    p = make_pipeline()
    checked = p | Create([table]) | ParDo(ValidateTokens(VOCAB, MAX_LEN, "reject", "id", "tokens")).with_outputs(
        ERRORS_TAG, main="valid"
    )
    assert_that(checked.valid, check_valid, label="valid")
    assert_that(checked[ERRORS_TAG], check_errors, label="errors")
    result = p.run()
    counters = counters_of(result)
    assert counters["rows_read"] == len(ROWS)
    assert counters["rows_valid"] == len(want_good) == len(ROWS) - len(BAD_ROWS)
    assert counters.get("rows_truncated", 0) == 0
    assert {k.removeprefix("rejected_"): v for k, v in counters.items() if k.startswith("rejected_") and v} == (
        EXPECTED_REASON_COUNTS
    )


def test_validate_tokens_truncate_mode():
    long_valid = (200, list(range(VOCAB)) + [0, 1, 2], None)  # 16 valid ids, longer than MAX_LEN
    rows = ROWS + [long_valid]
    want_good, want_bad = expected_split(rows, too_long="truncate")
    assert (108, [1] * MAX_LEN) in want_good and (200, long_valid[1][:MAX_LEN]) in want_good
    assert all(reason != "too_long" for _, reason, _ in want_bad)

    def check_valid(tables):
        got = pa.concat_tables(tables)
        got_rows = sorted(zip(got.column("id").to_pylist(), got.column("tokens").to_pylist(), strict=True))
        check(got_rows == sorted(want_good), f"valid rows differ: {got_rows}")

    def check_errors(tables):
        got = pa.concat_tables(tables).to_pylist()
        check(sorted((r["id"] or -1, r["reason"]) for r in got) == sorted((i or -1, r) for i, r, _ in want_bad),
              f"error rows differ: {got}")

    p = make_pipeline()
    checked = (
        p
        | Create([rows_table(rows)])
        | "Slice" >> FlatMap(slice_tables, 5)  # as the job does with --max-batch-rows 5
        | ParDo(ValidateTokens(VOCAB, MAX_LEN, "truncate", "id", "tokens")).with_outputs(ERRORS_TAG, main="valid")
    )
    assert_that(checked.valid, check_valid, label="valid")
    assert_that(checked[ERRORS_TAG], check_errors, label="errors")
    counters = counters_of(p.run())
    assert counters["rows_truncated"] == 2
    assert counters.get("rejected_too_long", 0) == 0
    assert counters["rows_valid"] == len(want_good)


# -- split_rows edge cases (plain Arrow in, plain Arrow out) ------------------------------------------


def test_split_rows_on_slices_matches_the_spec():
    table = rows_table(ROWS)
    for start in range(0, len(ROWS), 3):
        for length in (1, 5, 17, len(ROWS)):
            part = table.slice(start, length)
            rows = ROWS[start : start + length]
            good, bad, truncated = split_rows(part, VOCAB, MAX_LEN)
            assert as_rows(good, bad) == expected_split(rows), (start, length)
            assert truncated == 0
            # the same rows in a fresh, unsliced table give the same answer
            fresh = split_rows(rows_table(rows), VOCAB, MAX_LEN)
            assert good.equals(fresh[0]) and bad.equals(fresh[1])


def test_split_rows_on_a_table_cut_by_slice_tables():
    """The job slices big row groups (--max-batch-rows) before validating: slices must add up to the whole."""
    table = rows_table(ROWS)
    parts = list(slice_tables(table, 4))
    assert [t.num_rows for t in parts] == [4] * (len(ROWS) // 4) + ([len(ROWS) % 4] if len(ROWS) % 4 else [])
    goods, bads = zip(*[as_rows(*split_rows(t, VOCAB, MAX_LEN)[:2]) for t in parts], strict=True)
    assert (sum(goods, []), sum(bads, [])) == expected_split(ROWS)


def test_split_rows_on_chunked_columns():
    table = rows_table(ROWS)
    chunked = pa.Table.from_batches(table.to_batches(max_chunksize=3))
    assert chunked.column("tokens").num_chunks > 1
    # ids chunked differently from tokens
    odd = pa.table({"id": pa.chunked_array([table.column("id").combine_chunks()[:5],
                                            table.column("id").combine_chunks()[5:]]),
                    "tokens": chunked.column("tokens")})
    want = expected_split(ROWS)
    for t in (chunked, odd):
        good, bad, _ = split_rows(t, VOCAB, MAX_LEN)
        assert as_rows(good, bad) == want


def test_split_rows_all_bad():
    bad_rows = list(BAD_ROWS)
    good, bad, truncated = split_rows(rows_table(bad_rows), VOCAB, MAX_LEN)
    assert good.num_rows == 0 and good.column_names == ["id", "tokens"]
    assert bad.num_rows == len(bad_rows) and bad.schema == error_schema(pa.int64())
    assert bad.column("reason").to_pylist() == [r[2] for r in bad_rows]
    assert bad.column("tokens").to_pylist() == [r[1] for r in bad_rows]
    assert truncated == 0


def test_split_rows_all_good_and_empty():
    rows = [(i, s.tolist(), None) for i, s in enumerate(random_sequences(20, VOCAB, MAX_LEN, seed=3))]
    table = rows_table(rows, pa.list_(pa.int64()))
    good, bad, _ = split_rows(table, VOCAB, MAX_LEN)
    assert good.equals(table)
    assert bad.num_rows == 0 and bad.schema == error_schema(pa.int64())
    good, bad, truncated = split_rows(table.slice(0, 0), VOCAB, MAX_LEN)
    assert (good.num_rows, bad.num_rows, truncated) == (0, 0, 0)
    assert bad.schema == error_schema(pa.int64())


def test_split_rows_other_column_names_and_id_types():
    rows = ROWS[:12]
    table = rows_table(rows, names=("key", "toks"), id_type=pa.int32())
    good, bad, _ = split_rows(table, VOCAB, MAX_LEN, id_column="key", tokens_column="toks")
    assert good.column_names == ["id", "tokens"] and good.schema.field("id").type == pa.int32()
    assert bad.schema == error_schema(pa.int32())
    assert as_rows(good, bad) == expected_split(rows)


def test_split_rows_null_list_backed_by_values():
    """A null list slot may still span values (e.g. built with a validity mask); they belong to no row."""
    tokens = pa.ListArray.from_arrays(
        pa.array([0, 2, 5, 6], pa.int32()), pa.array([1, 2, 99, None, -4, 3], pa.int64()),
        mask=pa.array([False, True, False]),
    )
    table = pa.table({"id": pa.array([1, 2, 3], pa.int64()), "tokens": tokens})
    for part, want_good in ((table, [(1, [1, 2]), (3, [3])]), (table.slice(1), [(3, [3])])):
        good, bad, _ = split_rows(part, VOCAB, MAX_LEN)
        assert as_rows(good, bad) == (want_good, [(2, "null_tokens", None)])


def test_split_rows_truncate_counts_and_keeps_types():
    rows = [(1, [2] * (MAX_LEN + 3), None), (2, [3] * MAX_LEN, None), (3, [4], None)]
    table = rows_table(rows, pa.large_list(pa.int16()))
    good, bad, truncated = split_rows(table, VOCAB, MAX_LEN, too_long="truncate")
    assert truncated == 1 and bad.num_rows == 0
    assert good.schema.field("tokens").type == pa.large_list(pa.int16())
    assert good.column("tokens").to_pylist() == [[2] * MAX_LEN, [3] * MAX_LEN, [4]]
    good, bad, truncated = split_rows(table, VOCAB, MAX_LEN, too_long="reject")
    assert truncated == 0 and bad.column("id").to_pylist() == [1] and bad.column("reason").to_pylist() == ["too_long"]


# -- EncodeTables (the job's encode, and EncodeSequences' on tables), with the real saved model ---------------------


def test_encode_tables_equals_sequence_codec(tiny_model_dir, tiny_codec):
    seqs = random_sequences(40, VOCAB, MAX_LEN, seed=17)
    ids = list(range(1000, 1040))
    whole = pa.table({"id": pa.array(ids, pa.int64()), "tokens": pa.array([s.tolist() for s in seqs],
                                                                           pa.list_(pa.int32()))})
    # three batches: a sliced one (non-zero offsets), a one-row one, and the rest as a chunked table
    inputs = [whole.slice(3, 20), whole.slice(0, 1), pa.concat_tables([whole.slice(1, 2), whole.slice(23)])]
    want = tiny_codec.encode(seqs)
    lengths = np.array([len(s) for s in seqs])

    def check_codes(tables):
        check(len(tables) == 3, f"one code table per input table, got {len(tables)}")
        got = pa.concat_tables(tables)
        check(got.column_names == ["id", "length", "code"], f"columns {got.column_names}")
        check(got.schema.field("code").type == pa.list_(pa.float32(), CODE_SIZE), f"code type {got.schema}")
        check(got.schema.field("length").type == pa.int32(), f"length type {got.schema}")
        got_ids = np.array(got.column("id").to_pylist())
        check(sorted(got_ids.tolist()) == ids, "every id encoded exactly once")
        rows = got_ids - 1000
        codes = got.column("code").combine_chunks().flatten().to_numpy().reshape(-1, CODE_SIZE)
        check(np.array_equal(got.column("length").to_numpy(), lengths[rows]), "length column")
        check(np.array_equal(codes[:, 0], lengths[rows]), "code[0] is the length")
        diff = float(np.abs(codes - want[rows]).max())
        check(diff <= ATOL, f"codes differ from SequenceCodec.encode by {diff}")

    p = make_pipeline()
    codes = (p | Create(inputs) | EncodeTables(str(tiny_model_dir), read_manifest(str(tiny_model_dir)),
                                               batching=Batching(batch_size=4))).main
    assert_that(codes, check_codes)
    counters = counters_of(p.run())
    assert counters["rows_encoded"] == 40


# -- ReadBatches ---------------------------------------------------------------------------------


def test_read_token_batches_multi_row_group(tmp_path):
    seqs = [s.tolist() for s in random_sequences(10, VOCAB, MAX_LEN, seed=9)]
    path = write_table(tmp_path / "a.parquet", range(10), seqs, row_group_size=4,
                       extra_columns={"note": pa.array([f"row {i}" for i in range(10)])})
    path2 = write_table(tmp_path / "b.parquet", [50, 51], [[1], [2, 3]], tokens_type=pa.list_(pa.int64()))
    assert pq.ParquetFile(path).metadata.num_row_groups == 3

    def check_tables(tables):
        # The three row groups of a.parquet merge into one table; b.parquet's int64 lists cannot join them.
        check(sorted(t.num_rows for t in tables) == [2, 10], f"small row groups coalesced: {tables}")
        check(all(t.column_names == ["id", "tokens"] for t in tables), "projected to id and tokens")
        rows = sorted(row for t in tables for row in zip(t.column("id").to_pylist(), t.column("tokens").to_pylist(),
                                                         strict=True))
        check(rows == list(zip(range(10), seqs, strict=True)) + [(50, [1]), (51, [2, 3])], f"rows differ: {rows}")

    p = make_pipeline()
    assert_that(p | ReadBatches((str(path), str(path2)), "id", "tokens"), check_tables)
    p.run()


def test_read_batches_coalesces_small_files_and_row_groups(tmp_path):
    """40 files of 2-3 rows each (row groups of 1-2) come out as few full tables, every row exactly once."""
    expected, paths = [], []
    for f in range(40):
        seqs = [s.tolist() for s in random_sequences(2 + f % 2, VOCAB, MAX_LEN, seed=f)]
        ids = [f * 10 + i for i in range(len(seqs))]
        paths.append(str(write_table(tmp_path / f"part-{f:02d}.parquet", ids, seqs, row_group_size=2)))
        expected += list(zip(ids, seqs, strict=True))

    def check_tables(tables):
        sizes = [t.num_rows for t in tables]
        check(max(sizes) <= 16 and len(sizes) < 20, f"tables of at most 16 rows, far fewer than files: {sizes}")
        rows = sorted(row for t in tables for row in zip(t.column("id").to_pylist(), t.column("tokens").to_pylist(),
                                                         strict=True))
        check(rows == sorted(expected), "every row exactly once")

    p = make_pipeline()
    assert_that(p | ReadBatches(tuple(paths), "id", "tokens", max_rows=16), check_tables)
    p.run()


def test_a_file_split_into_many_reads_gives_every_row_once(tmp_path):
    """A file cut into splits of a few hundred bytes (so that several workers can share it): every
    row group is read by exactly one split."""
    seqs = [s.tolist() for s in random_sequences(300, VOCAB, MAX_LEN, seed=12)]
    path = write_table(tmp_path / "a.parquet", range(300), seqs, row_group_size=20)
    size = path.stat().st_size
    assert pq.ParquetFile(path).metadata.num_row_groups == 15 and size > 15 * 300

    def check_tables(tables):
        rows = sorted(row for t in tables for row in zip(t.column("id").to_pylist(), t.column("tokens").to_pylist(),
                                                         strict=True))
        check(rows == list(zip(range(300), seqs, strict=True)), "every row exactly once")

    p = make_pipeline()
    assert_that(p | ReadBatches((str(path),), "id", "tokens", max_rows=64, split_bytes=300), check_tables)
    p.run()
    # The job's split: about max_rows rows' worth of the files, between 1 MiB and 64 MiB.
    files = InputFiles(("x",), rows=1_000_000, id_type=pa.int64(), bytes=10_000_000)
    assert split_bytes(files, 65536) == MIN_SPLIT_BYTES
    assert split_bytes(dataclasses.replace(files, bytes=1_000_000_000), 65536) == 65_536_000
    assert split_bytes(dataclasses.replace(files, bytes=10**12), 65536) == 64 << 20


def test_row_group_splits_cover_each_row_group_once_in_runs_of_max_rows(tmp_path):
    """Consecutive row groups up to max_rows rows a split; a file no bigger than a split is one split, unopened."""
    seqs = [s.tolist() for s in random_sequences(300, VOCAB, MAX_LEN, seed=13)]
    path = str(write_table(tmp_path / "a.parquet", range(300), seqs, row_group_size=20))
    splits = list(row_group_splits(path, 64, 64 << 20))
    assert splits == [RowGroups(path)]  # smaller than split_bytes: the whole file, no footer read
    splits = list(row_group_splits(path, 64, 300))  # bytes allow ~1 group; rows would allow 3
    assert [(s.first, s.stop) for s in splits] == [(i, i + 1) for i in range(15)]
    splits = list(row_group_splits(path, 64, 1000 * 300))
    assert splits == [RowGroups(path)]
    big = str(write_table(tmp_path / "b.parquet", range(300), seqs, row_group_size=20))
    size = os.path.getsize(big)
    splits = list(row_group_splits(big, 64, size - 1))  # too big for one split: cut by rows
    assert [(s.first, s.stop) for s in splits] == [(0, 3), (3, 6), (6, 9), (9, 12), (12, 15)]
    garbage = tmp_path / "small.parquet"
    garbage.write_bytes(b"not parquet")
    assert list(row_group_splits(str(garbage), 64, 1 << 20)) == [RowGroups(str(garbage))]


def test_read_token_batches_other_column_names(tmp_path):
    table = pa.table({"x": pa.array([1.5, 2.5]), "toks": pa.array([[1, 2], [3]], pa.list_(pa.int32())),
                      "key": pa.array(["a", "b"])})
    path = tmp_path / "named.parquet"
    pq.write_table(table, path)

    def check_tables(tables):
        got = pa.concat_tables(tables)
        check(got.column_names == ["key", "toks"], f"columns {got.column_names}")
        check(got.to_pylist() == [{"key": "a", "toks": [1, 2]}, {"key": "b", "toks": [3]}], f"{got.to_pylist()}")

    p = make_pipeline()
    assert_that(p | ReadBatches((str(path),), "key", "toks"), check_tables)
    p.run()


def test_for_pipeline_places_a_copy_and_leaves_the_given_handler_alone(tiny_model_dir):
    """Two pipelines of different worker counts given one handler each get their own thread policy."""
    handler = CodecEncoderHandler(str(tiny_model_dir), Batching(batch_size=4))
    options = PipelineOptions(["--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    two = BeamTestPipeline(runner=direct_runner(options), options=options) | Create([1])
    one = make_pipeline() | Create([1])
    placed_two, placed_one = for_pipeline(handler, two), for_pipeline(handler, one)
    assert (placed_two.batching.workers, placed_one.batching.workers) == (2, 1)
    assert handler.batching == Batching(batch_size=4) and placed_two is not handler
