"""`seqcodec train` end to end on real Parquet files, its one-line errors, and read_token_sequences."""

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import random_sequences, run_seqcodec, write_tokens_parquet

from seqcodec.model.data import TokenSequences, read_token_sequences
from seqcodec.model.errors import InputDataError
from seqcodec.model.loader import load
from seqcodec.model.train import TimeBudget

VOCAB, LONGEST = 10, 8
# Small and fast: a tiny network, two epochs of 12 batches.
TRAIN_ARGS = ["--hidden-size", "16", "--embedding-size", "8", "--epochs", "2", "--batch-size", "32", "--seed", "3",
              "--time-budget", "0"]  # 0: the learning-rate plan then does not follow the machine's pace (repeatable)


@pytest.fixture(scope="module")
def corpus() -> list[np.ndarray]:
    """400 sequences of length 1..8 over ids 0..9 (both extremes present)."""
    seqs = random_sequences(400, VOCAB, LONGEST, seed=7)
    assert max(len(s) for s in seqs) == LONGEST and max(int(s.max()) for s in seqs) == VOCAB - 1
    return seqs



def rows_of(data) -> list[list[int]]:
    """A TokenSequences' rows as lists, in order."""
    bounds = zip(data.offsets[:-1], data.offsets[1:], strict=True)
    return [data.values[a:b].tolist() for a, b in bounds]

def write_corpus(directory: Path, seqs: list[np.ndarray], **kwargs) -> str:
    """The sequences split over two files with small row groups; returns the glob matching both."""
    directory.mkdir(parents=True, exist_ok=True)
    half = len(seqs) // 2
    write_tokens_parquet(directory / "part-0.parquet", range(half), seqs[:half], row_group_size=50, **kwargs)
    write_tokens_parquet(directory / "part-1.parquet", range(half, len(seqs)), seqs[half:], row_group_size=50, **kwargs)
    return str(directory / "part-*.parquet")


def train(pattern: str, model_dir: Path, *extra) -> tuple[int, str, str]:
    return run_seqcodec(["train", "--input", pattern, "--model-dir", model_dir, *TRAIN_ARGS, *extra])


def manifest_of(model_dir: Path) -> dict:
    return json.loads((model_dir / "manifest.json").read_text())


@pytest.fixture(scope="module")
def corpus_glob(corpus, tmp_path_factory) -> str:
    return write_corpus(tmp_path_factory.mktemp("corpus"), corpus)


@pytest.fixture(scope="module")
def trained(corpus_glob, tmp_path_factory) -> tuple[Path, int, str]:
    """One real training run shared by the tests below: (model dir, exit code, stdout)."""
    model_dir = tmp_path_factory.mktemp("run") / "model"
    code, out, _ = train(corpus_glob, model_dir)
    return model_dir, code, out


# -- training runs ------------------------------------------------------------------------------------


def test_train_writes_a_loadable_model(trained, corpus):
    model_dir, code, out = trained
    assert code == 0
    codec = load(model_dir)
    manifest = manifest_of(model_dir)
    assert manifest["vocab_size"] == VOCAB  # largest id seen + 1
    assert manifest["max_length"] == LONGEST  # longest sequence seen
    assert (manifest["hidden_size"], manifest["embedding_size"], manifest["code_size"]) == (16, 8, 17)
    assert codec.fingerprint == manifest["fingerprint"]
    # The last stdout line is the JSON summary of the run.
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["fingerprint"] == manifest["fingerprint"]
    assert summary["test"] == manifest["metrics"]["test"]
    codes = codec.encode(corpus)
    np.testing.assert_array_equal(codes[:, 0], [len(s) for s in corpus])
    assert [t.size for t in codec.decode(codes)] == [len(s) for s in corpus]


def test_train_reports_metrics_and_history(trained):
    model_dir, _, _ = trained
    metrics = manifest_of(model_dir)["metrics"]
    for part in ("test", "validation"):
        assert 0.0 <= metrics[part]["token_accuracy"] <= 1.0
        assert 0.0 <= metrics[part]["exact_match"] <= 1.0
        assert metrics[part]["sequences"] == 20  # 10% held out of 400, half for test
    assert metrics["train_sequences"] == 360
    # Training rows round-tripped the same way, and the trivial baseline, stand beside the held-out figures.
    assert metrics["train"]["sequences"] == 360 and 0.0 <= metrics["train"]["token_accuracy"] <= 1.0
    assert 0 <= metrics["baseline"]["token"] < VOCAB and 0.05 < metrics["baseline"]["token_accuracy"] < 0.4
    assert isinstance(metrics["hints"], list)
    assert metrics["epochs_run"] == 2 and metrics["best_epoch"] in (1, 2)
    assert metrics["stopped_by_time_budget"] is False
    assert metrics["settings"]["seed"] == 3 and metrics["settings"]["batch_size"] == 32
    history = json.loads((model_dir / "history.json").read_text())
    assert len(history["loss"]) == 2 and all(np.isfinite(history["loss"]))
    assert len(history["val_exact_match"]) == 2
    # Cosine from 2e-3 over the 24 planned steps: about half way after epoch 1, near the floor (4e-5) at the end.
    first, last = history["learning_rate"]
    assert 0.9e-3 < first < 1.3e-3 and 4e-5 <= last < 6e-5


def test_time_budget_plans_the_run_from_the_pace_so_far():
    budget = TimeBudget(seconds=100, max_steps=1000)
    assert budget.progress() == 0.0
    budget.start -= 25  # 50 steps in 25 s of a 100 s budget: 200 steps planned, a quarter done
    budget.steps = 50
    assert budget.progress() == pytest.approx(0.25, abs=0.01)
    budget.max_steps = 100  # the epochs end before the budget would: they bound the plan
    assert budget.progress() == 0.5
    unlimited = TimeBudget(seconds=None, max_steps=40)
    unlimited.steps = 30
    assert unlimited.progress() == 0.75


def test_same_seed_gives_the_same_model(trained, corpus_glob, corpus, tmp_path):
    first_dir, _, _ = trained
    code, _, _ = train(corpus_glob, tmp_path / "again")
    assert code == 0
    # Training on CPU has been bit-for-bit repeatable here, so the weight fingerprints are compared.
    # (If TF ever makes this flaky, compare the codes of both models within 1e-6 instead.)
    assert manifest_of(tmp_path / "again")["fingerprint"] == manifest_of(first_dir)["fingerprint"]
    np.testing.assert_array_equal(load(tmp_path / "again").encode(corpus), load(first_dir).encode(corpus))


def test_tokens_column_option(trained, corpus, tmp_path):
    pattern = write_corpus(tmp_path / "renamed", corpus, tokens_column="seq")
    code, _, _ = train(pattern, tmp_path / "model", "--tokens-column", "seq")
    assert code == 0
    # Same data and seed under another column name: the same model as the default run.
    assert manifest_of(tmp_path / "model")["fingerprint"] == manifest_of(trained[0])["fingerprint"]


def test_time_budget_stops_early_and_keeps_a_model(tmp_path):
    # 36 training sequences: one batch per epoch, so epochs are quick; the budget (counted from the
    # start, graph tracing included) allows the first epoch and then stops far short of 100000.
    # 30 s, not 15: on a shared 2-core machine (load 11) the first epoch alone took 19 s.
    write_tokens_parquet(tmp_path / "small.parquet", range(40), random_sequences(40, VOCAB, LONGEST, seed=8))
    model_dir = tmp_path / "model"
    code, _, _ = run_seqcodec(
        ["train", "--input", tmp_path / "small.parquet", "--model-dir", model_dir, "--hidden-size", "16",
         "--embedding-size", "8", "--epochs", "100000", "--time-budget", "30", "--seed", "3"]
    )  # fmt: skip
    assert code == 0
    metrics = manifest_of(model_dir)["metrics"]
    assert metrics["stopped_by_time_budget"] is True
    assert 1 <= metrics["epochs_run"] < 100000
    assert 29.5 <= metrics["train_seconds"] < 120
    history = json.loads((model_dir / "history.json").read_text())
    assert len(history["loss"]) == metrics["epochs_run"]
    # The schedule follows the clock: the budget ends at the floor learning rate, not at epoch 100000's.
    assert history["learning_rate"][-1] < 2e-3 * 0.05
    load(model_dir)


def test_time_budget_spent_inside_the_first_epoch_is_an_error(seqcodec, tmp_path):
    write_tokens_parquet(tmp_path / "small.parquet", range(40), random_sequences(40, VOCAB, LONGEST, seed=8))
    model_dir = tmp_path / "model"
    # 9 batches of 4 per epoch; the budget is spent as soon as the first batch ends.
    code, _, err = seqcodec(
        ["train", "--input", tmp_path / "small.parquet", "--model-dir", model_dir, "--hidden-size", "16",
         "--embedding-size", "8", "--epochs", "5", "--batch-size", "4", "--time-budget", "0.01", "--seed", "3"]
    )  # fmt: skip
    assert code == 2
    # Progress lines come first; the failure is the one last line, without a traceback.
    last = err.strip().splitlines()[-1]
    assert last.startswith("seqcodec: error:") and "first epoch" in last
    assert "Traceback" not in err
    assert not (model_dir / "manifest.json").exists()


# -- one-line errors ----------------------------------------------------------------------------------


def _no_match(d: Path) -> tuple[str, list, str]:
    return str(d / "nothing-*.parquet"), [], "nothing-*.parquet"


def _not_parquet(d: Path) -> tuple[str, list, str]:
    (d / "x.parquet").write_bytes(b"this is not a parquet file\n" * 20)
    return str(d / "x.parquet"), [], "x.parquet"


def _one_bad_file_among_good(d: Path) -> tuple[str, list, str]:
    write_tokens_parquet(d / "a.parquet", range(10), random_sequences(10, VOCAB, LONGEST, seed=1))
    (d / "b.parquet").write_bytes(b"PAR1 garbage")
    return str(d / "*.parquet"), [], "b.parquet"


def _no_tokens_column(d: Path) -> tuple[str, list, str]:
    write_tokens_parquet(d / "f.parquet", range(10), random_sequences(10, VOCAB, LONGEST, 1), tokens_column="seq")
    return str(d / "f.parquet"), [], "'tokens'"


def _strings(d: Path) -> tuple[str, list, str]:
    write_tokens_parquet(d / "f.parquet", range(10), ["1 2 3"] * 10, tokens_type=pa.string())
    return str(d / "f.parquet"), [], "'tokens'"


def _floats(d: Path) -> tuple[str, list, str]:
    write_tokens_parquet(d / "f.parquet", range(10), [[1.0, 2.5]] * 10, tokens_type=pa.list_(pa.float64()))
    return str(d / "f.parquet"), [], "'tokens'"


def _null_token(d: Path) -> tuple[str, list, str]:
    write_tokens_parquet(d / "f.parquet", range(10), [[1, 2]] * 9 + [[3, None]])
    return str(d / "f.parquet"), [], "null"


def _negative_token(d: Path) -> tuple[str, list, str]:
    write_tokens_parquet(d / "f.parquet", range(10), [[1, 2]] * 9 + [[3, -4]])
    return str(d / "f.parquet"), [], "-4"


def _vocab_too_small(d: Path) -> tuple[str, list, str]:
    write_tokens_parquet(d / "f.parquet", range(10), [[1, 2]] * 9 + [[3, 9]])
    return str(d / "f.parquet"), ["--vocab-size", "5"], "--vocab-size 5"


def _too_few_sequences(d: Path) -> tuple[str, list, str]:
    write_tokens_parquet(d / "f.parquet", range(3), [[1], [2, 3], [4]])
    return str(d / "f.parquet"), [], "3 usable sequences"


def _zero_epochs(d: Path) -> tuple[str, list, str]:
    write_tokens_parquet(d / "f.parquet", range(10), random_sequences(10, VOCAB, LONGEST, 1))
    return str(d / "f.parquet"), ["--epochs", "0"], "--epochs"


def _zero_learning_rate(d: Path) -> tuple[str, list, str]:
    write_tokens_parquet(d / "f.parquet", range(10), random_sequences(10, VOCAB, LONGEST, 1))
    return str(d / "f.parquet"), ["--learning-rate", "0"], "--learning-rate"


BAD_INPUTS = {
    "glob-matches-nothing": _no_match,
    "not-parquet": _not_parquet,
    "one-bad-file-in-glob": _one_bad_file_among_good,
    "no-tokens-column": _no_tokens_column,
    "tokens-are-strings": _strings,
    "tokens-are-floats": _floats,
    "null-token-id": _null_token,
    "negative-token-id": _negative_token,
    "vocab-size-too-small": _vocab_too_small,
    "too-few-sequences": _too_few_sequences,
    "zero-epochs": _zero_epochs,
    "zero-learning-rate": _zero_learning_rate,
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_error_with_exit_code_2(case, seqcodec, tmp_path):
    pattern, extra, named = BAD_INPUTS[case](tmp_path)
    model_dir = tmp_path / "model"
    code, out, err = seqcodec(["train", "--input", pattern, "--model-dir", model_dir, *TRAIN_ARGS, *extra])
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("seqcodec: error:")
    assert named in lines[0]
    assert "Traceback" not in err and out == ""
    assert not model_dir.exists()


# -- read_token_sequences ------------------------------------------------------------------------------


def test_read_skips_null_and_empty_rows(tmp_path, caplog):
    write_tokens_parquet(tmp_path / "f.parquet", range(6), [[1, 2], None, [], [0], [], [3, 4, 5]])
    with caplog.at_level("WARNING", logger="seqcodec.model.data"):
        data = read_token_sequences(str(tmp_path / "f.parquet"))
    assert len(data) == 3
    np.testing.assert_array_equal(data.values, [1, 2, 0, 3, 4, 5])
    np.testing.assert_array_equal(data.offsets, [0, 2, 3, 6])
    assert "skipped 3" in caplog.text


@pytest.mark.parametrize(
    "tokens_type",
    [pa.list_(pa.int64()), pa.list_(pa.uint16()), pa.large_list(pa.int32()), pa.large_list(pa.int64())],
    ids=str,
)
def test_read_accepts_integer_list_types(tmp_path, tokens_type):
    write_tokens_parquet(tmp_path / "f.parquet", range(3), [[7, 0], [65], [1, 2, 3]], tokens_type=tokens_type)
    data = read_token_sequences(str(tmp_path / "f.parquet"))
    assert data.values.dtype == np.int64
    assert rows_of(data) == [[7, 0], [65], [1, 2, 3]]


def test_read_concatenates_row_groups_batches_and_files_in_order(tmp_path):
    # Enough rows that the reader gets several record batches from several row groups.
    rng = np.random.default_rng(9)
    n = 70_000
    rows = [rng.integers(0, 50, size=int(rng.integers(1, 4))).tolist() for _ in range(n)]
    for i in range(0, n, 9_999):
        rows[i] = None if i % 2 else []
    write_tokens_parquet(tmp_path / "p-1.parquet", range(n), rows, tokens_type=pa.list_(pa.int64()),
                         row_group_size=16_384)  # fmt: skip
    write_tokens_parquet(tmp_path / "p-0.parquet", range(3), [[41], [42, 43], [44]])
    file = pq.ParquetFile(tmp_path / "p-1.parquet")
    assert file.num_row_groups > 1 and len(list(file.iter_batches(columns=["tokens"]))) > 1

    data = read_token_sequences(str(tmp_path / "p-*.parquet"))
    expected = [[41], [42, 43], [44]] + [r for r in rows if r]  # files in sorted order, rows in file order
    assert len(data) == len(expected)
    np.testing.assert_array_equal(data.lengths, [len(r) for r in expected])
    np.testing.assert_array_equal(data.values, np.concatenate(expected))


def test_read_errors_name_the_file(tmp_path):
    write_tokens_parquet(tmp_path / "ok.parquet", range(2), [[1], [2]])
    write_tokens_parquet(tmp_path / "zz.parquet", range(2), [[1], [2]], tokens_column="ids")
    with pytest.raises(InputDataError, match="zz.parquet") as info:
        read_token_sequences(str(tmp_path / "*.parquet"))
    assert "\n" not in str(info.value)
    assert len(read_token_sequences(str(tmp_path / "zz.parquet"), tokens_column="ids")) == 2


def test_token_sequences_take_reorders_rows():
    data = TokenSequences(np.array([1, 2, 3, 4, 5, 6]), np.array([0, 2, 3, 6]))
    picked = data.take(np.array([2, 0]))
    assert rows_of(picked) == [[4, 5, 6], [1, 2]]
    np.testing.assert_array_equal(picked.offsets, [0, 3, 5])


# -- an existing model directory and the vocabulary -------------------------------------------------------


def model_copy(trained, directory: Path) -> Path:
    """The shared trained model copied to ``directory``, with a README and notes of its owner beside it."""
    shutil.copytree(trained[0], directory)
    (directory / "README.md").write_text("my model, trained on Tuesday\n")
    (directory / "notes").mkdir()
    (directory / "notes" / "eval.txt").write_text("looks fine\n")
    return directory


def test_train_refuses_to_replace_a_model_unless_asked(trained, corpus_glob, tmp_path, seqcodec):
    model_dir = model_copy(trained, tmp_path / "model")
    before = {p.name: p.read_bytes() for p in model_dir.iterdir() if p.is_file()}
    code, out, err = seqcodec(["train", "--input", corpus_glob, "--model-dir", model_dir, *TRAIN_ARGS])
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.splitlines() == [f"seqcodec: error: model directory {model_dir}: holds a model already; pass "
                                "--overwrite to replace it (its other files are kept)"]
    assert {p.name: p.read_bytes() for p in model_dir.iterdir() if p.is_file()} == before
    assert (model_dir / "notes" / "eval.txt").read_text() == "looks fine\n"


def test_overwrite_replaces_only_the_models_own_files(trained, corpus_glob, tmp_path):
    model_dir = model_copy(trained, tmp_path / "model")
    old = manifest_of(model_dir)["fingerprint"]
    code, _, err = train(corpus_glob, model_dir, "--overwrite", "--seed", "4")
    assert code == 0, err
    assert manifest_of(model_dir)["fingerprint"] != old
    assert load(model_dir).fingerprint == manifest_of(model_dir)["fingerprint"]
    assert sorted(p.name for p in model_dir.iterdir()) == ["README.md", "decoder.keras", "encoder.keras",
                                                           "history.json", "manifest.json", "notes", "split.parquet"]
    assert (model_dir / "README.md").read_text() == "my model, trained on Tuesday\n"
    assert (model_dir / "notes" / "eval.txt").read_text() == "looks fine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no staging left beside it


def test_overwrite_keeps_a_search_npy_the_model_did_not_write(trained, corpus_glob, tmp_path):
    """search.npy is the model's own only where its manifest records it (train --near-duplicates)."""
    model_dir = model_copy(trained, tmp_path / "model")
    np.save(model_dir / "search.npy", np.eye(3, dtype=np.float32))  # the owner's file, not the model's
    before = (model_dir / "search.npy").read_bytes()
    code, _, err = train(corpus_glob, model_dir, "--overwrite", "--seed", "4")
    assert code == 0, err
    assert (model_dir / "search.npy").read_bytes() == before
    assert "search" not in manifest_of(model_dir)


def write_words(path: Path, n: int) -> Path:
    path.write_text("".join(f"w{i}\n" for i in range(n)))
    return path


def test_train_stores_the_vocab_and_the_jobs_use_it(corpus_glob, tmp_path):
    model_dir = tmp_path / "model"
    code, _, err = train(corpus_glob, model_dir, "--vocab", write_words(tmp_path / "words.txt", VOCAB + 2))
    assert code == 0, err
    manifest = manifest_of(model_dir)
    assert manifest["vocab_size"] == VOCAB + 2 and manifest["vocab"] == "vocab.txt"  # the file sets the size
    assert (model_dir / "vocab.txt").read_text() == (tmp_path / "words.txt").read_text()
    # encode --decode and decode show words without --vocab: the model's own vocabulary.
    code, _, err = run_seqcodec(["encode", "--input", corpus_glob, "--output", tmp_path / "enc", "--model-dir",
                                 model_dir, "--decode", "--mismatches", "2"])
    assert code == 0, err
    code, _, err = run_seqcodec(["decode", "--input", tmp_path / "enc" / "codes", "--output", tmp_path / "dec",
                                 "--model-dir", model_dir])
    assert code == 0, err
    for run in ("enc", "dec"):
        table = pq.read_table(tmp_path / run / "decoded")
        assert table.num_rows == 400
        for tokens, text in zip(table.column("tokens").to_pylist(), table.column("text").to_pylist(), strict=True):
            assert text == " ".join(f"w{t}" for t in tokens)
    code, _, err = run_seqcodec(["report", tmp_path / "enc"])
    assert code == 0, err
    examples = [json.loads(line) for line in (tmp_path / "enc" / "roundtrip" / "mismatches.jsonl").open()]
    page = (tmp_path / "enc" / "report.html").read_text()
    assert examples and all(" ".join(f"w{t}" for t in e["original"]) in page for e in examples)


@pytest.mark.parametrize("lines, extra, message", [
    (VOCAB - 1, [], f"token id {VOCAB - 1} is outside the vocabulary ({VOCAB - 1} tokens)"),
    (VOCAB, ["--vocab-size", VOCAB + 1], f"has {VOCAB} tokens, but --vocab-size is {VOCAB + 1}"),
    (0, [], "holds no tokens"),
])
def test_train_refuses_a_vocab_that_does_not_fit(lines, extra, message, corpus_glob, tmp_path, seqcodec):
    vocab = write_words(tmp_path / "words.txt", lines)
    code, _, err = seqcodec(["train", "--input", corpus_glob, "--model-dir", tmp_path / "model", *TRAIN_ARGS,
                             "--vocab", vocab, *map(str, extra)])
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "model").exists()


def test_train_keeps_a_vocab_txt_it_did_not_write(trained, corpus_glob, tmp_path, seqcodec):
    model_dir = model_copy(trained, tmp_path / "model")
    write_words(model_dir / "vocab.txt", VOCAB)  # the owner's own list, beside a model trained without one
    code, _, err = seqcodec(["train", "--input", corpus_glob, "--model-dir", model_dir, *TRAIN_ARGS, "--overwrite",
                             "--vocab", write_words(tmp_path / "other.txt", VOCAB + 1)])
    assert code == 2 and len(err.splitlines()) == 1 and "holds a vocab.txt that is not the model's" in err, err
    assert (model_dir / "vocab.txt").read_text() == "".join(f"w{i}\n" for i in range(VOCAB))
    # The same list is no loss: training stores it as the model's.
    code, _, err = train(corpus_glob, model_dir, "--overwrite", "--vocab", model_dir / "vocab.txt")
    assert code == 0, err
    assert manifest_of(model_dir)["vocab"] == "vocab.txt" and (model_dir / "README.md").exists()
