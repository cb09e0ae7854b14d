#!/usr/bin/env python3
"""Full-depth parity: blipd's f32 bundle against transformers on every layer.

    .venv/bin/python models/parity_full.py [--out models/out/random-small-f32]

The tiny fixtures (tests/reference.rs) prove each stage on shapes small
enough to commit; this proves the same at full depth, on the `small` preset of
models/make_random.py: the real EVA ViT-g/14 (39 layers) and Q-Former (12
layers, 32 queries) of Salesforce/instructblip-vicuna-7b, and a
TinyLlama-1.1B-shaped LLaMA (22 layers, GQA), with seeded random weights in a
hub-layout checkpoint and the real tokenizer sizes (32000 SentencePiece pieces
+ <image>, 30522 WordPiece words). The 7B LLM itself is too large for
transformers to run in float32 on a 24 GB machine; its streaming export is
what models/make_random.py --preset vicuna7b --hub-layout measures.

Steps, each skipped when its output is already there:
  1. models/make_random.py --preset small --hub-layout --llm-type f32
     (OUT-hf/, a 9 GB checkpoint, and the bundle OUT/, exported as a user
     would: models/export.py, streaming the LLM into an f32 GGUF);
  2. goldens from transformers (float32, eager attention, greedy, 20 new
     tokens) on the three test pictures x three instructions, recorded by the
     same code as tests/fixtures/goldens (models/make_tiny.py: goldens), into
     OUT-goldens.json (about 30 MB, never committed);
  3. the Rust comparison, stage by stage: `cargo test --release --test
     full_depth -- --ignored --nocapture` with BLIPD_FULL_DEPTH_BUNDLE and
     BLIPD_FULL_DEPTH_GOLDEN set (pixel values, vision and Q-Former within
     1e-4 max-abs, both tokenizers, identical greedy tokens and text; a case
     may only part from the reference at a step the reference itself decided
     by a logit margin under 1e-3, where float rounding picks the winner,
     and at least 6 of the 9 must be identical throughout).

Needs about 20 GB of disk, 11 GB of memory and 20 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import make_random  # noqa: E402
import make_tiny  # noqa: E402


def log(msg: str) -> None:
    print(f"[parity_full] {msg}", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=HERE / "out" / "random-small-f32", help="bundle directory")
    ap.add_argument("--threads", type=int, default=2, help="PyTorch threads for the goldens")
    ap.add_argument("--no-rust", action="store_true", help="stop after recording the goldens")
    args = ap.parse_args(argv)
    out: Path = args.out.resolve()
    ckpt = out.parent / f"{out.name}-hf"
    golden = out.parent / f"{out.name}-goldens.json"

    if not (out / "bundle.json").exists() or not (ckpt / "model.safetensors.index.json").exists():
        log(f"building the small full-depth checkpoint and its f32 bundle in {out}")
        rc = make_random.main(["--preset", "small", "--hub-layout", "--llm-type", "f32", "--out", str(out),
                               "--force"])
        if rc:
            return rc
        golden.unlink(missing_ok=True)

    if not golden.exists():
        import torch

        torch.set_num_threads(args.threads)
        t0 = time.monotonic()
        preset = make_random.preset("small", make_random.LLAMA["small"]["num_hidden_layers"])
        images = ROOT / "tests" / "fixtures" / "images"
        names = ["garage.png", "porch.jpg", "sticker.png"]
        # Random weights at full depth can make a greedy step a near tie: every
        # step's margin is recorded, so the Rust side can tell a tie decided by
        # float rounding from a real difference.
        g = make_tiny.goldens("random-small", preset, ckpt, images, names, min_margin=None, step_margins=True)
        g["bundle"] = out.name
        tmp = golden.with_suffix(".part")
        tmp.write_text(json.dumps(g) + "\n")
        tmp.rename(golden)
        log(f"{len(g['cases'])} goldens from transformers in {time.monotonic() - t0:.0f} s: {golden}")

    if args.no_rust:
        return 0
    env = dict(os.environ, BLIPD_FULL_DEPTH_BUNDLE=str(out), BLIPD_FULL_DEPTH_GOLDEN=str(golden))
    cmd = ["cargo", "test", "--release", "--test", "full_depth", "--", "--ignored", "--nocapture"]
    log(" ".join(cmd))
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
