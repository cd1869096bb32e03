"""Decode stage: `seqcodec encode --decode` and `seqcodec decode` on real Parquet files, code-row dead letters,
refusal of another model's codes, and the round-trip numbers checked against a direct numpy comparison.

Two real Beam runs (module fixtures) serve most tests: an encode --decode run on token files with string
ids, then a standalone decode of its codes plus a hand-written code file (list<double>, no metadata)
holding good rows and one bad row per reason.
"""

import glob
import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import TINY, build_codec, random_sequences, run_seqcodec
from helpers_beam import beam_counters

from seqcodec.model.config import CodecConfig
from seqcodec.model.storage import save_codec
from seqcodec.transforms.roundtrip import TokenStats, baseline_report, length_buckets
from seqcodec.transforms.validate import CODE_REASONS, _all_valid_codes, split_codes

VOCAB, MAX_LEN, CODE_SIZE = TINY["vocab_size"], TINY["max_length"], TINY["hidden_size"] + 1
MISMATCHES = 4
WORDS = [f"word{i}" for i in range(VOCAB)]


def write_vocab(directory: Path) -> Path:
    path = directory / "vocab.txt"
    path.write_text("\n".join(WORDS) + "\n")
    return path


def write_rows(path: Path, ids: list, rows: list, row_type: pa.DataType, column: str = "tokens",
               metadata: dict | None = None, row_group_size: int = 40) -> Path:
    """A real Parquet file with a string ``id`` column and ``column`` of ``row_type``."""
    table = pa.table({"id": pa.array(ids, pa.string()), column: pa.array(rows, row_type)})
    if metadata:
        table = table.replace_schema_metadata(metadata)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def read_folder(folder: Path) -> pa.Table:
    paths = sorted(glob.glob(str(folder / "*.parquet")))
    assert paths, f"no shards in {folder}"
    return pa.concat_tables([pq.read_table(p) for p in paths])


def by_id(table: pa.Table, column: str) -> dict:
    return dict(zip(table.column("id").to_pylist(), table.column(column).to_pylist(), strict=True))


# -- the two runs -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def originals(tiny_codec) -> dict[str, list[int]]:
    """Valid input rows by id: random sequences of every length, plus some the untrained codec round-trips."""
    seqs = random_sequences(110, VOCAB, MAX_LEN, seed=21)
    candidates = [np.array(c) for n in (1, 2) for c in itertools.product(range(VOCAB), repeat=n)]
    back = tiny_codec.decode(tiny_codec.encode(candidates))
    exact = [c for c, b in zip(candidates, back, strict=True) if np.array_equal(c, b)]
    assert exact, "the tiny codec should round-trip at least one short sequence exactly"
    seqs += exact * 4
    order = np.random.default_rng(22).permutation(len(seqs))
    return {f"w{i:04d}": seqs[k].tolist() for i, k in enumerate(order)}


@pytest.fixture(scope="module")
def encoded(tmp_path_factory, tiny_model_dir, originals):
    """`seqcodec encode --decode --mismatches 4` over two token files (with three bad token rows)."""
    root = tmp_path_factory.mktemp("encode")
    (root / "in").mkdir()
    items = list(originals.items())
    half = len(items) // 2
    lists = pa.list_(pa.int32())
    write_rows(root / "in" / "a.parquet", [k for k, _ in items[:half]] + ["bad-null"], [v for _, v in items[:half]]
               + [None], lists)
    write_rows(root / "in" / "b.parquet", [k for k, _ in items[half:]] + ["bad-empty", "bad-range"],
               [v for _, v in items[half:]] + [[], [VOCAB]], lists)
    code, out, err = run_seqcodec([
        "encode", "--input", root / "in" / "*.parquet", "--output", root / "run", "--model-dir", tiny_model_dir,
        "--decode", "--mismatches", MISMATCHES, "--batch-size", 5, "--max-batch-rows", 30,
        "--vocab", write_vocab(root),
    ])
    assert code == 0, err
    summary = json.loads((root / "run" / "summary.json").read_text())
    return SimpleNamespace(root=root, dir=root / "run", out=out, err=err, summary=summary)


def code_cases(tiny_codec) -> list[tuple]:
    """(id, code as a list of floats or None, expected reason or None) for the hand-written code file."""
    good = tiny_codec.encode(random_sequences(5, VOCAB, MAX_LEN, seed=31)).astype(np.float64)
    base = good[0].tolist()

    def changed(position, value):
        code = list(base)
        code[position] = value
        return code

    cases = [(f"h-good-{i}", code.tolist(), None) for i, code in enumerate(good)]
    cases += [
        (None, base, "null_id"),
        ("h-null-code", None, "null_code"),
        ("h-short", base[:-1], "wrong_width"),
        ("h-long", base + [0.5], "wrong_width"),
        ("h-null-value", changed(3, None), "null_value"),
        ("h-nan", changed(5, float("nan")), "not_finite"),
        ("h-inf", changed(2, float("-inf")), "not_finite"),
        ("h-overflow", changed(7, 1e39), "not_finite"),  # finite as float64, infinite as float32
        ("h-length-nan", changed(0, float("nan")), "not_finite"),
        ("h-length-zero", changed(0, 0.0), "bad_length"),
        ("h-length-negative", changed(0, -3.0), "bad_length"),
        ("h-length-fraction", changed(0, 2.5), "bad_length"),
        ("h-length-too-long", changed(0, float(MAX_LEN + 1)), "bad_length"),
    ]
    return cases


@pytest.fixture(scope="module")
def decoded(tmp_path_factory, tiny_model_dir, tiny_codec, encoded):
    """`seqcodec decode` over the encode run's code shards plus a hand-written list<double> file without metadata."""
    root = tmp_path_factory.mktemp("decode")
    (root / "in").mkdir()
    for shard in glob.glob(str(encoded.dir / "codes" / "*.parquet")):
        shutil.copy(shard, root / "in")
    cases = code_cases(tiny_codec)
    write_rows(root / "in" / "other-writer.parquet", [c[0] for c in cases], [c[1] for c in cases],
               pa.list_(pa.float64()), column="code", row_group_size=7)
    code, out, err = run_seqcodec([
        "decode", "--input", root / "in" / "*.parquet", "--output", root / "run", "--model-dir", tiny_model_dir,
        "--batch-size", 6, "--max-batch-rows", 25, "--vocab", write_vocab(root),
        "--max-error-rate", 1,  # 13 bad codes of 136, on purpose
    ])
    assert code == 0, err
    summary = json.loads((root / "run" / "summary.json").read_text())
    return SimpleNamespace(root=root, dir=root / "run", out=out, err=err, summary=summary, cases=cases)


# -- encode --decode ------------------------------------------------------------------------------------


def test_encode_decode_writes_every_code_decoded(encoded, originals):
    table = read_folder(encoded.dir / "decoded")
    assert table.schema.field("id").type == pa.string()
    assert table.schema.field("tokens").type == pa.list_(pa.int32())
    assert sorted(table.column("id").to_pylist()) == sorted(originals)
    tokens = by_id(table, "tokens")
    assert all(len(tokens[k]) == len(v) for k, v in originals.items())
    assert all(0 <= t < VOCAB for seq in tokens.values() for t in seq)
    assert read_folder(encoded.dir / "codes").column_names == ["id", "length", "code"]
    s = encoded.summary
    assert (s["rows_read"], s["rows_encoded"], s["rows_decoded"], s["rows_rejected"]) == (len(originals) + 3,
                                                                                          len(originals),
                                                                                          len(originals), 3)
    assert s["model_dir"] == str(Path(s["model_dir"]).resolve()) and (Path(s["model_dir"]) / "manifest.json").is_file()
    assert not (encoded.dir / "_decode_stats.json").exists()


def test_round_trip_numbers_equal_a_direct_comparison(encoded, originals):
    decoded = by_id(read_folder(encoded.dir / "decoded"), "tokens")
    lengths = np.array([len(v) for v in originals.values()])
    correct = np.array([int((np.array(v) == np.array(decoded[k])).sum()) for k, v in originals.items()])
    exact = correct == lengths
    rt = encoded.summary["roundtrip"]
    assert 0 < exact.sum() < exact.size  # a meaningful mix: some rows round-trip exactly, most do not
    assert (rt["sequences"], rt["tokens"], rt["tokens_correct"], rt["exact_matches"]) == (
        lengths.size, lengths.sum(), correct.sum(), exact.sum())
    assert rt["token_accuracy"] == pytest.approx(correct.sum() / lengths.sum())
    assert rt["exact_match"] == pytest.approx(exact.mean())
    assert [(b["min_length"], b["max_length"]) for b in rt["by_length"]] == length_buckets(MAX_LEN)
    for b in rt["by_length"]:
        rows = (lengths >= b["min_length"]) & (lengths <= b["max_length"])
        assert b["sequences"] == rows.sum()
        assert b["token_accuracy"] == pytest.approx(correct[rows].sum() / lengths[rows].sum())
        assert b["exact_match"] == pytest.approx(exact[rows].mean())
    counters = beam_counters(encoded.err)
    assert (counters["roundtrip_rows"], counters["roundtrip_exact"], counters["roundtrip_tokens_correct"]) == (
        lengths.size, exact.sum(), correct.sum())
    assert not any("_len" in name for name in counters)  # per length: summary.json's by_length, not the log
    # The printed summary carries the same numbers.
    printed = f"token accuracy {100 * rt['token_accuracy']:.2f}%, exact match {100 * rt['exact_match']:.2f}%"
    assert printed in encoded.err
    # Beside them, the trivial baseline on the same rows: the most frequent token written everywhere.
    flat = np.concatenate([np.array(v) for v in originals.values()])
    token = int(np.bincount(flat).argmax())
    uniform = sum(all(t == token for t in v) for v in originals.values())
    assert rt["baseline"] == {"token": token, "token_accuracy": pytest.approx((flat == token).mean()),
                              "exact_match": pytest.approx(uniform / lengths.size)}
    assert "baseline, always writing the most frequent token" in encoded.err
    assert not list(encoded.dir.glob("_*stats.json"))  # the counts were read into summary.json, then removed


def test_mismatch_examples_are_readable_and_true(encoded, originals):
    path = encoded.dir / "roundtrip" / "mismatches.jsonl"
    examples = [json.loads(line) for line in path.read_text().splitlines()]
    decoded = by_id(read_folder(encoded.dir / "decoded"), "tokens")
    assert len(examples) == MISMATCHES == encoded.summary["roundtrip"]["mismatch_examples"]
    for e in examples:
        assert e["original"] == originals[e["id"]] and e["decoded"] == decoded[e["id"]]
        pairs = enumerate(zip(e["original"], e["decoded"], strict=True))
        assert e["wrong_positions"] == [i for i, (a, b) in pairs if a != b]
        assert e["wrong_tokens"] == len(e["wrong_positions"]) > 0 and e["length"] == len(e["original"])
    assert [e["length"] for e in examples] == [1, 2, 3, 4]  # one per length, shortest first
    for e in examples:  # --vocab: the words beside the ids
        assert e["original_text"] == " ".join(WORDS[t] for t in e["original"])
        assert e["decoded_text"] == " ".join(WORDS[t] for t in e["decoded"])


@pytest.mark.parametrize("run", ["encoded", "decoded"])
def test_vocab_writes_the_decoded_tokens_as_text(run, request):
    table = read_folder(request.getfixturevalue(run).dir / "decoded")
    assert table.schema.field("text").type == pa.string()
    assert table.num_rows > 100
    for tokens, text in zip(table.column("tokens").to_pylist(), table.column("text").to_pylist(), strict=True):
        assert text == " ".join(WORDS[t] for t in tokens)


def test_vocab_file_problems_stop_the_job_in_one_line(seqcodec, tmp_path, tiny_model_dir, encoded):
    short = tmp_path / "short.txt"
    short.write_text("a\nb\n")
    # A longer file too: every id beyond the model's would be words it never had (usually another model's file).
    long = tmp_path / "long.txt"
    long.write_text("".join(f"{w}\n" for w in [*WORDS, "never-used"]))
    for vocab, message in ((short, f"2 tokens, but the model's vocabulary has {VOCAB}"),
                           (long, f"{VOCAB + 1} tokens, but the model's vocabulary has {VOCAB}"),
                           (tmp_path / "missing.txt", "cannot read the vocabulary file")):
        code, _, err = seqcodec(["decode", "--input", encoded.dir / "codes" / "*.parquet", "--output",
                                 tmp_path / "run", "--model-dir", tiny_model_dir, "--vocab", vocab])
        assert code == 2 and err.count("\n") == 1 and message in err and str(vocab) in err, err
        assert not (tmp_path / "run").exists()
    code, _, err = seqcodec(["encode", "--input", tmp_path / "*.parquet", "--output", tmp_path / "run",
                             "--model-dir", tiny_model_dir, "--vocab", short])
    assert code == 2 and "--vocab needs --decode" in err


# -- the standalone decode job --------------------------------------------------------------------------


def test_decode_job_equals_one_code_at_a_time(decoded, encoded, tiny_codec):
    tokens = by_id(read_folder(decoded.dir / "decoded"), "tokens")
    codes = read_folder(encoded.dir / "codes")
    for row_id, code in zip(codes.column("id").to_pylist(), codes.column("code").to_pylist(), strict=True):
        assert tokens[row_id] == tiny_codec.decode(np.array([code], np.float32))[0].tolist(), row_id
    # The same codes decoded inside the encode job give the same tokens.
    in_job = by_id(read_folder(encoded.dir / "decoded"), "tokens")
    assert {k: tokens[k] for k in in_job} == in_job
    for row_id, code, reason in decoded.cases:
        if reason is None:
            assert tokens[row_id] == tiny_codec.decode(np.array([code], np.float32))[0].tolist()
            assert len(tokens[row_id]) == int(code[0])


def test_decode_job_dead_letters_every_bad_code(decoded, encoded):
    errors = read_folder(decoded.dir / "errors")
    assert errors.schema.field("id").type == pa.string()
    got = sorted(zip(errors.column("id").to_pylist(), errors.column("reason").to_pylist(), strict=True), key=str)
    expected = sorted(((i, r) for i, _, r in decoded.cases if r), key=str)
    assert got == expected
    assert {r for _, r in got} == set(CODE_REASONS)
    s = decoded.summary
    good = sum(1 for c in decoded.cases if c[2] is None)
    assert s["rows_read"] == s["rows_decoded"] + s["rows_rejected"] == encoded.summary["rows_encoded"] + len(
        decoded.cases)
    assert s["rows_decoded"] == encoded.summary["rows_encoded"] + good
    assert sum(s["rejected_by_reason"].values()) == s["rows_rejected"] == len(expected)
    assert sum(b["sequences"] for b in s["length_histogram"]) == s["rows_decoded"]
    assert s["input_files_without_fingerprint"] == 1
    assert "carry no model fingerprint" in decoded.err and "other-writer.parquet" in decoded.err
    assert pq.read_schema(glob.glob(str(decoded.dir / "decoded" / "*.parquet"))[0]).metadata[
        b"seqcodec.fingerprint"] == json.dumps(s["model_fingerprint"]).encode()


# -- row checks, one reason at a time ------------------------------------------------------------------


@pytest.mark.parametrize("code_type", [pa.list_(pa.float64()), pa.large_list(pa.float32()),
                                       pa.list_(pa.float32(), CODE_SIZE)], ids=["list64", "large32", "fixed32"])
def test_split_codes_gives_each_bad_row_its_reason(tiny_codec, code_type):
    cases = [c for c in code_cases(tiny_codec)
             if not (pa.types.is_fixed_size_list(code_type) and c[1] is not None and len(c[1]) != CODE_SIZE)]
    table = pa.table({"id": pa.array([c[0] for c in cases], pa.string()),
                      "code": pa.array([c[1] for c in cases], code_type)})
    good, bad = split_codes(table.slice(1), CODE_SIZE, MAX_LEN)  # a sliced batch, as Beam may hand over
    cases = cases[1:]
    assert by_id(bad, "reason") == {c[0]: c[2] for c in cases if c[2]}
    assert good.schema.field("code").type == pa.list_(pa.float32(), CODE_SIZE)
    expected_good = {c[0]: np.float32(c[1]).tolist() for c in cases if c[2] is None}
    assert by_id(good, "code") == expected_good
    details = by_id(bad, "detail")
    assert details["h-length-fraction"] == f"length field 2.5 is not an integer in [1, {MAX_LEN}]"
    assert "position 7" in details["h-overflow"]


def test_split_codes_takes_our_own_valid_codes_whole_as_the_general_path_would(tiny_codec):
    """Valid fixed-size float32 codes (what the job writes) skip the per-value checks, same result."""
    codes = tiny_codec.encode(random_sequences(50, VOCAB, MAX_LEN, seed=43))
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(codes.reshape(-1), pa.float32()), CODE_SIZE)
    table = pa.table({"id": pa.array([f"r{i}" for i in range(50)]), "code": fixed}).slice(3, 40)
    assert _all_valid_codes(table, CODE_SIZE, MAX_LEN, "id", "code") is not None  # the fast path is taken
    good, bad = split_codes(table, CODE_SIZE, MAX_LEN)
    general, general_bad = split_codes(table.cast(pa.schema([("id", pa.string()), ("code", pa.list_(pa.float64()))])),
                                       CODE_SIZE, MAX_LEN)
    assert bad.num_rows == general_bad.num_rows == 0 and bad.schema == general_bad.schema
    assert good.equals(general) and good.num_rows == 40
    # One bad value anywhere sends the batch to the general path, which names that row alone.
    spoiled = codes.copy()
    spoiled[7, 4] = np.inf
    table = pa.table({"id": pa.array([f"r{i}" for i in range(50)]), "code": pa.FixedSizeListArray.from_arrays(
        pa.array(spoiled.reshape(-1), pa.float32()), CODE_SIZE)})
    good, bad = split_codes(table, CODE_SIZE, MAX_LEN)
    assert by_id(bad, "reason") == {"r7": "not_finite"} and good.num_rows == 49


def test_split_codes_with_a_null_slot_that_still_holds_values(tiny_codec):
    """Arrow lets a null list slot keep values behind it; they must not shift the rows after it."""
    codes = tiny_codec.encode(random_sequences(3, VOCAB, MAX_LEN, seed=41)).astype(np.float64)
    offsets = pa.array(np.arange(4) * CODE_SIZE, pa.int32())
    column = pa.ListArray.from_arrays(offsets, pa.array(codes.reshape(-1)), mask=pa.array([False, True, False]))
    good, bad = split_codes(pa.table({"id": ["a", "b", "c"], "code": column}), CODE_SIZE, MAX_LEN)
    assert by_id(bad, "reason") == {"b": "null_code"}
    assert by_id(good, "code") == {"a": np.float32(codes[0]).tolist(), "c": np.float32(codes[2]).tolist()}


# -- refusals before anything is written ----------------------------------------------------------------


def test_codes_of_another_model_are_refused(tmp_path, encoded, tiny_model_dir):
    other = build_codec(CodecConfig(**TINY), seed=2)
    manifest = save_codec(other, tmp_path / "other-model")
    ours = encoded.summary["model_fingerprint"]
    assert manifest.fingerprint != ours
    out_parent = tmp_path / "out"
    out_parent.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "seqcodec.pipeline.decode", "--input", str(encoded.dir / "codes" / "*.parquet"),
         "--output", str(out_parent / "run"), "--model-dir", str(tmp_path / "other-model")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("seqcodec: error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert ours in lines[0] and manifest.fingerprint in lines[0]
    assert list(out_parent.iterdir()) == []  # not even a staging directory


def _fixed(width: int) -> pa.DataType:
    return pa.list_(pa.float32(), width)


@pytest.mark.parametrize(
    "name, column, row_type, metadata, message",
    [
        ("no-match", None, None, None, "no file matches"),
        ("not-parquet", None, None, None, "not a readable Parquet file"),
        ("no-code-column", "codes", pa.list_(pa.float32()), None, "no column 'code'"),
        ("int-codes", "code", pa.list_(pa.int64()), None, "is a list of int64, not of float16, float32 or float64"),
        ("string-codes", "code", pa.string(), None, "is string, not a list of float16, float32 or float64"),
        ("fixed-width", "code", _fixed(9), None, "codes are 9 wide (from its column type)"),
        ("list-width", "code", pa.list_(pa.float64()), None, "codes are 9 wide (from its first rows)"),
        ("metadata-width", "code", pa.list_(pa.float32()), {"seqcodec.code_size": "9"},
         "codes are 9 wide (from its metadata)"),
    ],
)
def test_unusable_code_files_stop_the_job_in_one_line(seqcodec, tmp_path, private_tmp, tiny_model_dir,
                                                      name, column, row_type, metadata, message):
    path = tmp_path / f"{name}.parquet"
    if name == "not-parquet":
        path.write_text("id,code\n1,2\n")
    elif column:
        if metadata:  # our own model's fingerprint: only the width is wrong
            ours = json.loads((tiny_model_dir / "manifest.json").read_text())["fingerprint"]
            metadata = {**metadata, "seqcodec.fingerprint": json.dumps(ours)}
        rows = ["x" * 9] * 3 if row_type == pa.string() else [[1] + [0] * 8] * 3
        write_rows(path, ["a", "b", "c"], rows, row_type, column=column, metadata=metadata)
    code, out, err = seqcodec(["decode", "--input", path, "--output", tmp_path / "run", "--model-dir", tiny_model_dir])
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("seqcodec: error:"), err
    assert message in err
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob(".run.*"))
    assert list(private_tmp.iterdir()) == []  # not even Beam's temp directory for a pipeline


def test_mismatches_needs_decode(seqcodec, tmp_path, tiny_model_dir):
    code, _, err = seqcodec(["encode", "--input", tmp_path / "*.parquet", "--output", tmp_path / "run",
                             "--model-dir", tiny_model_dir, "--mismatches", 3])
    assert code == 2 and "--mismatches" in err and "--decode" in err


def test_token_stats_count_tokens_and_rows_of_one_token():
    table = pa.table({"original": pa.array([[2, 2], [2, 1, 2], [3], [2], [1, 1, 1]], pa.list_(pa.int32()))})
    (stats,) = TokenStats(5).process(table)
    np.testing.assert_array_equal(stats, [[0, 4, 5, 1, 0], [0, 1, 2, 1, 0]])
    assert baseline_report(stats, 5) == {"token": 2, "token_accuracy": 0.5, "exact_match": 0.4}

