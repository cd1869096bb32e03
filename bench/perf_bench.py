"""The model step against the machine: the engines, token budgets, small inputs, workers and threads.

One run measures, as ratios within the run (the machine is shared: medians of alternating rounds):

  peak     a large float32 matmul, GFLOP/s: the machine's ceiling, next to every codec figure
  memory   in memory, encode and decode: the Keras layers as a TensorFlow graph (batch 512, the reference)
           against the numpy engine (batch 512 and the token budget), same rows; codes within 1e-5,
           identical lengths and tokens; the codec's achieved GFLOP/s
  budget   in-memory encode and decode (numpy engine) per token budget, to pick the default
  ratio    only the 1M-row job between in-memory runs, ``--job-repeats`` times (a few minutes); with
           ``--before-tree`` and/or ``--ratio-variant`` other jobs alternate with it
  gap      where the job loses against the in-memory rate, in one process on ``--gap-rows`` rows: one
           encoder call; the job's 65,536-row calls; those calls with the job's Parquet writer beside
           them (codes zstd as until 0773b12, then uncompressed as now); with only the code bytes
           written to a file
  jobs     ``seqcodec encode`` on 1M rows against the new in-memory rate (before and after it), peak RSS
           of 100k vs 1M rows; 200k rows as one file of large row groups, 100-row row groups and 400-row
           files; 1 vs 2 worker processes with per-worker threads from the policy or oversubscribed

    .venv/bin/python -m bench.perf_bench                      # everything (~25 min on a busy 2-core machine)
    .venv/bin/python -m bench.perf_bench --parts peak,memory  # a few minutes

Data, outputs and results go under ``--work`` (default /tmp/seqcodec-bench), never into the repository.
No number here is an assertion: this is a measuring tool.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from bench.encode_bench import (
    DEFAULT_MODEL,
    editable_map,
    git_commit,
    loadavg,
    log,
    median,
    remove_output,
    run_child,
    seqcodec_cmd,
    snapshot_model,
)
from bench.make_rows import make_rows


def matmul_peak(size: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of a float32 ``size`` x ``size`` matmul (best of ``repeats``, after a warm-up)."""
    from seqcodec.model.tfenv import tf

    a = tf.random.normal((size, size))
    b = tf.random.normal((size, size))
    tf.matmul(a, b).numpy()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        tf.matmul(a, b).numpy()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def encode_flops(config: Any, tokens: int) -> float:
    """Multiply-adds x 2 of the encoder LSTM(s) over ``tokens`` real tokens (embedding lookups are free)."""
    directions = 2 if config.bidirectional else 1
    units = config.hidden_size // directions
    return tokens * directions * 2 * (config.embedding_size + units) * 4 * units


def decode_flops(config: Any, tokens: int) -> float:
    """The decoder LSTM and the softmax layer over ``tokens`` output positions."""
    hidden = config.hidden_size
    return tokens * (2 * (hidden + hidden) * 4 * hidden + 2 * hidden * config.vocab_size)


TODAY = "Keras layers, TensorFlow graph, batch 512"


def in_memory(model_dir: Path, data: Path, rows: int, rounds: int, variants_: dict[str, dict]) -> dict[str, Any]:
    """Codecs against the Keras layers' graph, encode and decode, alternating rounds; GFLOP/s.

    ``variants_``: name -> ``loader.load`` options; an ``engine`` of "keras" runs the Keras layers instead.
    """
    from seqcodec.model.codec import SequenceCodec
    from seqcodec.model.loader import load
    from seqcodec.model.manifest import DECODER_FILE, ENCODER_FILE
    from seqcodec.model.tf_engine import KerasDecoder, KerasEncoder, load_network_file
    from seqcodec.transforms.inference import flat_tokens

    base = load(model_dir)
    values, offsets = flat_tokens(pq.read_table(data, columns=["tokens"]).column("tokens").slice(0, rows))
    tokens = int(offsets[-1])

    def codec(engine: str = "numpy", **options: Any) -> SequenceCodec:
        if engine == "numpy":
            return load(model_dir, **options)
        encoder, decoder = (load_network_file(str(model_dir), model_dir / name)
                            for name in (ENCODER_FILE, DECODER_FILE))
        return SequenceCodec(KerasEncoder(encoder), KerasDecoder(decoder, base.config), base.config, **options)

    variants = {TODAY: codec("keras", batch_size=512)}
    variants.update({name: codec(**options) for name, options in variants_.items()})
    reference = variants[TODAY].encode_flat(values, offsets)
    reference_tokens = variants[TODAY].decode_flat(reference)[0]
    checks = {}
    for name, c in variants.items():  # warm-up: graph traces happen here
        codes = c.encode_flat(values, offsets)
        decoded, decoded_offsets = c.decode_flat(reference)
        checks[name] = {"max_code_diff": float(np.abs(codes - reference).max()),
                        "lengths_identical": bool((codes[:, 0] == reference[:, 0]).all()),
                        "decoded_identical": bool(np.array_equal(decoded, reference_tokens))}
        log(f"  {name}: {checks[name]}")
    # Rows per wall second, and per CPU second of this process (all its threads): on a shared machine
    # the second is disturbed far less by other people's load.
    rates: dict[str, dict[str, list[float]]] = {
        name: {"encode": [], "decode": [], "encode_cpu": [], "decode_cpu": []} for name in variants}
    for r in range(rounds):
        order = list(variants.items()) if r % 2 == 0 else list(variants.items())[::-1]
        for name, c in order:
            for step, run in (("encode", lambda c=c: c.encode_flat(values, offsets)),
                              ("decode", lambda c=c: c.decode_flat(reference))):
                start, cpu = time.perf_counter(), time.process_time()
                run()
                rates[name][step].append(rows / (time.perf_counter() - start))
                rates[name][f"{step}_cpu"].append(rows / (time.process_time() - cpu))
        log(f"  round {r + 1}: " + ", ".join(f"{n} {rates[n]['encode'][-1]:.0f}/{rates[n]['decode'][-1]:.0f}"
                                             for n in variants))
    today = rates[TODAY]
    table = {}
    for name, rate in rates.items():
        enc, dec = median(rate["encode"]), median(rate["decode"])
        table[name] = {
            "encode_per_s": round(enc), "decode_per_s": round(dec),
            "encode_vs_today": round(median([a / b for a, b in zip(rate["encode"], today["encode"], strict=True)]), 3),
            "decode_vs_today": round(median([a / b for a, b in zip(rate["decode"], today["decode"], strict=True)]), 3),
            **{f"{step}_vs_today": round(median([a / b for a, b in zip(rate[step], today[step], strict=True)]), 3)
               for step in ("encode_cpu", "decode_cpu")},
            "encode_gflops": round(encode_flops(base.config, tokens) * enc / rows / 1e9, 1),
            "decode_gflops": round(decode_flops(base.config, tokens) * dec / rows / 1e9, 1),
            **checks[name],
        }
    return {"rows": rows, "tokens": tokens, "rates": rates, "table": table}


def write_split(source: Path, out_dir: Path, rows_per_file: int) -> str:
    """The rows of ``source`` as files of ``rows_per_file`` rows (one row group each); returns the glob."""
    if out_dir.exists() and any(out_dir.iterdir()):
        return str(out_dir / "*.parquet")
    out_dir.mkdir(parents=True)
    table = pq.read_table(source)
    for i, start in enumerate(range(0, table.num_rows, rows_per_file)):
        pq.write_table(table.slice(start, rows_per_file), out_dir / f"part-{i:05d}.parquet", compression="zstd")
    return str(out_dir / "*.parquet")


def tree_cmd(tree: str) -> list[str]:
    """``seqcodec`` from another checkout of the project (a git worktree of an earlier commit), in this venv.

    The venv's editable install maps the ``seqcodec`` packages to this checkout; the child points
    that map at ``tree`` before it imports anything of ours.
    """
    finder, root = editable_map()
    code = (f"import sys, {finder} as f; f.MAPPING.update({{k: v.replace({root!r}, {tree!r}, 1) "
            "for k, v in f.MAPPING.items()}); from seqcodec.pipeline.cli import main; sys.exit(main())")
    return [sys.executable, "-c", code]


def job(name: str, inputs: str, model_dir: Path, work: Path, extra: list[str] | None = None,
        tree: str | None = None) -> dict[str, Any]:
    """One ``seqcodec encode`` run as a subprocess (of ``tree`` if given): rows/s from its summary, wall, CPU, RSS."""
    out = work / f"out-{name}"
    remove_output(out)
    command = tree_cmd(tree) if tree else seqcodec_cmd()
    run = run_child([*command, "encode", "--input", inputs, "--output", str(out), "--model-dir",
                     str(model_dir), *(extra or [])], work / f"{name}.log")
    summary = json.loads((out / "summary.json").read_text())
    remove_output(out)
    result = {"name": name, **run, "rows_per_second": summary["sequences_per_second"],
              "elapsed_seconds": summary.get("elapsed_seconds"), "load": round(loadavg(), 1)}
    log(f"  job {name}: {result}")
    return result


def new_rate(model_dir: Path, data: Path, rows: int) -> float:
    """The in-memory encode rate (numpy engine, default budget) on the first ``rows`` rows, as a subprocess."""
    import subprocess
    import sys

    code = ("import sys,time;import pyarrow.parquet as pq;from seqcodec.model.loader import load;"
            "from seqcodec.transforms.inference import flat_tokens;c=load(sys.argv[1]);"
            "v,o=flat_tokens(pq.read_table(sys.argv[2],columns=['tokens']).column('tokens').slice(0,int(sys.argv[3])));"
            "c.encode_flat(v,o[:20001]);t=time.perf_counter();c.encode_flat(v,o);"
            "print(int(sys.argv[3])/(time.perf_counter()-t))")
    out = subprocess.run([sys.executable, "-c", code, str(model_dir), str(data), str(rows)], capture_output=True,
                         text=True, check=True).stdout.split()[-1]
    rate = float(out)
    log(f"  in memory (new path, {rows} rows): {rate:.0f}/s")
    return rate


def jobs(model_dir: Path, work: Path, big_rows: int, small_rows: int, repeats: int,
         before_tree: str | None = None) -> dict[str, Any]:
    """The job against the in-memory rate, memory flatness, small inputs, workers and threads.

    With ``before_tree`` the big job of that checkout runs beside ours (1 worker), alternating.
    """
    data = work / "data"
    big = make_or_reuse(data / f"perf-{big_rows}.parquet", big_rows, 65_536)
    hundred_k = make_or_reuse(data / "perf-100000.parquet", 100_000, 65_536)
    small = make_or_reuse(data / f"perf-{small_rows}.parquet", small_rows, 65_536)
    groups = make_or_reuse(data / f"perf-{small_rows}-rg100.parquet", small_rows, 100)
    files = write_split(small, data / f"perf-{small_rows}-files400", 400)
    out: dict[str, Any] = {"big": [], "memory": [], "small": [], "workers": []}
    two = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    log("whole job on the big input, 1 and 2 worker processes, between in-memory runs of the new path")
    setups = [("this tree", 1, [], None), ("this tree", 2, two, None)]
    if before_tree:
        setups.insert(1, (f"before: {before_tree}", 1, [], before_tree))
    for i in range(repeats):
        for label, workers, extra, tree in setups if i % 2 == 0 else setups[::-1]:
            before = new_rate(model_dir, big, min(big_rows, 300_000))
            run = job(f"big-{i}-w{workers}{'-before' if tree else ''}", str(big), model_dir, work, extra, tree)
            after = new_rate(model_dir, big, min(big_rows, 300_000))
            out["big"].append({**run, "tree": label, "workers": workers, "in_memory_before": before,
                               "in_memory_after": after, "ratio": run["rows_per_second"] / ((before + after) / 2)})
    log("peak memory: 100k vs the big input")
    out["memory"].append(job("mem-100k", str(hundred_k), model_dir, work))
    out["memory"].append(next(run for run in out["big"] if run["workers"] == 1 and run["tree"] == "this tree"))
    log("small row groups and small files against large row groups, same rows, alternating")
    variants = [("large", str(small)), ("rg100", str(groups)), ("files400", files)]
    for i in range(repeats):
        for name, inputs in variants if i % 2 == 0 else variants[::-1]:
            out["small"].append(job(f"{name}-{i}", inputs, model_dir, work))
    log("1 vs 2 worker processes; threads from the policy (auto) or oversubscribed (2 per worker)")
    setups = [("1 worker, auto (2 threads)", []), ("2 workers, auto (1 thread each)", two),
              ("2 workers, 2 threads each", [*two, "--tf-threads", "2"])]
    for i in range(repeats):
        for name, extra in setups if i % 2 == 0 else setups[::-1]:
            out["workers"].append(job(f"w-{len(out['workers'])}", str(small), model_dir, work, extra) | {"setup": name})
    return out


def ratios(model_dir: Path, work: Path, big_rows: int, repeats: int,
           before_tree: str | None = None, variant_args: list[str] | None = None) -> list[dict[str, Any]]:
    """Only the big job (1 worker) between two in-memory runs, ``repeats`` times: the ratio the issue asks for.

    With ``before_tree`` that checkout's job runs too, and with ``variant_args`` this tree's job with
    those extra options (e.g. ``--code-dtype float16``): each repeat between the same two in-memory
    runs, the order of the jobs alternating.
    """
    big = make_or_reuse(work / "data" / f"perf-{big_rows}.parquet", big_rows, 65_536)
    out = []
    setups: list[tuple[str, str | None, list[str]]] = [("this tree", None, [])]
    if before_tree:
        setups.append((before_tree, before_tree, []))
    if variant_args:
        setups.append((" ".join(variant_args), None, variant_args))
    for i in range(repeats):
        before = new_rate(model_dir, big, min(big_rows, 300_000))
        order = list(enumerate(setups))
        runs = [(label, job(f"ratio-{i}-{n}", str(big), model_dir, work, extra, tree))
                for n, (label, tree, extra) in (order if i % 2 == 0 else order[::-1])]
        after = new_rate(model_dir, big, min(big_rows, 300_000))
        for label, run in runs:
            ratio = run["rows_per_second"] / ((before + after) / 2)
            out.append({**run, "tree": label, "in_memory_before": before, "in_memory_after": after, "ratio": ratio})
            log(f"  ratio {ratio:.3f} ({label})")
    for label, _, _ in setups:
        log(f"median ratio {float(np.median([r['ratio'] for r in out if r['tree'] == label])):.3f} ({label})")
    return out


def gap(model_dir: Path, work: Path, rows: int, rounds: int) -> dict[str, Any]:
    """What each of the job's steps after the model costs, as rates over one in-memory call on the same rows.

    Variants alternate within each round; ratios are to that round's single call. The writer is the
    job's (``BackgroundWriter`` with ``writer_options``), writing a real file under ``work``.
    """
    from seqcodec.model.loader import load
    from seqcodec.transforms.formats import codes_table
    from seqcodec.transforms.inference import flat_tokens
    from seqcodec.transforms.parquet_sink import BackgroundWriter, writer_options

    encoder = load(model_dir)
    table = pq.read_table(make_or_reuse(work / "data" / "perf-1000000.parquet", 1_000_000, 65_536)).slice(0, rows)
    ids, tokens = table.column("id").combine_chunks(), table.column("tokens").combine_chunks()
    values, offsets = flat_tokens(tokens)
    encoder.encode_flat(values, offsets[:20_001])
    path = work / "gap-out.parquet"

    def one_call() -> None:
        encoder.encode_flat(values, offsets)

    def calls(sink: str | None = None, zstd_codes: bool = False) -> None:
        writer, handle = None, open(path, "wb") if sink else None
        for start in range(0, rows, 65_536):
            codes = encoder.encode_flat(*flat_tokens(tokens.slice(start, 65_536)))
            if sink == "bytes":
                handle.write(codes)  # the same bytes as the code column, without Parquet
                continue
            out = codes_table(ids.slice(start, 65_536), codes)
            if sink and writer is None:
                options = writer_options(out.schema, ["code"])
                if zstd_codes:
                    options["compression"] = "zstd"
                writer = BackgroundWriter(handle, pq.ParquetWriter(handle, out.schema, **options))
            if writer:
                writer.put(out)
        if writer:
            writer.close()
        if handle:
            handle.close()

    variants = {"one call (the in-memory rate)": one_call,
                "65,536-row calls, as the job makes them": calls,
                "  + the job's Parquet writer, codes zstd (until 0773b12)": lambda: calls("parquet", zstd_codes=True),
                "  + the job's Parquet writer (codes uncompressed)": lambda: calls("parquet"),
                "  + only the code bytes written to a file": lambda: calls("bytes")}
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for i in range(rounds):
        for name, run in variants.items() if i % 2 == 0 else reversed(variants.items()):
            start = time.perf_counter()
            run()
            rates[name].append(rows / (time.perf_counter() - start))
        log(f"  gap round {i}: " + ", ".join(f"{name.strip()} {r[-1]:.0f}/s" for name, r in rates.items()))
    path.unlink(missing_ok=True)
    base = rates["one call (the in-memory rate)"]
    out = {}
    for name, r in rates.items():
        ratio = median([a / b for a, b in zip(r, base, strict=True)])
        out[name] = {"rows_per_second": round(median(r)), "ratio": round(ratio, 3),
                     "rounds": [round(a / b, 3) for a, b in zip(r, base, strict=True)]}
        log(f"{name:58s} {median(r):>8,.0f}/s  {ratio:.3f}")
    return out


def make_or_reuse(path: Path, rows: int, row_group_size: int) -> Path:
    if path.exists() and pq.ParquetFile(path).metadata.num_rows == rows:
        return path
    return make_rows(rows, path, row_group_size=row_group_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="peak,memory,budget,jobs")
    parser.add_argument("--model-dir", default=str(DEFAULT_MODEL))
    parser.add_argument("--rows", type=int, default=60_000, help="in-memory rows")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sweep", default="4096,8192,16384,32768,65536", help="token budgets in 'budget'")
    parser.add_argument("--big-rows", type=int, default=1_000_000)
    parser.add_argument("--small-rows", type=int, default=200_000)
    parser.add_argument("--job-repeats", type=int, default=2)
    parser.add_argument("--gap-rows", type=int, default=327_680, help="rows in 'gap' (5 job-sized calls)")
    parser.add_argument("--work", default="/tmp/seqcodec-bench")
    parser.add_argument("--before-tree", help="another checkout (git worktree add DIR REV): its big job runs too "
                        "(in 'jobs' and 'ratio')")
    parser.add_argument("--ratio-variant", help="extra job options (e.g. '--code-dtype float16'): in 'ratio' this "
                        "tree's job runs with them too")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model_dir = snapshot_model(Path(args.model_dir), work)
    data = make_or_reuse(work / "data" / f"perf-{args.rows}.parquet", args.rows, 65_536)
    result: dict[str, Any] = {"commit": git_commit(), "model": model_dir.name, "started": time.strftime("%H:%M:%S"),
                              "load_start": loadavg()}
    if "peak" in parts:
        result["matmul_gflops"] = [round(matmul_peak(), 1) for _ in range(3)]
        log(f"float32 matmul 2048^3: {result['matmul_gflops']} GFLOP/s")
    if "memory" in parts:
        log("in memory: the Keras layers' graph vs the numpy engine")
        result["memory"] = in_memory(model_dir, data, args.rows, args.rounds, {
            "Keras layers, TensorFlow graph, token budget": {"engine": "keras"},
            "numpy engine, batch 512": {"batch_size": 512},
            "numpy engine, token budget (default)": {},
        })
    if "budget" in parts:
        log("in memory: token budget sweep (numpy engine)")
        result["budget"] = in_memory(model_dir, data, args.rows, args.rounds,
                                     {f"numpy, budget {b}": {"token_budget": int(b)} for b in args.sweep.split(",")}
                                     )["table"]
    if "peak" in parts:
        result["matmul_gflops_end"] = round(matmul_peak(), 1)
    if "ratio" in parts:
        result["ratio"] = ratios(model_dir, work, args.big_rows, args.job_repeats, args.before_tree,
                                 args.ratio_variant.split() if args.ratio_variant else None)
    if "gap" in parts:
        result["gap"] = gap(model_dir, work, args.gap_rows, args.rounds)
    if "jobs" in parts:
        result["jobs"] = jobs(model_dir, work, args.big_rows, args.small_rows, args.job_repeats,
                              args.before_tree)
    result["load_end"] = loadavg()
    path = work / f"perf-{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=1))
    log(f"results in {path}")
    print(json.dumps({k: v for k, v in result.items() if k != "jobs"} | {"jobs": result.get("jobs")}, indent=1,
                     default=str)[:20000])


if __name__ == "__main__":
    main()
