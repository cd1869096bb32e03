"""Iceberg table output: the catalog look-up, the tables' schemas and properties, and a run's one-transaction commit.

The job's workers write Parquet shards into a run directory under the table's location, as for a
folder output (``LOCATION/seqcodec/.run_date=D.run-RUNID/``); the finalize stage then commits them
with pyiceberg. Each table gets ONE snapshot per run that removes the run date's files and adds the
run's files (an Iceberg overwrite), so a reader sees last night's rows or tonight's, whole, and the
snapshot before it stays readable by time travel. Tables:

    NS.T          the codes: id, length, code (list<float32>), run_date (date; the partition)
    NS.T_errors   the dead letters: id, reason, detail, tokens, run_date (committed just before NS.T)

Every snapshot carries ``seqcodec.run_id`` (and the run date, rows, model, run directory): a commit
that finds its run id in the table's history does nothing, so a retried finalize is harmless. Two
runs committing the same date at once are ordered by the catalog's optimistic concurrency
(``CommitFailedException``; pyiceberg's own retry refuses with ``ValidationException`` when another
commit added files meanwhile): the loser re-reads the table and applies its replacement on top.
There is no lease: a later committer simply wins, whole.

pyiceberg is imported lazily: it is the optional ``[iceberg]`` extra.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib
import logging
import os
import random
import time
from typing import Any

import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from seqcodec.transforms.partition import Partition, read_text

log = logging.getLogger("seqcodec")

RUN_DATE_COLUMN = "run_date"
ERRORS_SUFFIX = "_errors"
PREFIX = "seqcodec."
RUN_ID = PREFIX + "run_id"  # snapshot property: the run that made the snapshot
RUN_DATE = PREFIX + "run_date"
RUN_DIR = PREFIX + "run_dir"  # snapshot property: where the run's files and summary.json are
ROWS = PREFIX + "rows"
FINGERPRINT = PREFIX + "fingerprint"  # table property (latest run's model) and snapshot property
CODE_SIZE = PREFIX + "code_size"  # table property: every run into the table must have this code size
COMMIT_ATTEMPTS = 8  # commits lost to a concurrent writer before the run gives up (exit 4)
INSTALL_HINT = "pip install 'seqcodec[iceberg]'"
ISOLATION = "write.update.isolation-level"  # overwrites; pyiceberg's default is serializable


class _NoCodeStatistics(logging.Filter):
    """Drops pyiceberg's warning that a column has no statistics: the code column has none on purpose
    (floats never filtered on; parquet_sink's plain columns), and a clean nightly run should print no warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("PyArrow statistics missing for column")


logging.getLogger("pyiceberg.io.pyarrow").addFilter(_NoCodeStatistics())


class TableCommitFailed(Exception):
    """The run's snapshot could not be committed (the catalog refused it every time); nothing of it is visible."""


def require_pyiceberg(option: str = "--table") -> None:
    """ValueError (one line) naming the extra when pyiceberg is missing."""
    try:
        importlib.import_module("pyiceberg.catalog")
    except ImportError:
        raise ValueError(f"{option} needs pyiceberg, which is not installed: {INSTALL_HINT}") from None


def check_identifier(value: str) -> str:
    """``NAMESPACE.TABLE`` as given, or ValueError (one line)."""
    parts = value.split(".")
    if len(parts) < 2 or not all(parts):
        raise ValueError(f"--table must be NAMESPACE.TABLE, got {value!r}")
    return value


def sqlite_hint(name: str) -> str:
    """The environment variables of an embedded SQL catalog on a sqlite file (no server), for catalog ``name``."""
    var = f"PYICEBERG_CATALOG__{name.upper()}__"
    return (f"{var}TYPE=sql {var}URI=sqlite:////ABS/PATH/catalog.db "
            f"{var}WAREHOUSE=file:///ABS/PATH/warehouse")


def catalog_properties(name: str) -> dict[str, str]:
    """The catalog's configuration as pyiceberg resolves it (env vars, .pyiceberg.yaml); ValueError if none.

    Read fresh (not pyiceberg's import-time copy), so the launcher sees the environment it runs in.
    """
    require_pyiceberg()
    from pyiceberg.utils.config import Config

    found = Config().get_catalog_config(name)
    if not found:
        raise ValueError(f"--catalog {name}: no pyiceberg catalog {name!r} is configured (environment variables "
                         f"PYICEBERG_CATALOG__{name.upper()}__* or .pyiceberg.yaml); for an embedded one on a "
                         f"sqlite file: {sqlite_hint(name)}")
    return {str(k): str(v) for k, v in found.items()}


@dataclasses.dataclass(frozen=True)
class TableRef:
    """A table of a named catalog, with the catalog's configuration as the launcher resolved it.

    The configuration travels with the job (as Beam's own S3 options do), so the finalize stage can
    commit on a worker whose environment has no PYICEBERG_* variables.
    """

    catalog: str
    identifier: str
    properties: tuple[tuple[str, str], ...]

    @classmethod
    def resolve(cls, catalog: str, identifier: str) -> TableRef:
        return cls(catalog, check_identifier(identifier), tuple(sorted(catalog_properties(catalog).items())))

    def load_catalog(self) -> Any:
        from pyiceberg.catalog import load_catalog

        try:
            return load_catalog(self.catalog, **dict(self.properties))
        except (ValueError, ImportError) as exc:  # e.g. an unknown type, a missing driver
            raise ValueError(f"--catalog {self.catalog}: {str(exc).splitlines()[0]}") from None

    def with_suffix(self, suffix: str) -> TableRef:
        return dataclasses.replace(self, identifier=self.identifier + suffix)

    def load(self) -> Any:
        """The table; ValueError (one line) if the catalog does not have it."""
        from pyiceberg.exceptions import NoSuchTableError

        try:
            return self.load_catalog().load_table(self.identifier)
        except NoSuchTableError:
            raise ValueError(f"--table {self.identifier}: no such table in catalog {self.catalog!r}") from None


def beam_path(uri: str) -> str:
    """A pyiceberg location as Beam's FileSystems name it (``file:///x`` is the local path ``/x``)."""
    return uri[len("file://"):] if uri.startswith("file://") else uri


def iceberg_path(path: str) -> str:
    """A Beam path as the table records it (local paths become ``file://`` URIs, as pyiceberg writes them)."""
    return f"file://{os.path.abspath(path)}" if FileSystems.get_scheme(path) is None else path


# -- the tables' schemas -----------------------------------------------------------------------------


def table_schema(shard_schema: pa.Schema) -> pa.Schema:
    """A shard schema as the table stores it: fixed-size lists as lists, and the run date column last.

    Iceberg has no fixed-size list: the files' ``code`` column is written as a plain list so that
    readers that check the files against the table (Polars does) see the same type.
    """
    fields = []
    for field in shard_schema:
        kind = field.type
        if pa.types.is_fixed_size_list(kind):
            kind = pa.list_(kind.value_type)
        fields.append(pa.field(field.name, kind, field.nullable))
    fields.append(pa.field(RUN_DATE_COLUMN, pa.date32()))
    return pa.schema(fields, metadata=shard_schema.metadata)


def with_run_date(table: pa.Table, run_date: str, schema: pa.Schema) -> pa.Table:
    """A shard's rows in the table's schema (``table_schema``), every row carrying ``run_date``."""
    date = pa.array([datetime.date.fromisoformat(run_date)] * table.num_rows, pa.date32())
    columns = [table.column(f.name).cast(f.type) for f in schema if f.name != RUN_DATE_COLUMN]
    return pa.Table.from_arrays([*columns, date], schema=schema)


def _create(catalog: Any, identifier: str, schema: pa.Schema, properties: dict[str, str]) -> Any:
    """Create the table partitioned by run date, in one catalog commit; the table if another run created it first."""
    from pyiceberg.exceptions import TableAlreadyExistsError
    from pyiceberg.table import TableProperties

    namespace = identifier.rsplit(".", 1)[0]
    catalog.create_namespace_if_not_exists(namespace)
    try:
        with catalog.create_table_transaction(identifier, schema=schema.remove_metadata()) as tx:
            with tx.update_spec() as spec:
                spec.add_identity(RUN_DATE_COLUMN)
            # The shards carry no Iceberg field ids: readers map their columns by name.
            mapping = tx.table_metadata.schema().name_mapping.model_dump_json()
            tx.set_properties({**properties, TableProperties.DEFAULT_NAME_MAPPING: mapping})
        log.info("created Iceberg table %s", identifier)
    except TableAlreadyExistsError:
        pass
    return catalog.load_table(identifier)


def _check_schema(table: Any, identifier: str, schema: pa.Schema) -> None:
    """ValueError (one line) if this run's shards would not fit the table's schema."""
    from pyiceberg.io.pyarrow import _check_pyarrow_schema_compatible

    try:
        _check_pyarrow_schema_compatible(table.schema(), schema.remove_metadata())
    except ValueError as exc:
        raise ValueError(f"--table {identifier}: this run's rows do not fit the table's schema "
                         f"({' '.join(str(exc).split())[:300]})") from None


def _check_layout(table: Any, identifier: str) -> None:
    """ValueError (one line) for a table whose layout would make a run's replacement of its date unsafe.

    The commit removes whole files of the date: the table must stay partitioned by run date alone.
    And it relies on serializable isolation (pyiceberg's default): under snapshot isolation
    pyiceberg's own commit retry could add a run's files on top of another run's files of the same date.
    """
    fields = [(table.schema().find_column_name(f.source_id), str(f.transform)) for f in table.spec().fields]
    if fields != [(RUN_DATE_COLUMN, "identity")]:
        raise ValueError(f"--table {identifier} is partitioned by {fields or 'nothing'}, not by run_date alone; "
                         "seqcodec replaces a date's files whole: use another table")
    if table.properties.get(ISOLATION, "serializable") != "serializable":
        raise ValueError(f"--table {identifier} has {ISOLATION}={table.properties[ISOLATION]}; runs of the same date "
                         "could then both land: remove the property (serializable is the default)")


def prepare_tables(ref: TableRef, schemas: dict[str, pa.Schema], fingerprint: str, code_size: int) -> str:
    """Check (or create) the run's tables before the job starts; the codes table's location (a Beam path).

    ``schemas`` maps a table suffix ("" for the codes, "_errors") to the rows' table schema.
    ValueError (one line, exit 2) for a table of another code size or schema: nothing is changed then.
    """
    catalog = ref.load_catalog()
    from pyiceberg.exceptions import NoSuchTableError

    found = {}
    for suffix in schemas:
        try:
            found[suffix] = catalog.load_table(ref.identifier + suffix)
        except NoSuchTableError:
            continue
    codes = found.get("")
    if codes is not None:
        have = codes.properties.get(CODE_SIZE)
        if have is not None and int(have) != code_size:
            raise ValueError(
                f"--table {ref.identifier} holds codes of size {have} (model {codes.properties.get(FINGERPRINT)}); "
                f"model {fingerprint} has code size {code_size}: use another table")
    for suffix, table in found.items():
        _check_layout(table, ref.identifier + suffix)
        _check_schema(table, ref.identifier + suffix, schemas[suffix])
    properties = {CODE_SIZE: str(code_size), FINGERPRINT: fingerprint}
    for suffix, schema in schemas.items():
        if suffix not in found:
            found[suffix] = _create(catalog, ref.identifier + suffix, schema, properties if suffix == "" else {})
    return beam_path(found[""].location())


# -- the run -----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TableCommit:
    """What a commit replaced: the run that had the date before, and its rows (-1 if unknown)."""

    run_id: str
    rows: int


class TableRun:
    """One run's view of its table output: its run directory and decision (as a folder run's), and the commit.

    Offers what the finalize stage and the launcher call on a ``Partition``; there is no lease (the
    catalog orders concurrent commits) and no clean-up (files stay while snapshots name them).
    """

    local = False  # the run's rejected rows are reported by table, not by a published folder

    def __init__(self, ref: TableRef, run_date: str, location: str, fingerprint: str, code_size: int,
                 run_id: str | None = None) -> None:
        self.ref, self.run_date, self.fingerprint, self.code_size = ref, run_date, fingerprint, code_size
        self.run_files = Partition(FileSystems.join(location, "seqcodec", f"{RUN_DATE_COLUMN}={run_date}"), run_id)
        self.run_id = self.run_files.run_id
        self.staging = self.run_files.staging
        self.path = f"{ref.identifier} ({RUN_DATE_COLUMN}={run_date})"  # how logs and summary.json name it

    def staged(self, *parts: str) -> str:
        return self.run_files.staged(*parts)

    def decision(self) -> Any:
        return self.run_files.decision()

    def write_decision(self, summary: Any) -> None:
        self.run_files.write_decision(summary)

    def take_lease(self, pid_bound: bool) -> None:
        """No lease: the catalog's optimistic concurrency orders commits of the same date (module doc)."""

    def release_lease(self) -> None:
        pass

    def clean_up(self, grace: float = 0.0) -> list[str]:
        """Nothing: replaced runs' files stay for time travel until the table's snapshots are expired."""
        return []

    def snapshot_properties(self, rows: int) -> dict[str, str]:
        return {RUN_ID: self.run_id, RUN_DATE: self.run_date, ROWS: str(rows), FINGERPRINT: self.fingerprint,
                RUN_DIR: iceberg_path(self.staging)}

    def commit(self, files: list[str], job: str, rows: int) -> TableCommit | None:
        """Commit the run: its errors, then its codes, each in one snapshot; what the codes snapshot replaced.

        None when this run had already committed the codes (a retried finalize). TableCommitFailed if
        a table's commit lost to concurrent writers ``COMMIT_ATTEMPTS`` times.
        """
        by_folder: dict[str, list[str]] = {}
        for name in files:
            folder = name.split("/", 1)[0]
            if name.endswith(".parquet"):
                by_folder.setdefault(folder, []).append(self.staged(name))
        started = time.perf_counter()
        catalog = self.ref.load_catalog()
        errors_rows = _rows(by_folder.get("errors", []))
        self._replace(catalog, self.ref.identifier + ERRORS_SUFFIX, by_folder.get("errors", []), errors_rows)
        previous = self._replace(catalog, self.ref.identifier, by_folder.get("codes", []), rows,
                                 {FINGERPRINT: self.fingerprint})
        log.info("committed run %s to %s%s and %s in %.2fs", self.run_id, self.ref.identifier, ERRORS_SUFFIX,
                 self.ref.identifier, time.perf_counter() - started)
        return previous

    def _replace(self, catalog: Any, identifier: str, paths: list[str], rows: int,
                 table_properties: dict[str, str] | None = None) -> TableCommit | None:
        """One snapshot of ``identifier`` that replaces the run date's files by ``paths``, retried on conflicts."""
        from pyiceberg.exceptions import CommitFailedException, ValidationException
        from pyiceberg.expressions import EqualTo
        from pyiceberg.io.pyarrow import parquet_files_to_data_files

        # Empty shards (no rejected rows) hold no run date to partition them by, and no rows: not added.
        paths = [iceberg_path(p) for p in paths if _rows([p])]
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            table = catalog.load_table(identifier)
            if committed_snapshot(table, self.run_id) is not None:
                log.info("%s already has run %s's snapshot; nothing to commit", identifier, self.run_id)
                return None
            previous = latest_run(table, self.run_date)
            tx = table.transaction()
            old = [task.file for task in table.scan(row_filter=EqualTo(RUN_DATE_COLUMN, self.run_date)).plan_files()]
            new = list(parquet_files_to_data_files(table.io, tx.table_metadata, iter(paths)))
            with tx.update_snapshot(snapshot_properties=self.snapshot_properties(rows)).overwrite() as overwrite:
                for data_file in old:
                    overwrite.delete_data_file(data_file)
                for data_file in new:
                    overwrite.append_data_file(data_file)
            if table_properties:
                tx.set_properties(table_properties)
            try:  # pyiceberg retries a lost commit itself; it refuses (ValidationException) if files changed under it
                tx.commit_transaction()
            except (CommitFailedException, ValidationException) as exc:
                log.warning("commit of %s lost to another writer (attempt %d of %d): %s; re-reading the table",
                            identifier, attempt, COMMIT_ATTEMPTS, str(exc).splitlines()[0] if str(exc) else "")
                time.sleep(random.uniform(0.05, 0.2 * attempt))  # so two losers do not collide again at once
                continue
            return previous
        raise TableCommitFailed(f"{identifier}: every commit attempt ({COMMIT_ATTEMPTS}) lost to other writers; "
                                f"nothing of run {self.run_id} was committed there")

    def committed_here(self) -> bool:
        """Whether the codes table has this run's snapshot."""
        return committed_snapshot(self.ref.load(), self.run_id) is not None


def _rows(paths: list[str]) -> int:
    """Rows of Parquet files, from their footers."""
    import pyarrow.parquet as pq

    total = 0
    for path in paths:
        with FileSystems.open(path, compression_type="uncompressed") as handle:
            total += pq.ParquetFile(handle).metadata.num_rows
    return total


def committed_snapshot(table: Any, run_id: str) -> Any:
    """The table's snapshot made by run ``run_id``, or None."""
    for snapshot in table.snapshots():
        if snapshot.summary is not None and snapshot.summary.get(RUN_ID) == run_id:
            return snapshot
    return None


def latest_run(table: Any, run_date: str, snapshot_id: int | None = None) -> TableCommit | None:
    """The run whose snapshot last replaced ``run_date`` as of ``snapshot_id`` (default: the current one), or None."""
    snapshot = table.snapshot_by_id(snapshot_id) if snapshot_id is not None else table.current_snapshot()
    while snapshot is not None:
        summary = snapshot.summary
        if summary is not None and summary.get(RUN_DATE) == run_date:
            return TableCommit(summary.get(RUN_ID, ""), int(summary.get(ROWS, -1)))
        snapshot = table.snapshot_by_id(snapshot.parent_snapshot_id) if snapshot.parent_snapshot_id else None
    return None


# -- the read side -----------------------------------------------------------------------------------


def date_files(table: Any, identifier: str, run_date: str, snapshot_id: int | None = None) -> list[str]:
    """The data files (Beam paths) of ``run_date``'s rows at a snapshot (default: the current one).

    ValueError (one line) for an unknown snapshot, a date with no rows there, or rows with delete files
    (written by another engine: reading the files alone would bring back deleted rows).
    """
    from pyiceberg.expressions import EqualTo

    if snapshot_id is not None and table.snapshot_by_id(snapshot_id) is None:
        raise ValueError(f"--table {identifier} has no snapshot {snapshot_id}")
    tasks = list(table.scan(row_filter=EqualTo(RUN_DATE_COLUMN, run_date), snapshot_id=snapshot_id).plan_files())
    if any(task.delete_files for task in tasks):
        raise ValueError(f"--table {identifier}: {run_date}'s rows have delete files (row-level deletes by another "
                         "engine); compact the table first")
    if not tasks:
        raise ValueError(f"--table {identifier} has no rows of {RUN_DATE_COLUMN} {run_date}"
                         + (f" at snapshot {snapshot_id}" if snapshot_id is not None else ""))
    return sorted(beam_path(task.file.file_path) for task in tasks)


def run_dir_of(table: Any, identifier: str, run_date: str, snapshot_id: int | None = None) -> str:
    """The run directory (summary.json, errors, decoded rows) of the run that last committed ``run_date``."""
    snapshot = table.snapshot_by_id(snapshot_id) if snapshot_id is not None else table.current_snapshot()
    if snapshot_id is not None and snapshot is None:
        raise ValueError(f"--table {identifier} has no snapshot {snapshot_id}")
    while snapshot is not None:
        summary = snapshot.summary
        if summary is not None and summary.get(RUN_DATE) == run_date and summary.get(RUN_DIR):
            path = beam_path(summary.get(RUN_DIR))
            if read_text(FileSystems.join(path, "summary.json")) is None:
                raise ValueError(f"--table {identifier}: the run directory of {run_date}, {path}, has no summary.json")
            return path
        snapshot = table.snapshot_by_id(snapshot.parent_snapshot_id) if snapshot.parent_snapshot_id else None
    raise ValueError(f"--table {identifier} has no run of {RUN_DATE_COLUMN} {run_date}")
