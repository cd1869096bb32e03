"""Packaging for seqcodec; also the --setup_file that remote Beam workers install."""

from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent
SUBPACKAGES = ("model", "transforms", "pipeline")


def requirements(section: str = "") -> list[str]:
    """requirements.txt's pins: those above its ``# [train]`` marker, or those below it (section "train")."""
    current, pins = "", []
    for line in (HERE / "requirements.txt").read_text().splitlines():
        line = line.strip()
        if line.startswith("# ["):
            current = line[3:].rstrip("]")
        elif line and not line.startswith("#") and current == section:
            pins.append(line)
    return pins


def extras() -> dict[str, list[str]]:
    """``.[train]``: TensorFlow and Keras; ``.[aws]`` / ``.[gcp]``: Beam's S3 or Google Cloud support, same Beam pin;
    ``.[iceberg]``: Iceberg table output (--table)."""
    beam = next(r for r in requirements() if r.startswith("apache-beam=="))
    version = beam.split("==", 1)[1]
    # pyiceberg with SQLAlchemy for the embedded sqlite catalog; checked with the pyarrow and Beam pins above.
    return {"train": requirements("train"), **{extra: [f"apache-beam[{extra}]=={version}"] for extra in ("aws", "gcp")},
            "iceberg": ["pyiceberg[sql-sqlite]==0.12.0"]}


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
    install_requires=requirements(),  # no TensorFlow: workers run the numpy engine
    extras_require=extras(),
    entry_points={"console_scripts": ["seqcodec=seqcodec.pipeline.cli:entry"]},
)
