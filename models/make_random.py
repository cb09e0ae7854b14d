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

    python models/make_random.py --preset vicuna7b --hub-layout [--dtype f32|bf16|f16] [--no-export]

writes instead a full-depth checkpoint in the hub's layout (every LLaMA layer,
`model-0000k-of-0000n.safetensors` shards of --shard-gb with
`model.safetensors.index.json`, the hub's tensor names, tokenizer files,
qformer_tokenizer/, processor and generation configs), tensor by tensor and
shard by shard, so making it needs about one tensor of memory (a 7B f32 one is
about 32 GB of disk), then exports it like a downloaded checkpoint: what a real
Salesforce/instructblip-vicuna-7b export costs in memory, time and disk.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

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
        sp_vocab=32000,
        vocab_rows=VOCAB_ROWS,
        bert_vocab=30522,
        corpus_lines=tokenizer_corpus(),
        max_new_tokens=20,
        depth=depth,
    )


def tokenizer_corpus() -> list[str]:
    """Seeded text a 32000-piece LLaMA SentencePiece and a 30522-word BERT
    WordPiece vocabulary can be trained on (the real tokenizers' sizes; the
    real ones cannot be downloaded here): Zipf-distributed pseudo-words of
    consonant-vowel syllables, plus make_tiny's English corpus and prompts so
    the test questions tokenize into real pieces."""
    rng = np.random.default_rng(7)
    syllables = [a + b for a in "bcdfghjklmnprstvwz" for b in "aeiou"] + list("aeiou")
    lens = rng.integers(1, 5, 60000)
    words = list(dict.fromkeys("".join(syllables[i] for i in rng.integers(0, len(syllables), n)) for n in lens))
    p = 1.0 / np.arange(1, len(words) + 1) ** 0.8
    rows = rng.choice(len(words), size=(40000, 12), p=p / p.sum())
    return [" ".join(words[i] for i in row) for row in rows] + make_tiny.CORPUS.splitlines() + make_tiny.PROMPTS


def init_std(name: str, shape: tuple) -> tuple[float, float]:
    """(mean, std) of a tensor's seeded normal values, as make_tiny.build_checkpoint draws them."""
    if len(shape) == 1:
        if "norm" in name.lower():
            return 1.0, 0.1
        return 0.0, 0.05
    fan_in = shape[-1] if len(shape) == 2 else math.prod(shape[1:])
    if "embed" in name or "query_tokens" in name:
        return 0.0, 0.5
    if "lm_head" in name:
        return 0.0, 3.0 / math.sqrt(fan_in)
    return 0.0, 1.0 / math.sqrt(fan_in)


def random_tensor(seed: int, index: int, name: str, shape: tuple, dtype: str) -> np.ndarray:
    mean, std = init_std(name, shape)
    a = np.random.default_rng([seed, index]).standard_normal(shape, dtype=np.float32)
    a *= std
    a += mean
    if dtype == "F16":
        return a.astype(np.float16)
    if dtype == "BF16":  # round to nearest even
        u = a.view(np.uint32)
        return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return a


def write_hub_checkpoint(name: str, p: dict, ckpt: Path, dtype: str, shard_gb: float) -> None:
    """The checkpoint as the hub holds it, written one tensor at a time (see the module doc)."""
    import torch
    from transformers import GenerationConfig, InstructBlipForConditionalGeneration

    st_dtype, width = {"f32": ("F32", 4), "bf16": ("BF16", 2), "f16": ("F16", 2)}[dtype]
    with tempfile.TemporaryDirectory() as t:
        processor, config, sp_model = make_tiny.processor_and_config(p, Path(t))
        ckpt.mkdir(parents=True)
        processor.save_pretrained(ckpt)
        shutil.copy(sp_model, ckpt / "tokenizer.model")
    config.architectures = ["InstructBlipForConditionalGeneration"]
    config.dtype = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}[dtype]
    config.save_pretrained(ckpt)
    GenerationConfig(bos_token_id=1, eos_token_id=2, max_new_tokens=p["max_new_tokens"],
                     do_sample=False).save_pretrained(ckpt)
    with torch.device("meta"):  # names and shapes only, no memory
        model = InstructBlipForConditionalGeneration(config)
    tensors = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    del model
    limit = int(shard_gb * 1e9)
    shards, cur, size = [], [], 0
    for k, shape in tensors:
        nb = math.prod(shape) * width
        if cur and size + nb > limit:
            shards.append(cur)
            cur, size = [], 0
        cur.append((k, shape))
        size += nb
    shards.append(cur)
    weight_map, total, index = {}, 0, 0
    t0 = time.monotonic()
    for s_i, shard in enumerate(shards):
        fname = f"model-{s_i + 1:05d}-of-{len(shards):05d}.safetensors"
        header, off = {"__metadata__": {"format": "pt"}}, 0
        for k, shape in shard:
            nb = math.prod(shape) * width
            header[k] = {"dtype": st_dtype, "shape": list(shape), "data_offsets": [off, off + nb]}
            off += nb
        hb = json.dumps(header, separators=(",", ":")).encode()
        hb += b" " * (-len(hb) % 8)
        part = ckpt / (fname + ".part")
        with open(part, "wb") as f:
            f.write(struct.pack("<Q", len(hb)))
            f.write(hb)
            for k, shape in shard:
                random_tensor(p["seed"], index, k, shape, st_dtype).tofile(f)
                index += 1
                weight_map[k] = fname
        part.rename(ckpt / fname)
        total += off
        log(f"{fname}: {len(shard)} tensors, {off / 1e9:.2f} GB ({time.monotonic() - t0:.0f} s)")
    (ckpt / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
    log(f"{name}: {len(tensors)} tensors, {sum(math.prod(s) for _, s in tensors) / 1e9:.2f} B parameters, "
        f"{total / 1e9:.1f} GB in {len(shards)} shards ({dtype})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", required=True, choices=sorted(LLAMA))
    ap.add_argument("--llm-type", default="q4_k_m", help="f16, or a type of `blipd quantize` (default q4_k_m)")
    ap.add_argument("--out", type=Path, help="bundle directory (default models/out/random-<preset>[-<type>])")
    ap.add_argument("--full-hf", action="store_true",
                    help="keep every LLaMA layer in the HF checkpoint too (small preset: lets PyTorch run "
                         "the whole model for comparisons)")
    ap.add_argument("--hub-layout", action="store_true",
                    help="write a full-depth checkpoint in the hub's layout (shards + index), shard by shard")
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16", "f16"], help="--hub-layout weights (default f32)")
    ap.add_argument("--shard-gb", type=float, default=10.0, help="--hub-layout shard size (default 10 GB)")
    ap.add_argument("--no-export", action="store_true", help="--hub-layout: only write the checkpoint")
    ap.add_argument("--blipd", help="blipd binary for quantizing (default: target/release/blipd)")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)

    out = args.out or HERE / "out" / f"random-{args.preset}-{args.llm_type}"
    ckpt = out.parent / f"{out.name}-hf"
    if out.exists() and not args.force:
        log(f"{out} exists (pass --force to rebuild)")
        return 1
    full = args.full_hf or args.hub_layout
    p = preset(args.preset, LLAMA[args.preset]["num_hidden_layers"] if full else 1)
    # Tokenizers of the real sizes (tokenizer_corpus); the embedding and output rows are Vicuna's.
    t0 = time.monotonic()
    if ckpt.exists():
        shutil.rmtree(ckpt)
    if args.hub_layout:
        write_hub_checkpoint(f"random-{args.preset}", p, ckpt, args.dtype, args.shard_gb)
        if args.no_export:
            return 0
    else:
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
