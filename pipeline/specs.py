"""Typed job settings: the Beam jobs' command lines parsed once into frozen dataclasses, checked.

Everything below the command line takes these, never an ``argparse.Namespace``: the parsers
(``options.job_parser`` and each job's ``parser()``) own the options and their defaults, and
``from_args`` is the one place that reads a Namespace.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from seqcodec.model.config import Batching
from seqcodec.pipeline.options import (
    check_beam_arguments,
    check_io_arguments,
    check_table_arguments,
    use_filesystem_options,
)
from seqcodec.pipeline.runtime import UsageError, setup_logging


@dataclasses.dataclass(frozen=True)
class TableSpec:
    """``--table NAMESPACE.TABLE`` in ``--catalog``: an Iceberg table in place of a folder."""

    name: str
    catalog: str
    snapshot_id: int | None = None  # readers only (``--snapshot-id``): the table as of this snapshot


@dataclasses.dataclass(frozen=True, kw_only=True)
class JobSpec:
    """The options every Beam job shares (``options.add_io_arguments``), checked."""

    input: str | None  # None with a table to read instead
    output: str | None  # None with a table to write instead
    model_dir: str
    id_column: str
    batching: Batching
    num_shards: int
    max_batch_rows: int
    run_date: str | None
    max_error_rate: float
    grace_seconds: float
    wait: bool
    verbose: bool
    table: TableSpec | None
    vocab: str | None  # --vocab FILE, read against the model once it is known

    @staticmethod
    def shared(args: argparse.Namespace, replaces: str) -> dict[str, Any]:
        """The shared fields from parsed arguments, after the shared checks (UsageError or ValueError, exit 2).

        ``replaces``: the option that ``--table`` stands in for (``--input`` or ``--output``).
        """
        check_table_arguments(args, replaces)
        check_io_arguments(args)
        table = None
        if args.table is not None:
            table = TableSpec(args.table, args.catalog, getattr(args, "snapshot_id", None))
        return {
            "input": args.input, "output": args.output, "model_dir": args.model_dir, "id_column": args.id_column,
            "batching": Batching(args.batch_tokens, args.batch_size, args.tf_threads,
                                 beam_width=args.beam_width),
            "num_shards": args.num_shards, "max_batch_rows": args.max_batch_rows, "run_date": args.run_date,
            "max_error_rate": args.max_error_rate, "grace_seconds": args.grace_seconds, "wait": args.wait,
            "verbose": args.verbose, "table": table, "vocab": args.vocab,
        }


@dataclasses.dataclass(frozen=True, kw_only=True)
class EncodeSpec(JobSpec):
    """`seqcodec encode`: the shared options plus the tokens column and what to do after encoding."""

    tokens_column: str
    too_long: str  # validate.TOO_LONG_CHOICES
    code_dtype: str  # formats.CODE_DTYPES
    decode: bool
    mismatches: int

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> EncodeSpec:
        """The checked spec; UsageError or ValueError (one line, exit 2) for a bad option."""
        return cls(**cls.shared(args, "--output"), tokens_column=args.tokens_column, too_long=args.too_long,
                   code_dtype=args.code_dtype, decode=args.decode, mismatches=args.mismatches)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DecodeSpec(JobSpec):
    """`seqcodec decode`: the shared options plus the code column."""

    code_column: str

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DecodeSpec:
        """The checked spec; UsageError or ValueError (one line, exit 2) for a bad option."""
        shared = cls.shared(args, "--input")
        if args.snapshot_id is not None and args.table is None:
            raise UsageError("--snapshot-id needs --table")
        return cls(**shared, code_column=args.code_column)


def parse_job(parser: argparse.ArgumentParser, spec_type: type[JobSpec], argv: list[str] | None,
              ) -> tuple[Any, list[str]]:
    """Parse a job's command line once: its typed spec and the options left for Beam.

    An option neither the job nor Beam knows (a typo, an abbreviation) is a usage error before any
    input is read; Beam's filesystem options apply to this process's own checks too.
    """
    args, beam_args = parser.parse_known_args(argv)
    check_beam_arguments(beam_args)
    setup_logging(args.verbose)
    use_filesystem_options(beam_args)
    return spec_type.from_args(args), beam_args
