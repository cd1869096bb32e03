"""Decode cost beside encode cost, per sequence: in memory and as whole Beam jobs, in one run.

Run: .venv/bin/python -m bench.decode_bench --rows 200000
(default model: models/default; data: bench/make_rows.py under /tmp/seqcodec-bench, not the repository)
Word sentences with the autoregressive model:
     .venv/bin/python -m bench.decode_bench --model-dir models/words --data data/words/sentences.parquet
The numpy decoder's token budget alone (no jobs):
     ... --budgets 2048,4096,8192,16384 --rounds 6
A low-rank output layer (--tie-output) as two products against one, in memory (no jobs):
     ... --model-dir models/words --data data/words/sentences.parquet --factors --rounds 6
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from bench.encode_bench import REPO, git_commit, loadavg, log, remove_output, run_child, seqcodec_cmd
from bench.make_rows import ensure_rows


def in_memory(model_dir: Path, data: Path, rows: int, rounds: int) -> dict:
    """Encode and decode the same sequences with the batched codec, interleaved; sequences per second."""
    from seqcodec.model.loader import load
    from seqcodec.transforms.inference import flat_tokens

    codec = load(model_dir)
    tokens = pq.read_table(data, columns=["tokens"]).column("tokens").slice(0, rows)
    values, offsets = flat_tokens(tokens)
    codes = codec.encode_flat(values, offsets)  # warm-up (traces) and the decoder's input
    codec.decode_flat(codes[:1000])
    rates: dict[str, list[float]] = {"encode": [], "decode": []}
    for _ in range(rounds):
        start = time.perf_counter()
        codec.encode_flat(values, offsets)
        rates["encode"].append(rows / (time.perf_counter() - start))
        start = time.perf_counter()
        codec.decode_flat(codes)
        rates["decode"].append(rows / (time.perf_counter() - start))
    ratios = [e / d for e, d in zip(rates["encode"], rates["decode"], strict=True)]
    return {"rates": rates, "decode_cost_vs_encode": ratios}


def budget_sweep(model_dir: Path, data: Path, rows: int, rounds: int, budgets: list[int]) -> dict:
    """The numpy decoder at each token budget on the same codes, rounds alternating; rows/s and ratios to the last."""
    from seqcodec.model.loader import load
    from seqcodec.transforms.inference import flat_tokens

    encoder = load(model_dir)
    decoders = {b: load(model_dir, token_budget=b) for b in budgets}
    tokens = pq.read_table(data, columns=["tokens"]).column("tokens").slice(0, rows)
    codes = encoder.encode_flat(*flat_tokens(tokens))
    decoders[budgets[-1]].decode_flat(codes[:1000])
    rates: dict[int, list[float]] = {b: [] for b in budgets}
    for r in range(rounds):
        for b in budgets if r % 2 == 0 else budgets[::-1]:
            start = time.perf_counter()
            decoders[b].decode_flat(codes)
            rates[b].append(rows / (time.perf_counter() - start))
        log(f"  round {r + 1}: " + ", ".join(f"{b} {rates[b][-1]:.0f}/s" for b in budgets))
    last = rates[budgets[-1]]

    def ratio(b: int) -> float:
        return round(float(np.median([x / y for x, y in zip(rates[b], last, strict=True)])), 3)

    return {str(b): {"rows_per_second": [round(x) for x in rates[b]], "median_ratio_to_last": ratio(b)}
            for b in budgets}


def factors(model_dir: Path, data: Path, rows: int, rounds: int) -> dict:
    """The numpy decoder with its output layer in two factors against the same layer as one product,
    rounds alternating; rows/s, the ratio, and how many tokens differ."""
    from seqcodec.model.codec import SequenceCodec
    from seqcodec.model.engine import NumpyDecoder
    from seqcodec.model.loader import load
    from seqcodec.transforms.inference import flat_tokens

    encoder = factored = load(model_dir)
    weights = factored.decoder.weights
    if weights.output_left is None:
        raise SystemExit(f"{model_dir}: its output layer is full rank; --factors compares a tied one")
    product = np.vstack([weights.output_left @ weights.output[:-1], weights.output[-1:]])
    one = dataclasses.replace(weights, output_left=None, output=np.ascontiguousarray(product, np.float32))
    whole = SequenceCodec(factored.encoder, NumpyDecoder(one), factored.config)
    tokens = pq.read_table(data, columns=["tokens"]).column("tokens").slice(0, rows)
    codes = encoder.encode_flat(*flat_tokens(tokens))
    factored.decode_flat(codes[:1000])
    whole.decode_flat(codes[:1000])
    rates: dict[str, list[float]] = {"factors": [], "one product": []}
    out: dict[str, np.ndarray] = {}
    for r in range(rounds):
        for name in ("factors", "one product") if r % 2 == 0 else ("one product", "factors"):
            start = time.perf_counter()
            out[name] = (factored if name == "factors" else whole).decode_flat(codes)[0]
            rates[name].append(rows / (time.perf_counter() - start))
        log(f"  round {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f}/s" for k, v in rates.items()))
    ratios = [f / o for f, o in zip(rates["factors"], rates["one product"], strict=True)]
    return {"rank": int(weights.output_left.shape[1]), "width": int(weights.output_left.shape[0]),
            "rows_per_second": {k: [round(x) for x in v] for k, v in rates.items()},
            "median_speedup": round(float(np.median(ratios)), 3),
            "tokens_differing": int((out["factors"] != out["one product"]).sum()), "tokens": int(out["factors"].size)}


def jobs(model_dir: Path, data: Path, work: Path, repeats: int) -> dict:
    """`seqcodec encode` then `seqcodec decode` on its codes, alternating; rows/s from summary.json."""
    out: dict[str, list] = {"encode": [], "decode": []}
    for i in range(repeats):
        encoded = work / f"enc-{i}"
        run = run_child([*seqcodec_cmd(), "encode", "--input", str(data), "--output", str(encoded),
                         "--model-dir", str(model_dir)], work / f"enc-{i}.log")
        summary = json.loads((encoded / "summary.json").read_text())
        out["encode"].append({**run, "rows_per_second": summary["sequences_per_second"]})
        decoded = work / f"dec-{i}"
        run = run_child([*seqcodec_cmd(), "decode", "--input", str(encoded / "codes" / "*.parquet"),
                         "--output", str(decoded), "--model-dir", str(model_dir)], work / f"dec-{i}.log")
        summary = json.loads((decoded / "summary.json").read_text())
        out["decode"].append({**run, "rows_per_second": summary["sequences_per_second"]})
        remove_output(encoded)
        remove_output(decoded)
    out["decode_cost_vs_encode"] = [e["rows_per_second"] / d["rows_per_second"]
                                    for e, d in zip(out["encode"], out["decode"], strict=True)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--model-dir", default=str(REPO / "models" / "default"))
    parser.add_argument("--rounds", type=int, default=3, help="in-memory encode/decode rounds")
    parser.add_argument("--job-repeats", type=int, default=2)
    parser.add_argument("--data", help="a token Parquet file to use instead of generated rows (all its rows)")
    parser.add_argument("--work", default="/tmp/seqcodec-bench")
    parser.add_argument("--out", default="/tmp/seqcodec-bench/decode_bench.json")
    parser.add_argument("--budgets", help="only sweep the numpy decoder's token budget, e.g. 2048,4096,16384 "
                                          "(ratios to the last), --rounds rounds")
    parser.add_argument("--factors", action="store_true",
                        help="only time a low-rank output layer as two products against one, --rounds rounds")
    args = parser.parse_args()
    Path(args.work).mkdir(parents=True, exist_ok=True)  # with --data nothing else makes it
    work = Path(tempfile.mkdtemp(prefix="decode-", dir=Path(args.work)))
    model_dir = work / "model"
    shutil.copytree(args.model_dir, model_dir)  # a model replaced mid-run must not change the numbers
    if args.data:
        data = Path(args.data).resolve()
        args.rows = pq.ParquetFile(data).metadata.num_rows
    else:
        data = ensure_rows(args.rows, Path(args.work) / "data")
    manifest = json.loads((model_dir / "manifest.json").read_text())
    result = {"commit": git_commit(), "rows": args.rows, "data": str(data), "model": manifest["fingerprint"],
              "decoder": manifest.get("decoder", "repeat"), "load_average_start": loadavg()}
    if args.factors:
        log("numpy decoder: output layer in two factors against one product")
        result["factors"] = factors(model_dir, data, args.rows, args.rounds)
        Path(args.out).write_text(json.dumps(result, indent=1))
        print(json.dumps(result["factors"], indent=1))
        return
    if args.budgets:
        log("numpy decoder per token budget")
        result["budgets"] = budget_sweep(model_dir, data, args.rows, args.rounds,
                                         [int(b) for b in args.budgets.split(",")])
        Path(args.out).write_text(json.dumps(result, indent=1))
        print(json.dumps(result["budgets"], indent=1))
        return
    log("in-memory encode vs decode")
    result["in_memory"] = in_memory(model_dir, data, args.rows, args.rounds)
    log("whole jobs: encode, then decode its codes")
    result["jobs"] = jobs(model_dir, data, work, args.job_repeats)
    result["load_average_end"] = loadavg()
    Path(args.out).write_text(json.dumps(result, indent=1))
    mem, job = result["in_memory"], result["jobs"]
    log(f"in memory: decode costs {np.median(mem['decode_cost_vs_encode']):.2f}x encode per sequence "
        f"(encode {np.median(mem['rates']['encode']):.0f}/s, decode {np.median(mem['rates']['decode']):.0f}/s)")
    log(f"whole jobs: decode costs {np.median(job['decode_cost_vs_encode']):.2f}x encode per sequence")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
