#!/usr/bin/env python3
"""Prefill and decode of the LLM per GGUF weight type, with and without
llama.cpp's repacking, measured with the direct llama.cpp harness
(benches/llama_harness.c, the same library blipd links).

    python benches/llm_types.py F16_GGUF OUTDIR [--types q4_0,q4_k_m,q5_k_m,q8_0,iq4_nl]
        [--prefill 53] [--decode 20] [--threads 2] [--n-ctx 512] [--rounds 3] [--passes 2]

Each type's GGUF is made once from F16_GGUF with `blipd quantize` (kept in
OUTDIR as llm-TYPE.gguf). Then, pass after pass, every type runs with
repacking on and off in turn (A B C ... A B C ...), each a fresh process:
one warm-up round, then ROUNDS rounds of a PREFILL-token batch and DECODE
greedy tokens; its peak RSS comes from /usr/bin/time. Prints a markdown
table (median and min-max over all rounds of all passes) and writes
OUTDIR/llm-types.json. The first-token cost of blipd is vision + Q-Former +
this prefill; `blipd bench` measures it whole.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "models"))

from compare import build_harness  # noqa: E402


def quantize(f16: Path, out: Path, kind: str, threads: int) -> float:
    t = time.perf_counter()
    subprocess.run([str(ROOT / "target" / "release" / "blipd"), "quantize", "--threads", str(threads),
                    str(f16), str(out), kind], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def run(harness: Path, gguf: Path, a, repack: bool) -> dict:
    cmd = ["/usr/bin/time", "-v", str(harness), str(gguf), str(a.prefill), str(a.decode), str(a.threads),
           str(a.n_ctx), str(a.rounds + 1)] + ([] if repack else ["--no-repack"])
    r = subprocess.run(cmd, capture_output=True, text=True, check=True)
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")][1:]
    load = json.loads(next(line for line in r.stderr.splitlines() if line.startswith('{"load_ms"')))["load_ms"]
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr).group(1))
    return {"rounds": rows, "load_ms": load, "peak_rss_gib": rss_kb / 2**20}


def spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):.1f} ({min(xs):.1f}-{max(xs):.1f})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("f16", type=Path)
    ap.add_argument("outdir", type=Path)
    ap.add_argument("--types", default="q4_0,q4_k_m,q5_k_m,q8_0,iq4_nl")
    ap.add_argument("--prefill", type=int, default=53, help="prompt positions (blipd bench's 7B prompt: 53)")
    ap.add_argument("--decode", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--passes", type=int, default=2)
    a = ap.parse_args(argv)
    a.outdir.mkdir(parents=True, exist_ok=True)
    harness = build_harness()
    types = a.types.split(",")
    made = {}
    for kind in types:
        gguf = a.outdir / f"llm-{kind}.gguf"
        if not gguf.exists():
            print(f"quantizing {kind} ...", file=sys.stderr, flush=True)
            made[kind] = quantize(a.f16, gguf, kind, a.threads)
    results = {(k, rp): [] for k in types for rp in (True, False)}
    for p in range(a.passes):
        for kind in types:
            for repack in (True, False):
                print(f"pass {p + 1}: {kind}, repack {'on' if repack else 'off'}", file=sys.stderr, flush=True)
                results[(kind, repack)].append(run(harness, a.outdir / f"llm-{kind}.gguf", a, repack))
    print(f"| type | file | repack | load | prefill {a.prefill} positions, t/s | decode, t/s | peak RSS |")
    print("|---|---|---|---|---|---|---|")
    report = {"settings": {k: getattr(a, k) for k in ("prefill", "decode", "threads", "n_ctx", "rounds", "passes")},
              "quantize_s": made, "rows": []}
    for (kind, repack), runs in results.items():
        rounds = [r for run_ in runs for r in run_["rounds"]]
        pre = [r["prefill_tokens_per_s"] for r in rounds]
        dec = [r["decode_tokens_per_s"] for r in rounds]
        loads = [r["load_ms"] / 1e3 for r in runs]
        rss = max(r["peak_rss_gib"] for r in runs)
        size = (a.outdir / f"llm-{kind}.gguf").stat().st_size / 1e9
        print(f"| {kind} | {size:.2f} GB | {'on' if repack else 'off'} | {statistics.median(loads):.1f} s | "
              f"{spread(pre)} | {spread(dec)} | {rss:.2f} GiB |")
        report["rows"].append({"type": kind, "repack": repack, "file_gb": size, "load_s": loads,
                               "prefill_tokens_per_s": pre, "decode_tokens_per_s": dec, "peak_rss_gib": rss})
    (a.outdir / "llm-types.json").write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
