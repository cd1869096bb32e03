"""The training split kept in the model directory, and the round trip scored by it: a real trained model,
real `encode --decode` jobs on the DirectRunner."""

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import random_sequences, run_seqcodec, write_tokens_parquet

import seqcodec
from seqcodec.model.data import TokenSequences
from seqcodec.model.heldout import SPLIT_FILE, token_hashes
from seqcodec.model.train import split_rows

VOCAB, MAX_LEN, ROWS = 5, 6, 400


def flat(seqs: list) -> TokenSequences:
    lengths = np.array([len(s) for s in seqs])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return TokenSequences(np.concatenate([np.asarray(s, np.int64) for s in seqs]), offsets)


def test_token_hashes_depend_on_the_sequence_alone():
    seqs = [[1, 2, 3], [3, 2, 1], [1, 2], [1, 2, 3, 0], [0], [1, 2, 3], [2, 1, 3]]
    data = flat(seqs)
    h = token_hashes(data.values, data.offsets)
    assert h.dtype == np.uint64 and h[0] == h[5]  # equal rows, equal hashes
    assert len(set(h[:5].tolist() + [h[6]])) == 6  # order, length and a trailing 0 all count
    alone = token_hashes(np.array([3, 2, 1], np.int32), np.array([0, 3]))  # any int type, any place in a batch
    shifted = token_hashes(data.values[3:6], data.offsets[1:3] - 0)  # offsets that do not start at 0
    assert alone[0] == h[1] == shifted[0]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny model trained for real on 400 rows (40 held out), with its data."""
    root = tmp_path_factory.mktemp("heldout")
    seqs = random_sequences(ROWS, VOCAB, MAX_LEN, seed=4)
    data = write_tokens_parquet(root / "tokens.parquet", range(ROWS), seqs)
    code, _, err = run_seqcodec([
        "train", "--input", data, "--model-dir", root / "model", "--hidden-size", 32, "--embedding-size", 8,
        "--epochs", 6, "--batch-size", 32, "--learning-rate", 0.01, "--time-budget", 0, "--seed", 2,
    ])
    assert code == 0, err
    return SimpleNamespace(root=root, dir=root / "model", data=data, seqs=seqs)


def encode(model_dir: Path, data: Path, out: Path) -> tuple[dict, str]:
    code, _, err = run_seqcodec(["encode", "--input", data, "--output", out, "--model-dir", model_dir, "--decode"])
    assert code == 0, err
    return json.loads((out / "summary.json").read_text()), err


def exact_rows(model_dir: Path, seqs: list) -> int:
    codec = seqcodec.load(model_dir)
    return sum(np.array_equal(a, b) for a, b in zip(codec.decode(codec.encode(seqs)), seqs, strict=True))


def test_train_records_every_row_of_its_split(model):
    manifest = json.loads((model.dir / "manifest.json").read_text())
    train, validation, test = split_rows(ROWS, 0.1, 2)
    table = pq.read_table(model.dir / SPLIT_FILE)
    hashes = token_hashes(*(lambda d: (d.values, d.offsets))(flat(model.seqs)))
    role = dict(zip(table.column("hash").to_pylist(), table.column("split").to_pylist(), strict=True))
    # Every row has its role; a sequence that also occurs among the training rows counts as trained on.
    trained = set(hashes[train].tolist())
    assert all(role[h] == "train" for h in trained)
    assert all(role[h] == "validation" for h in set(hashes[validation].tolist()) - trained)
    assert all(role[h] == "test" for h in set(hashes[test].tolist()) - trained - set(hashes[validation].tolist()))
    assert len(role) == len(set(hashes.tolist())) == table.num_rows
    entry = manifest["split"]
    assert entry["file"] == SPLIT_FILE and sum(entry["rows"].values()) == table.num_rows
    assert entry["rows"]["train"] == len(trained)
    import hashlib
    assert manifest["files"][SPLIT_FILE] == hashlib.sha256((model.dir / SPLIT_FILE).read_bytes()).hexdigest()


def test_round_trip_scores_training_held_out_and_unseen_rows_apart(model, tmp_path):
    unseen = [s for s in random_sequences(200, VOCAB, MAX_LEN, seed=99)
              if tuple(s) not in {tuple(t) for t in model.seqs}]
    mixed = write_tokens_parquet(tmp_path / "night.parquet", range(ROWS + len(unseen)), model.seqs + unseen)
    summary, err = encode(model.dir, mixed, tmp_path / "out")
    rt = summary["roundtrip"]
    groups = rt["by_split"]
    train, validation, test = split_rows(ROWS, 0.1, 2)
    hashes = token_hashes(*(lambda d: (d.values, d.offsets))(flat(model.seqs)))
    in_training = np.isin(hashes, hashes[train])
    held = [model.seqs[i] for i in range(ROWS) if not in_training[i]]
    trained = [model.seqs[i] for i in range(ROWS) if in_training[i]]
    assert groups["held_out"]["sequences"] == len(held) and groups["held_out"]["sequences"] > 0
    assert groups["training"]["sequences"] == len(trained)
    assert groups["unseen"]["sequences"] == len(unseen)
    # Each group's figures are the codec's own round trip of exactly those rows.
    assert groups["held_out"]["exact_matches"] == exact_rows(model.dir, held)
    assert groups["training"]["exact_matches"] == exact_rows(model.dir, trained)
    assert groups["unseen"]["exact_matches"] == exact_rows(model.dir, unseen)
    assert sum(g["exact_matches"] for g in groups.values()) == rt["exact_matches"]
    assert sum(g["tokens_correct"] for g in groups.values()) == rt["tokens_correct"]
    assert summary["training_split"]["available"] is True
    assert "  held-out  rows:" in err and "  unseen    rows:" in err
    drift = rt["drift"]
    assert drift["rows"] == len(held) + len(unseen) and drift["reference_exact_match"] == (
        summary["model_training"]["test"]["exact_match"])


def test_drift_is_flagged_when_rows_never_trained_on_do_far_worse(model, tmp_path):
    """The longest rows are the hardest: a night of nothing else falls far below training's held-out figure."""
    longest = random_sequences(3000, VOCAB, MAX_LEN, seed=11)
    longest = [s for s in longest if len(s) == MAX_LEN][:300]
    night = write_tokens_parquet(tmp_path / "long.parquet", range(len(longest)), longest)
    summary, err = encode(model.dir, night, tmp_path / "out")
    drift = summary["roundtrip"]["drift"]
    assert drift["flagged"] is True and drift["points_below"] > 5, drift
    assert err.count("WARNING") >= 1 and "drift: " in err and err.count("drift: ") == 1
    # The model's own data is no drift.
    summary, err = encode(model.dir, model.data, tmp_path / "same")
    assert summary["roundtrip"]["drift"]["flagged"] is False and "drift: " not in err


def test_a_model_without_a_split_record_says_so(model, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(model.dir, old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["split"], manifest["files"][SPLIT_FILE]
    (old / "manifest.json").write_text(json.dumps(manifest))
    (old / SPLIT_FILE).unlink()
    summary, err = encode(old, model.data, tmp_path / "out")
    assert summary["training_split"] == {"available": False, "reason": (
        "the model directory records no training split (trained before seqcodec kept one)")}
    assert "by_split" not in summary["roundtrip"] and "drift" not in summary["roundtrip"]
    assert "training/held-out split unavailable" in err


def test_a_damaged_split_record_stops_the_job_before_it_starts(model, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(model.dir, bad)
    (bad / SPLIT_FILE).write_bytes((bad / SPLIT_FILE).read_bytes()[:-10])
    code, _, err = run_seqcodec(["encode", "--input", model.data, "--output", tmp_path / "out", "--model-dir", bad,
                                 "--decode"])
    assert code == 2 and err.count("\n") == 1 and "split.parquet does not match the sha256" in err
    assert not (tmp_path / "out").exists()
