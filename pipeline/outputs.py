"""A run's output partition: write into staging, check, then publish it whole with _SUCCESS as the commit marker.

Layout: ``--output DIR`` alone makes DIR the partition; with ``--run-date D`` the partition is
``DIR/dt=D``. Either way it holds ``codes/``, ``errors/`` (and ``decoded/``), ``summary.json``
and ``_SUCCESS``, and it is built in a hidden sibling ``.NAME.staging-RUNID`` that readers skip
(Hadoop, Spark and Arrow ignore names starting with ``.`` or ``_``).

Publishing (only after the whole run succeeded and its rows add up):

* Local / POSIX paths: ``_SUCCESS`` is written into staging last, the staged files are fsynced,
  then staging is swapped in whole. On Linux the swap is one atomic ``renameat2(RENAME_EXCHANGE)``
  (readers see the old partition or the new one, never neither); where that is not available it
  is two renames (old -> ``.NAME.old-RUNID``, staging -> NAME). A crash between those two leaves
  NAME missing and the previous partition, intact, in ``.NAME.old-RUNID``: the next publish of that
  partition (a retry of the same run, or a later run) puts it back first.
* Object stores (gs://, s3://, ...) have no atomic rename, not even for one object's "directory":
  the publish removes ``_SUCCESS`` first, moves the staged files in (``summary.json`` last), deletes
  files of the previous run that the new one did not write (so no stale shards), and writes
  ``_SUCCESS`` last. There, ``_SUCCESS`` is the only commit marker: readers must not read a
  partition without it.

``_SUCCESS`` holds the run id of the run that published. The publish runs inside the job (its
last stage) and a runner may retry that stage: a publish whose ``_SUCCESS`` already names its own
run does nothing, and one cut short is completed (see ``Partition.publish``).

Nothing is created before the job starts: ``Partition.check`` only looks; the job's writers
create staging.

Staging and ``.old-`` directories of runs that were killed are never published; the next
successful publish of the same partition deletes those older than itself.
"""

from __future__ import annotations

import ctypes
import datetime
import errno
import json
import logging
import os
import re
import shutil
import uuid
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from seqcodec.transforms.parquet_io import SUCCESS, SUMMARY, count_rows, matching_paths

log = logging.getLogger("seqcodec")

RUN_DATE_PATTERN = re.compile(r"\d{4}-\d{2}-\d{2}")


def check_run_date(value: str) -> str:
    """``value`` if it is a real calendar date written YYYY-MM-DD, else ValueError (one line)."""
    try:
        if not RUN_DATE_PATTERN.fullmatch(value):
            raise ValueError
        datetime.date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"--run-date must be a date written YYYY-MM-DD, got {value!r}") from None
    return value


def partition_path(output: str, run_date: str | None) -> str:
    """The run's partition: ``OUTPUT/dt=RUN_DATE``, or OUTPUT itself without a run date.

    ValueError if the two layouts would be mixed in one directory: a plain run would replace
    the whole directory, dated partitions included.
    """
    output = output.rstrip("/") or "/"
    if run_date is None:
        if FileSystems.get_scheme(output) is None:
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


# -- Linux's atomic exchange of two paths ------------------------------------------------------------

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _renameat2() -> Any:
    try:
        func = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # not glibc >= 2.28 / not Linux
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


def exchange_paths(a: str, b: str) -> bool:
    """Atomically swap two existing paths (Linux renameat2 RENAME_EXCHANGE); False if unsupported here."""
    func = _renameat2()
    if func is None:
        return False
    if func(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):  # kernel or filesystem says no
        return False
    raise OSError(err, f"cannot swap {b} into place: {os.strerror(err)}")


def _fsync_tree(root: str) -> None:
    """Flush every file under ``root`` and the directories themselves, so a publish survives a power cut."""
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


class Partition:
    """The published directory of one run and the staging directory it is built in (see the module doc).

    ``swap_dirs`` (default: for local paths) publishes by swapping whole directories; otherwise the
    object-store protocol is used (file by file, ``_SUCCESS`` last). ``exchange=False`` swaps with
    two renames even where the atomic exchange is available (what other systems get).
    """

    def __init__(self, path: str, *, swap_dirs: bool | None = None, exchange: bool = True) -> None:
        self.local = FileSystems.get_scheme(path) is None
        path = path.rstrip("/") or "/"
        self.path = os.path.abspath(path) if self.local else path
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        self.run_id = f"{stamp}-{uuid.uuid4().hex[:6]}"
        self.parent, self.name = FileSystems.split(self.path)
        self.staging = FileSystems.join(self.parent, f".{self.name}.staging-{self.run_id}")
        self.swap_dirs = self.local if swap_dirs is None else swap_dirs
        self.exchange = exchange
        if self.swap_dirs and not self.local:
            raise ValueError(f"{path}: directories can only be swapped on a local filesystem")

    def staged(self, *parts: str) -> str:
        return FileSystems.join(self.staging, *parts)

    def leftovers(self) -> list[tuple[str, str, str]]:
        """(run timestamp, "staging" or "old", path) of other runs' hidden directories for this partition."""
        own = re.compile(rf"\.{re.escape(self.name)}\.(staging|old)-(\d{{8}}T\d{{6}}(?:\.\d{{6}})?)Z?-[0-9a-f]+")
        if self.local:
            names = os.listdir(self.parent) if os.path.isdir(self.parent) else []
        else:
            found = matching_paths(FileSystems.join(self.parent, f".{self.name}.*", "**"))
            names = sorted({p[len(self.parent) :].lstrip("/").split("/", 1)[0] for p in found})
        out = []
        for name in names:
            hit = own.fullmatch(name)
            path = FileSystems.join(self.parent, name)
            if hit and path != self.staging:
                out.append((hit.group(2), hit.group(1), path))
        return sorted(out)

    def check(self) -> None:
        """Refuse, before the job starts and without touching anything, an output that publishing would destroy.

        An existing file (or a file where a parent directory must go), or a non-empty local directory
        that is not a seqcodec partition: publishing replaces the partition whole.
        """
        if self.local:
            ancestor = self.path
            while not os.path.exists(ancestor) and os.path.dirname(ancestor) != ancestor:
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

    def _restore_interrupted_swap(self) -> None:
        if os.path.exists(self.path):
            return
        olds = [p for _, kind, p in self.leftovers() if kind == "old" and os.path.exists(os.path.join(p, SUCCESS))]
        if olds:
            os.rename(olds[-1], self.path)
            log.warning("restored %s from %s (a previous publish was interrupted)", self.path, olds[-1])

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        """Write ``name`` (a JSON document) into staging."""
        with FileSystems.create(self.staged(name)) as handle:
            handle.write((json.dumps(data, indent=2, sort_keys=False) + "\n").encode())

    def committed_by(self) -> str | None:
        """The run id in the published partition's ``_SUCCESS`` ("" if written by an older version), else None."""
        try:
            with FileSystems.open(FileSystems.join(self.path, SUCCESS), compression_type="uncompressed") as handle:
                return handle.read().decode().strip()
        except Exception:  # missing (each filesystem raises its own type)
            return None

    def publish(self, files: list[str] | None = None) -> bool:
        """Replace the published partition with staging, _SUCCESS (holding the run id) last; drop older leftovers.

        ``files``: the partition's files relative to it, as recorded in the staged summary (default: what
        staging holds now). Idempotent per run id, so a runner may retry it: if ``_SUCCESS`` already names
        this run, an earlier attempt committed and nothing is done again (False); an attempt cut short is
        completed from where it stopped (the swap is one rename; on object stores files already moved
        are skipped, and ``files``, not staging, says which files belong to the partition).
        """
        if self.committed_by() == self.run_id:
            log.info("%s is already published by this run (%s): nothing to do", self.path, self.run_id)
            if FileSystems.exists(self.staging):  # an earlier attempt committed, then was cut short
                self._delete_tree(self.staging)
            return False
        if self.swap_dirs:
            self._restore_interrupted_swap()
            self._publish_by_swap()
        else:
            self._publish_by_moving_files(files)
        started = self.run_id.split("Z")[0]
        for stamp, _, path in self.leftovers():
            if stamp < started:
                log.info("removing %s, left by an earlier run that did not finish", path)
                self._delete_tree(path)
        return True

    def _publish_by_swap(self) -> None:
        with open(os.path.join(self.staging, SUCCESS), "wb") as handle:
            handle.write(self.run_id.encode())
        _fsync_tree(self.staging)
        if os.path.exists(self.path):
            if self.exchange and exchange_paths(self.staging, self.path):
                shutil.rmtree(self.staging)  # now the previous partition
            else:
                old = FileSystems.join(self.parent, f".{self.name}.old-{self.run_id}")
                os.rename(self.path, old)
                os.rename(self.staging, self.path)  # a crash just before this: the next publish restores `old`
                shutil.rmtree(old)
        else:
            os.makedirs(self.parent, exist_ok=True)
            os.rename(self.staging, self.path)
        _fsync_dir(self.parent)

    def _publish_by_moving_files(self, files: list[str] | None) -> None:
        success = FileSystems.join(self.path, SUCCESS)
        if FileSystems.exists(success):
            FileSystems.delete([success])  # un-commit: from here on readers must not trust this partition
        if files is None:
            files = staged_files(self)
        # The summary moves last: a published summary naming this run means every data file is in place.
        files = sorted(files, key=lambda name: (name == SUMMARY, name))
        moves = [(self.staged(name), FileSystems.join(self.path, name)) for name in files]
        moves = [(src, dst) for src, dst in moves if FileSystems.exists(src)]  # moved by a cut-short attempt
        if self.local:
            for folder in sorted({FileSystems.split(dst)[0] for _, dst in moves}):
                os.makedirs(folder, exist_ok=True)
        for src, dst in moves:  # one by one: a rename onto an existing object is a copy over it
            FileSystems.rename([src], [dst])
        targets = {FileSystems.join(self.path, name) for name in files}
        stale = sorted(set(matching_paths(FileSystems.join(self.path, "**"))) - targets - {success})
        if stale:
            FileSystems.delete(stale)
        with FileSystems.create(success) as handle:
            handle.write(self.run_id.encode())
        self._delete_tree(self.staging)

    def _delete_tree(self, path: str) -> None:
        if self.local:
            shutil.rmtree(path, ignore_errors=True)
        else:
            files = matching_paths(FileSystems.join(path, "**"))
            if files:
                FileSystems.delete(files)


def staged_files(partition: Partition) -> list[str]:
    """The files in ``partition``'s staging directory, relative to it, sorted."""
    found = matching_paths(FileSystems.join(partition.staging, "**"))
    return sorted(p[len(partition.staging) :].lstrip("/") for p in found if not p.endswith("/"))


def staged_rows(partition: Partition, folder: str) -> int:
    """Rows written to ``folder`` of the staging directory (0 if it has no shards)."""
    return count_rows(partition.staged(folder, "*.parquet"))


def reason_counts(pattern: str) -> dict[str, int]:
    """Rejected rows by reason, from the error shards' ``reason`` column alone."""
    counts: dict[str, int] = {}
    for path in matching_paths(pattern):
        with FileSystems.open(path, compression_type="uncompressed") as handle:
            reasons = pq.read_table(handle, columns=["reason"]).column("reason").to_numpy(zero_copy_only=False)
        for name, count in zip(*np.unique(reasons.astype(str), return_counts=True), strict=True):
            counts[str(name)] = counts.get(str(name), 0) + int(count)
    return dict(sorted(counts.items()))
