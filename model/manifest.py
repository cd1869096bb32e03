"""The model directory's manifest.json: format, checks and one-line errors, without importing TensorFlow."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from seqcodec.model.config import CodecConfig

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class ModelDirError(ValueError):
    """A model directory that is missing, corrupt or incompatible; the message is one line."""


def check_manifest(manifest: object, where: str) -> dict[str, Any]:
    """Check a parsed manifest; ModelDirError (one line, starting with ``where``) if incompatible."""
    if not isinstance(manifest, dict):
        raise ModelDirError(f"{where}: {MANIFEST} is not a JSON object")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelDirError(f"{where}: format_version {version!r} is not supported (expected {FORMAT_VERSION})")
    try:
        config = CodecConfig.from_dict(manifest)
    except (TypeError, ValueError) as exc:
        raise ModelDirError(f"{where}: {MANIFEST} has a bad configuration ({exc})") from None
    if manifest.get("code_size") != config.code_size:
        raise ModelDirError(
            f"{where}: code_size {manifest.get('code_size')!r} != hidden_size + 1 ({config.code_size})"
        )
    if not isinstance(manifest.get("fingerprint"), str):
        raise ModelDirError(f"{where}: {MANIFEST} has no fingerprint")
    return manifest


def parse_manifest(text: str | bytes, where: str) -> dict[str, Any]:
    """Parse and check manifest.json text; ModelDirError if it is not valid JSON or incompatible."""
    try:
        manifest = json.loads(text)
    except ValueError as exc:
        raise ModelDirError(f"{where}: {MANIFEST} is not valid JSON ({exc})") from None
    return check_manifest(manifest, where)


def read_manifest(model_dir: str | os.PathLike) -> dict[str, Any]:
    """Read and check a local manifest.json; ModelDirError (one line) if missing, corrupt or incompatible."""
    path = Path(model_dir)
    where = f"model directory {path}"
    if not path.is_dir():
        raise ModelDirError(f"{where}: does not exist or is not a directory")
    try:
        text = (path / MANIFEST).read_bytes()
    except FileNotFoundError:
        raise ModelDirError(f"{where}: no {MANIFEST} (not a seqcodec model)") from None
    except OSError as exc:
        raise ModelDirError(f"{where}: {MANIFEST} is unreadable ({exc})") from None
    return parse_manifest(text, where)
