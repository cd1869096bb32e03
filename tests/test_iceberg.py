"""Iceberg table output (``encode --table``) on a real pyiceberg SQL catalog (sqlite file) with a local and an s3://
(moto) warehouse, read back by readers that are not ours: a pyiceberg scan and Polars' ``scan_iceberg``.

Real jobs on the in-process DirectRunner; the catalog is configured the pyiceberg way (PYICEBERG_CATALOG__*
environment variables), and the readers open the catalog on their own, without any of seqcodec's code.
"""

from __future__ import annotations

import datetime
import json
import os
import threading
import time
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyiceberg.io.pyarrow
import pytest
from conftest import TINY, build_codec, run_seqcodec, token_file
from helpers_commit import at_once, staged_run
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.expressions import EqualTo
from test_s3 import BUCKET, s3  # noqa: F401 - the moto server fixture

from seqcodec.model.config import CodecConfig
from seqcodec.model.storage import save_codec
from seqcodec.pipeline import finalize
from seqcodec.transforms import table as table_io

# Polars plans Iceberg scans with pyiceberg unless its optional polars_iceberg plugin is installed, and says so.
pytestmark = pytest.mark.filterwarnings("ignore:Iceberg scan planning with the polars_iceberg plugin")

D1, D2 = "2026-11-26", "2026-11-27"
TABLE = "nightly.codes"


def catalog_env(name: str, db: Path, warehouse: str, **extra: str) -> dict[str, str]:
    """The PYICEBERG_CATALOG__NAME__* variables of a SQL catalog on a sqlite file."""
    var = f"PYICEBERG_CATALOG__{name.upper()}__"
    return {f"{var}TYPE": "sql", f"{var}URI": f"sqlite:///{db}", f"{var}WAREHOUSE": warehouse,
            **{var + key: value for key, value in extra.items()}}


def reader_catalog(env: dict[str, str]) -> SqlCatalog:
    """The same catalog opened by pyiceberg alone (a reader that is not ours), from the variables' values.

    Same name: a SQL catalog keeps its tables under its name.
    """
    name = next(iter(env)).split("__")[1].lower()
    props = {key.split("__", 2)[2].lower().replace("__", ".").replace("_", "-"): v for key, v in env.items()}
    kind = props.pop("type")
    assert kind == "sql"
    return SqlCatalog(name, **props)


def one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("seqcodec: error: ")]
    assert len(lines) == 1 and err.strip().splitlines()[-1] == lines[0], err
    return lines[0]


def encode(env: dict[str, str], tokens: Path, model: Path, run_date: str, *extra) -> tuple[int, str, str]:
    """``seqcodec encode --table`` in this process with the catalog's variables set."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return run_seqcodec(["encode", "--input", tokens, "--model-dir", model, "--table", TABLE,
                             "--run-date", run_date, *extra])
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def ids_on(table, run_date: str, snapshot_id: int | None = None) -> list[int]:
    """A pyiceberg scan's ids of one run date (at a snapshot, default the current one)."""
    rows = table.scan(row_filter=EqualTo("run_date", run_date), snapshot_id=snapshot_id).to_arrow()
    return sorted(rows.column("id").to_pylist())


def polars_ids(table, run_date: str, snapshot_id: int | None = None, **storage) -> list[int]:
    """Polars' own Iceberg reader: the ids of one run date."""
    frame = pl.scan_iceberg(table, snapshot_id=snapshot_id, storage_options=storage or None)
    rows = frame.filter(pl.col("run_date") == datetime.date.fromisoformat(run_date)).select("id").collect()
    return sorted(rows["id"].to_list())


def run_ids(table) -> list[str]:
    return [s.summary.get("seqcodec.run_id") for s in table.snapshots()]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    """Token files: last night (200 rows, 4 rejected), the next date (60), and the rerun of last night (120, 3)."""
    root = tmp_path_factory.mktemp("iceberg-inputs")
    first, first_ok, _ = token_file(root / "first.parquet", 200, bad_every=50, seed=1)
    second, second_ok, _ = token_file(root / "second.parquet", 60, seed=2)
    rerun, rerun_ok, rerun_bad = token_file(root / "rerun.parquet", 120, bad_every=40, seed=3)
    bad, _, _ = token_file(root / "bad.parquet", 40, bad_every=2, seed=4)
    return {"first": (first, first_ok), "second": (second, second_ok), "rerun": (rerun, rerun_ok, rerun_bad),
            "bad": bad}


def nightly(env: dict[str, str], inputs: dict, model: Path, *extra) -> list[tuple[int, str, str]]:
    """Last night, the next date, then last night again (a rerun with other rows)."""
    return [encode(env, inputs["first"][0], model, D1, *extra), encode(env, inputs["second"][0], model, D2, *extra),
            encode(env, inputs["rerun"][0], model, D1, *extra)]


@pytest.fixture(scope="module")
def local(tmp_path_factory, inputs, tiny_model_dir) -> dict:
    """The nightly sequence into a table on a local warehouse."""
    root = tmp_path_factory.mktemp("iceberg-local")
    (root / "warehouse").mkdir()
    env = catalog_env("default", root / "catalog.db", f"file://{root}/warehouse")
    started = time.perf_counter()
    results = nightly(env, inputs, tiny_model_dir)
    return {"env": env, "root": root, "results": results, "seconds": time.perf_counter() - started}


def test_nightly_runs_and_a_rerun_replace_the_date_in_one_snapshot_each(local, inputs, tiny_model_dir):
    assert [code for code, _, _ in local["results"]] == [0, 0, 0], local["results"]
    catalog = reader_catalog(local["env"])
    codes = catalog.load_table(TABLE)
    # One snapshot per run, each named by its run; the rerun replaced last night's rows, the other date is untouched.
    assert len(codes.snapshots()) == 3 and all(run_ids(codes))
    assert ids_on(codes, D1) == inputs["rerun"][1]
    assert ids_on(codes, D2) == inputs["second"][1]
    assert len(codes.scan().to_arrow()) == len(inputs["rerun"][1]) + len(inputs["second"][1])  # no duplicates
    # The snapshot before the rerun is still readable by time travel: last night as it was.
    before = codes.snapshots()[-2].snapshot_id
    assert ids_on(codes, D1, before) == inputs["first"][1]
    # Partitioned by the run date; the table says which model and code size it holds.
    assert [(f.name, str(f.transform)) for f in codes.spec().fields] == [("run_date", "identity")]
    manifest = json.loads((tiny_model_dir / "manifest.json").read_text())
    assert codes.properties["seqcodec.code_size"] == str(TINY["hidden_size"] + 1)
    assert codes.properties["seqcodec.fingerprint"] == manifest["fingerprint"]
    last = codes.current_snapshot().summary
    assert last.get("seqcodec.run_date") == D1 and last.get("seqcodec.rows") == str(len(inputs["rerun"][1]))
    assert last.get("seqcodec.fingerprint") == manifest["fingerprint"]
    # The codes are the model's: code[0] is the length.
    rows = codes.scan(row_filter=EqualTo("run_date", D1)).to_arrow()
    assert pc.all(pc.equal(pc.list_element(rows.column("code"), 0), pc.cast(rows.column("length"), "float32"))).as_py()
    # Rejected rows: their own table, replaced per date the same way.
    errors = catalog.load_table(TABLE + "_errors")
    assert ids_on(errors, D1) == inputs["rerun"][2]
    assert set(errors.scan(row_filter=EqualTo("run_date", D1)).to_arrow().column("reason").to_pylist()) == {
        "token_out_of_range"}


def test_polars_reads_the_latest_snapshot_and_last_nights(local, inputs):
    codes = reader_catalog(local["env"]).load_table(TABLE)
    assert polars_ids(codes, D1) == inputs["rerun"][1]
    assert polars_ids(codes, D2) == inputs["second"][1]
    assert polars_ids(codes, D1, codes.snapshots()[-2].snapshot_id) == inputs["first"][1]


def test_decode_and_report_read_the_table(local, inputs, tiny_model_dir, tmp_path, monkeypatch):
    for key, value in local["env"].items():
        monkeypatch.setenv(key, value)
    codes = reader_catalog(local["env"]).load_table(TABLE)
    before = codes.snapshots()[-2].snapshot_id
    for out, extra, expected in ((tmp_path / "now", [], inputs["rerun"][1]),
                                 (tmp_path / "before", ["--snapshot-id", before], inputs["first"][1])):
        code, _, err = run_seqcodec(["decode", "--table", TABLE, "--run-date", D1, "--model-dir", tiny_model_dir,
                                     "--output", out, *extra])
        assert code == 0, err
        decoded = pl.read_parquet(str(out / f"dt={D1}" / "decoded" / "*.parquet"))
        assert sorted(decoded["id"].to_list()) == expected
    code, _, err = run_seqcodec(["decode", "--table", TABLE, "--run-date", "2026-01-01", "--model-dir",
                                 tiny_model_dir, "--output", tmp_path / "none"])
    assert code == 2 and "has no rows of run_date 2026-01-01" in one_line(err)
    code, out, err = run_seqcodec(["report", "--table", TABLE, "--run-date", D1, "--out", tmp_path / "report"])
    assert code == 0, err
    assert (tmp_path / "report" / "report.png").stat().st_size > 0
    assert "120" in (tmp_path / "report" / "report.html").read_text()  # the rerun's rows_read


def test_a_gated_run_commits_nothing(local, inputs, tiny_model_dir):
    catalog = reader_catalog(local["env"])
    before = {name: len(catalog.load_table(name).snapshots()) for name in (TABLE, TABLE + "_errors")}
    code, _, err = encode(local["env"], inputs["bad"], tiny_model_dir, D1)
    assert code == 3 and "rows rejected" in one_line(err), err
    after = {name: len(catalog.load_table(name).snapshots()) for name in (TABLE, TABLE + "_errors")}
    assert after == before
    assert ids_on(catalog.load_table(TABLE), D1) == inputs["rerun"][1]
    runs = sorted((local["root"] / "warehouse").glob(f"nightly/codes/seqcodec/.run_date={D1}.run-*/summary.json"))
    assert json.loads(runs[-1].read_text())["status"] == "not published"


def test_a_model_of_another_code_size_is_refused_before_it_runs(local, inputs, tmp_path, private_tmp):
    """The table is checked after the pipeline is made (last): the refused run leaves nothing in /tmp either."""
    other = tmp_path / "model"
    save_codec(build_codec(CodecConfig(**{**TINY, "hidden_size": 8}), seed=1), other, metrics={})
    catalog = reader_catalog(local["env"])
    before = len(catalog.load_table(TABLE).snapshots())
    runs_before = len(list((local["root"] / "warehouse").glob("nightly/codes/seqcodec/.run_date=*")))
    code, _, err = encode(local["env"], inputs["first"][0], other, D1)
    assert code == 2 and "holds codes of size 17" in one_line(err) and "code size 9" in err
    assert len(catalog.load_table(TABLE).snapshots()) == before
    assert len(list((local["root"] / "warehouse").glob("nightly/codes/seqcodec/.run_date=*"))) == runs_before
    assert list(private_tmp.iterdir()) == []


def test_a_table_of_another_layout_is_refused_before_it_runs(fresh, inputs, tiny_model_dir):
    catalog = reader_catalog(fresh["env"])
    catalog.create_namespace("nightly")
    other = catalog.create_table(TABLE, schema=pa.schema([("id", pa.int64()), ("run_date", pa.date32())]))
    code, _, err = run_seqcodec(["encode", *fresh["argv"]("first")])
    assert code == 2 and "not by run_date alone" in one_line(err)
    with other.update_spec() as spec:
        spec.add_identity("run_date")
    with other.transaction() as tx:
        tx.set_properties({"write.update.isolation-level": "snapshot"})
    code, _, err = run_seqcodec(["encode", *fresh["argv"]("first")])
    assert code == 2 and "write.update.isolation-level=snapshot" in one_line(err)
    with other.transaction() as tx:
        tx.remove_properties("write.update.isolation-level")
    code, _, err = run_seqcodec(["encode", *fresh["argv"]("first")])  # the table has no length or code column
    assert code == 2 and "this run's rows do not fit the table's schema" in one_line(err)
    assert catalog.load_table(TABLE).snapshots() == []


def test_a_catalog_that_is_not_configured_is_one_line_with_the_sqlite_variables(inputs, tiny_model_dir):
    code, _, err = encode({}, inputs["first"][0], tiny_model_dir, D1, "--catalog", "nowhere")
    line = one_line(err)
    assert code == 2 and "no pyiceberg catalog 'nowhere' is configured" in line
    assert "PYICEBERG_CATALOG__NOWHERE__TYPE=sql" in line and "__URI=sqlite:///" in line and "__WAREHOUSE=" in line


def test_without_pyiceberg_the_extra_is_named(inputs, tiny_model_dir, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "pyiceberg.catalog", None)  # as if not installed
    code, _, err = encode({}, inputs["first"][0], tiny_model_dir, D1)
    assert code == 2 and "pip install 'seqcodec[iceberg]'" in one_line(err)


def test_table_and_output_are_exclusive_and_a_table_needs_a_run_date(inputs, tiny_model_dir, tmp_path):
    code, _, err = run_seqcodec(["encode", "--input", inputs["first"][0], "--model-dir", tiny_model_dir,
                                 "--table", TABLE, "--output", tmp_path / "out", "--run-date", D1])
    assert code == 2 and "--table replaces --output" in one_line(err)
    code, _, err = run_seqcodec(["encode", "--input", inputs["first"][0], "--model-dir", tiny_model_dir,
                                 "--table", TABLE])
    assert code == 2 and "--table needs --run-date" in one_line(err)


# -- commits of the same date at once --------------------------------------------------------------------


@pytest.fixture
def fresh(tmp_path, monkeypatch, inputs, tiny_model_dir) -> dict:
    """An empty local warehouse, its catalog configured in this process's environment."""
    (tmp_path / "warehouse").mkdir()
    env = catalog_env("default", tmp_path / "catalog.db", f"file://{tmp_path}/warehouse")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return {"env": env, "argv": lambda name: [str(a) for a in (
        "--input", inputs[name][0], "--model-dir", tiny_model_dir, "--table", TABLE, "--run-date", D1)]}


def test_a_retried_finalize_commits_once_even_twice_at_once(fresh, inputs, monkeypatch):
    side = staged_run(monkeypatch, fresh["argv"]("first"))
    for key in fresh["env"]:  # a worker without the launcher's PYICEBERG_* variables: the job carries them
        monkeypatch.delenv(key)
    results, errors = at_once(finalize.finalize, None, **side)
    assert not errors and [r["status"] for r in results] == ["published", "published"], (errors, results)
    assert finalize.finalize(None, **side)["status"] == "published"  # and once more, later
    codes = reader_catalog(fresh["env"]).load_table(TABLE)
    assert run_ids(codes) == [side["plan"].partition.run_id]
    assert ids_on(codes, D1) == inputs["first"][1]


def test_encode_decode_into_a_table_keeps_decoded_rows_in_the_run_directory(fresh, inputs, tiny_model_dir):
    code, _, err = run_seqcodec(["encode", *fresh["argv"]("first"), "--decode"])
    assert code == 0, err
    codes = reader_catalog(fresh["env"]).load_table(TABLE)
    run_dir = Path(table_io.beam_path(codes.current_snapshot().summary.get("seqcodec.run_dir")))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "published"
    assert summary["rows_decoded"] == summary["roundtrip"]["sequences"] == len(inputs["first"][1])
    assert sorted(pl.read_parquet(str(run_dir / "decoded" / "*.parquet"))["id"].to_list()) == inputs["first"][1]
    assert ids_on(codes, D1) == inputs["first"][1]


def test_a_table_run_on_worker_processes_commits_from_a_worker(fresh, inputs):
    """Multi-process workers: the finalize stage (and its pickled table run) runs in a worker process."""
    code, _, err = run_seqcodec(["encode", *fresh["argv"]("first"), "--direct_running_mode=multi_processing",
                                 "--direct_num_workers=2"])
    assert code == 0, err
    codes = reader_catalog(fresh["env"]).load_table(TABLE)
    assert len(codes.snapshots()) == 1 and ids_on(codes, D1) == inputs["first"][1]


def test_two_runs_finalizing_the_same_date_at_once_end_with_one_run_whole(fresh, inputs, monkeypatch):
    sides = [staged_run(monkeypatch, fresh["argv"](name)) for name in ("first", "rerun")]
    rows_of = {side["plan"].partition.run_id: inputs[name][1] for side, name in zip(sides, ("first", "rerun"),
                                                                                      strict=True)}
    pending = list(sides)
    results, errors = at_once(lambda: finalize.finalize(None, **pending.pop()))
    assert not errors and [r["status"] for r in results] == ["published", "published"], (errors, results)
    codes = reader_catalog(fresh["env"]).load_table(TABLE)
    assert sorted(run_ids(codes)) == sorted(rows_of)  # both committed, one after the other
    winner = codes.current_snapshot().summary.get("seqcodec.run_id")
    assert ids_on(codes, D1) == rows_of[winner]  # the last one's rows, whole: never both, never half
    assert len(codes.scan().to_arrow()) == len(rows_of[winner])


def commit_in_between(monkeypatch, other: dict) -> threading.Event:
    """Make the next commit finalize ``other`` completely while it is mid-commit (after planning, before
    writing its snapshot), once; the event is set when that happened."""
    real = pyiceberg.io.pyarrow.parquet_files_to_data_files
    interleaved = threading.Event()

    def other_commits_in_between(*args, **kwargs):
        if not interleaved.is_set():
            interleaved.set()
            assert finalize.finalize(None, **other)["status"] == "published"
        return real(*args, **kwargs)

    monkeypatch.setattr(pyiceberg.io.pyarrow, "parquet_files_to_data_files", other_commits_in_between)
    return interleaved


def test_a_commit_that_loses_to_another_run_retries_on_top(fresh, inputs, monkeypatch):
    """Run A plans its commit; run B commits the same date before A does: A's commit fails, A re-reads, wins."""
    first, rerun = (staged_run(monkeypatch, fresh["argv"](name)) for name in ("first", "rerun"))
    interleaved = commit_in_between(monkeypatch, rerun)
    assert finalize.finalize(None, **first)["status"] == "published"
    assert interleaved.is_set()
    codes = reader_catalog(fresh["env"]).load_table(TABLE)
    assert run_ids(codes) == [rerun["plan"].partition.run_id, first["plan"].partition.run_id]
    assert ids_on(codes, D1) == inputs["first"][1]  # A replaced B's rows on top, whole
    assert ids_on(codes, D1, codes.snapshots()[0].snapshot_id) == inputs["rerun"][1]
    errors = reader_catalog(fresh["env"]).load_table(TABLE + "_errors")  # the table whose commit A lost, re-done
    assert run_ids(errors) == run_ids(codes) and ids_on(errors, D1) == [0, 50, 100, 150]


def test_a_commit_that_keeps_losing_gives_up_and_commits_nothing_there(fresh, inputs, monkeypatch):
    """With one attempt allowed, A's commit that loses to B is not retried: A is not published, B stays whole."""
    first, rerun = (staged_run(monkeypatch, fresh["argv"](name)) for name in ("first", "rerun"))
    commit_in_between(monkeypatch, rerun)
    monkeypatch.setattr(table_io, "COMMIT_ATTEMPTS", 1)
    result = finalize.finalize(None, **first)
    assert result["status"] == "not published" and result["exit_code"] == 4
    assert "every commit attempt (1) lost to other writers" in result["reason"]
    catalog = reader_catalog(fresh["env"])
    for name in (TABLE, TABLE + "_errors"):  # A lost its first table's commit and stopped there
        assert run_ids(catalog.load_table(name)) == [rerun["plan"].partition.run_id]
    assert ids_on(catalog.load_table(TABLE), D1) == inputs["rerun"][1]


# -- an s3:// warehouse -----------------------------------------------------------------------------------


def test_nightly_and_rerun_on_an_s3_warehouse(s3, inputs, tiny_model_dir, tmp_path):  # noqa: F811
    env = catalog_env("default", tmp_path / "catalog.db", f"s3://{BUCKET}/warehouse", S3__ENDPOINT=s3.endpoint,
                      S3__ACCESS_KEY_ID="testing", S3__SECRET_ACCESS_KEY="testing", S3__REGION="us-east-1")
    # Last night, then its rerun (the other date is the local test's: each S3 run costs seconds against moto).
    results = [encode(env, inputs[name][0], tiny_model_dir, D1, *s3.beam_args) for name in ("first", "rerun")]
    assert [code for code, _, _ in results] == [0, 0], results
    codes = reader_catalog(env).load_table(TABLE)
    assert codes.location().startswith(f"s3://{BUCKET}/warehouse/")
    staged = s3.objects("warehouse/nightly/codes/seqcodec/")
    assert any(key.endswith(".parquet") and "/codes/part-" in key for key in staged)  # shards carry the run id
    before = codes.snapshots()[-2].snapshot_id
    assert len(codes.snapshots()) == 2 and ids_on(codes, D1) == inputs["rerun"][1]
    assert ids_on(codes, D1, before) == inputs["first"][1]
    storage = {"aws_endpoint_url": s3.endpoint, "aws_access_key_id": "testing", "aws_secret_access_key": "testing",
               "aws_region": "us-east-1", "aws_allow_http": "true"}
    assert polars_ids(codes, D1, **storage) == inputs["rerun"][1]
    assert polars_ids(codes, D1, before, **storage) == inputs["first"][1]
