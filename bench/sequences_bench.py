"""Per-element EncodeSequences against the columnar job (`seqcodec encode`) on the same rows, in one run.

Each variant runs as its own process (imports, model load and pipeline included) and is timed
from outside (wall and user+sys CPU); rows/s are rows read / wall seconds. "own clock" is each
child's inner timer (the pipeline run, or the encode call for memory; the job's summary.json clock):

- memory:   ``SequenceCodec.encode_flat`` on all rows already in memory (the model alone)
- job:      ``seqcodec encode`` Parquet -> Parquet (Arrow tables through EncodeSequences)
- elements: ``ReadFromParquet`` (one dict per row) -> ``(id, tokens)`` pairs -> ``EncodeSequences``
            -> one JSON line per code written by ``WriteToText`` (a per-element source and sink)
- elements-nosink: the same without the sink (the codes are only counted)

Variants alternate order between rounds, because this machine's speed drifts minute to minute;
compare ratios within one round. Run:
    .venv/bin/python -m bench.sequences_bench --rows 200000 --rounds 2
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.encode_bench import git_commit, loadavg, remove_output, resolve_model, run_child, seqcodec_cmd
from bench.make_rows import ensure_rows

WORK = Path("/tmp/seqcodec-bench")
VARIANTS = ("memory", "job", "elements", "elements-nosink")


def memory_main(input_path: str, model_dir: str) -> None:
    """Child: encode every row in memory with the codec alone."""
    import pyarrow.parquet as pq

    from seqcodec.model.loader import load
    from seqcodec.transforms.inference import flat_tokens

    codec = load(model_dir)
    values, offsets = flat_tokens(pq.read_table(input_path, columns=["tokens"]).column("tokens"))
    started = time.perf_counter()
    codec.encode_flat(values, offsets)
    print(json.dumps({"inner_seconds": time.perf_counter() - started}))


def elements_main(input_path: str, model_dir: str, out: str, sink: bool) -> None:
    """Child: a per-element pipeline around EncodeSequences."""
    import apache_beam as beam

    import seqcodec
    from seqcodec.pipeline.options import make_pipeline

    started = time.perf_counter()
    with make_pipeline([]) as p:
        codes = (
            p
            | "Read" >> beam.io.ReadFromParquet(input_path)
            | "Pairs" >> beam.Map(lambda row: (row["id"], row["tokens"]))
            | "Encode" >> seqcodec.EncodeSequences(model_dir)
        ).main
        if sink:
            _ = (codes | "JSON" >> beam.Map(lambda kv: json.dumps({"id": kv[0], "code": kv[1].tolist()}))
                 | "Write" >> beam.io.WriteToText(f"{out}/codes", file_name_suffix=".jsonl"))
        else:
            _ = codes | "Count" >> beam.combiners.Count.Globally() | beam.Map(
                lambda n: Path(out, "count.txt").write_text(str(n)))
    print(json.dumps({"inner_seconds": time.perf_counter() - started}))


def run_variant(name: str, data: Path, model_dir: Path, work: Path, rows: int) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=work))
    if name == "memory":
        cmd = [sys.executable, "-m", "bench.sequences_bench", "_memory", str(data), str(model_dir)]
    elif name == "job":
        cmd = [*seqcodec_cmd(), "encode", "--input", str(data), "--output", str(out / "job"),
               "--model-dir", str(model_dir)]
    else:
        cmd = [sys.executable, "-m", "bench.sequences_bench", "_elements", str(data), str(model_dir), str(out),
               "sink" if name == "elements" else "nosink"]
    log_path = work / f"{name}.log"
    result = run_child(cmd, log_path)
    if name != "job":  # the child's own clock: pipeline (or encode call) only, imports and start-up excluded
        inner = json.loads(log_path.read_text().strip().splitlines()[-1])["inner_seconds"]
        result["inner_rows_per_second"] = round(rows / inner, 1)
    if name == "job":
        summary = json.loads((out / "job" / "summary.json").read_text())
        assert summary["rows_read"] == rows, summary
        result["inner_rows_per_second"] = summary["sequences_per_second"]  # the job's clock (TF import included)
    if name == "elements":
        written = sum(1 for f in out.glob("codes-*.jsonl") for _ in open(f))
        assert written == rows, f"{written} codes written for {rows} rows"
    if name == "elements-nosink":
        assert int((out / "count.txt").read_text()) == rows
    remove_output(out)
    result["rows_per_second"] = round(rows / result["wall_seconds"], 1)
    result["rows_per_cpu_second"] = round(rows / result["cpu_seconds"], 1)
    result["loadavg"] = round(loadavg(), 2)
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_memory":
        memory_main(*argv[1:3])
        return 0
    if argv and argv[0] == "_elements":
        elements_main(argv[1], argv[2], argv[3], argv[4] == "sink")
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--model-dir", help="default: a copy of models/default")
    p.add_argument("--random-model", action="store_true")
    p.add_argument("--hidden-size", type=int, default=64)
    args = p.parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="sequences-", dir=WORK))
    model_dir, origin = resolve_model(args, WORK)
    data = ensure_rows(args.rows, WORK / "data")
    variants = args.variants.split(",")
    runs = []
    for round_no in range(args.rounds):
        order = variants if round_no % 2 == 0 else variants[::-1]
        for name in order:
            result = run_variant(name, data, model_dir, work, args.rows)
            runs.append({"round": round_no, "variant": name, **result})
            print(json.dumps(runs[-1]), flush=True)
    results = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "commit": git_commit(),
               "rows": args.rows, "model": origin, "cpus": os.cpu_count(), "argv": argv, "runs": runs}
    path = WORK / f"sequences-{int(time.time())}.json"
    path.write_text(json.dumps(results, indent=1))
    print(report(results))
    print(f"results in {path}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


def report(results: dict) -> str:
    """One line per round: each variant's rows/s and its ratio to the job in that round."""
    lines = ["| round | variant | rows/s (wall) | ratio to job | rows per CPU-s | ratio to job (CPU) "
             "| rows/s (own clock) | load |", "|---|---|---|---|---|---|---|---|"]
    for round_no in sorted({r["round"] for r in results["runs"]}):
        runs = [r for r in results["runs"] if r["round"] == round_no]
        job = next((r for r in runs if r["variant"] == "job"), None)
        for r in runs:
            ratio = r["rows_per_second"] / job["rows_per_second"] if job else float("nan")
            cpu = r["rows_per_cpu_second"] / job["rows_per_cpu_second"] if job else float("nan")
            lines.append(f"| {round_no} | {r['variant']} | {r['rows_per_second']:,.0f} | {ratio:.2f} | "
                         f"{r['rows_per_cpu_second']:,.0f} | {cpu:.2f} | {r['inner_rows_per_second']:,.0f} | "
                         f"{r['loadavg']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
