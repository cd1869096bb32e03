"""Packaging for seqcodec; also the --setup_file that remote Beam workers install."""

from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent
SUBPACKAGES = ("model", "transforms", "pipeline")


def requirements() -> list[str]:
    lines = (HERE / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def runner_extras() -> dict[str, list[str]]:
    """``pip install .[aws]`` / ``.[gcp]``: Beam's S3 or Google Cloud (gs://, Dataflow) support, same Beam pin;
    ``.[iceberg]``: Iceberg table output."""
    beam = next(r for r in requirements() if r.startswith("apache-beam=="))
    version = beam.split("==", 1)[1]
    extras = {extra: [f"apache-beam[{extra}]=={version}"] for extra in ("aws", "gcp")}
    # ``pip install .[iceberg]``: --table output (pyiceberg, with SQLAlchemy for the embedded sqlite catalog);
    # checked with the pyarrow and Beam pins above.
    extras["iceberg"] = ["pyiceberg[sql-sqlite]==0.12.0"]
    return extras


setup(
    name="seqcodec",
    version="0.1.0",  # also seqcodec.__version__
    description="Batch job that turns variable-length token sequences into fixed-size codes and back",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.12",  # what requirements.txt is checked on; deploy/ensure_venv.sh says so in one line
    # The repository keeps model/, transforms/ and pipeline/ at the top; installed, everything lives
    # under seqcodec. so that a user's own model.py or pipeline.py cannot shadow the library.
    packages=["seqcodec", *(f"seqcodec.{name}" for name in SUBPACKAGES)],
    package_dir={"seqcodec": "seqcodec", **{f"seqcodec.{name}": name for name in SUBPACKAGES}},
    install_requires=requirements(),
    extras_require=runner_extras(),
    entry_points={"console_scripts": ["seqcodec=seqcodec.pipeline.cli:entry"]},
)
