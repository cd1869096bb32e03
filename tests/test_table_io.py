"""The Arrow table coder and the background Parquet sink, on real pipelines and real files."""

from __future__ import annotations

import contextlib
import os
import threading

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from seqcodec.transforms.parquet_io import WriteTables
from seqcodec.transforms.parquet_sink import BackgroundWriter, ParquetTableSink, WriteShards
from seqcodec.transforms.table_coder import ArrowTableCoder

SCHEMA = pa.schema([("id", pa.string()), ("code", pa.list_(pa.float32(), 3))], metadata={"seqcodec.x": "1"})


def table(start: int, rows: int) -> pa.Table:
    values = np.arange(start * 3, (start + rows) * 3, dtype=np.float32)
    return pa.table({"id": [f"r{i}" for i in range(start, start + rows)],
                     "code": pa.FixedSizeListArray.from_arrays(pa.array(values), 3)}, schema=SCHEMA)


def test_coder_round_trips_slices_and_metadata_and_sizes_without_serializing():
    coder = beam.coders.registry.get_coder(pa.Table)
    assert isinstance(coder, ArrowTableCoder)
    whole = table(0, 1000)
    part = whole.slice(10, 5)
    back = coder.decode(coder.encode(part))
    assert back.equals(part) and back.schema.metadata == SCHEMA.metadata
    assert len(coder.encode(part)) < len(coder.encode(whole)) / 10  # a slice is sent as the slice only
    assert coder.estimate_size(whole) == whole.nbytes


def test_tables_cross_a_shuffle_through_the_coder():
    """A GroupByKey materializes its input: typed tables go through the Arrow coder and come back equal."""
    tables = [table(0, 4), table(4, 3)]
    with test_pipeline.TestPipeline(runner="FnApiRunner") as p:
        out = (p | beam.Create(tables).with_output_types(pa.Table) | beam.Reshuffle()
               | beam.Map(lambda t: t.to_pylist()))
        assert_that(out, equal_to([t.to_pylist() for t in tables]))


def test_write_tables_writes_every_row_in_order_with_plain_float_columns_uncompressed_without_statistics(tmp_path):
    tables = [table(i * 100, 100) for i in range(7)]
    with test_pipeline.TestPipeline(runner="FnApiRunner") as p:
        _ = (p | beam.Create(tables).with_output_types(pa.Table)
             | WriteTables(str(tmp_path / "part"), SCHEMA, num_shards=0, plain_columns=["code"]))
    files = sorted(tmp_path.glob("part-*.parquet"))
    assert files
    written = pa.concat_tables([pq.read_table(f) for f in files])
    assert sorted(written.column("id").to_pylist()) == sorted(f"r{i}" for i in range(700))
    for f in files:
        for group in range(pq.ParquetFile(f).metadata.num_row_groups):
            chunk = pq.ParquetFile(f).metadata.row_group(group)
            encodings = {chunk.column(i).path_in_schema: chunk.column(i).encodings for i in range(chunk.num_columns)}
            assert "RLE_DICTIONARY" in encodings["id"]
            assert not {"RLE_DICTIONARY", "PLAIN_DICTIONARY"} & set(encodings["code.list.element"])
            stats = {chunk.column(i).path_in_schema: chunk.column(i).is_stats_set for i in range(chunk.num_columns)}
            assert stats["id"] and not stats["code.list.element"]
            columns = [chunk.column(i) for i in range(chunk.num_columns)]
            assert {c.path_in_schema: c.compression for c in columns} == {
                "id": "ZSTD", "code.list.element": "UNCOMPRESSED"}


def test_background_writer_keeps_order_and_raises_a_failed_write_in_the_callers_thread(tmp_path):
    with open(tmp_path / "ok.parquet", "wb") as handle:
        writer = BackgroundWriter(handle, pq.ParquetWriter(handle, SCHEMA))
        for i in range(5):
            writer.put(table(i * 10, 10))
        writer.close()
    assert pq.read_table(tmp_path / "ok.parquet").column("id").to_pylist() == [f"r{i}" for i in range(50)]

    wrong = pa.table({"id": ["x"], "other": [1]})
    with open(tmp_path / "bad.parquet", "wb") as handle:
        writer = BackgroundWriter(handle, pq.ParquetWriter(handle, SCHEMA))
        writer.put(wrong)
        with pytest.raises(ValueError, match="schema"):
            for _ in range(3):  # the failure surfaces at a later put or at close, never silently
                writer.put(table(0, 1))
            writer.close()


class FailAfter(beam.DoFn):
    """Passes ``tables`` tables of its bundle on, then raises: a bundle that fails while its shard is open."""

    def __init__(self, tables: int) -> None:
        self.tables = tables

    def start_bundle(self) -> None:
        self.seen = 0

    def process(self, element):
        self.seen += 1
        if self.seen > self.tables:
            raise RuntimeError("this bundle fails")
        yield element


def open_files_under(path) -> list[str]:
    """This process's open file descriptors that point into ``path``."""
    fds = os.listdir("/proc/self/fd")
    targets = []
    for fd in fds:
        with contextlib.suppress(OSError):
            targets.append(os.readlink(f"/proc/self/fd/{fd}"))
    return [t for t in targets if t.startswith(str(path))]


def writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "parquet-writer" and t.is_alive()]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads open files from /proc")
@pytest.mark.parametrize("case, num_shards", [("a step before the writer fails", 0),
                                              ("a write fails", 0), ("a write fails", 2)])
def test_a_failed_bundle_leaves_no_writer_thread_and_no_open_file(tmp_path, case, num_shards):
    before = writer_threads()
    tables = [table(i * 10, 10) for i in range(6)]
    if case == "a write fails":
        tables[3] = pa.table({"id": ["x"], "other": [1]})  # not the sink's schema
    with pytest.raises(Exception, match="this bundle fails" if case.startswith("a step") else "schema"):
        with test_pipeline.TestPipeline(runner="FnApiRunner") as p:
            written = p | beam.Create(tables).with_output_types(pa.Table)
            if case.startswith("a step"):
                written = written | beam.ParDo(FailAfter(3)).with_output_types(pa.Table)
            _ = written | WriteTables(str(tmp_path / "part"), SCHEMA, num_shards=num_shards)
    assert list(tmp_path.rglob("*.parquet")), "the bundle failed before any shard was opened: nothing was tested"
    assert writer_threads() == before
    assert open_files_under(tmp_path) == []


ABORTED: list[str] = []


class RecordingSink(ParquetTableSink):
    """The real sink, noting each shard it is asked to give up (FnApiRunner runs in this process)."""

    def abort(self, file_handle) -> None:
        ABORTED.append(getattr(file_handle.handle, "name", "a shard"))
        super().abort(file_handle)


def test_a_successful_write_gives_no_shard_up(tmp_path):
    """teardown runs after the last bundle too: a shard closed in finish_bundle must not be aborted (closed twice)."""
    ABORTED.clear()
    with test_pipeline.TestPipeline(runner="FnApiRunner") as p:
        _ = (p | beam.Create([table(i * 10, 10) for i in range(4)]).with_output_types(pa.Table)
             | WriteShards(RecordingSink(str(tmp_path / "part"), SCHEMA)))
    assert sum(pq.read_table(f).num_rows for f in tmp_path.glob("part-*.parquet")) == 40
    assert ABORTED == []
