#!/usr/bin/env python3
"""Full-size InstructBLIP bundles with random weights, for speed and memory work.

    python models/make_random.py --preset vicuna7b [--llm-type q4_k_m] [--out models/out/random-vicuna7b]

Speed does not depend on weight values, so anyone can benchmark the real
shapes without downloading 15 GB: the vision encoder (EVA ViT-g/14 at 224 px)
and the Q-Former (BERT-base, 32 queries) are the real architectures with seeded
random weights, exported through models/export.py exactly like a real
checkpoint; the language model has the real LLaMA/Vicuna shapes (hidden size,
layers, heads, FFN, a 32001-row vocabulary). To keep the build inside a 24 GB
machine, the Hugging Face checkpoint holds one LLaMA layer and the GGUF
repeats it to the preset's depth (same compute, same file size).

Presets: vicuna7b, vicuna13b, and small (the same vision and Q-Former with a
TinyLlama-1.1B-shaped language model: small enough to run the whole reference
pipeline in PyTorch for comparisons). Never commit the output (models/out/ is
ignored): a 7B q4_k_m bundle is about 8.5 GB, and building it needs about
15 GB more of temporary disk and 10 minutes on 2 cores.

The Hugging Face checkpoint is kept beside the bundle (<out>-hf/) for the
comparison script (models/compare.py).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import export as exporter  # noqa: E402
import make_tiny  # noqa: E402

# InstructBLIP-Vicuna's vision encoder and Q-Former (Salesforce/instructblip-vicuna-7b config).
VISION_G = dict(hidden_size=1408, intermediate_size=6144, num_hidden_layers=39, num_attention_heads=16)
QFORMER = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
               cross_attention_frequency=2, max_position_embeddings=512)
VOCAB_ROWS = 32001  # Vicuna's 32000 + the "<image>"-era pad row

LLAMA = {
    "vicuna7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=32, max_position_embeddings=2048, rope_theta=10000.0),
    "vicuna13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                      num_key_value_heads=40, max_position_embeddings=2048, rope_theta=10000.0),
    "small": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                  num_key_value_heads=4, max_position_embeddings=2048, rope_theta=10000.0),
}


def log(msg: str) -> None:
    print(f"[make_random] {msg}", file=sys.stderr, flush=True)


def preset(name: str, stub_layers: int) -> dict:
    llama = dict(LLAMA[name])
    depth = llama["num_hidden_layers"]
    llama["num_hidden_layers"] = min(stub_layers, depth)
    return dict(
        seed=4242,
        image_size=224,
        patch_size=14,
        vision=VISION_G,
        qformer=QFORMER,
        num_query_tokens=32,
        llama=llama,
        sp_vocab=320,
        vocab_rows=VOCAB_ROWS,
        bert_vocab=260,
        max_new_tokens=20,
        depth=depth,
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", required=True, choices=sorted(LLAMA))
    ap.add_argument("--llm-type", default="q4_k_m", help="f16, or a type of `blipd quantize` (default q4_k_m)")
    ap.add_argument("--out", type=Path, help="bundle directory (default models/out/random-<preset>[-<type>])")
    ap.add_argument("--full-hf", action="store_true",
                    help="keep every LLaMA layer in the HF checkpoint too (small preset: lets PyTorch run "
                         "the whole model for comparisons)")
    ap.add_argument("--blipd", help="blipd binary for quantizing (default: target/release/blipd)")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)

    out = args.out or HERE / "out" / f"random-{args.preset}-{args.llm_type}"
    ckpt = out.parent / f"{out.name}-hf"
    if out.exists() and not args.force:
        log(f"{out} exists (pass --force to rebuild)")
        return 1
    p = preset(args.preset, LLAMA[args.preset]["num_hidden_layers"] if args.full_hf else 1)
    # The SentencePiece vocabulary is tiny; the embedding and output rows are Vicuna's.
    t0 = time.monotonic()
    if ckpt.exists():
        shutil.rmtree(ckpt)
    make_tiny.build_checkpoint(f"random-{args.preset}", p, ckpt)
    log(f"checkpoint in {time.monotonic() - t0:.0f} s; exporting")
    exporter.export(str(ckpt), out, args.llm_type, args.blipd, force=True,
                    label=f"models/make_random.py --preset {args.preset} (random weights)",
                    n_layers=p["depth"], intermediate="f16")
    size = sum(f.stat().st_size for f in out.iterdir())
    log(f"{out}: {size / 2**30:.2f} GiB in {time.monotonic() - t0:.0f} s (HF checkpoint: {ckpt})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
