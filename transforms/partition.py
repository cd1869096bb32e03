"""A run's output partition: its run directory, the lease that fences runs, the one-way commit, and how readers find it.

This module owns the whole protocol; the job (pipeline/finalize.py) only decides *whether* to commit.

Layout (``--output DIR`` alone makes DIR the partition NAME; with ``--run-date D`` NAME is ``DIR/dt=D``)::

    PARENT/.NAME.run-RUNID/   the run's own files, written by its workers and never moved or renamed:
                              codes/ errors/ [decoded/ roundtrip/] (shards part-RUNID-SSSSS-of-NNNNN.parquet),
                              summary.json (the run's decision, written once before any commit), _SUCCESS
    PARENT/.NAME.lease        the run that may commit NAME now (taken at launch, checked before the commit)
    PARENT/NAME/_SUCCESS      the commit record (JSON): the committed run's id, run directory and files

The commit is one atomic step that only ever names a complete run directory:

* local disks: NAME is a symbolic link to the committed ``.NAME.run-RUNID``; committing replaces the
  link by a new one in one ``rename`` (readers see the old run or the new one, whole). Committing
  the same run twice, at once or one after the other, leaves the same link.
* object stores (gs://, s3://): committing writes the one object ``NAME/_SUCCESS``; readers follow
  its ``run_dir`` and ``files`` (see ``committed_files``), so nothing they read is ever overwritten.

Superseded run directories stay readable for ``GRACE_SECONDS`` after the commit that replaced them,
so a reader midway through the old files finishes; later commits into the same parent delete them.
A run that did not commit keeps its directory for inspection until the next commit of NAME.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import glob
import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

from apache_beam.io.filesystems import FileSystems

from seqcodec.model.errors import InputDataError

log = logging.getLogger("seqcodec")

SUCCESS = "_SUCCESS"  # the commit record, written last; readers wait for it
SUMMARY = "summary.json"  # the run's summary and decision, in its run directory
DATA_FOLDERS = ("codes", "decoded", "errors")
GRACE_SECONDS = 3600.0  # how long a superseded run stays readable after the commit that replaced it
LEASE_SECONDS = 6 * 3600.0  # how long a run may hold its partition without committing
RUN_DATE_PATTERN = re.compile(r"\d{4}-\d{2}-\d{2}")
RUN_ID_PATTERN = r"\d{8}T\d{6}\.\d{6}Z-[0-9a-f]+"
SHARD_NAME = re.compile(rf"part-(?:{RUN_ID_PATTERN}-)?\d{{5}}-of-\d{{5}}\.parquet")


def new_run_id() -> str:
    """A run id: its start time (UTC, sortable) and a random suffix."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"{stamp}-{uuid.uuid4().hex[:6]}"


def shard_prefix(run_dir: str, folder: str) -> str:
    """Where a writer puts ``folder``'s shards in a run directory: their names carry the run id."""
    run_id = FileSystems.split(run_dir.rstrip("/"))[1].rsplit(".run-", 1)[-1]
    return FileSystems.join(run_dir, folder, f"part-{run_id}")


def check_run_date(value: str) -> str:
    """``value`` if it is a real calendar date written YYYY-MM-DD, else ValueError (one line)."""
    try:
        if not RUN_DATE_PATTERN.fullmatch(value):
            raise ValueError
        datetime.date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"--run-date must be a date written YYYY-MM-DD, got {value!r}") from None
    return value


def is_local(path: str) -> bool:
    return FileSystems.get_scheme(path) is None


def read_text(path: str) -> str | None:
    """A small text file on any Beam filesystem, or None if it cannot be read (missing)."""
    try:
        with FileSystems.open(path, compression_type="uncompressed") as handle:
            return handle.read().decode()
    except Exception:  # each filesystem raises its own type for a missing file
        return None


def matching_paths(pattern: str) -> list[str]:
    """Files matching ``pattern``, sorted; empty when nothing matches (some filesystems raise then)."""
    try:
        return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
    except Exception:
        return []


def write_text(path: str, text: str) -> None:
    """Write a small file whole: locally through a temporary name and a rename (never half a file)."""
    if is_local(path):
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        with open(tmp, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    else:
        with FileSystems.create(path) as handle:  # one object: readers see all of it or none
            handle.write(text.encode())


def _s3(path: str) -> tuple[Any, str, str] | None:
    """(boto3 client, bucket, key) of an s3:// path, for the conditional writes S3 has; None elsewhere."""
    if not path.startswith("s3://"):
        return None
    try:
        from apache_beam.io.aws.clients.s3 import boto3_client
        from apache_beam.options.pipeline_options import PipelineOptions

        client = boto3_client.Client(options=FileSystems._pipeline_options or PipelineOptions([])).client
    except Exception:  # boto3 missing: Beam's own S3 filesystem cannot work either, and says so
        return None
    bucket, key = path[len("s3://"):].split("/", 1)
    return client, bucket, key


def read_versioned(path: str) -> tuple[str | None, str | None]:
    """A small file's text (None if missing) and, on S3, the version (ETag) that a conditional write can name."""
    s3 = _s3(path)
    if s3 is None:
        return read_text(path), None
    client, bucket, key = s3
    try:
        got = client.get_object(Bucket=bucket, Key=key)
    except client.exceptions.NoSuchKey:
        return None, None
    return got["Body"].read().decode(), got["ETag"]


def write_if(path: str, text: str, version: str | None) -> bool:
    """Write ``path`` only if it is still as read (``version``; None: it did not exist); False if another came first.

    S3 checks that itself (If-Match / If-None-Match); elsewhere the write is plain: local callers hold
    the parent's lock, and other object stores are checked by reading back.
    """
    s3 = _s3(path)
    if s3 is None:
        write_text(path, text)
        return True
    client, bucket, key = s3
    condition = {"IfMatch": version} if version else {"IfNoneMatch": "*"}
    try:
        client.put_object(Bucket=bucket, Key=key, Body=text.encode(), **condition)
    except client.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict", "412"):
            return False
        raise
    return True


# -- the commit record ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Commit:
    """What ``NAME/_SUCCESS`` says: which run's directory is the partition, and its files."""

    run_id: str
    run_dir: str  # the run directory's name, a sibling of the partition (".NAME.run-RUNID"); "" for legacy
    files: tuple[str, ...]  # relative to the run directory
    job: str  # "encode" or "decode"
    rows: int  # the main output's rows (codes or decoded)
    committed_at: float
    superseded: tuple[tuple[str, float], ...] = ()  # (run_id, when) of earlier runs not yet deleted
    replaced_rows: int = -1  # the main output's rows of the run this commit replaced (-1: none or unknown)

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["superseded"] = [list(item) for item in self.superseded]
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_text(cls, text: str) -> Commit:
        """The record; a plain run id (written before this protocol) is a legacy commit of NAME's own files."""
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            return cls(run_id=text.strip(), run_dir="", files=(), job="", rows=-1, committed_at=0.0)
        return cls(run_id=data["run_id"], run_dir=data["run_dir"], files=tuple(data["files"]), job=data["job"],
                   rows=int(data["rows"]), committed_at=float(data["committed_at"]),
                   superseded=tuple((str(r), float(t)) for r, t in data.get("superseded", [])),
                   replaced_rows=int(data.get("replaced_rows", -1)))


# -- the run's summary: its counts and its decision ---------------------------------------------------


PUBLISHED, NOT_PUBLISHED = "published", "not published"


@dataclasses.dataclass
class RunSummary:
    """``summary.json``: what a run read, wrote and rejected, and its decision. Written once, before any commit.

    In the file the fields are flat, as readers have always had them: ``rows_encoded`` or
    ``rows_decoded`` for ``rows_done``, and the model facts and round-trip figures of ``details``
    beside the rest.
    """

    run_id: str
    job: str  # "encode" or "decode"
    status: str  # PUBLISHED or NOT_PUBLISHED
    reason: str | None
    rows_read: int
    rows_done: int  # rows in the main output: codes (encode) or decoded rows (decode)
    rows_rejected: int
    rejected_by_reason: dict[str, int]
    partition: str
    run_dir: str
    files: list[str]  # relative to the run directory
    runner: str = ""
    elapsed_seconds: float = 0.0
    sequences_per_second: float | None = None
    max_error_rate: float = 1.0
    counters: dict[str, int] = dataclasses.field(default_factory=dict)  # the pipeline's own row counts
    shards_written: int = 0
    exit_code: int | None = None  # with NOT_PUBLISHED: what the launcher exits with
    details: dict[str, Any] = dataclasses.field(default_factory=dict)  # model facts, round trip, ...

    @property
    def published(self) -> bool:
        return self.status == PUBLISHED

    @property
    def done_key(self) -> str:
        return "rows_encoded" if self.job == "encode" else "rows_decoded"

    def refuse(self, reason: str, exit_code: int) -> None:
        self.status, self.reason, self.exit_code = NOT_PUBLISHED, reason, exit_code

    def to_dict(self) -> dict[str, Any]:
        head = {"status": self.status, "reason": self.reason, "job": self.job, "rows_read": self.rows_read,
                self.done_key: self.rows_done, "rows_rejected": self.rows_rejected,
                "rejected_by_reason": self.rejected_by_reason, "elapsed_seconds": self.elapsed_seconds,
                "sequences_per_second": self.sequences_per_second, "runner": self.runner, "run_id": self.run_id,
                "partition": self.partition, "run_dir": self.run_dir, "max_error_rate": self.max_error_rate}
        tail = {"counters": self.counters, "files": self.files, "shards_written": self.shards_written}
        if self.exit_code is not None:
            tail["exit_code"] = self.exit_code
        return {**head, **self.details, **tail}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSummary:
        job = data.get("job") or ("encode" if "rows_encoded" in data else "decode")
        done = "rows_encoded" if job == "encode" else "rows_decoded"
        known = {f.name for f in dataclasses.fields(cls)} - {"rows_done", "details"}
        own = {k: data[k] for k in known if k in data and k != "job"}
        details = {k: v for k, v in data.items() if k not in known and k not in ("job", done)}
        own.setdefault("run_dir", "")
        own.setdefault("files", [])
        return cls(job=job, rows_done=int(data.get(done, 0)), details=details, **own)


# -- the lease -----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Lease:
    """The run that may commit a partition: taken at launch, checked at commit, released after it."""

    run_id: str
    host: str
    pid: int
    pid_bound: bool  # the run ends with this process (a waiting launcher, or a runner inside it)
    taken: float
    expires: float

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self)) + "\n"

    @classmethod
    def from_text(cls, text: str) -> Lease | None:
        try:
            return cls(**json.loads(text))
        except (ValueError, TypeError):
            return None

    def live(self, now: float | None = None) -> bool:
        """Not expired, and (where this host can tell) its process still runs."""
        if (now or time.time()) >= self.expires:
            return False
        if self.pid_bound and self.host == socket.gethostname():
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                pass
        return True

    def describe(self) -> str:
        until = datetime.datetime.fromtimestamp(self.expires, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        return f"run {self.run_id} (host {self.host}, pid {self.pid}, lease until {until})"


class PartitionBusy(InputDataError):
    """Another live run holds the partition's lease: this run did not start (exit 75, like the cron lock)."""

    exit_code = 75  # EX_TEMPFAIL: try again later (the cron wrapper's lock says the same)


# -- the partition -------------------------------------------------------------------------------------


class Partition:
    """One run's view of its output partition: run directory, lease, commit, clean-up (see the module doc)."""

    def __init__(self, path: str, run_id: str | None = None) -> None:
        self.local = is_local(path)
        path = path.rstrip("/") or "/"
        self.path = os.path.abspath(path) if self.local else path
        self.run_id = run_id or new_run_id()
        self.parent, self.name = FileSystems.split(self.path)
        self.run_dir_name = f".{self.name}.run-{self.run_id}"
        self.staging = FileSystems.join(self.parent, self.run_dir_name)  # this run's directory
        self.lease_path = FileSystems.join(self.parent, f".{self.name}.lease")

    def started(self) -> float:
        """When this run started (its id's time stamp), as a Unix time."""
        stamp = datetime.datetime.strptime(self.run_id.split("Z")[0], "%Y%m%dT%H%M%S.%f")
        return stamp.replace(tzinfo=datetime.UTC).timestamp()

    def staged(self, *parts: str) -> str:
        return FileSystems.join(self.staging, *parts)

    # -- before the job: checks that touch nothing ----------------------------------------------------

    def check(self, job: str, inputs: tuple[str, ...] = ()) -> None:
        """Refuse an output that committing would wrongly replace; touches nothing. ValueError (one line).

        An existing file, a non-empty directory that is not a seqcodec partition, a partition the
        other kind of job wrote, or one that holds the job's own input.
        """
        if self.local:
            ancestor = self.path
            while not os.path.lexists(ancestor) and os.path.dirname(ancestor) != ancestor:
                ancestor = os.path.dirname(ancestor)
            if os.path.exists(ancestor) and not os.path.isdir(ancestor):
                raise ValueError(f"--output {self.path}: {ancestor} is a file, not a directory; choose another output")
            if os.path.isdir(self.path) and os.listdir(self.path) and not any(
                os.path.exists(os.path.join(self.path, marker)) for marker in (SUCCESS, SUMMARY)
            ):
                raise ValueError(
                    f"--output {self.path} is a non-empty directory that is not a seqcodec partition "
                    f"(no {SUCCESS}); publishing would replace it whole: remove it or choose another"
                )
        elif self.path in matching_paths(self.path):  # an object of exactly this name, not a prefix
            raise ValueError(f"--output {self.path} is a file (an object), not a directory; choose another output")
        for ancestor in _ancestors(self.parent):
            name = FileSystems.split(ancestor)[1]
            if re.fullmatch(rf"\..+\.run-{RUN_ID_PATTERN}", name) or FileSystems.exists(
                    FileSystems.join(ancestor, SUCCESS)):
                raise ValueError(f"--output {self.path} lies inside the partition {ancestor}: choose another output")
        current = self.committed()
        if current is not None and current.job and current.job != job:
            raise ValueError(
                f"--output {self.path} holds the partition of {current.job} run {current.run_id}; "
                f"a {job} job would replace it: choose another output"
            )
        mine = self._own_prefixes()
        for path in inputs:
            where = os.path.realpath(path) if self.local else path
            if any(where == p or where.startswith(p) for p in mine):
                raise ValueError(
                    f"--input {path} lies inside the partition {self.path} that this run would replace: "
                    "choose another --output"
                )

    def _own_prefixes(self) -> list[str]:
        """Prefixes of the paths whose files this partition's commits replace: NAME and its run directories."""
        prefixes = [self.path + "/", FileSystems.join(self.parent, f".{self.name}.run-")]
        if self.local:
            prefixes.append(os.path.realpath(self.path) + "/")
        return prefixes

    # -- the lease --------------------------------------------------------------------------------------

    def lease(self) -> Lease | None:
        text = read_text(self.lease_path)
        return Lease.from_text(text) if text is not None else None

    def take_lease(self, pid_bound: bool, seconds: float = LEASE_SECONDS) -> None:
        """Hold the partition for this run; PartitionBusy (nothing written) if another live run holds it.

        Locally an exclusive create, so two launchers never both win; an expired lease, or one whose
        process on this host has ended, is taken over (that run, if it still runs, will not commit).
        """
        now = time.time()
        mine = Lease(self.run_id, socket.gethostname(), os.getpid(), pid_bound, now, now + seconds)
        with self._lock():
            text, version = read_versioned(self.lease_path)
            held = Lease.from_text(text) if text is not None else None
            if held is not None and held.run_id != self.run_id and held.live(now):
                raise PartitionBusy(
                    f"{self.path} is being written by {held.describe()}; this run did not start "
                    "(run again when it has finished)"
                )
            if held is not None:
                log.warning("taking over %s from %s: it has ended or its lease expired", self.path, held.describe())
            if self.local:
                os.makedirs(self.parent, exist_ok=True)
                if held is None:
                    try:
                        fd = os.open(self.lease_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                    except FileExistsError:
                        raise PartitionBusy(f"{self.path} is being written by another run; this run did not start") \
                            from None
                    with os.fdopen(fd, "w") as handle:
                        handle.write(mine.to_json())
                    return
            if not write_if(self.lease_path, mine.to_json(), version) or not self.holds_lease():
                raise PartitionBusy(f"{self.path} is being written by another run that started at the same moment; "
                                    "this run did not start")

    def holds_lease(self) -> bool:
        held = self.lease()
        return held is not None and held.run_id == self.run_id

    def release_lease(self) -> None:
        """Give the partition up, if this run holds it."""
        with self._lock():
            if self.holds_lease():
                FileSystems.delete([self.lease_path])

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """Locally, an exclusive lock on the parent folder between this host's processes; object stores have none."""
        if not self.local or not os.path.isdir(self.parent):
            yield
            return
        import fcntl

        fd = os.open(self.parent, os.O_RDONLY | os.O_DIRECTORY)  # the parent itself: no lock file to leave behind
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # -- the commit -------------------------------------------------------------------------------------

    def committed(self) -> Commit | None:
        """The partition's commit record, or None if it was never committed."""
        text = read_text(FileSystems.join(self.path, SUCCESS))
        return Commit.from_text(text) if text is not None else None

    def committed_by(self) -> str | None:
        current = self.committed()
        return current.run_id if current is not None else None

    def write_decision(self, summary: RunSummary) -> None:
        """The run's summary and decision, once, in its own directory (no later step moves it)."""
        write_text(self.staged(SUMMARY), json.dumps(summary.to_dict(), indent=2, sort_keys=False) + "\n")

    def decision(self) -> RunSummary | None:
        """This run's recorded decision, if an earlier attempt wrote it."""
        text = read_text(self.staged(SUMMARY))
        if text is None:
            return None
        data = json.loads(text)
        return RunSummary.from_dict(data) if data.get("run_id") == self.run_id else None

    def commit(self, files: list[str], job: str, rows: int) -> Commit | None:
        """Make this run's directory the partition, in one atomic step; the previous commit, or None if none.

        PartitionBusy if another run holds the lease (this run does not commit). Idempotent: a run
        already committed is not committed again, and two attempts at once leave the same partition.
        """
        with self._lock():
            text, version = read_versioned(FileSystems.join(self.path, SUCCESS))
            previous = Commit.from_text(text) if text is not None else None
            if previous is not None and previous.run_id == self.run_id:
                log.info("%s is already committed by this run (%s)", self.path, self.run_id)
                if self.holds_lease():  # an earlier attempt was lost between its commit and the release
                    FileSystems.delete([self.lease_path])
                return None
            held = self.lease()
            if held is None or held.run_id != self.run_id:
                raise PartitionBusy(
                    f"this run no longer holds the lease of {self.path} "
                    f"({'taken over by ' + held.describe() if held else 'it was removed'}); not committed"
                )
            now = time.time()
            superseded = [*(previous.superseded if previous else ())]
            if previous is not None:
                superseded.append((previous.run_id, now))
            replaced_rows = previous.rows if previous is not None else -1
            if previous is not None and replaced_rows < 0:  # a legacy commit: its summary has the rows
                replaced_rows = int((committed_summary(self.path) or {}).get(f"rows_{job}d", -1))
            record = Commit(self.run_id, self.run_dir_name, tuple(sorted(files)), job, rows, now, tuple(superseded),
                            replaced_rows)
            if self.local:
                self._commit_link(record)
            elif not write_if(FileSystems.join(self.path, SUCCESS), record.to_json(), version):
                if self.committed_by() != self.run_id:  # not an attempt of this run that came first
                    raise PartitionBusy(f"run {self.committed_by()} committed {self.path} meanwhile; not committed")
            FileSystems.delete([self.lease_path])
        return previous

    def _commit_link(self, record: Commit) -> None:
        write_text(self.staged(SUCCESS), record.to_json())
        _fsync_tree(self.staging)
        link = os.path.join(self.parent, f".{self.name}.link-{uuid.uuid4().hex[:8]}")
        os.symlink(self.run_dir_name, link)
        if os.path.isdir(self.path) and not os.path.islink(self.path):  # a partition written before run directories
            legacy = os.path.join(self.parent, f".{self.name}.run-{self._legacy_id()}")
            if not _exchange(link, self.path):
                os.rename(self.path, legacy)
                os.replace(link, self.path)
            else:
                os.rename(link, legacy)
        else:
            os.replace(link, self.path)
        _fsync_dir(self.parent)

    def _legacy_id(self) -> str:
        current = self.committed()
        return current.run_id if current is not None and re.fullmatch(RUN_ID_PATTERN, current.run_id) else new_run_id()

    # -- clean-up ---------------------------------------------------------------------------------------

    def run_dirs(self) -> list[tuple[str, str]]:
        """(run id, path) of every run directory of this partition, this run's included, oldest first."""
        own = re.compile(rf"\.{re.escape(self.name)}\.(?:run|staging|old)-({RUN_ID_PATTERN})")
        if self.local:
            names = os.listdir(self.parent) if os.path.isdir(self.parent) else []
        else:
            found = matching_paths(FileSystems.join(self.parent, f".{self.name}.*", "**"))
            names = sorted({p[len(self.parent):].lstrip("/").split("/", 1)[0] for p in found})
        out = [(hit.group(1), FileSystems.join(self.parent, n)) for n in names if (hit := own.fullmatch(n))]
        return sorted(out)

    def clean_up(self, grace: float = GRACE_SECONDS) -> list[str]:
        """After this run committed: delete this partition's runs that never committed, and superseded runs
        past their grace period, of this partition and of the others beside it (so a date rerun once does
        not keep its replaced run for ever). The committed run and a run holding the lease are never
        touched. Returns what was deleted.
        """
        current = self.committed()
        if current is None:
            return []
        when = dict(current.superseded)
        held = self.lease()
        live = held.run_id if held is not None and held.live() else None
        now = time.time()
        doomed = [path for run_id, path in self.run_dirs()
                  if run_id not in (current.run_id, live) and now - when.get(run_id, 0.0) >= grace]
        doomed += self._expired_beside(grace, now)
        for path in doomed:
            _delete_tree(path, self.local)
            log.info("removed %s (replaced or never committed)", path)
        return doomed

    def _expired_beside(self, grace: float, now: float) -> list[str]:
        """Run directories of the other partitions in this parent whose commit replaced them over ``grace`` ago."""
        if self.local:
            names = os.listdir(self.parent) if os.path.isdir(self.parent) else []
        else:
            found = matching_paths(FileSystems.join(self.parent, ".*.run-*", SUMMARY))
            names = sorted({p[len(self.parent):].lstrip("/").split("/", 1)[0] for p in found})
        pattern = re.compile(rf"\.(.+)\.run-({RUN_ID_PATTERN})")
        runs: dict[str, dict[str, str]] = {}
        for name in names:
            hit = pattern.fullmatch(name)
            if hit and hit.group(1) != self.name:
                runs.setdefault(hit.group(1), {})[hit.group(2)] = FileSystems.join(self.parent, name)
        out = []
        for other, dirs in sorted(runs.items()):
            text = read_text(FileSystems.join(self.parent, other, SUCCESS))
            record = Commit.from_text(text) if text is not None else None
            if record is None or not record.run_dir:
                continue
            out += [dirs[run_id] for run_id, at in record.superseded if run_id in dirs and now - at >= grace]
        return out


def _ancestors(path: str) -> list[str]:
    """``path`` and the folders above it (locally resolved; on object stores up to the bucket)."""
    if is_local(path):
        path = os.path.realpath(path)
        out = [path]
        while os.path.dirname(out[-1]) != out[-1]:
            out.append(os.path.dirname(out[-1]))
        return out
    scheme, rest = path.split("://", 1)
    parts = rest.rstrip("/").split("/")
    return [f"{scheme}://" + "/".join(parts[:i]) for i in range(len(parts), 1, -1)]


def _exchange(a: str, b: str) -> bool:
    """Atomically swap two existing paths (Linux renameat2 RENAME_EXCHANGE); False if unsupported here."""
    import ctypes

    try:
        func = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    func.restype = ctypes.c_int
    if func(-100, os.fsencode(a), -100, os.fsencode(b), 2) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, f"cannot swap {a} into place: {os.strerror(err)}")


def _fsync_tree(root: str) -> None:
    """Flush every file under ``root`` and the directories themselves, so a commit survives a power cut."""
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(folder)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _delete_tree(path: str, local: bool) -> None:
    if local:
        shutil.rmtree(path, ignore_errors=True)
    else:
        files = matching_paths(FileSystems.join(path, "**"))
        if files:
            FileSystems.delete(files)


# -- the layout of OUTPUT ------------------------------------------------------------------------------


def partition_path(output: str, run_date: str | None) -> str:
    """The run's partition: ``OUTPUT/dt=RUN_DATE``, or OUTPUT itself without a run date.

    ValueError if the two layouts would be mixed in one directory: a plain run would replace
    the whole directory, dated partitions included.
    """
    output = output.rstrip("/") or "/"
    if run_date is None:
        if is_local(output):
            dated = os.path.isdir(output) and any(
                name.startswith("dt=") and os.path.exists(os.path.join(output, name, SUCCESS))
                for name in os.listdir(output)
            )
        else:
            dated = bool(matching_paths(FileSystems.join(output, "dt=*", SUCCESS)))
        if dated:
            raise ValueError(
                f"--output {output} holds dated partitions (dt=...); pass --run-date, or use another directory "
                "(a run without --run-date replaces the whole directory)"
            )
        return output
    check_run_date(run_date)
    if FileSystems.exists(FileSystems.join(output, SUCCESS)):
        raise ValueError(
            f"--output {output} is itself a published partition (it has {SUCCESS}); "
            "dated runs need a directory of their own"
        )
    return FileSystems.join(output, f"dt={run_date}")


# -- the read side -------------------------------------------------------------------------------------


def _committed(partition: str) -> tuple[Commit, str] | None:
    """The partition's commit record and where its run's files are (NAME itself for a legacy commit), or None."""
    partition = partition.rstrip("/")
    text = read_text(FileSystems.join(partition, SUCCESS))
    if text is None:
        return None
    record = Commit.from_text(text)
    if not record.run_dir:
        return record, partition
    return record, FileSystems.join(FileSystems.split(partition)[0], record.run_dir)


def committed_run_dir(partition: str) -> str | None:
    """Where the committed run's files are (its run directory; NAME itself for a legacy commit), or None."""
    found = _committed(partition)
    return found[1] if found else None


def committed_files(partition: str, folder: str | None = None) -> list[str] | None:
    """The committed run's files (full paths; only those under ``folder`` if given), or None if uncommitted.

    Readers of a partition must use these, not a listing of NAME: on object stores NAME holds only
    ``_SUCCESS``, and a local reader that resolves them once keeps reading one run even if the
    partition is committed again meanwhile (the old run directory stays for ``GRACE_SECONDS``).
    """
    found = _committed(partition)
    if found is None:
        return None
    record, root = found
    if not record.run_dir:  # legacy: every file NAME holds, as its summary.json lists them if it does
        summary_text = read_text(FileSystems.join(root, SUMMARY))
        listed = None
        with contextlib.suppress(ValueError, AttributeError):
            listed = json.loads(summary_text or "").get("files")
        if isinstance(listed, list):
            names = list(listed)
        else:
            names = [p[len(root):].lstrip("/") for p in matching_paths(FileSystems.join(root, "**"))]
    else:
        names = list(record.files)
    if is_local(root):
        root = os.path.realpath(root)
    if folder is not None:
        names = [n for n in names if n.startswith(folder.rstrip("/") + "/")]
    return sorted(FileSystems.join(root, n) for n in names)


def partition_inputs(pattern: str) -> list[str] | None:
    """The committed files a pattern naming partitions' folders means (``P/codes``, ``P/codes/*.parquet``), or None.

    ``P`` may itself hold wildcards (``OUT/dt=*``). InputDataError if a partition it names has no
    commit. None if the pattern does not name a seqcodec partition's folder: it is read as it is.
    """
    trimmed = pattern.rstrip("/")
    head, last = FileSystems.split(trimmed)
    if last.endswith(".parquet") and any(c in last for c in "*?["):
        trimmed = head
    partition, folder = FileSystems.split(trimmed)
    if folder not in DATA_FOLDERS or FileSystems.split(partition)[1].startswith("."):
        return None
    if any(c in partition for c in "*?["):
        partitions = [FileSystems.split(p)[0] for p in matching_paths(FileSystems.join(partition, SUCCESS))]
    elif FileSystems.exists(FileSystems.join(partition, SUCCESS)):
        partitions = [partition]
    elif not seqcodec_files(partition, folder):
        return None  # a user's own folder that happens to be called codes/
    else:  # seqcodec's files without a commit: a run in progress or failed, or a half copy
        raise InputDataError(
            f"{pattern}: {partition} is not committed (no {SUCCESS}); its run is still running or failed: "
            f"wait for {FileSystems.join(partition, SUCCESS)}"
        )
    out: list[str] = []
    for p in partitions:
        out += [f for f in committed_files(p, folder) or [] if f.endswith(".parquet")]
    return out


def seqcodec_files(partition: str, folder: str | None = None) -> bool:
    """Whether ``partition`` (uncommitted) holds seqcodec's files: a summary, shards, or runs of its own."""
    parent, name = FileSystems.split(partition.rstrip("/"))
    if FileSystems.exists(FileSystems.join(partition, SUMMARY)):
        return True
    if matching_paths(FileSystems.join(parent, f".{name}.run-*", SUMMARY)) or (
            is_local(partition) and glob.glob(os.path.join(glob.escape(parent), f".{glob.escape(name)}.run-*"))):
        return True
    folders = [folder] if folder else DATA_FOLDERS
    shards = [path for name in folders for path in matching_paths(FileSystems.join(partition, name, "*"))]
    return any(SHARD_NAME.fullmatch(FileSystems.split(path)[1]) for path in shards)


def committed_summary(partition: str) -> dict[str, Any] | None:
    """The committed run's summary.json, or None if the partition has no commit."""
    root = committed_run_dir(partition)
    if root is None:
        return None
    text = read_text(FileSystems.join(root, SUMMARY))
    return json.loads(text) if text else None
