"""Job assembly and command lines: options, the Beam graphs, `seqcodec` and `python -m` entry points."""

import seqcodec.transforms  # noqa: F401  (imports Beam first, with its import-time warning silenced)
