"""The model contract: manifest.json as one typed object, read in one place through Beam's FileSystems.

Importing this module does not import TensorFlow, so the launcher of a job can check a model
directory (local, gs://, s3://, ...) without loading it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

from seqcodec.model.config import CodecConfig

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ENCODER_FILE = "encoder.keras"
DECODER_FILE = "decoder.keras"
VOCAB_FILE = "vocab.txt"  # the vocabulary given to `train --vocab`, recorded in the manifest as "vocab"
HISTORY_FILE = "history.json"  # training curves, written beside the model at the end of training


class ModelDirError(ValueError):
    """A model directory that is missing, corrupt or incompatible; the message is one line."""


@dataclasses.dataclass(frozen=True)
class Manifest:
    """What a model directory promises: the codec's shape, its weights' fingerprint and how it was trained.

    ``extra`` keeps the manifest's other top-level entries (e.g. library versions) so that a
    manifest read and written again loses nothing.
    """

    config: CodecConfig
    fingerprint: str
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def code_size(self) -> int:
        return self.config.code_size

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def max_length(self) -> int:
        return self.config.max_length

    def facts(self) -> dict[str, Any]:
        """The entries that output schemas record about the model (``seqcodec.<name>`` metadata)."""
        return {"fingerprint": self.fingerprint, "code_size": self.code_size, "vocab_size": self.vocab_size,
                "max_length": self.max_length}

    def to_dict(self) -> dict[str, Any]:
        """The JSON object written as manifest.json (configuration keys at the top level, as in format 1)."""
        return {
            "format_version": self.format_version,
            **self.config.to_dict(),
            "code_size": self.code_size,
            "fingerprint": self.fingerprint,
            "metrics": self.metrics,
            **self.extra,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: object, where: str = "manifest") -> Manifest:
        """Check a parsed manifest; ModelDirError (one line, starting with ``where``) if incompatible."""
        if not isinstance(data, dict):
            raise ModelDirError(f"{where}: {MANIFEST} is not a JSON object")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ModelDirError(f"{where}: format_version {version!r} is not supported (expected {FORMAT_VERSION})")
        try:
            config = CodecConfig.from_dict(data)
        except (TypeError, ValueError) as exc:
            raise ModelDirError(f"{where}: {MANIFEST} has a bad configuration ({exc})") from None
        if data.get("code_size") != config.code_size:
            raise ModelDirError(
                f"{where}: code_size {data.get('code_size')!r} != hidden_size + 1 ({config.code_size})"
            )
        if not isinstance(data.get("fingerprint"), str):
            raise ModelDirError(f"{where}: {MANIFEST} has no fingerprint")
        metrics = data.get("metrics") or {}
        if not isinstance(metrics, dict):
            raise ModelDirError(f"{where}: {MANIFEST} has metrics that are not a JSON object")
        known = {f.name for f in dataclasses.fields(CodecConfig)} | {"format_version", "code_size", "fingerprint",
                                                                     "metrics"}
        extra = {k: v for k, v in data.items() if k not in known}
        return cls(config, data["fingerprint"], metrics, version, extra)


def model_vocab(model_dir: str | os.PathLike, manifest: Manifest) -> list[str] | None:
    """The vocabulary stored in the model directory (``vocab.txt``, recorded by `train --vocab`), or None.

    ModelDirError (one line) if it is unreadable or its size is not the model's vocab_size.
    """
    name = manifest.extra.get("vocab")
    if not name:
        return None
    from apache_beam.io.filesystems import FileSystems

    from seqcodec.model.data import parse_vocab
    from seqcodec.model.errors import InputDataError

    text = read_model_file(model_dir, name).decode("utf-8")
    try:
        return parse_vocab(text, FileSystems.join(os.fspath(model_dir), name), manifest.vocab_size)
    except InputDataError as exc:
        raise ModelDirError(f"model directory {os.fspath(model_dir)}: {exc}") from None


def read_model_file(model_dir: str | os.PathLike, name: str) -> bytes:
    """The bytes of the model file ``name``, on any Beam filesystem; ModelDirError (one line) if unreadable."""
    from apache_beam.io.filesystems import FileSystems

    from seqcodec.model.errors import first_line

    model_dir = os.fspath(model_dir)
    try:
        with FileSystems.open(FileSystems.join(model_dir, name), compression_type="uncompressed") as handle:
            return handle.read()
    except Exception as exc:  # FileSystems raises its own types per scheme
        raise ModelDirError(f"model directory {model_dir}: {name} cannot be read ({first_line(exc)})") from None


def read_checked(model_dir: str | os.PathLike, manifest: Manifest, name: str) -> bytes:
    """``read_model_file``, refused (ModelDirError, one line) unless its sha256 is the one the manifest records."""
    import hashlib

    data = read_model_file(model_dir, name)
    if (manifest.extra.get("files") or {}).get(name) != hashlib.sha256(data).hexdigest():
        raise ModelDirError(f"model directory {os.fspath(model_dir)}: {name} does not match the sha256 in the "
                            "manifest (changed or from another model)")
    return data


def parse_manifest(text: str | bytes, where: str) -> Manifest:
    """Parse and check manifest.json text; ModelDirError if it is not valid JSON or incompatible."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ModelDirError(f"{where}: {MANIFEST} is not valid JSON ({exc})") from None
    return Manifest.from_dict(data, where)


def read_manifest(model_dir: str | os.PathLike) -> Manifest:
    """Read and check ``manifest.json`` of a model directory on any Beam filesystem (local, gs://, s3://).

    ModelDirError (one line naming the directory) if it is missing, corrupt or incompatible. A local
    directory is read without Beam, whose import alone takes seconds.
    """
    from seqcodec.model.errors import first_line

    model_dir = os.fspath(model_dir)
    where = f"model directory {model_dir}"
    if "://" not in model_dir:
        if not os.path.isdir(model_dir):
            raise ModelDirError(f"{where}: does not exist or is not a directory")
        try:
            with open(os.path.join(model_dir, MANIFEST), "rb") as handle:
                return parse_manifest(handle.read(), where)
        except FileNotFoundError:
            raise ModelDirError(f"{where}: no {MANIFEST} (not a seqcodec model)") from None
        except OSError as exc:
            raise ModelDirError(f"{where}: no readable {MANIFEST} ({first_line(exc)})") from None
    from apache_beam.io.filesystems import FileSystems  # only for remote directories

    path = FileSystems.join(model_dir, MANIFEST)
    try:
        with FileSystems.open(path, compression_type="uncompressed") as handle:
            text = handle.read()
    except Exception as exc:  # FileSystems raises its own types per scheme
        if not FileSystems.exists(model_dir):
            raise ModelDirError(f"{where}: does not exist") from None
        raise ModelDirError(f"{where}: no readable {MANIFEST} ({first_line(exc)})") from None
    return parse_manifest(text, where)


@contextlib.contextmanager
def local_model_files(model_dir: str, names: tuple[str, ...]) -> Iterator[str]:
    """A local directory holding the model's files ``names``: the path itself if local, else copies in a temp
    dir that is removed on exit (a worker loads a model per process; copies left behind would fill its disk)."""
    if "://" not in model_dir:
        yield model_dir
        return
    from apache_beam.io.filesystems import FileSystems

    from seqcodec.model.errors import first_line

    with tempfile.TemporaryDirectory(prefix="seqcodec-model-") as local:
        for name in names:
            try:
                with FileSystems.open(FileSystems.join(model_dir, name), compression_type="uncompressed") as src:
                    with open(os.path.join(local, name), "wb") as dst:
                        shutil.copyfileobj(src, dst)
            except Exception as exc:  # FileSystems raises its own types per scheme
                raise ModelDirError(f"model directory {model_dir}: {name} cannot be read ({first_line(exc)})") from None
        yield local
