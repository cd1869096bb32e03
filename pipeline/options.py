"""Command-line options of the Beam jobs and the Pipeline they run on (DirectRunner made explicit)."""

from __future__ import annotations

import argparse
import importlib
import shutil

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import (
    DirectOptions,
    GoogleCloudOptions,
    PipelineOptions,
    StandardOptions,
    WorkerOptions,
)

from seqcodec.model.config import DEFAULT_TOKEN_BUDGET
from seqcodec.model.errors import first_line
from seqcodec.pipeline.runtime import EXIT_CODES_HELP, ArgumentParser, HelpFormatter, UsageError, check_positive
from seqcodec.transforms.parquet_io import MAX_BATCH_ROWS
from seqcodec.transforms.partition import GRACE_SECONDS, check_run_date

DIRECT_RUNNERS = (None, "DirectRunner", "direct")
DEFAULT_MAX_ERROR_RATE = 0.05


def job_parser(prog: str, description: str, table_replaces: str = "") -> argparse.ArgumentParser:
    """A Beam job's parser: the shared options, the exit codes in --help, unknown options left for Beam.

    ``table_replaces`` ("input" or "output"): the option that the job's ``--table`` stands in for, so not required.
    """
    parser = ArgumentParser(
        prog=prog,
        description=f"{description} Unknown --options go to Beam (e.g. --runner, --direct_running_mode, --setup_file).",
        epilog=EXIT_CODES_HELP,
        formatter_class=HelpFormatter,
    )
    add_io_arguments(parser, table_replaces)
    return parser


def add_io_arguments(parser: argparse.ArgumentParser, table_replaces: str = "") -> None:
    """Options every job shares: where data and model are, and how outputs are cut."""
    instead = " (default: none, with --table instead)"
    parser.add_argument("--input", required=table_replaces != "input",
                        help="glob of input Parquet files, or a directory of them (any Beam filesystem)"
                             + (instead if table_replaces == "input" else ""))
    parser.add_argument("--output", required=table_replaces != "output",
                        help="output directory: the run's partition, or with --run-date the parent of its partitions"
                             + (instead if table_replaces == "output" else ""))
    parser.add_argument("--model-dir", required=True, help="model directory written by `seqcodec train`")
    parser.add_argument("--id-column", default="id", help="name of the id column (default: %(default)s)")
    parser.add_argument("--batch-tokens", type=int, default=DEFAULT_TOKEN_BUDGET,
                        help=f"padded tokens per model call (default {DEFAULT_TOKEN_BUDGET}): short rows make "
                             "batches of many rows, long rows of few")
    parser.add_argument("--batch-size", type=int,
                        help="also at most this many sequences per model call (default: no cap)")
    parser.add_argument("--tf-threads", type=int, default=0, metavar="N",
                        help="threads each worker process runs the model with: batches the numpy engine runs "
                             "at once, TensorFlow's threads per op (default 0: the machine's cores divided by the "
                             "worker processes the runner starts on it)")
    parser.add_argument("--beam-width", type=int, default=1, metavar="K",
                        help="decoding only: keep the K most likely sentences while decoding with an autoregressive "
                             "decoder (default 1: greedy; a repeat decoder's greedy choice is already the most "
                             "likely, so it ignores K; docs/MODEL.md has what K costs and gains)")
    parser.add_argument("--num-shards", type=int, default=0, help="output shards (default: the runner decides)")
    parser.add_argument("--max-batch-rows", type=int, default=MAX_BATCH_ROWS,
                        help="largest Arrow batch handed to the model at once; bigger row groups are sliced "
                             "(default: %(default)s)")
    parser.add_argument("--run-date", metavar="YYYY-MM-DD",
                        help="nightly runs: publish into OUTPUT/dt=YYYY-MM-DD, replacing that partition whole "
                             "(default: none, OUTPUT is the partition)")
    parser.add_argument("--max-error-rate", type=float, metavar="F", default=DEFAULT_MAX_ERROR_RATE,
                        help="publish nothing (exit 3) if more than this fraction of the rows is rejected "
                             f"(default {DEFAULT_MAX_ERROR_RATE:g}; 1 turns the gate off)")
    parser.add_argument("--grace-seconds", type=float, metavar="S", default=GRACE_SECONDS,
                        help="how long the run a commit replaces stays readable for readers midway through it; "
                             "later commits into OUTPUT delete it after that (default: %(default)g)")
    parser.add_argument("--no-wait", dest="wait", action="store_false",
                        help="submit the job, print its id where the runner has one, and exit 0; the job "
                             "publishes by itself (with the DirectRunner the job runs in this process anyway)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def add_table_arguments(parser: argparse.ArgumentParser, help: str, read: bool = False) -> None:
    """``--table NAMESPACE.TABLE`` and ``--catalog NAME``: an Iceberg table in place of a folder (README, "Iceberg");
    readers also get ``--snapshot-id`` (time travel)."""
    parser.add_argument("--table", metavar="NAMESPACE.TABLE", help=f"{help} (default: none)")
    if read:
        parser.add_argument("--snapshot-id", type=int, metavar="ID",
                            help="with --table: read the table as of this snapshot (time travel; default: the "
                                 "current one)")
    parser.add_argument("--catalog", metavar="NAME", default="default",
                        help="with --table: the pyiceberg catalog, configured the pyiceberg way "
                             "(PYICEBERG_CATALOG__NAME__TYPE/URI/WAREHOUSE or .pyiceberg.yaml; default: %(default)s)")


def check_table_arguments(args: argparse.Namespace, replaces: str) -> None:
    """UsageError unless exactly one of ``--table`` and the option it ``replaces`` (--input or --output) is given."""
    dest = replaces.lstrip("-")
    given = getattr(args, dest) is not None
    if getattr(args, "table", None) is None:
        if not given:
            raise UsageError(f"the following arguments are required: {replaces} (or --table)")
        return
    if given:
        raise UsageError(f"--table replaces {replaces}: give one of them")
    if args.run_date is None:
        raise UsageError("--table needs --run-date (the table's rows are replaced per run date)")


def check_run_options(args: argparse.Namespace) -> None:
    """ValueError (one line, exit 2) for a bad --run-date, --grace-seconds or --max-error-rate, before anything runs."""
    if args.run_date is not None:
        check_run_date(args.run_date)
    if args.grace_seconds < 0:
        raise ValueError(f"--grace-seconds must be >= 0, got {args.grace_seconds:g}")
    if not 0.0 <= args.max_error_rate <= 1.0:
        raise ValueError(f"--max-error-rate must be a fraction between 0 and 1, got {args.max_error_rate}")


def check_io_arguments(args: argparse.Namespace) -> None:
    """ValueError (one line, exit 2) for any bad shared option, before anything runs."""
    check_positive(args, "batch_tokens", "max_batch_rows", "beam_width")
    if args.batch_size is not None:
        check_positive(args, "batch_size")
    if args.tf_threads < 0:
        raise ValueError(f"--tf-threads must be >= 0, got {args.tf_threads}")
    if args.num_shards < 0:
        raise ValueError(f"--num-shards must be >= 0, got {args.num_shards}")
    check_run_options(args)
    check_extras(args.input, args.output, args.model_dir)


# What each object store needs beyond the base install: the module Beam's filesystem imports, and our extra.
STORE_EXTRAS = {"s3": ("boto3", "aws"), "gs": ("google.cloud.storage", "gcp")}


def check_extras(*paths: str | None) -> None:
    """ValueError (one line) naming the extra to install when a path's store needs a package that is missing.

    Without it Beam fails later and less clearly (``cannot list files (... Missing boto3 requirement)``).
    """
    for path in paths:
        scheme = FileSystems.get_scheme(path) if path else None
        if scheme not in STORE_EXTRAS:
            continue
        module, extra = STORE_EXTRAS[scheme]
        try:
            importlib.import_module(module)
        except ImportError:
            raise ValueError(f"{path}: {scheme}:// paths need {module}, which is not installed: "
                             f"pip install 'seqcodec[{extra}]'") from None


def use_filesystem_options(beam_args: list[str]) -> None:
    """Hand Beam's filesystem options (``--s3_endpoint_url``, ``--s3_access_key_id``, ...) to this process.

    The launcher lists the input files, reads their footers and the model manifest itself, before any
    Pipeline exists (a Pipeline would set them, and workers get them from the pipeline options); without
    this, S3 paths fail with "Must provide one of client or options".
    """
    options = PipelineOptions(beam_args)
    FileSystems.set_options(options)
    if options.view_as(GoogleCloudOptions).no_auth:
        anonymous_gcs()


def anonymous_gcs() -> None:
    """``--no_auth``: reach gs:// without credentials at once, as Beam's own Dataflow client does with it.

    Beam's GCS filesystem looks for credentials whatever ``--no_auth`` says, and where there are none
    it retries for about 25 s before it connects anonymously (an emulator, a public bucket). Its
    credential cache, marked as "looked up, none", makes it connect anonymously straight away.
    """
    try:
        from apache_beam.internal.gcp import auth

        cache = auth._Credentials
        with cache._credentials_lock:
            cache._credentials, cache._credentials_init = None, True
    except (ImportError, AttributeError):  # no [gcp] extra, or another Beam: its own look-up then runs as before
        return


def direct_runner(options: PipelineOptions):
    """The DirectRunner's own in-process engine (FnApiRunner), chosen directly.

    Beam's DirectRunner first tries the Prism runner, which downloads a binary; with no
    internet that costs a failed download before it falls back. We pick the fallback
    ourselves. It honours --direct_running_mode and --direct_num_workers.
    """
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    info = fn_runner.ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
    return fn_runner.FnApiRunner(provision_info=info)


def single_worker(options: PipelineOptions) -> bool:
    """True where one worker sees every row (the in-process DirectRunner), so its progress can show the total."""
    direct = options.view_as(DirectOptions)
    return (options.view_as(StandardOptions).runner in DIRECT_RUNNERS
            and direct.direct_running_mode in (None, "in_memory") and (direct.direct_num_workers or 1) == 1)


def runner_name(options: PipelineOptions) -> str:
    return options.view_as(StandardOptions).runner or "DirectRunner"


def check_beam_arguments(beam_args: list[str]) -> None:
    """UsageError for arguments that neither the job nor Beam knows (Beam itself would drop them with a warning)."""
    from apache_beam.options.pipeline_options import _BeamArgumentParser

    parser = _BeamArgumentParser(allow_abbrev=False)
    for cls in {str(c): c for c in PipelineOptions.__subclasses__()}.values():
        cls._add_argparse_args(parser)
    _, unknown = parser.parse_known_args(beam_args)
    if unknown:
        raise UsageError(f"unrecognized arguments: {' '.join(unknown)} (neither the job's nor Beam's)")


def quiet_workers(options: PipelineOptions) -> None:
    """Workers log Beam's warnings and the job's own lines (progress), not Beam's per-bundle INFO chatter.

    Runners copy worker log lines into the job's log (the Dataflow console, the launcher's stderr
    with multi-process workers, hence an Airflow task log). Explicit Beam options win.
    """
    worker = options.view_as(WorkerOptions)
    if worker.default_sdk_harness_log_level is None:
        worker.default_sdk_harness_log_level = "WARNING"
    worker.sdk_harness_log_level_overrides = {"seqcodec": "INFO", **(worker.sdk_harness_log_level_overrides or {})}


def make_pipeline(beam_args: list[str]) -> beam.Pipeline:
    """A Pipeline for the remaining (Beam) arguments; the DirectRunner skips its Prism attempt.

    UsageError for an argument that Beam does not know either (a typo would otherwise be dropped).
    """
    check_beam_arguments(beam_args)
    options = PipelineOptions(beam_args)
    quiet_workers(options)
    runner = options.view_as(StandardOptions).runner
    if runner in DIRECT_RUNNERS:
        return beam.Pipeline(runner=direct_runner(options), options=options)
    try:
        return beam.Pipeline(options=options)
    except (ImportError, ValueError) as exc:  # an unknown runner, or its options fail Beam's validation
        raise ValueError(f"--runner {runner}: {one_line(exc)}") from None


def discard(pipeline: beam.Pipeline) -> None:
    """Remove the local temp directory that Beam makes for every Pipeline and removes only in ``run()``:
    a job that stops before it runs (a failed check, a refused lease) leaves nothing in /tmp."""
    shutil.rmtree(pipeline.local_tempdir, ignore_errors=True)


def one_line(exc: BaseException) -> str:
    """An exception's whole message on one line (Beam lists option problems one per line)."""
    return "; ".join(line.strip().rstrip(":") for line in str(exc).splitlines() if line.strip()) or first_line(exc)
