"""seqcodec: turn variable-length token sequences into fixed-size, length-prefixed codes and back.

The public face; users never need the internal module names::

    import seqcodec
    codec = seqcodec.load("models/default")           # local, gs:// or s3://
    codes = codec.encode([[7, 4, 11, 11, 14]])        # float32 (N, hidden_size + 1), codes[:, 0] = length
    tokens = codec.decode(codes)                      # list of int32 arrays, each exactly code[0] long

    codes, errors = pcoll | seqcodec.EncodeSequences("models/default")   # in a Beam pipeline

Names are imported on first use, so ``import seqcodec`` does not import TensorFlow or Beam.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "load": "seqcodec.model.loader",
    "train": "seqcodec.pipeline.train",
    "SequenceCodec": "seqcodec.model.codec",
    "CodecConfig": "seqcodec.model.config",
    "Manifest": "seqcodec.model.manifest",
    "read_manifest": "seqcodec.model.manifest",
    "ModelDirError": "seqcodec.model.manifest",
    "InputDataError": "seqcodec.model.errors",
    "EncodeSequences": "seqcodec.transforms.sequences",
    "DecodeCodes": "seqcodec.transforms.sequences",
    "SequenceModelHandler": "seqcodec.transforms.sequences",
    "REASONS": "seqcodec.transforms.validate",
    "CODE_REASONS": "seqcodec.transforms.validate",
    "committed_files": "seqcodec.transforms.partition",
    "CodeNormalization": "seqcodec.model.similarity",
    "CodeSearch": "seqcodec.model.search",
    "bit_identical_batching": "seqcodec.model.engine",
}
__all__ = [  # the same names as _EXPORTS (tests/test_library.py checks), written out for linters
    "__version__", "load", "train", "SequenceCodec", "CodecConfig", "Manifest", "read_manifest", "ModelDirError",
    "InputDataError", "EncodeSequences", "DecodeCodes", "SequenceModelHandler", "REASONS", "CODE_REASONS",
    "committed_files", "CodeNormalization", "CodeSearch", "bit_identical_batching",
]

if TYPE_CHECKING:
    from seqcodec.model.codec import SequenceCodec
    from seqcodec.model.config import CodecConfig
    from seqcodec.model.engine import bit_identical_batching
    from seqcodec.model.errors import InputDataError
    from seqcodec.model.loader import load
    from seqcodec.model.manifest import Manifest, ModelDirError, read_manifest
    from seqcodec.model.search import CodeSearch
    from seqcodec.model.similarity import CodeNormalization
    from seqcodec.pipeline.train import train
    from seqcodec.transforms.partition import committed_files
    from seqcodec.transforms.sequences import DecodeCodes, EncodeSequences, SequenceModelHandler
    from seqcodec.transforms.validate import CODE_REASONS, REASONS


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'seqcodec' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
