#!/usr/bin/env python3
"""Runs `blipd ask` (typically the aarch64 binary under qemu-aarch64) on every
golden case of the tiny fixture bundles, and on the golden subset of the demo
bundle (models/demo, on demo scenes drawn by `--scene`), and compares its
greedy token ids with the ones HF transformers produced
(tests/fixtures/goldens/*.json).

    cross/check_goldens.py dist/blipd-aarch64-generic [--runner "cross/qemu -cpu cortex-a72"]

Exits 1 if any case differs. Standard library only.

    cross/check_goldens.py BINARY --bundle-root DIR --agreement

runs the cases on DIR/tiny-a, DIR/tiny-b and DIR/demo instead, e.g. derived
bundles (int8/f16 vision, int8 Q-Former:
models/vision_precision.py) and only reports how many are token-identical
(derived bundles are not token-identical by construction); it still fails if
a case does not run.

Runs with --threads 2 and two cases side by side (`--jobs`, default: the
number of cores), under cross/qemu, which runs threaded aarch64 programs
(see the comment there for why plain `qemu-aarch64 -L` hung at the first
thread on these machines). Threads split tract's matmuls and llama.cpp's
work differently from one thread, so the emulated run checks the threaded
ARM kernels too; the answers must not depend on the thread count.
"""
import argparse
import concurrent.futures
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("binary")
    ap.add_argument("--runner", default=str(ROOT / "cross" / "qemu"),
                    help='command prefix ("" to run the binary directly)')
    ap.add_argument("--bundles", default="tiny-a,tiny-b,demo")
    ap.add_argument("--threads", default="2", help="threads for blipd (default 2)")
    ap.add_argument("--bundle-root", type=Path,
                    help="ask DIR/<bundle> (default: tests/fixtures/<bundle>, models/demo)")
    ap.add_argument("--agreement", action="store_true",
                    help="report token agreement, fail only on cases that do not run")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="cases run at once")
    args = ap.parse_args()

    runner = shlex.split(args.runner)

    def where(bundle: str) -> Path:
        if args.bundle_root:
            return args.bundle_root / bundle
        return ROOT / "models" / "demo" if bundle == "demo" else FIX / bundle
    jobs = []
    for bundle in args.bundles.split(","):
        goldens = json.loads((FIX / "goldens" / f"{bundle}.json").read_text())
        demo = bundle == "demo"
        for case in goldens["cases"]:
            if demo and not case.get("golden"):
                continue
            if demo:
                source = ["--model", str(where(bundle)), "--scene", str(case["seed"])]
                case["image"] = f"scene {case['seed'] % 100000}"
            else:
                source = ["--model", str(where(bundle)), "--image", str(FIX / "images" / case["image"])]
            cmd = runner + [args.binary, "ask", *source,
                            "--max-tokens", str(goldens["max_new_tokens"]), "--threads", args.threads,
                            "--json", case["prompt"]]
            jobs.append((bundle, case, cmd))

    def run(cmd):
        t0 = time.monotonic()
        out = subprocess.run(cmd, capture_output=True, text=True)
        return out, time.monotonic() - t0

    failures = 0
    total = 0
    identical = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = pool.map(run, [cmd for _, _, cmd in jobs])
        for (bundle, case, _), (out, secs) in zip(jobs, results):
            total += 1
            if out.returncode != 0:
                failures += 1
                print(f"FAIL {bundle} {case['image']} {case['prompt'][:30]!r}: exit {out.returncode}\n{out.stderr}")
                continue
            got = json.loads(out.stdout)["tokens"]
            want = case["tokens"]
            same = got == want
            failures += not same and not args.agreement
            identical += same
            agree = sum(a == b for a, b in zip(got, want))
            print(f"{'ok  ' if same else ('diff' if args.agreement else 'FAIL')} {bundle} {case['image']:12} {case['prompt'][:32]!r:36} "
                  f"{agree}/{len(want)} tokens identical ({secs:.1f} s)", flush=True)
    print(f"{identical}/{total} cases token-identical to the transformers goldens")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
