"""Write a model directory (encoder.keras, decoder.keras, manifest.json): the Keras half of the model contract.

``loader.py`` reads it back without TensorFlow.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from seqcodec.model.config import CodecConfig
from seqcodec.model.heldout import SPLIT_FILE, split_bytes, split_facts
from seqcodec.model.manifest import (
    DECODER_FILE,
    ENCODER_FILE,
    HISTORY_FILE,
    MANIFEST,
    VOCAB_FILE,
    Manifest,
    ModelDirError,
)
from seqcodec.model.network import Network
from seqcodec.model.similarity import SEARCH_FILE
from seqcodec.model.tfenv import keras, tf
from seqcodec.model.weights import file_digest, live_arrays
from seqcodec.model.weights import fingerprint as arrays_fingerprint


def fingerprint(config: CodecConfig, encoder: keras.Model, decoder: keras.Model) -> str:
    """Stable hash of the configuration and every weight of live Keras models (``weights.fingerprint``)."""
    return arrays_fingerprint(config, live_arrays(encoder), live_arrays(decoder))


def own_files(model_dir: Path) -> set[str]:
    """The files of ``model_dir`` that training wrote (empty if it holds no model): all that replacing it may touch."""
    try:
        recorded = json.loads((model_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        recorded = None
    own = {ENCODER_FILE, DECODER_FILE, MANIFEST, HISTORY_FILE, SPLIT_FILE}
    # vocab.txt and search.npy are ours only where the manifest says train stored them: a user's own stay.
    if isinstance(recorded, dict):
        own |= {name for key, name in (("vocab", VOCAB_FILE), ("search", SEARCH_FILE)) if recorded.get(key) == name}
    return {name for name in own if (model_dir / name).exists()}


def check_model_dir(model_dir: str | os.PathLike, overwrite: bool = True) -> Path:
    """The directory ``save_codec`` may write: new, empty, or a seqcodec model if ``overwrite``; else ModelDirError.

    Training calls it before the first epoch so that a bad --model-dir fails in seconds, not after an hour.
    """
    target = Path(model_dir)
    if "://" in os.fspath(model_dir):
        raise ModelDirError(f"model directory {model_dir}: training writes local directories only; copy it afterwards")
    if target.exists() and not target.is_dir():
        raise ModelDirError(f"model directory {target}: exists and is not a seqcodec model; refusing to replace it")
    if target.exists():
        if (target / MANIFEST).exists() or (target / ENCODER_FILE).exists():
            if not overwrite:
                raise ModelDirError(f"model directory {target}: holds a model already; pass --overwrite to replace "
                                    "it (its other files are kept)")
        elif any(target.iterdir()):
            raise ModelDirError(f"model directory {target}: exists and is not a seqcodec model; refusing to write "
                                "into it")
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ModelDirError(f"model directory {target}: {parent} is not a writable directory")
    return target


def save_codec(
    network: Network,
    model_dir: str | os.PathLike,
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    vocab: Sequence[str] | None = None,
    split: pa.Table | None = None,
    search: np.ndarray | None = None,
) -> Manifest:
    """Write the model directory and return its manifest; an existing model there is replaced.

    Only the model's own files are replaced (``own_files``); any other file in the directory is
    kept. With ``vocab`` (one token per id) the directory also holds it as ``vocab.txt``; with
    ``split`` (``heldout.split_table``) the training split as ``split.parquet``, named in the
    manifest and checked by its sha256 like the networks; with ``search`` (an (H, H) map of ``h``,
    ``train --near-duplicates``) that map as ``search.npy``, likewise.
    """
    target = check_model_dir(model_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    staging.chmod(0o755)
    network.encoder.save(staging / ENCODER_FILE)
    network.decoder.save(staging / DECODER_FILE)
    if vocab is not None:
        if len(vocab) != network.config.vocab_size:
            raise ValueError(f"the vocabulary has {len(vocab)} tokens, the model's vocab_size is "
                             f"{network.config.vocab_size}")
        (staging / VOCAB_FILE).write_text("".join(f"{token}\n" for token in vocab), encoding="utf-8")
    if split is not None:
        (staging / SPLIT_FILE).write_bytes(split_bytes(split))
    if search is not None:
        np.save(staging / SEARCH_FILE, np.asarray(search, np.float32), allow_pickle=False)
    digested = (ENCODER_FILE, DECODER_FILE, *((SPLIT_FILE,) if split is not None else ()),
                *((SEARCH_FILE,) if search is not None else ()))
    manifest = Manifest(
        network.config,
        network.fingerprint(),
        metrics or {},
        extra={
            "versions": {"keras": keras.__version__, "tensorflow": tf.__version__},
            # Digests for readers that check the files before reading them (the split record too).
            "files": {name: file_digest(staging / name) for name in digested},
            **({"vocab": VOCAB_FILE} if vocab is not None else {}),
            **({"split": split_facts(split)} if split is not None else {}),
            **({"search": SEARCH_FILE} if search is not None else {}),
            **(extra or {}),
        },
    )
    (staging / MANIFEST).write_text(manifest.to_json())
    if not target.exists():
        staging.rename(target)
    elif {p.name for p in target.iterdir()} <= own_files(target):  # nothing but the old model: swap it whole
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
        target.rename(old / target.name)
        staging.rename(target)
        shutil.rmtree(old)
    else:
        # Other files live here (a README, notes): replace the model's own files one by one and keep theirs.
        # The manifest goes last, so a reader in between sees weights that do not match it, which loading
        # refuses (fingerprint), never a silently different model.
        stale = own_files(target)
        for name in (ENCODER_FILE, DECODER_FILE, VOCAB_FILE, HISTORY_FILE, SPLIT_FILE, SEARCH_FILE, MANIFEST):
            if (staging / name).exists():
                os.replace(staging / name, target / name)
            elif name in stale:
                (target / name).unlink()
        staging.rmdir()
    return manifest
