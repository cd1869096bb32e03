"""The job's own finalize stage, its graph on an injected TestPipeline, retries, and runs that must not hurt a user.

Real jobs on the DirectRunner (in-process), real Parquet files; the portable runner's --no-wait
runs are in test_runners.py, next to the job service they need.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to
from conftest import committed_run, token_file, visible

from seqcodec.pipeline import encode
from seqcodec.pipeline.finalize import finalize
from seqcodec.pipeline.options import direct_runner
from seqcodec.pipeline.runtime import TooManyRejects
from seqcodec.transforms.partition import SUCCESS, SUMMARY

DATE = "2026-11-26"




@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("finalize-data")
    return {
        "clean": token_file(root / "clean.parquet", 100, seed=1, row_group_size=25),
        "dirty": token_file(root / "dirty.parquet", 100, bad_every=10, seed=2, row_group_size=25),  # 10 of 100 rejected
    }


def direct_test_pipeline() -> BeamTestPipeline:
    """A TestPipeline on the DirectRunner's in-process engine (never Beam's Prism download)."""
    options = PipelineOptions([])
    return BeamTestPipeline(runner=direct_runner(options), options=options)


def encode_argv(model_dir, input_path, output, *extra) -> list[str]:
    return [str(a) for a in ("--input", input_path, "--output", output, "--model-dir", model_dir, *extra)]


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` (relative path -> bytes, None for directories)."""
    return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))}


def error_line(err: str) -> str:
    line = err[err.index("seqcodec: error:"):].strip()
    assert "\n" not in line, err
    return line


# -- the graph, on an injected TestPipeline ---------------------------------------------------------------


def test_graph_on_a_test_pipeline_finalizes_once_after_the_writes(tiny_model_dir, data, tmp_path):
    path, valid, bad = data["dirty"]
    out = tmp_path / "codes"
    built = encode.build(encode_argv(tiny_model_dir, path, out, "--run-date", DATE, "--max-error-rate", "0.1"),
                         direct_test_pipeline())
    part = out / f"dt={DATE}"

    def published_once(summaries):
        assert len(summaries) == 1, summaries  # one finalize, whatever the bundles
        s = summaries[0]
        assert (s["status"], s["reason"], s["rows_read"], s["rows_encoded"], s["rows_rejected"]) == (
            "published", None, 100, len(valid), len(bad))
        assert s["counters"] == {"rows_read": 100, "rows_valid": len(valid), "rows_encoded": len(valid)}
        # it ran after every write: the partition it names is complete and committed by this run
        assert committed_run(part) == s["run_id"] == built.plan.partition.run_id
        assert sorted(s["files"]) == sorted(str(p.relative_to(part)) for p in part.rglob("*.*") if p.is_file())

    assert_that(built.summary, published_once, label="summary")
    assert_that(built.graph.counts, equal_to([("read", 100), ("rejected", len(bad)), ("encoded", len(valid))]),
                label="row counts")
    assert built.launch() == 0
    assert json.loads((part / SUMMARY).read_text())["run_id"] == built.plan.partition.run_id
    assert visible(out) == [f"dt={DATE}"]
    assert os.readlink(part) == f".dt={DATE}.run-{built.plan.partition.run_id}"  # no lease or other run left


def test_run_takes_an_injected_pipeline(tiny_model_dir, data, tmp_path):
    path, valid, _ = data["clean"]
    assert encode.run(encode_argv(tiny_model_dir, path, tmp_path / "out"), pipeline=direct_test_pipeline()) == 0
    assert (tmp_path / "out" / SUCCESS).exists()
    assert json.loads((tmp_path / "out" / SUMMARY).read_text())["rows_encoded"] == len(valid)


def test_a_retried_finalize_publishes_nothing_twice(tiny_model_dir, data, tmp_path):
    """A runner may run the finalize bundle again: the second attempt must change nothing."""
    path, _, _ = data["clean"]
    out = tmp_path / "out"
    built = encode.build(encode_argv(tiny_model_dir, path, out), direct_test_pipeline())
    assert built.launch() == 0
    before = tree(tmp_path)
    first = json.loads((out / SUMMARY).read_text())
    again = finalize(None, built.plan, written=[], counts={"read": -1})  # counts that would fail if re-counted
    assert again == first
    assert tree(tmp_path) == before


def test_a_retried_finalize_keeps_its_first_decision(tiny_model_dir, data, tmp_path):
    path, _, bad = data["dirty"]
    out = tmp_path / "out"
    built = encode.build(encode_argv(tiny_model_dir, path, out), direct_test_pipeline())  # default gate 0.05: 10% fails
    with pytest.raises(TooManyRejects, match="10 of 100 rows rejected"):
        built.launch()
    staging = Path(built.plan.partition.staging)
    before = tree(tmp_path)
    again = finalize(None, built.plan, written=[], counts={})
    assert (again["status"], again["exit_code"]) == ("not published", 3)
    assert tree(tmp_path) == before and not out.exists()
    assert json.loads((staging / SUMMARY).read_text())["reason"].startswith(f"{len(bad)} of 100 rows rejected")


# -- the default gate and its warning ---------------------------------------------------------------------


def test_default_gate_is_five_percent_and_rejections_warn(seqcodec, tiny_model_dir, data, tmp_path):
    path, valid, bad = data["dirty"]
    code, _, err = seqcodec(["encode", *encode_argv(tiny_model_dir, path, tmp_path / "a")])
    assert code == 3
    assert "more than --max-error-rate 0.05 allows" in error_line(err)
    assert f"WARNING {len(bad)} of 100 rows rejected" in err
    assert not (tmp_path / "a").exists()

    code, _, err = seqcodec(["encode", *encode_argv(tiny_model_dir, path, tmp_path / "b", "--max-error-rate", "1")])
    assert code == 0, err
    assert f"WARNING {len(bad)} of 100 rows rejected" in err  # the gate is off, the warning is not
    assert json.loads((tmp_path / "b" / SUMMARY).read_text())["rows_rejected"] == len(bad)

    code, _, err = seqcodec(["encode", *encode_argv(tiny_model_dir, data["clean"][0], tmp_path / "c")])
    assert code == 0 and "WARNING" not in err


def test_help_states_the_default_gate_and_no_wait(seqcodec):
    code, out, _ = seqcodec(["encode", "--help"])  # argparse prints the help; run_cli returns its exit code
    assert code == 0
    text = " ".join(out.split())
    assert "(default 0.05; 1 turns the gate off)" in text and "--no-wait" in text


# -- operations that cannot hurt a user -------------------------------------------------------------------


def test_output_naming_a_file_is_refused_and_nothing_is_touched(seqcodec, tiny_model_dir, data, tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    (user / "report.txt").write_text("mine")
    before = tree(tmp_path)
    for output, extra in [(user / "report.txt", []), (user / "report.txt", ["--run-date", DATE]),
                          (user / "report.txt" / "sub", [])]:
        code, _, err = seqcodec(["encode", *encode_argv(tiny_model_dir, data["clean"][0], output, *extra)])
        assert code == 2, err
        assert "is a file" in error_line(err) and "report.txt" in error_line(err)
        assert tree(tmp_path) == before


@pytest.mark.parametrize("case", ["bad-run-date", "no-input", "bad-model", "unknown-runner", "bad-rate"])
def test_failed_checks_create_nothing(seqcodec, tiny_model_dir, data, tmp_path, private_tmp, case):
    out = tmp_path / "out"
    path = data["clean"][0]
    argv = {
        "bad-run-date": encode_argv(tiny_model_dir, path, out, "--run-date", "2026-02-30"),
        "no-input": encode_argv(tiny_model_dir, tmp_path / "none*.parquet", out),
        "bad-model": encode_argv(tmp_path / "no-model", path, out),
        "unknown-runner": encode_argv(tiny_model_dir, path, out, "--runner", "NoSuchRunner"),
        "bad-rate": encode_argv(tiny_model_dir, path, out, "--max-error-rate", "1.5"),
    }[case]
    code, _, err = seqcodec(["encode", *argv])
    assert code == 2, err
    error_line(err)
    assert os.listdir(tmp_path) == [private_tmp.name], "a failed check left something behind"
    assert os.listdir(private_tmp) == [], "a failed check left a temp directory behind"


def test_failed_runs_never_rename_or_delete_a_users_path(seqcodec, tiny_model_dir, data, tmp_path):
    """Exit 2, 3 and 4 next to a user's files and a published partition: only our own staging appears."""
    out = tmp_path / "codes"
    code, _, err = seqcodec(["encode", *encode_argv(tiny_model_dir, data["clean"][0], out, "--run-date", DATE)])
    assert code == 0, err
    (out / "README.txt").write_text("the user's own notes")
    (tmp_path / "other.parquet").write_bytes((data["clean"][0]).read_bytes())
    before = tree(tmp_path)
    broken = tmp_path / "model"
    broken.mkdir()
    for name in os.listdir(tiny_model_dir):
        (broken / name).write_bytes((tiny_model_dir / name).read_bytes())
    (broken / "encoder.keras").write_bytes(b"not a keras file")  # the manifest reads fine; the workers fail
    before["model"] = None
    runs = [
        (3, encode_argv(tiny_model_dir, data["dirty"][0], out, "--run-date", DATE)),
        (4, encode_argv(broken, data["clean"][0], out, "--run-date", DATE)),
        (2, encode_argv(tiny_model_dir, data["clean"][0], out / "README.txt")),
    ]
    for want, argv in runs:
        code, _, err = seqcodec(["encode", *argv])
        assert code == want, err
    after = tree(tmp_path)
    ours = {k for k in after if (k not in before and k.startswith(f"codes/.dt={DATE}.run-")) or k.startswith("model")}
    assert {k: v for k, v in after.items() if k not in ours} == {k: v for k, v in before.items() if k != "model"}


def test_no_wait_on_the_direct_runner_reports_the_outcome_it_already_knows(seqcodec, tiny_model_dir, data,
                                                                                 tmp_path):
    """The DirectRunner runs the job in the launching process, so --no-wait returns when it has ended."""
    code, _, err = seqcodec(["encode", *encode_argv(tiny_model_dir, data["clean"][0], tmp_path / "ok", "--no-wait")])
    assert code == 0, err
    assert committed_run(tmp_path / "ok") == json.loads((tmp_path / "ok" / SUMMARY).read_text())["run_id"]

    code, _, err = seqcodec(["encode", *encode_argv(tiny_model_dir, data["dirty"][0], tmp_path / "bad", "--no-wait")])
    assert code == 3, err  # the job has ended here: its outcome is known, and is the exit code
    assert "its outcome follows" in err and "submitted" not in err
    assert not (tmp_path / "bad").exists()
    (staged,) = tmp_path.glob(".bad.run-*/summary.json")
    s = json.loads(staged.read_text())
    assert (s["status"], s["exit_code"]) == ("not published", 3) and "more than --max-error-rate 0.05" in s["reason"]


def test_counts_missing_from_the_combine_are_zero_and_valid_is_read_minus_rejected():
    """A name with no rows never reaches the one CombinePerKey; finalize still reports it, as 0."""
    from seqcodec.pipeline.finalize import job_counters

    assert job_counters(("read", "rejected", "encoded"), {"read": 5, "rejected": 5}) == {
        "read": 5, "encoded": 0, "valid": 0}
    assert job_counters(("read", "rejected", "decoded"), {"read": 7, "decoded": 7}) == {
        "read": 7, "decoded": 7, "valid": 7}


def test_summary_json_is_one_typed_record_with_its_flat_keys(tiny_model_dir, data, tmp_path):
    """summary.json keeps the flat keys readers know; RunSummary reads back exactly what it wrote."""
    from seqcodec.transforms.partition import RunSummary

    path, valid, bad = data["dirty"]
    assert encode.run(encode_argv(tiny_model_dir, path, tmp_path / "out", "--max-error-rate", "1")) == 0
    written = json.loads((tmp_path / "out" / SUMMARY).read_text())
    summary = RunSummary.from_dict(written)
    assert (summary.job, summary.rows_done, summary.rows_rejected, summary.published) == (
        "encode", len(valid), len(bad), True)
    assert summary.details["model_fingerprint"] == written["model_fingerprint"]
    assert summary.to_dict() == written and list(summary.to_dict()) == list(written)
