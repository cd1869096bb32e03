"""The Parquet file sink of WriteTables: zstd shards written by a background thread, float code columns left plain.

Beam's own ``WriteToParquetBatched`` writes on the thread that runs the bundle, so in a fused
stage (read, encode, write) the encoder waits while each table is compressed and written: 3.6 s
of a 1M-row encode job. pyarrow releases the GIL while it writes, so a thread of its own lets the
next batch be encoded meanwhile. It also dictionary-encodes every column: for the code column,
whose floats never repeat, that builds a dictionary per column chunk only to give up on it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io import filebasedsink
from apache_beam.io.filesystem import CompressionTypes


class BackgroundWriter:
    """A ParquetWriter fed through a queue of one table: at most one table waits while another is written.

    A write that fails is raised in the bundle's thread at the next ``put`` or at ``close``.
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

    def close(self) -> None:
        """Wait for the last table, then finish the file's footer."""
        self.queue.put(None)
        self.thread.join()
        self._raise()
        self.writer.close()


def writer_options(schema: pa.Schema, plain_columns: Iterable[str] = ()) -> dict[str, Any]:
    """``pq.ParquetWriter`` keywords of our shards: zstd; ``plain_columns`` bare (no compression, dictionary, stats).

    zstd shrinks float codes by only 3-8% and cost 2-10% of the encode rate (docs/BENCHMARKS.md,
    ``perf_bench --parts gap``); ``--code-dtype float16`` halves their size instead (not their writing time).
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
        file_handle.close()
        super().close(file_handle.handle)
