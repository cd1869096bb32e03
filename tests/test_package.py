"""The installed package: everything lives under ``seqcodec.``, so a user's own modules cannot shadow it."""

import subprocess
import sys
from pathlib import Path

from conftest import write_tokens_parquet
from helpers_beam import child_env, summary

USER_MODULES = ("model", "pipeline", "transforms")


def user_project(tmp_path: Path) -> Path:
    """A folder like a Beam user's project: its own model.py, pipeline.py and transforms.py."""
    project = tmp_path / "project"
    project.mkdir()
    for name in USER_MODULES:
        (project / f"{name}.py").write_text(f"raise RuntimeError('the user\\'s own {name}.py was imported')\n")
    return project


def test_import_seqcodec_beside_user_modules(tmp_path):
    project = user_project(tmp_path)
    code = ("import seqcodec, seqcodec.model.codec, seqcodec.transforms.inference, seqcodec.pipeline.encode; "
            "print(seqcodec.__version__)")
    run = subprocess.run([sys.executable, "-c", code], cwd=project, env=child_env(tmp_path),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip()


def test_job_runs_from_a_folder_holding_user_modules(tmp_path, tiny_model_dir):
    project = user_project(tmp_path)
    write_tokens_parquet(project / "in.parquet", [1, 2, 3], [[1, 2], [3, 4, 5], [6]])
    run = subprocess.run(
        [sys.executable, "-m", "seqcodec", "encode", "--input", "in.parquet", "--output", "out",
         "--model-dir", str(tiny_model_dir)],
        cwd=project, env=child_env(tmp_path), capture_output=True, text=True, timeout=240,
    )
    assert run.returncode == 0, run.stderr
    assert summary(project / "out")["rows_encoded"] == 3


INFERENCE_HALF = ("config", "manifest", "batches", "names", "engine", "weights", "codec", "loader")


def test_the_inference_half_imports_no_tensorflow(tmp_path):
    """model/'s inference modules never import the Keras half: loading and running a model needs no TensorFlow."""
    code = ("import sys; " + "; ".join(f"import seqcodec.model.{name}" for name in INFERENCE_HALF)
            + "; print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras') "
            "or m in ('seqcodec.model.tf_engine', 'seqcodec.model.network', 'seqcodec.model.tfenv')))")
    run = subprocess.run([sys.executable, "-c", code], env=child_env(tmp_path), capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
