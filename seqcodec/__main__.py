"""`python -m seqcodec COMMAND`: the same as the `seqcodec` command."""

from seqcodec.pipeline.cli import entry

entry()
