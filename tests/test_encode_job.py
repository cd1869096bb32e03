"""`seqcodec encode` end to end: real Parquet in, real code/error shards, summary.json and _SUCCESS out.

The CLI runs in-process (pipeline.cli.main) on the default DirectRunner, except where a separate
process is the point (`python -m seqcodec.pipeline.encode`).
"""

import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import random_sequences, run_seqcodec
from helpers_beam import (
    ATOL,
    BAD_ROWS,
    CODE_SIZE,
    EXPECTED_DETAILS,
    EXPECTED_REASON_COUNTS,
    MAX_LEN,
    VOCAB,
    beam_counters,
    codes_by_id,
    error_rows,
    mixed_rows,
    read_folder,
    run_encode_subprocess,
    shards,
    summary,
    tree_digest,
    write_mixed,
    write_table,
)

from seqcodec.model.loader import load
from seqcodec.transforms.formats import schema_metadata
from seqcodec.transforms.validate import REASONS

ROWS = mixed_rows(n_valid=30, seed=5)
VALID = [(i, t) for i, t, reason in ROWS if reason is None]


def encode_args(input_, output, model_dir, *extra) -> list:
    """An encode command line; the gate is off (``--max-error-rate 1``): the mixed file is a quarter bad rows."""
    return ["encode", "--input", input_, "--output", output, "--model-dir", model_dir, "--max-error-rate", 1, *extra]


def published(out) -> set[str]:
    return {p.name for p in out.iterdir()}


@pytest.fixture(scope="module")
def loaded_codec(tiny_model_dir):
    return load(tiny_model_dir)


@pytest.fixture(scope="module")
def mixed_file(tmp_path_factory):
    return write_mixed(tmp_path_factory.mktemp("mixed") / "mixed.parquet", ROWS, row_group_size=8)


@pytest.fixture(scope="module")
def mixed_run(mixed_file, tiny_model_dir, tmp_path_factory):
    """One run over the mixed file (every bad-row reason, 6 row groups); several tests read its output."""
    out = tmp_path_factory.mktemp("mixed-run") / "out"
    code, _, err = run_seqcodec(encode_args(mixed_file, out, tiny_model_dir, "--batch-size", 4))
    assert code == 0, err
    (out.parent.parent / f"{out.parent.name}.log").write_text(err)
    return out


# -- the mixed file ----------------------------------------------------------------------------------


def test_mixed_run_layout_and_summary(mixed_run, tiny_model_dir):
    assert published(mixed_run) == {"codes", "errors", "summary.json", "_SUCCESS"}
    assert sorted(p.name for p in mixed_run.parent.iterdir()) == [os.readlink(mixed_run), "out"], "only its run"
    s = summary(mixed_run)
    manifest = json.loads((tiny_model_dir / "manifest.json").read_text())
    assert s["rows_read"] == len(ROWS)
    assert s["rows_encoded"] == len(VALID)
    assert s["rows_rejected"] == len(BAD_ROWS)
    assert s["rows_read"] == s["rows_encoded"] + s["rows_rejected"]
    assert s["rejected_by_reason"] == EXPECTED_REASON_COUNTS
    assert s["model_fingerprint"] == manifest["fingerprint"]
    assert s["code_size"] == CODE_SIZE and s["input_files"] == 1
    counted = s["counters"]  # by the pipeline itself, on any runner
    assert counted == {"rows_read": len(ROWS), "rows_valid": len(VALID), "rows_encoded": len(VALID)}
    # Beam's own counters, logged by the waiting launcher
    counters = beam_counters((mixed_run.parent.parent / f"{mixed_run.parent.name}.log").read_text())
    assert counters["rows_read"] == len(ROWS) and counters["rows_valid"] == counters["rows_encoded"] == len(VALID)
    assert {k.removeprefix("rejected_"): v for k, v in counters.items() if k.startswith("rejected_")} == (
        EXPECTED_REASON_COUNTS
    )


def test_mixed_run_error_rows(mixed_run):
    errors = read_folder(mixed_run / "errors")
    assert errors.schema.names == ["id", "reason", "detail", "tokens"]
    assert errors.schema.field("id").type == pa.int64()
    assert errors.schema.field("tokens").type == pa.list_(pa.int64())
    want = sorted(
        ((i, reason, EXPECTED_DETAILS.get(i, REASONS[reason]), tokens) for i, tokens, reason in BAD_ROWS),
        key=lambda r: (r[0] is not None, r[0] or 0, r[1], str(r[3])),
    )
    assert error_rows(mixed_run) == want  # id, reason, detail and the original tokens, nulls included


def test_mixed_run_code_rows(mixed_run, tiny_model_dir, loaded_codec):
    table = read_folder(mixed_run / "codes")
    assert table.schema.field("id").type == pa.int64()
    assert table.schema.field("length").type == pa.int32()
    assert table.schema.field("code").type == pa.list_(pa.float32(), CODE_SIZE)
    manifest = json.loads((tiny_model_dir / "manifest.json").read_text())
    for path in shards(mixed_run / "codes"):
        meta = schema_metadata(pq.read_schema(path))
        assert meta["fingerprint"] == manifest["fingerprint"]
        assert (meta["code_size"], meta["vocab_size"], meta["max_length"]) == (CODE_SIZE, VOCAB, MAX_LEN)
        chunks = pq.ParquetFile(path).metadata.row_group(0)
        encodings = {chunks.column(i).path_in_schema: chunks.column(i).encodings for i in range(chunks.num_columns)}
        assert "RLE_DICTIONARY" not in encodings["code.list.element"]  # floats never repeat: no dictionary
    ids, lengths, codes = codes_by_id(mixed_run)
    assert ids == [i for i, _ in VALID]  # valid ids are 0..29, so sorted == file order
    sequences = [t for _, t in VALID]
    assert lengths.tolist() == [len(t) for t in sequences]
    assert codes[:, 0].tolist() == [len(t) for t in sequences]
    want = loaded_codec.encode(sequences)
    assert np.abs(codes - want).max() <= ATOL


def test_published_partition_is_replaced_cleanly(mixed_file, tiny_model_dir, tmp_path, loaded_codec):
    out = tmp_path / "rerun"
    code, _, err = run_seqcodec(encode_args(mixed_file, out, tiny_model_dir, "--num-shards", 3, "--grace-seconds", 0))
    assert code == 0, err
    run_id = summary(out)["run_id"]
    assert [p.name for p in shards(out / "codes")] == [f"part-{run_id}-0000{i}-of-00003.parquet" for i in range(3)]
    assert read_folder(out / "codes").num_rows == len(VALID)
    first_run = summary(out)["run_id"]

    small = write_table(tmp_path / "small.parquet", [500, 501, 502], [[1, 2], [VOCAB], [3]])
    code, _, err = run_seqcodec(encode_args(small, out, tiny_model_dir, "--num-shards", 1, "--grace-seconds", 0))
    assert code == 0, err
    assert published(out) == {"codes", "errors", "summary.json", "_SUCCESS"}
    run_id = summary(out)["run_id"]
    assert [p.name for p in shards(out / "codes")] == [f"part-{run_id}-00000-of-00001.parquet"], "old shards"
    ids, _, codes = codes_by_id(out)
    assert ids == [500, 502]
    assert np.abs(codes - loaded_codec.encode([[1, 2], [3]])).max() <= ATOL
    assert [r[:2] for r in error_rows(out)] == [(501, "token_out_of_range")]
    s = summary(out)
    assert (s["rows_read"], s["rows_encoded"], s["rows_rejected"]) == (3, 2, 1) and s["run_id"] != first_run
    assert sorted(p.name for p in tmp_path.iterdir()) == [os.readlink(out), "rerun", "small.parquet"], "leftovers"


# -- options and id types ----------------------------------------------------------------------------


def test_too_long_truncate(mixed_file, tiny_model_dir, tmp_path, loaded_codec):
    out = tmp_path / "out"
    code, _, err = run_seqcodec(encode_args(mixed_file, out, tiny_model_dir, "--too-long", "truncate",
                                            "--max-batch-rows", 5))
    assert code == 0, err
    s = summary(out)
    want_reasons = dict(EXPECTED_REASON_COUNTS)
    del want_reasons["too_long"]
    assert s["rejected_by_reason"] == want_reasons
    assert (s["rows_encoded"], s["rows_rejected"]) == (len(VALID) + 1, len(BAD_ROWS) - 1)
    assert beam_counters(err)["rows_truncated"] == 1
    ids, lengths, codes = codes_by_id(out)
    assert ids == [i for i, _ in VALID] + [108]
    assert lengths[-1] == MAX_LEN and codes[-1, 0] == MAX_LEN
    sequences = [t for _, t in VALID] + [[1] * MAX_LEN]  # row 108 keeps its first max_length tokens
    assert np.abs(codes - loaded_codec.encode(sequences)).max() <= ATOL
    assert 107 in [r[0] for r in error_rows(out)], "a long row with a bad id is still rejected"


@pytest.mark.parametrize(
    ("id_type", "ids"),
    [(pa.string(), ["k-a", "k-b", "k-c", "k-d", None]), (pa.int32(), [7, -3, 2_000_000_000, 4, None])],
    ids=["string", "int32"],
)
def test_id_type_is_kept(id_type, ids, tiny_model_dir, tmp_path, loaded_codec):
    tokens = [[1, 2, 3], None, [4] * MAX_LEN, [VOCAB + 5], [2]]
    path = write_table(tmp_path / "in.parquet", ids, tokens, id_type=id_type, row_group_size=2)
    out = tmp_path / "out"
    code, _, err = run_seqcodec(encode_args(path, out, tiny_model_dir))
    assert code == 0, err
    codes = read_folder(out / "codes")
    errors = read_folder(out / "errors")
    assert codes.schema.field("id").type == id_type and errors.schema.field("id").type == id_type
    got = dict(zip(codes.column("id").to_pylist(), codes.column("code").to_pylist(), strict=True))
    assert sorted(got) == sorted([ids[0], ids[2]])
    want = loaded_codec.encode([tokens[0], tokens[2]])
    assert np.abs(np.array([got[ids[0]], got[ids[2]]]) - want).max() <= ATOL
    assert sorted(zip(errors.column("reason").to_pylist(), errors.column("id").to_pylist(), strict=True)) == [
        ("null_id", None), ("null_tokens", ids[1]), ("token_out_of_range", ids[3])
    ]


def test_same_sequence_same_code_whatever_its_neighbours(tiny_model_dir, tmp_path, loaded_codec):
    """Batching sorts by length and pads per batch: that must not leak into a sequence's code."""
    target = [3, 1, 4, 1, 5, 9, 2, 6]
    long_seqs = [s.tolist() for s in random_sequences(30, VOCAB, MAX_LEN, seed=31) if len(s) >= 9][:12]
    short_seqs = [[i % VOCAB] for i in range(10)] + [[5, 6]] * 3
    assert len(long_seqs) == 12
    rows_a = long_seqs[:5] + [target] + long_seqs[5:] + [target]  # two row groups of 7
    rows_b = short_seqs[:3] + [target] + short_seqs[3:]
    (tmp_path / "in").mkdir()
    write_table(tmp_path / "in" / "a.parquet", range(len(rows_a)), rows_a, row_group_size=7)
    write_table(tmp_path / "in" / "b.parquet", range(100, 100 + len(rows_b)), rows_b, tokens_type=pa.list_(pa.int64()))
    out = tmp_path / "out"
    code, _, err = run_seqcodec(encode_args(tmp_path / "in" / "*.parquet", out, tiny_model_dir, "--batch-size", 3))
    assert code == 0, err
    ids, _, codes = codes_by_id(out)
    where = [ids.index(i) for i in (5, len(rows_a) - 1, 103)]
    alone = loaded_codec.encode([target])[0]
    for row in where:
        assert np.abs(codes[row] - alone).max() <= ATOL
    by_id = {**dict(enumerate(rows_a)), **{100 + k: r for k, r in enumerate(rows_b)}}
    assert sorted(by_id) == ids == list(range(len(rows_a))) + list(range(100, 100 + len(rows_b)))
    assert np.abs(codes - loaded_codec.encode([by_id[i] for i in ids])).max() <= ATOL


def test_a_run_leaves_nothing_in_the_temp_directory(mixed_file, tiny_model_dir, tmp_path, private_tmp):
    """Beam makes a temp directory for each pipeline: the run (encode and decode) removes what it made."""
    code, _, err = run_seqcodec(encode_args(mixed_file, tmp_path / "out", tiny_model_dir, "--decode"))
    assert code == 0, err
    assert list(private_tmp.iterdir()) == []


def test_python_m_pipeline_encode(mixed_file, mixed_run, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    home = tmp_path / "home"
    home.mkdir()
    proc = run_encode_subprocess(encode_args(mixed_file, out, tiny_model_dir)[1:], home)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert (out / "_SUCCESS").exists()
    assert "loaded: numpy encoder" in proc.stderr and "no TensorFlow" in proc.stderr
    ids, _, codes = codes_by_id(out)
    want_ids, _, want = codes_by_id(mixed_run)
    assert ids == want_ids and np.abs(codes - want).max() <= ATOL
    assert error_rows(out) == error_rows(mixed_run)
    # the DirectRunner path goes straight to FnApiRunner: no Prism download attempt (it caches in ~/.apache_beam)
    assert not (home / ".apache_beam").exists()
    assert "prism" not in proc.stderr.lower()


def test_a_model_without_file_digests_encodes_on_numpy(mixed_file, mixed_run, tiny_model_dir, tmp_path):
    """A model saved before manifests recorded its files' sha256: the fingerprint is checked on the weights
    themselves, so the job still runs without TensorFlow, same codes."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    manifest = json.loads((model / "manifest.json").read_text())
    del manifest["files"]
    (model / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "out"
    code, _, err = run_seqcodec(encode_args(mixed_file, out, model))
    assert code == 0, err
    assert "loaded: numpy encoder" in err and "no TensorFlow" in err
    ids, _, codes = codes_by_id(out)
    want_ids, _, want = codes_by_id(mixed_run)
    assert ids == want_ids and np.abs(codes - want).max() <= ATOL


# -- file-level failures: exit 2, one line naming the file, nothing written -------------------------


def _not_parquet(d):
    (d / "b.parquet").write_text("id,tokens\n1,\"[1, 2]\"\n")
    return d / "b.parquet"


def _truncated(d):
    path = write_mixed(d / "b.parquet", ROWS)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _write(name, **kwargs):
    def make(d):
        ids, tokens = kwargs.pop("ids", [1, 2]), kwargs.pop("tokens", [[1], [2, 3]])
        columns = kwargs.pop("columns", None)
        if columns is not None:
            pq.write_table(pa.table(columns), d / name)
            return d / name
        return write_table(d / name, ids, tokens, **kwargs)

    return make


FILE_FAILURES = {
    "not-parquet": _not_parquet,
    "truncated-parquet": _truncated,
    "no-id-column": _write("b.parquet", columns={"key": [1], "tokens": pa.array([[1]], pa.list_(pa.int32()))}),
    "no-tokens-column": _write("b.parquet", columns={"id": [1], "toks": pa.array([[1]], pa.list_(pa.int32()))}),
    "tokens-are-strings": _write("b.parquet", tokens=["1 2", "3"], tokens_type=pa.string()),
    "tokens-are-float-lists": _write("b.parquet", tokens=[[1.0], [2.0]], tokens_type=pa.list_(pa.float32())),
    "tokens-are-string-lists": _write("b.parquet", tokens=[["1"], ["2"]], tokens_type=pa.list_(pa.string())),
    "id-type-differs-from-first-file": _write("b.parquet", ids=["x", "y"], id_type=pa.string()),
}


@pytest.fixture
def published_copy(mixed_run, tmp_path):
    """A copy of a real published partition, to check that a failed run leaves it byte for byte alone."""
    target = tmp_path / "published"
    shutil.copytree(mixed_run, target)
    return target


def assert_refused(seqcodec, args_for, must_name: str, root, published_copy):
    """Run twice (into a new DIR and over a published one): exit 2, one error line naming ``must_name``,
    nothing created or changed anywhere under ``root``, the run's temp directory included (``private_tmp``
    is under ``root``: the callers use it)."""
    before = tree_digest(root)
    for out in (root / "new-out", published_copy):
        code, stdout, err = seqcodec(args_for(out))
        lines = err.strip().splitlines()
        assert code == 2, err
        assert len(lines) == 1 and lines[0].startswith("seqcodec: error: "), err
        assert must_name in lines[0], lines[0]
        assert stdout == ""
        assert tree_digest(root) == before, "the failed run wrote or changed something"
    assert not (root / "new-out").exists()
    return lines[0]


@pytest.mark.usefixtures("private_tmp")
@pytest.mark.parametrize("case", list(FILE_FAILURES))
def test_bad_input_file_is_refused(case, seqcodec, tmp_path, tiny_model_dir, published_copy):
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_mixed(inputs / "a.parquet", ROWS[:6])  # a good file first: the message must name the bad one
    bad = FILE_FAILURES[case](inputs)
    line = assert_refused(seqcodec, lambda out: encode_args(inputs / "*.parquet", out, tiny_model_dir), str(bad),
                          tmp_path, published_copy)
    assert line.startswith(f"seqcodec: error: {bad}: "), line


@pytest.mark.usefixtures("private_tmp")
def test_glob_matching_nothing_is_refused(seqcodec, tmp_path, tiny_model_dir, published_copy):
    pattern = str(tmp_path / "nowhere" / "*.parquet")
    line = assert_refused(seqcodec, lambda out: encode_args(pattern, out, tiny_model_dir), pattern, tmp_path,
                          published_copy)
    assert "no file matches" in line


@pytest.mark.usefixtures("private_tmp")
@pytest.mark.parametrize("case", ["missing", "no-manifest", "not-json"])
def test_bad_model_dir_is_refused(case, seqcodec, mixed_file, tmp_path, tiny_model_dir, published_copy):
    model = tmp_path / "model"
    if case != "missing":
        shutil.copytree(tiny_model_dir, model)
        if case == "no-manifest":
            (model / "manifest.json").unlink()
        else:
            (model / "manifest.json").write_text("{not json")
    line = assert_refused(seqcodec, lambda out: encode_args(mixed_file, out, model), str(model), tmp_path,
                          published_copy)
    assert "manifest.json" in line or "does not exist" in line
