"""Beam PTransforms and DoFns of the seqcodec job: Parquet in/out, validation, inference, round-trip statistics."""

import logging as _logging

# Beam's import logs a root-level warning about optional GCP client libraries we do not use.
_root = _logging.getLogger()
_level = _root.level
_root.setLevel(_logging.ERROR)
try:
    import apache_beam  # noqa: F401
finally:
    _root.setLevel(_level)
