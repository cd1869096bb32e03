"""Throughput and memory benchmark of the encode path, from one model call to the whole Beam job.

Run from the repository root. With the defaults (1M rows, models/default if present, else a random
hidden-64 codec) it takes ~10 minutes for hidden 64 and ~35 for the hidden-256 bidirectional default
model on a shared 2-core machine. ``--rows 200000 --rounds 2 --job-repeats 1 --memory-rows ""`` is a
few-minute smoke run; ``--random-model`` benchmarks a random codec of ``--hidden-size`` instead.

    .venv/bin/python -m bench.encode_bench --rows 1000000

Everything is measured in ONE run and compared as ratios to (a), the in-memory batched,
length-bucketed throughput, measured right before and after every job it is compared with (and as
CPU-time ratios, which other people's load on a shared machine disturbs far less than wall time):

  a  SequenceCodec.encode_flat on the whole generated set in memory (default model batch 512)
     plus a sweep of model batch sizes on a subset, interleaved round-robin
  b  one ``encoder.predict`` per sequence (subset)
  c  one compiled ``tf.function`` call per sequence (subset)
  d  the whole job, ``seqcodec encode`` Parquet -> Parquet on the DirectRunner, as a subprocess:
     rows/s from its summary.json, wall time and peak RSS (via /usr/bin/time); optional variants run
     the same job with a patch applied by monkeypatching (see PATCHES)
  e  a seed-style per-element DoFn pipeline (rows as dicts, one encoder call per row), smaller subset
  f  RunInference per row (KeyedModelHandler) with batches padded to the global max length
  g  per-stage costs of the job's own steps on real row groups (read, validate, Arrow->numpy,
     model, build table, Parquet write), to see where the job's time goes
  m  peak RSS of the job for a small and a large input (``--memory-rows``)

Generated data, models and outputs go under ``--work-dir`` (default /tmp/seqcodec-bench), never
into the repository. Results are printed and written to ``<work-dir>/results-<time>.json``.
No numbers here are assertions: this is a measuring tool, not a test.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.make_rows import DEFAULT_ROW_GROUP, SAMPLE, ensure_rows

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO / "models" / "default"
BATCH_SIZES = (512, 1024, 2048, 4096)


# -- small helpers ------------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def median(xs: list[float]) -> float:
    return float(np.median(xs)) if xs else float("nan")


def loadavg() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def git_commit() -> str:
    """The checked-out commit (read-only git), with ``+dirty`` if files outside bench/ differ from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                                capture_output=True, text=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    dirty = [line for line in status if not line[3:].startswith("bench/")]
    return head + ("+dirty" if dirty else "")


def editable_map() -> tuple[str, str]:
    """(module of this venv's editable-install finder, this checkout's root): what running another checkout remaps.

    The finder's ``MAPPING`` points each ``seqcodec`` package at this checkout; replacing the root
    in it before anything of ours is imported runs another checkout's code in this venv.
    """
    import glob
    import sysconfig

    return Path(glob.glob(f"{sysconfig.get_paths()['purelib']}/__editable___seqcodec_*_finder.py")[0]).stem, str(REPO)


def remove_output(out: Path) -> None:
    """Delete a job's output: the partition (a link to its run's directory) and its runs and lease beside it."""
    for path in out.parent.glob(f".{out.name}.*"):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    if out.is_symlink():
        out.unlink()
    else:
        shutil.rmtree(out, ignore_errors=True)


def seqcodec_cmd() -> list[str]:
    """The ``seqcodec`` console script of the running venv (fallback: the module)."""
    script = Path(sys.executable).parent / "seqcodec"
    return [str(script)] if script.exists() else [sys.executable, "-m", "seqcodec.pipeline.cli"]


def run_child(cmd: list[str], log_path: Path) -> dict[str, Any]:
    """Run a command to completion: wall seconds, the child's own peak RSS (MiB) and CPU seconds.

    Not ``os.wait4``/``RUSAGE_CHILDREN`` on our own child: Linux carries the parent's high-water RSS
    into a forked child's ``ru_maxrss`` across exec, so a child of this (1 GB) process would report at
    least 1 GB. ``/usr/bin/time`` is small, so its child's maxrss is clean; without it, poll VmHWM.
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    timer = shutil.which("time", path="/usr/bin:/bin")
    stats_path = log_path.with_suffix(".time")
    full = [timer, "-f", "%M %U %S", "-o", str(stats_path), *cmd] if timer else cmd
    hwm_kib = 0
    with open(log_path, "wb") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(full, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        while proc.poll() is None:
            if not timer:
                hwm_kib = max(hwm_kib, _vm_hwm_kib(proc.pid))
            time.sleep(0.1)
        wall = time.perf_counter() - started
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-15:]
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n" + "\n".join(tail))
    cpu = float("nan")
    if timer:
        fields = stats_path.read_text().split()[-3:]
        hwm_kib, cpu = int(fields[0]), float(fields[1]) + float(fields[2])
    return {"wall_seconds": round(wall, 2), "peak_rss_mib": round(hwm_kib / 1024, 1), "cpu_seconds": round(cpu, 1)}


def _vm_hwm_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


# -- model --------------------------------------------------------------------------------------------


def snapshot_model(model_dir: Path, work: Path) -> Path:
    """A private copy of a local model directory, so a model replaced mid-run cannot mix two models."""
    from seqcodec.model.manifest import DECODER_FILE, ENCODER_FILE, MANIFEST, read_manifest

    fingerprint = read_manifest(model_dir).fingerprint
    copy = work / f"model-{fingerprint}"
    # A manifest that changed since (e.g. file digests added) makes a fresh copy.
    current = (copy / MANIFEST).read_bytes() if (copy / MANIFEST).is_file() else None
    if current != (model_dir / MANIFEST).read_bytes():
        shutil.rmtree(copy, ignore_errors=True)
        staging = work / f".model-{fingerprint}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for name in (MANIFEST, ENCODER_FILE, DECODER_FILE):
            shutil.copy2(model_dir / name, staging / name)
        staging.rename(copy)
    return copy


def resolve_model(args: argparse.Namespace, work: Path) -> tuple[Path, str]:
    """--model-dir, else models/default if it exists, else a randomly initialised codec (speed only)."""
    if args.model_dir:
        path = Path(args.model_dir)
        return (snapshot_model(path, work) if path.is_dir() else path), f"given ({path})"
    if (DEFAULT_MODEL / "manifest.json").is_file() and not args.random_model:
        return snapshot_model(DEFAULT_MODEL, work), "models/default"
    path = work / f"model-random-h{args.hidden_size}"
    if not (path / "manifest.json").is_file():
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        from seqcodec.model.config import CodecConfig
        from seqcodec.model.network import build_network
        from seqcodec.model.storage import save_codec
        from seqcodec.model.tfenv import keras

        longest = int(pc.max(pc.list_value_length(pq.read_table(SAMPLE, columns=["tokens"])["tokens"])).as_py())
        config = CodecConfig(vocab_size=26, max_length=longest, hidden_size=args.hidden_size, embedding_size=64)
        keras.utils.set_random_seed(0)
        save_codec(build_network(config), path, extra={"note": "random initialisation, for speed benchmarks only"})
    return path, f"random init, hidden {args.hidden_size}"


# -- patches, applied by monkeypatching inside a child process (see `_job`) ------------------


def patch_write_dict() -> None:
    """transforms/parquet_sink.py: dictionary-encode every column of the code shards, as the job did until
    2026-11-28 (pyarrow's default; the float codes overflow their dictionaries and fall back to plain)."""
    from seqcodec.transforms import parquet_sink

    init = parquet_sink.ParquetTableSink.__init__

    def __init__(self, prefix, schema, num_shards=0, plain_columns=()):
        init(self, prefix, schema, num_shards, ())

    parquet_sink.ParquetTableSink.__init__ = __init__


PATCHES: dict[str, Callable[[], None]] = {"dict": patch_write_dict}


def job_main(argv: list[str]) -> int:
    """``_job --patch NAME[,NAME] -- <seqcodec encode args>``: the real job with patches applied."""
    p = argparse.ArgumentParser(prog="encode_bench _job")
    p.add_argument("--patch", default="")
    args, rest = p.parse_known_args(argv)
    for name in filter(None, args.patch.split(",")):
        PATCHES[name]()
    from seqcodec.pipeline.encode import main
    from seqcodec.pipeline.runtime import run_cli

    return run_cli(main, [a for a in rest if a != "--"])


# -- baselines (e) and (f): whole Beam pipelines of the per-row kind, run in a child process ---------


def variant_main(argv: list[str]) -> int:
    """``_variant {seed,padmax} --input F --output DIR --model-dir M``: run one baseline pipeline."""
    p = argparse.ArgumentParser(prog="encode_bench _variant")
    p.add_argument("kind", choices=("seed", "padmax"))
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--model-dir", required=True)
    p.add_argument("--batch-size", type=int, default=512)
    args = p.parse_args(argv)
    started = time.monotonic()

    import apache_beam as beam
    import pyarrow as pa
    import pyarrow.parquet as pq
    from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference

    from seqcodec.model.manifest import read_manifest
    from seqcodec.pipeline.options import make_pipeline
    from seqcodec.transforms.formats import code_schema

    manifest = read_manifest(args.model_dir)
    schema = code_schema(pa.int64(), manifest.code_size, {"fingerprint": manifest.fingerprint})
    model_dir, max_length = args.model_dir, manifest.max_length

    def as_row(key, code):
        return {"id": key, "length": int(code[0]), "code": code.tolist()}

    class SeedEncode(beam.DoFn):
        """The seed's shape: one dict per row, the encoder called once per element."""

        def setup(self):
            from seqcodec.model.loader import load

            self.codec = load(model_dir)

        def process(self, row):
            yield as_row(row["id"], self.codec.encode([row["tokens"]])[0])

    class PadToMaxHandler(ModelHandler):
        """Per-row examples, batched by Beam, every batch padded to the model's max_length (no bucketing)."""

        def __init__(self):
            super().__init__(min_batch_size=args.batch_size, max_batch_size=args.batch_size)

        def load_model(self):
            from seqcodec.model.manifest import ENCODER_FILE
            from seqcodec.model.tf_engine import KerasEncoder, load_network_file

            return KerasEncoder(load_network_file(str(model_dir), Path(model_dir) / ENCODER_FILE))

        def run_inference(self, batch, model, inference_args=None):
            ids = np.zeros((len(batch), max_length), dtype=np.int32)
            for i, tokens in enumerate(batch):
                ids[i, : len(tokens)] = np.asarray(tokens) + 1
            codes = model(ids)
            return [PredictionResult(x, y) for x, y in zip(batch, codes, strict=True)]

    pipeline = make_pipeline([])
    rows = pipeline | "Read" >> beam.io.ReadFromParquet(args.input, columns=["id", "tokens"])
    if args.kind == "seed":
        codes = rows | "Encode" >> beam.ParDo(SeedEncode())
    else:
        codes = (
            rows
            | "Key" >> beam.Map(lambda r: (r["id"], r["tokens"]))
            | "RunInference" >> RunInference(KeyedModelHandler(PadToMaxHandler()))
            | "Row" >> beam.MapTuple(lambda key, result: as_row(key, result.inference))
        )
    _ = codes | "Write" >> beam.io.WriteToParquet(
        os.path.join(args.output, "codes", "part"), schema, codec="zstd", file_name_suffix=".parquet"
    )
    pipeline.run().wait_until_finish()
    elapsed = time.monotonic() - started
    written = sum(pq.ParquetFile(f).metadata.num_rows for f in Path(args.output, "codes").glob("*.parquet"))
    summary = {"rows_encoded": written, "elapsed_seconds": round(elapsed, 2),
               "sequences_per_second": round(written / elapsed, 1)}
    Path(args.output, "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


# -- the benchmark --------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(args.work_dir)
        (self.work / "data").mkdir(parents=True, exist_ok=True)
        (self.work / "logs").mkdir(exist_ok=True)
        self.results: dict[str, Any] = {"a_ref": []}
        self.step = 0

    # data and model

    def data(self, rows: int) -> Path:
        return ensure_rows(rows, self.work / "data", self.args.row_group_size)

    def setup(self) -> None:
        from seqcodec.model.data import TokenSequences
        from seqcodec.model.loader import load
        from seqcodec.model.manifest import ENCODER_FILE, read_manifest
        from seqcodec.model.tf_engine import KerasEncoder, load_network_file
        from seqcodec.model.tfenv import tf
        from seqcodec.transforms.inference import flat_tokens

        self.tf = tf
        self.model_dir, origin = resolve_model(self.args, self.work)
        manifest = read_manifest(self.model_dir)
        self.codec = load(self.model_dir)
        self.keras_encoder = KerasEncoder(load_network_file(str(self.model_dir), Path(self.model_dir) / ENCODER_FILE))
        self.input = self.data(self.args.rows)
        import pyarrow.parquet as pq

        table = pq.read_table(self.input, columns=["tokens"])
        self.all_values, self.all_offsets = flat_tokens(table.column("tokens"))
        del table
        # The in-memory set is the rows the model accepts; the job rejects the others (dead letters).
        all_lengths = np.diff(self.all_offsets)
        keep = np.flatnonzero(all_lengths <= manifest.max_length)
        kept = TokenSequences(self.all_values, self.all_offsets).take(keep)
        self.values, self.offsets = kept.values, kept.offsets
        self.n = self.offsets.size - 1
        lengths = np.diff(self.offsets)
        self.results["setup"] = {
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "rows": int(all_lengths.size), "rows_over_model_max_length": int(all_lengths.size - self.n),
            "input": str(self.input), "mean_length": round(float(lengths.mean()), 2),
            "max_length": int(lengths.max()), "row_group_size": self.args.row_group_size,
            "model_dir": str(self.model_dir), "model": origin,
            "hidden_size": manifest.config.hidden_size, "embedding_size": manifest.config.embedding_size,
            "model_max_length": manifest.max_length, "bidirectional": manifest.config.bidirectional,
            "cpus": os.cpu_count(), "python": platform.python_version(), "tensorflow": tf.__version__,
            "loadavg_start": round(loadavg(), 2), "argv": sys.argv[1:], "commit": git_commit(),
        }
        log(f"{self.n} rows in memory ({all_lengths.size - self.n} over the model's max_length left out), mean length "
            f"{lengths.mean():.2f}, from {self.input}; model {self.model_dir} ({origin})")
        # Trace once and touch every length before anything is timed.
        self.codec.encode_flat(self.values[: self.offsets[20000]], self.offsets[:20001])

    # (a) in memory

    def encode_rate(self, batch_size: int, rows: int | None = None, slice_rows: int = 0) -> tuple[float, float]:
        """(rows per wall second, rows per CPU second of this process) of encode_flat on the first ``rows``.

        ``slice_rows`` > 0 encodes the set in slices of that many rows (bucketed per slice, as the job does).
        """
        n = self.n if rows is None else min(rows, self.n)
        step = slice_rows or n
        self.codec.batch_size = batch_size
        wall, cpu = time.perf_counter(), time.process_time()
        for lo in range(0, n, step):
            hi = min(lo + step, n)
            offsets = self.offsets[lo : hi + 1]
            self.codec.encode_flat(self.values[offsets[0] : offsets[-1]], offsets - offsets[0])
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        return n / wall, n / cpu

    def a_ref(self, batch_size: int) -> dict[str, float]:
        rate, cpu_rate = self.encode_rate(batch_size)
        ref = {"batch_size": batch_size, "rate": round(rate, 1), "cpu_rate": round(cpu_rate, 1),
               "loadavg": round(loadavg(), 2)}
        self.results["a_ref"].append(ref)
        log(f"(a) in memory, batch {batch_size}, {self.n} rows: {rate:,.0f}/s ({cpu_rate:,.0f} per CPU-s)")
        return ref

    def per_sequence(self) -> None:
        """(a) batch sweep, (b) predict per sequence and (c) a compiled call per sequence, round-robin."""
        from seqcodec.model.batches import pad_shifted

        rng = np.random.default_rng(1)
        picks = rng.choice(self.n, size=max(self.args.predict_rows, self.args.call_rows), replace=False)
        singles = [pad_shifted(self.values, self.offsets, np.array([i])) for i in picks]
        keras_encoder = self.keras_encoder
        keras_encoder.model.predict(singles[0], verbose=0)  # build keras' predict function once

        def predict_rate() -> float:
            started = time.perf_counter()
            for x in singles[: self.args.predict_rows]:
                keras_encoder.model.predict(x, verbose=0)
            return self.args.predict_rows / (time.perf_counter() - started)

        def call_rate() -> float:
            started = time.perf_counter()
            for x in singles[: self.args.call_rows]:
                keras_encoder(x)
            return self.args.call_rows / (time.perf_counter() - started)

        sweep_rows = min(self.args.sweep_rows, self.n)
        sizes = [int(s) for s in self.args.batch_sizes.split(",")]
        sliced = f"a_bs{sizes[0]}_slices{self.args.row_group_size}"
        runs: dict[str, list[float]] = {f"a_bs{bs}": [] for bs in sizes} | {sliced: [], "b_predict": [], "c_call": []}
        cpu_runs: dict[str, list[float]] = {f"a_bs{bs}": [] for bs in sizes}
        for r in range(self.args.rounds):
            order = sizes[r % len(sizes):] + sizes[: r % len(sizes)]  # rotate so no size always goes first
            for bs in order:
                rate, cpu_rate = self.encode_rate(bs, sweep_rows)
                runs[f"a_bs{bs}"].append(rate)
                cpu_runs[f"a_bs{bs}"].append(cpu_rate)
            runs[sliced].append(self.encode_rate(sizes[0], sweep_rows, self.args.row_group_size)[0])
            runs["b_predict"].append(predict_rate())
            runs["c_call"].append(call_rate())
            log(f"round {r + 1}/{self.args.rounds}: " + ", ".join(f"{k} {v[-1]:,.0f}/s" for k, v in runs.items()))
        base = runs[f"a_bs{sizes[0]}"]
        out = {}
        for name, rates in runs.items():
            per_round = [x / b for x, b in zip(rates, base, strict=True)]
            out[name] = {"rates": [round(x, 1) for x in rates], "median_rate": round(median(rates), 1),
                         "ratio_to_a512_per_round_median": round(median(per_round), 5)}
            if name in cpu_runs:
                cpu_base = cpu_runs[f"a_bs{sizes[0]}"]
                out[name]["median_cpu_rate"] = round(median(cpu_runs[name]), 1)
                out[name]["cpu_ratio_to_a512_per_round_median"] = round(
                    median([x / b for x, b in zip(cpu_runs[name], cpu_base, strict=True)]), 5)
        self.results["in_process"] = {"sweep_rows": sweep_rows, "predict_rows": self.args.predict_rows,
                                      "call_rows": self.args.call_rows, "rounds": self.args.rounds, "runs": out}

    # (g) stage breakdown

    def stages(self) -> None:
        """Time the job's own steps on real row groups, in-process, without Beam (write variants interleaved)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from seqcodec.transforms.formats import code_schema, codes_table
        from seqcodec.transforms.inference import flat_tokens
        from seqcodec.transforms.validate import split_rows

        cfg = self.codec.config
        schema = code_schema(pa.int64(), cfg.code_size, {"fingerprint": self.codec.fingerprint})
        file = pq.ParquetFile(self.input)
        groups = min(self.args.stage_groups, file.num_row_groups)
        t: dict[str, float] = {}

        def timed(name, fn, *a, **kw):
            started = time.perf_counter()
            out = fn(*a, **kw)
            t[name] = t.get(name, 0.0) + time.perf_counter() - started
            return out

        def write(table, **kw):
            with pq.ParquetWriter(io.BytesIO(), schema, compression="zstd", **kw) as writer:
                writer.write_table(table)

        self.codec.batch_size = 512
        rows = 0
        for g in range(groups):
            table = timed("read row group", file.read_row_group, g, columns=["id", "tokens"])
            good, _, _ = timed("validate (split_rows)", split_rows, table, cfg.vocab_size, cfg.max_length)
            flat = timed("Arrow -> numpy (flat_tokens)", flat_tokens, good.column("tokens"))
            codes = timed("model (encode_flat, batch 512)", self.codec.encode_flat, *flat)
            out = timed("codes_table", codes_table, good.column("id").combine_chunks(), codes)
            out = out.cast(schema)
            writes = [("write zstd (default, dictionary on)", {}),
                      ("write zstd, no dictionary", {"use_dictionary": False})]
            for name, kw in writes if g % 2 == 0 else writes[::-1]:
                timed(name, write, out, **kw)
            rows += table.num_rows
        self.results["stages"] = {"rows": rows, "seconds_per_million_rows": {
            k: round(v * 1e6 / rows, 3) for k, v in t.items()}}
        log("stages (s per 1M rows): " + ", ".join(f"{k} {v * 1e6 / rows:.2f}" for k, v in t.items()))

    # subprocess jobs

    def child_job(self, name: str, input_path: Path, batch_size: int, patch: str = "") -> dict[str, Any]:
        self.step += 1
        out = self.work / "out" / f"{self.step:02d}-{name}"
        remove_output(out)
        args = ["--input", str(input_path), "--output", str(out), "--model-dir", str(self.model_dir),
                "--batch-size", str(batch_size)]
        if patch:
            cmd = [sys.executable, "-m", "bench.encode_bench", "_job", "--patch", patch, "--", *args]
        else:
            cmd = [*seqcodec_cmd(), "encode", *args]
        return self.finish_child(name, cmd, out)

    def child_variant(self, kind: str, input_path: Path) -> dict[str, Any]:
        self.step += 1
        out = self.work / "out" / f"{self.step:02d}-{kind}"
        remove_output(out)
        cmd = [sys.executable, "-m", "bench.encode_bench", "_variant", kind, "--input", str(input_path),
               "--output", str(out), "--model-dir", str(self.model_dir)]
        return self.finish_child(kind, cmd, out)

    def finish_child(self, name: str, cmd: list[str], out: Path) -> dict[str, Any]:
        load = loadavg()
        stats = run_child(cmd, self.work / "logs" / f"{out.name}.log")
        summary = json.loads((out / "summary.json").read_text())
        rows = summary.get("rows_encoded", 0)
        res = {"name": name, "rows": rows, "summary_rate": summary["sequences_per_second"],
               "elapsed_seconds": summary["elapsed_seconds"], **stats,
               "wall_rate": round(rows / stats["wall_seconds"], 1), "loadavg": round(load, 2),
               "command": " ".join(cmd)}
        codes = sorted((out / "codes").glob("*.parquet"))
        res["codes_bytes"] = sum(f.stat().st_size for f in codes)
        res["max_abs_diff_vs_in_memory"] = self.check_output(codes)
        log(f"{name}: {rows} rows, {res['summary_rate']:,.0f}/s (summary), wall {stats['wall_seconds']}s, "
            f"peak RSS {stats['peak_rss_mib']} MiB")
        if not self.args.keep_outputs:
            remove_output(out)
        return res

    def check_output(self, files: list[Path]) -> float | None:
        """Max |job code - in-memory code| over the first 2,000 rows of the first shard (a sanity check)."""
        import pyarrow.parquet as pq

        if not files:
            return None
        pf = pq.ParquetFile(files[0])
        head = pf.read_row_group(0, columns=["id", "code"]).slice(0, 2000)
        ids = head.column("id").to_numpy()
        if not ids.size or ids.max() >= self.all_offsets.size - 1:
            return None  # another input file than the in-memory set
        got = np.stack(head.column("code").to_numpy(zero_copy_only=False))
        mine = self.codec.encode([self.all_values[self.all_offsets[i] : self.all_offsets[i + 1]] for i in ids])
        return float(np.abs(got - mine).max())

    def compare(self, res: dict[str, Any], before: dict[str, float], after: dict[str, float]) -> None:
        """Add ratios of a child run to the mean of the (a) measurements right before and after it."""
        rate = (before["rate"] + after["rate"]) / 2
        cpu_rate = (before["cpu_rate"] + after["cpu_rate"]) / 2
        res.update(a_before=before["rate"], a_after=after["rate"], ratio=round(res["summary_rate"] / rate, 4),
                   wall_ratio=round(res["wall_rate"] / rate, 4))
        fixed = self.results.get("fixed")
        if fixed and res["cpu_seconds"] > fixed["cpu_seconds"]:
            # CPU seconds are far less sensitive to other people's load than wall seconds.
            marginal = res["rows"] / (res["cpu_seconds"] - fixed["cpu_seconds"])
            res.update(marginal_cpu_rate=round(marginal, 1), cpu_ratio=round(marginal / cpu_rate, 4))

    def jobs(self) -> None:
        """(d) job variants, each between two (a) runs at its model batch size; repeated, order alternating."""
        if self.args.fixed_rows > 0:
            tiny = self.args.fixed_rows
            self.results["fixed"] = self.child_job(f"fixed-{tiny}", self.data(tiny), 512)
        specs = [s for s in self.args.jobs.split(",") if s]
        runs: list[dict[str, Any]] = []
        prev: tuple[int, dict[str, float]] | None = None
        for r in range(self.args.job_repeats):
            for spec in specs if r % 2 == 0 else specs[::-1]:
                name, _, patch = spec.partition("+")
                bs = int(name.removeprefix("job-bs")) if name.startswith("job-bs") else 512
                before = prev[1] if prev and prev[0] == bs else self.a_ref(bs)
                res = self.child_job(spec, self.input, bs, patch)
                after = self.a_ref(bs)
                prev = (bs, after)
                res.update(batch_size=bs, patch=patch, repeat=r)
                self.compare(res, before, after)
                runs.append(res)
        self.results["jobs"] = runs
        summary = {}
        for spec in specs:
            mine = [r for r in runs if r["name"] == spec]
            summary[spec] = {k: round(median([r[k] for r in mine if k in r]), 4) for k in
                             ("summary_rate", "wall_seconds", "ratio", "wall_ratio", "cpu_ratio",
                              "marginal_cpu_rate", "peak_rss_mib", "codes_bytes") if any(k in r for r in mine)}
            summary[spec]["runs"] = len(mine)
        self.results["jobs_summary"] = summary

    def baselines(self) -> None:
        """(e) seed-style per-element DoFn and (f) pad-to-max RunInference, each between two (a) runs."""
        out = []
        for kind, rows in (("seed", self.args.seed_rows), ("padmax", self.args.padmax_rows)):
            if rows <= 0:
                continue
            before = self.a_ref(512)
            res = self.child_variant(kind, self.data(rows))
            after = self.a_ref(512)
            self.compare(res, before, after)
            out.append(res)
        self.results["baselines"] = out

    def memory(self) -> None:
        """Peak RSS of the job (batch 512) for each --memory-rows input; ratio of the largest to the smallest."""
        out = [self.child_job(f"memory-{rows}", self.data(rows), 512)
               for rows in [int(r) for r in self.args.memory_rows.split(",") if r.strip()]]
        self.results["memory"] = out
        summary: dict[str, Any] = {}
        if len(out) >= 2:
            small, large = min(out, key=lambda r: r["rows"]), max(out, key=lambda r: r["rows"])
            summary["rss_ratio"] = round(large["peak_rss_mib"] / small["peak_rss_mib"], 3)
            summary["rss_ratio_rows"] = [small["rows"], large["rows"]]
            if large["elapsed_seconds"] > small["elapsed_seconds"]:
                summary["marginal_rate"] = round(
                    (large["rows"] - small["rows"]) / (large["elapsed_seconds"] - small["elapsed_seconds"]), 1)
        self.results["memory_summary"] = summary

    def run(self) -> Path:
        self.setup()
        sections = set(self.args.sections.split(","))
        if "a" in sections:
            self.per_sequence()
        if "g" in sections:
            self.stages()
        if "d" in sections:
            self.jobs()
        if "e" in sections:
            self.baselines()
        if "m" in sections:
            self.memory()
        self.results["setup"]["loadavg_end"] = round(loadavg(), 2)
        path = self.work / f"results-{time.strftime('%Y%m%dT%H%M%S')}.json"
        path.write_text(json.dumps(self.results, indent=2) + "\n")
        print(report(self.results))
        log(f"results in {path}")
        return path


def report(res: dict[str, Any]) -> str:
    """Plain-text tables of one results JSON (also: ``python -m bench.encode_bench report FILE``)."""
    s = res["setup"]
    lines = [f"{s['date']}  commit {s.get('commit')}  rows {s['rows']}  model {s['model']} "
             f"(hidden {s['hidden_size']}, max_length {s['model_max_length']})  cpus {s['cpus']}  "
             f"loadavg {s['loadavg_start']} -> {s.get('loadavg_end')}"]
    if "in_process" in res:
        ip = res["in_process"]
        lines.append(f"\n(a) sweep / (b) / (c), round-robin x{ip['rounds']} (sweep on {ip['sweep_rows']} rows, "
                     f"predict on {ip['predict_rows']}, call on {ip['call_rows']}); ratio = median per-round ratio:")
        for name, r in ip["runs"].items():
            cpu = (f"   CPU ratio {r['cpu_ratio_to_a512_per_round_median']:.3f}"
                   if "cpu_ratio_to_a512_per_round_median" in r else "")
            lines.append(f"  {name:22s} median {r['median_rate']:>11,.1f}/s  "
                         f"ratio {r['ratio_to_a512_per_round_median']:.4f}{cpu}   runs {r['rates']}")
    if "stages" in res:
        st = res["stages"]
        lines.append(f"\n(g) job steps without Beam, on {st['rows']} rows (seconds per 1M rows):")
        lines += [f"  {k:40s} {v:8.2f}" for k, v in st["seconds_per_million_rows"].items()]
    if "fixed" in res:
        f = res["fixed"]
        lines.append(f"\nfixed cost (job on {f['rows']} rows): {f['elapsed_seconds']}s in summary.json, "
                     f"{f['wall_seconds']}s wall, {f['cpu_seconds']} CPU-s")
    rows = [("job", r) for r in res.get("jobs", [])] + [("baseline", r) for r in res.get("baselines", [])]
    rows += [("memory", r) for r in res.get("memory", [])]
    if rows:
        lines.append("\nchild runs (ratio = summary rows/s / mean of the (a) runs before and after; "
                     "cpu = rows per marginal CPU-s / (a) rows per CPU-s):")
    for kind, r in rows:
        ratio = f"  ratio {r['ratio']:.3f} (a {r['a_before']:,.0f}/{r['a_after']:,.0f})" if "ratio" in r else ""
        cpu = f" cpu {r['cpu_ratio']:.3f}" if "cpu_ratio" in r else ""
        lines.append(f"  {kind:8s} {r['name']:20s} {r['rows']:>8} rows {r['summary_rate']:>10,.1f}/s  wall "
                     f"{r['wall_seconds']:6.1f}s  RSS {r['peak_rss_mib']:6.1f} MiB  "
                     f"load {r['loadavg']:4.1f}{ratio}{cpu}")
    for spec, m in res.get("jobs_summary", {}).items():
        lines.append(f"  median {spec:20s} " + ", ".join(f"{k} {v}" for k, v in m.items()))
    if res.get("memory_summary"):
        lines.append(f"  memory: {res['memory_summary']}")
    refs = res.get("a_ref", [])
    if refs:
        lines.append(f"\n(a) on the full set: {[(r['batch_size'], r['rate']) for r in refs]}")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.encode_bench", description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000, help="rows for (a) and the job (d) (default 1M)")
    p.add_argument("--model-dir", help="default: models/default if it exists (copied first), else a random codec")
    p.add_argument("--random-model", action="store_true",
                   help="benchmark a randomly initialised codec of --hidden-size even if models/default exists")
    p.add_argument("--hidden-size", type=int, default=64, help="hidden size of the random codec (default 64)")
    p.add_argument("--work-dir", default="/tmp/seqcodec-bench", help="data, models, outputs and results")
    p.add_argument("--row-group-size", type=int, default=DEFAULT_ROW_GROUP)
    p.add_argument("--batch-sizes", default=",".join(map(str, BATCH_SIZES)), help="model batch sizes for (a)")
    p.add_argument("--sweep-rows", type=int, default=250_000, help="rows for the batch-size sweep")
    p.add_argument("--rounds", type=int, default=3, help="round-robin rounds of the in-process section")
    p.add_argument("--predict-rows", type=int, default=300, help="(b) sequences, one predict() each")
    p.add_argument("--call-rows", type=int, default=3000, help="(c) sequences, one compiled call each")
    p.add_argument("--stage-groups", type=int, default=6, help="(g) row groups to time step by step")
    p.add_argument("--jobs", default="job,job+dict,job-bs2048,job-bs2048+dict",
                   help="(d) variants: job, job-bsN, and +PATCH (patches: " + ", ".join(PATCHES) + ")")
    p.add_argument("--seed-rows", type=int, default=20_000, help="(e) rows (0 skips)")
    p.add_argument("--padmax-rows", type=int, default=50_000, help="(f) rows (0 skips)")
    p.add_argument("--memory-rows", default="100000,2000000", help="job peak-RSS inputs ('' skips)")
    p.add_argument("--fixed-rows", type=int, default=1000,
                   help="tiny job run first in (d): the fixed cost, subtracted for CPU-time ratios (0 skips)")
    p.add_argument("--job-repeats", type=int, default=2, help="(d) repeats of every variant, order alternating")
    p.add_argument("--sections", default="a,g,d,e,m", help="which parts to run: a (with b, c), g, d, e (with f), m")
    p.add_argument("--keep-outputs", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_job"]:
        return job_main(argv[1:])
    if argv[:1] == ["_variant"]:
        return variant_main(argv[1:])
    if argv[:1] == ["report"]:
        print(report(json.loads(Path(argv[1]).read_text())))
        return 0
    Bench(parser().parse_args(argv)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
