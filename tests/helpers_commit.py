"""Shared by the commit tests on local disk (test_commit.py) and on S3 (test_s3.py): reading a partition as the
protocol says, running a job up to its finalize stage, and crashing finalize after each of its steps."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from seqcodec.pipeline import encode, finalize
from seqcodec.transforms import partition as protocol
from seqcodec.transforms.partition import committed_files


def ids_of(paths: list[str]) -> list[int]:
    """All ids in the given Parquet files (any Beam filesystem), sorted."""
    out: list[int] = []
    for path in paths:
        with FileSystems.open(path, compression_type="uncompressed") as handle:
            out += pq.read_table(handle, columns=["id"]).column("id").to_pylist()
    return sorted(out)


def committed_ids(part: str, folder: str = "codes") -> list[int] | None:
    """What a reader following the protocol reads from ``part``'s ``folder``: None while it has no commit."""
    files = committed_files(part, folder)
    return None if files is None else ids_of(files)


_CAPTURED: dict = {}


def _capture(_, plan, **side) -> dict:
    """Finalize's stand-in: keeps its arguments (a module global, so the in-process runner's copy reaches it)."""
    _CAPTURED.update(plan=plan, **side)
    return {}


def staged_run(monkeypatch, argv: list[str]) -> dict:
    """Run an encode job up to its finalize stage (shards written, lease held): finalize's arguments."""
    _CAPTURED.clear()
    with monkeypatch.context() as patch:
        patch.setattr(finalize, "finalize", _capture)  # the graph takes finalize when it is built
        built = encode.build(argv)
    built.plan.partition.take_lease(pid_bound=True)
    built.pipeline.run().wait_until_finish()
    assert _CAPTURED, "the job did not reach its finalize stage"
    return dict(_CAPTURED)


def at_once(func: Callable[..., dict], *args, **kwargs) -> tuple[list[dict], list[BaseException]]:
    """Call ``func`` from two threads released at the same moment: their results and their errors."""
    barrier, results, errors = threading.Barrier(2), [], []

    def attempt():
        barrier.wait()
        try:
            results.append(func(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            errors.append(exc)

    threads = [threading.Thread(target=attempt) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, errors


class Crash(Exception):
    """The injected failure: finalize's worker is lost right after a change to storage."""


def crash_after_each_step(monkeypatch, stage: Callable[[str], dict], part: str, ids: dict[str, list[int]],
                          current: str = "old") -> int:
    """For k = 1, 2, ...: a run's finalize crashes right after its k-th change to storage, then is retried.

    ``stage(name)`` runs a job of input ``name`` up to finalize; ``ids`` are each input's ids and
    ``current`` the one committed now. Each round commits the other input. Between the crash and
    the retry a reader sees one run whole (never neither, never a mix); after the retry the new
    run is committed; and the files a reader resolved before the first round still hold the run
    they held. Returns how many changes a whole finalize makes.
    """
    reader_files = committed_files(part, "codes")
    assert ids_of(reader_files) == ids[current]
    first = ids[current]
    k = 0
    while True:
        k += 1
        target = next(name for name in ids if name != current)
        side = stage(target)
        calls = {"n": 0}

        def counted(func, calls=calls, k=k):
            def wrapper(*args, **kwargs):
                result = func(*args, **kwargs)
                calls["n"] += 1
                if calls["n"] == k:
                    raise Crash(f"lost after change {k}: {getattr(func, '__name__', func)}")
                return result
            return wrapper

        with monkeypatch.context() as patch:
            patch.setattr(protocol, "write_text", counted(protocol.write_text))
            patch.setattr(protocol, "write_if", counted(protocol.write_if))
            patch.setattr(protocol, "_delete_tree", counted(protocol._delete_tree))
            patch.setattr(os, "replace", counted(os.replace))
            patch.setattr(FileSystems, "delete", counted(FileSystems.delete))
            try:
                finalize.finalize(None, **side)
                crashed = False
            except Crash:
                crashed = True
        seen = committed_ids(part)
        assert seen in (ids[current], ids[target]), f"after change {k}: {seen}"
        assert finalize.finalize(None, **side)["status"] == "published"  # the runner's retry
        assert committed_ids(part) == ids[target], f"the retry after change {k}"
        assert ids_of(reader_files) == first  # a reader midway keeps reading what it resolved
        current = target
        if not crashed:
            return k - 1
