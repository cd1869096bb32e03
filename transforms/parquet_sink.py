"""The Parquet file sink of WriteTables: zstd shards written by a background thread, float code columns left plain.

Beam's own ``WriteToParquetBatched`` writes on the thread that runs the bundle, so in a fused
stage (read, encode, write) the encoder waits while each table is compressed and written: 3.6 s
of a 1M-row encode job. pyarrow releases the GIL while it writes, so a thread of its own lets the
next batch be encoded meanwhile. It also dictionary-encodes every column: for the code column,
whose floats never repeat, that builds a dictionary per column chunk only to give up on it.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import uuid
from collections.abc import Iterable
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io import filebasedsink, iobase
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.transforms import window
from apache_beam.utils import timestamp
from apache_beam.utils.windowed_value import WindowedValue


class BackgroundWriter:
    """A ParquetWriter fed through a queue of one table: at most one table waits while another is written.

    A write that fails is raised in the bundle's thread at the next ``put`` or at ``close``. ``close``
    and ``abort`` always end the thread and release the ParquetWriter, whatever failed.
    """

    def __init__(self, handle: Any, writer: pq.ParquetWriter) -> None:
        self.handle, self.writer = handle, writer
        self.error: BaseException | None = None
        self.queue: queue.Queue[pa.Table | None] = queue.Queue(maxsize=1)
        self.thread = threading.Thread(target=self._write, name="parquet-writer", daemon=True)
        self.thread.start()

    def _write(self) -> None:
        while (table := self.queue.get()) is not None:
            if self.error is None:  # after a failure, drain the queue so that put() never blocks
                try:
                    self.writer.write_table(table)
                except BaseException as exc:  # noqa: BLE001 - handed to the bundle's thread
                    self.error = exc

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def put(self, table: pa.Table) -> None:
        self._raise()
        self.queue.put(table)

    def _stop(self) -> None:
        """End the thread once the table it holds (if any) is written or dropped."""
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()

    def close(self) -> None:
        """Wait for the last table, then finish the file's footer; a failed write is raised after the cleanup."""
        self._stop()
        if self.error is not None:
            self.abort()
            raise self.error
        self.writer.close()

    def abort(self) -> None:
        """Stop without caring for the file (its bundle failed and Beam discards it): thread ended, writer released."""
        self._stop()
        with contextlib.suppress(Exception):  # a writer that failed may fail again on its footer
            self.writer.close()


def writer_options(schema: pa.Schema, plain_columns: Iterable[str] = ()) -> dict[str, Any]:
    """``pq.ParquetWriter`` keywords of our shards: zstd; ``plain_columns`` bare (no compression, dictionary, stats).

    zstd shrinks float codes little and costs some encode rate (docs/BENCHMARKS.md, ``perf_bench --parts
    gap``); ``--code-dtype float16`` halves their size instead (not their writing time).
    """
    plain = set(plain_columns)
    rest = [name for name in schema.names if name not in plain]
    chosen = rest if plain else True
    compression = {name: "none" if name in plain else "zstd" for name in schema.names}
    return {"compression": compression, "use_dictionary": chosen, "write_statistics": chosen}


class ParquetTableSink(filebasedsink.FileBasedSink):
    """Arrow tables (each a row group) -> ``<prefix>-SSSSS-of-NNNNN.parquet`` shards (``writer_options``).

    ``plain_columns`` are written uncompressed, without dictionary encoding and without min/max
    statistics: columns of values that never repeat and that nobody filters on (codes), where all
    three only cost time.
    """

    def __init__(self, prefix: str, schema: pa.Schema, num_shards: int = 0,
                 plain_columns: Iterable[str] = ()) -> None:
        super().__init__(prefix, coder=None, file_name_suffix=".parquet", num_shards=num_shards,
                         mime_type="application/x-parquet", compression_type=CompressionTypes.UNCOMPRESSED)
        self.schema = schema
        self.options = writer_options(schema, plain_columns)

    def open(self, temp_path: str) -> BackgroundWriter:
        handle = super().open(temp_path)
        return BackgroundWriter(handle, pq.ParquetWriter(handle, self.schema, **self.options))

    def write_record(self, file_handle: BackgroundWriter, value: pa.Table) -> None:
        file_handle.put(value)

    def close(self, file_handle: BackgroundWriter) -> None:
        try:
            file_handle.close()
        finally:
            super().close(file_handle.handle)

    def abort(self, file_handle: BackgroundWriter) -> None:
        """Give up a shard of a failed bundle: its thread ended, its file closed (its temp dir goes at finalize)."""
        try:
            file_handle.abort()
        finally:
            super().close(file_handle.handle)


class _WriteBundleOrAbort(iobase._WriteBundleDoFn):
    """Beam's writer DoFn of a bundle, which gives its open shard up when the bundle fails.

    Beam opens the shard at the bundle's first table and closes it in ``finish_bundle``; a bundle that
    fails in between (in this step or in any step fused with it) never gets there, and Beam's DoFn has
    no ``teardown``: each failed bundle left a writer thread and an open file behind. Beam calls
    ``teardown`` on the DoFns of a failed bundle.
    """

    def finish_bundle(self) -> Iterable[WindowedValue]:
        # As Beam's, but forgetting the closed writer, so that teardown never closes its file twice.
        writer, self.writer = self.writer, None
        if writer is not None:
            yield WindowedValue(writer.close(), window.GlobalWindow().max_timestamp(), [window.GlobalWindow()])

    def teardown(self) -> None:
        writer, self.writer = getattr(self, "writer", None), None
        if writer is not None:
            self.sink.abort(writer.temp_handle)


class _WriteShardOrAbort(iobase._WriteKeyedBundleDoFn):
    """Beam's writer DoFn of one shard (``num_shards`` > 0), which gives the shard up when a write fails."""

    def process(self, element: Any, init_result: Any) -> list:
        writer = self.sink.open_writer(init_result, str(uuid.uuid4()))
        try:
            for table in element[1]:
                writer.write(table)
        except BaseException:
            self.sink.abort(writer.temp_handle)
            raise
        return [window.TimestampedValue(writer.close(), timestamp.MAX_TIMESTAMP)]


class WriteShards(iobase.WriteImpl):
    """``beam.io.Write(ParquetTableSink)`` for bounded input, with writer DoFns that clean up a failed bundle.

    Beam's own expansion (``iobase.WriteImpl``) builds the graph; it names its two writer DoFns by
    their module names, which point at ours (``_WriteBundleOrAbort``, ``_WriteShardOrAbort``) while it
    runs: Beam offers no public hook into them.
    """

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        if not pcoll.is_bounded:
            raise ValueError("WriteShards writes bounded input only")
        with _LOCK:
            saved = iobase._WriteBundleDoFn, iobase._WriteKeyedBundleDoFn
            iobase._WriteBundleDoFn, iobase._WriteKeyedBundleDoFn = _WriteBundleOrAbort, _WriteShardOrAbort
            try:
                return super().expand(pcoll)
            finally:
                iobase._WriteBundleDoFn, iobase._WriteKeyedBundleDoFn = saved


_LOCK = threading.Lock()  # graphs built in several threads at once swap Beam's names one at a time
