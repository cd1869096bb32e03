"""Shared pytest fixtures and helpers: a tiny untrained codec, its saved model dir, Parquet writers.

Everything here is real: real Keras models (tiny, so they build in well under a second) and
real Parquet files written with pyarrow. Helpers that are plain functions (``write_tokens_parquet``,
``random_sequences``) are imported by the test modules with ``from conftest import ...``.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import contextlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Iterator, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402

from seqcodec.model.codec import SequenceCodec  # noqa: E402
from seqcodec.model.config import CodecConfig  # noqa: E402
from seqcodec.model.engine import bit_identical_batching  # noqa: E402
from seqcodec.model.network import Network, build_network  # noqa: E402
from seqcodec.model.storage import save_codec  # noqa: E402
from seqcodec.model.tfenv import keras  # noqa: E402
from seqcodec.pipeline.cli import main as cli_main  # noqa: E402

TINY = {"vocab_size": 13, "max_length": 12, "hidden_size": 16, "embedding_size": 8}
INT32_LISTS = pa.list_(pa.int32())


# -- plain helpers ----------------------------------------------------------------------------------


def write_tokens_parquet(
    path: str | os.PathLike,
    ids: Sequence[int],
    token_lists: Sequence,
    tokens_type: pa.DataType = INT32_LISTS,
    row_group_size: int | None = None,
    *,
    tokens_column: str = "tokens",
) -> Path:
    """Write a real Parquet file with columns ``id`` (int64) and ``tokens_column`` of ``tokens_type``.

    ``token_lists`` may hold lists, numpy arrays or None (a null row); ``tokens_type`` can be any
    Arrow type (e.g. ``pa.string()``) to write deliberately wrong columns. Returns the path.
    """
    rows = [t.tolist() if isinstance(t, np.ndarray) else t for t in token_lists]
    table = pa.table({"id": pa.array(ids, type=pa.int64()), tokens_column: pa.array(rows, type=tokens_type)})
    pq.write_table(table, path, row_group_size=row_group_size)
    return Path(path)


def token_file(path: Path, n: int, bad_every: int = 0, seed: int = 0, row_group_size: int = 50):
    """A token Parquet file of ids 0..n-1; every ``bad_every``-th row has an out-of-range token.

    Returns (path, ids of valid rows, ids of rejected rows).
    """
    seqs = random_sequences(n, 13, 12, seed)
    bad = list(range(0, n, bad_every)) if bad_every else []
    for i in bad:
        seqs[i] = [99]
    write_tokens_parquet(path, list(range(n)), seqs, row_group_size=row_group_size)
    return path, sorted(set(range(n)) - set(bad)), bad


def committed_run(partition: Path) -> str:
    """The run id that a partition's commit record (``_SUCCESS``) names."""
    return json.loads((partition / "_SUCCESS").read_text())["run_id"]


def visible(folder: Path) -> list[str]:
    """The names in ``folder`` that readers see (hidden run directories and the lease left out)."""
    return sorted(name for name in os.listdir(folder) if not name.startswith("."))


def assert_same_codes(got: np.ndarray, want: np.ndarray, err_msg: str = "") -> None:
    """Codes of the same rows, batched differently: bit for bit where this machine's BLAS rounds each row
    of a matrix product alone (``engine.bit_identical_batching``), else equal lengths and ``h`` within
    float32 rounding (a batching mistake moves codes by far more)."""
    if bit_identical_batching():
        np.testing.assert_array_equal(got, want, err_msg=err_msg)
    else:
        np.testing.assert_array_equal(got[:, 0], want[:, 0], err_msg=err_msg)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5, err_msg=err_msg)


def random_sequences(n: int, vocab: int, max_len: int, seed: int) -> list[np.ndarray]:
    """``n`` int64 sequences with lengths uniform in [1, max_len] and ids uniform in [0, vocab)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, size=int(rng.integers(1, max_len + 1)), dtype=np.int64) for _ in range(n)]


def token_files(root: Path, ids: dict[str, range], seed: int, row_group_size: int) -> list[np.ndarray]:
    """One token file per name, with those ids and random sequences (vocabulary 13, up to 12 long); the sequences."""
    seqs = random_sequences(sum(len(r) for r in ids.values()), 13, 12, seed=seed)
    start = 0
    for name, rows in ids.items():
        write_tokens_parquet(root / name, rows, seqs[start:start + len(rows)], row_group_size=row_group_size)
        start += len(rows)
    return seqs


def build_codec(config: CodecConfig, seed: int) -> Network:
    """A fresh untrained network (``.codec()`` runs it); the same ``seed`` and ``config`` give the same weights."""
    keras.utils.set_random_seed(seed)
    return build_network(config)


@contextlib.contextmanager
def root_logging_restored() -> Iterator[None]:
    """Put the root logger's handlers and level back afterwards.

    The commands call ``logging.basicConfig(force=True)``, which would otherwise leave a handler
    bound to a captured (later closed) stderr and change the level for every later test.
    """
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
        for handler in handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(level)


def run_seqcodec(argv: Sequence) -> tuple[int, str, str]:
    """Run the ``seqcodec`` CLI in-process outside capsys (e.g. in a module-scoped fixture).

    Returns (exit code, stdout, stderr); stdout and stderr are redirected into strings.
    """
    out, err = io.StringIO(), io.StringIO()
    with root_logging_restored(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


# -- the session's temp directory -------------------------------------------------------------------

SESSION_TMP = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    """Temp files of this process go to a directory of the session's own, removed at its end.

    Beam makes a directory for every Pipeline and removes it only in ``run()``; tests that build a
    pipeline without running it would leave one in /tmp each. pytest's own tmp_path stays where it was.
    """
    os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", tempfile.gettempdir())
    config.stash[SESSION_TMP] = tempfile.tempdir = tempfile.mkdtemp(prefix="seqcodec-tests-")


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(config.stash[SESSION_TMP], ignore_errors=True)
    tempfile.tempdir = None


# -- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty directory that this test's temp files (tempfile's, so Beam's too) go to: what a run leaves there."""
    path = tmp_path / "tmp"
    path.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    return path


@pytest.fixture
def tiny_config() -> CodecConfig:
    """A small configuration: 13 token ids, sequences up to 12 long, 16 hidden units."""
    return CodecConfig(**TINY)


@pytest.fixture(scope="session")
def tiny_network() -> Network:
    """An untrained network of the tiny configuration (seed 1). Shared: do not change its weights."""
    return build_codec(CodecConfig(**TINY), seed=1)


@pytest.fixture(scope="session")
def tiny_ar_network() -> Network:
    """An untrained autoregressive network of the tiny configuration (seed 1). Shared: do not change its weights."""
    return build_codec(CodecConfig(**TINY, decoder="autoregressive"), seed=1)


@pytest.fixture(scope="session")
def tiny_codec(tiny_network: Network) -> SequenceCodec:
    """``tiny_network`` behind a codec (the numpy engine on its weights)."""
    return tiny_network.codec()


@pytest.fixture(scope="session")
def tiny_ar_codec(tiny_ar_network: Network) -> SequenceCodec:
    """``tiny_ar_network`` behind a codec."""
    return tiny_ar_network.codec()


@pytest.fixture(scope="session", params=["repeat", "autoregressive"])
def any_codec(request: pytest.FixtureRequest, tiny_codec: SequenceCodec, tiny_ar_codec: SequenceCodec) -> SequenceCodec:
    """Each decoder in turn: ``tiny_codec`` and ``tiny_ar_codec``."""
    return tiny_codec if request.param == "repeat" else tiny_ar_codec


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_network: Network, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny_network`` saved with ``save_codec``. Shared: copy it before damaging it."""
    model_dir = tmp_path_factory.mktemp("tiny") / "model"
    save_codec(tiny_network, model_dir, metrics={"note": "untrained test model"})
    return model_dir


@pytest.fixture
def seqcodec(capsys: pytest.CaptureFixture):
    """Run the ``seqcodec`` CLI in-process, output read with capsys: ``seqcodec(["train", ...])``.

    Returns (exit code, stdout, stderr) of this call only (earlier captured output is discarded).
    """

    def run(argv: Sequence) -> tuple[int, str, str]:
        capsys.readouterr()
        with root_logging_restored():
            code = cli_main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run
