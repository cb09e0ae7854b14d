#!/usr/bin/env python3
"""Build the tiny random-weight InstructBLIP test models and their reference goldens.

    python models/make_tiny.py [--out tests/fixtures]

For each preset this
  1. trains a LLaMA SentencePiece tokenizer and a BERT WordPiece tokenizer on the
     text below (deterministic),
  2. builds an `InstructBlipForConditionalGeneration` with seeded random weights and
     saves it as an ordinary Hugging Face checkpoint,
  3. exports it with models/export.py into OUT/<preset>/ (f32 GGUF),
  4. runs Hugging Face transformers itself on every image x instruction and writes
     OUT/goldens/<preset>.json: pixel_values, vision output, Q-Former output, the
     token ids both tokenizers produce, greedy `generate` tokens and decoded text.

The images are drawn here too (OUT/images/), PNG and JPEG, of several sizes and
aspect ratios. Everything is seeded, so running it twice gives the same files
(the JPEG encoder and torch kernels being the same versions).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import export as exporter  # noqa: E402

CORPUS = """\
Is the garage door open or closed?
Count the people standing at the counter.
What color is the car parked in the driveway?
Describe the scene in one short sentence.
Is there a package on the front porch?
How many cats are sitting on the sofa?
The kitchen light is on and the window is open.
A red bicycle leans against the white fence near the gate.
Two dogs are playing in the garden under a blue sky.
The camera shows a hallway with a wooden floor and a green door.
Answer yes or no: is anybody in the room?
What is written on the sign above the shop entrance?
The snow covers the roof, the road and the trees along the street.
Read the numbers on the electricity meter and report them.
Is the oven switched off? Is the tap running? Is the back door locked?
A small robot with big round eyes watches the living room at night.
Please list every object you can see on the desk, from left to right.
The weather is cloudy, the lawn is wet and the bins are out for collection.
Where did I leave my keys? They might be on the table or near the lamp.
Summarize what changed since the last picture in a few words.
"""

PROMPTS = [
    "What is in the picture?",
    "Is the garage door open or closed? Answer yes or no.",
    # Longer than 40 tokens in both tokenizers.
    "Please look very carefully at this camera picture and describe every object you can see, "
    "from left to right, including the colors of the doors, the windows, the cars, the bicycles "
    "and the people standing near the gate, then say whether anything changed since the last picture.",
]

PRESETS = {
    # Square-ish small ViT, every Q-Former layer cross-attends, MHA LLaMA.
    "tiny-a": dict(
        seed=1234,
        image_size=32,
        patch_size=8,
        vision=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4),
        qformer=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     cross_attention_frequency=1, max_position_embeddings=128),
        num_query_tokens=8,
        llama=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=4, max_position_embeddings=256, rope_theta=10000.0),
        sp_vocab=320,
        extra_rows=3,
        bert_vocab=260,
        max_new_tokens=24,
    ),
    # Other patch size and image size, cross-attention every 2nd layer, GQA LLaMA, other vocab sizes.
    "tiny-b": dict(
        seed=98765,
        image_size=42,
        patch_size=6,
        vision=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=3),
        qformer=dict(hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=4,
                     cross_attention_frequency=2, max_position_embeddings=96),
        num_query_tokens=4,
        llama=dict(hidden_size=96, intermediate_size=160, num_hidden_layers=3, num_attention_heads=6,
                   num_key_value_heads=2, max_position_embeddings=192, rope_theta=50000.0),
        sp_vocab=400,
        extra_rows=0,
        bert_vocab=300,
        max_new_tokens=20,
    ),
}

# The smallest top-1/top-2 logit gap accepted at any greedy step: a near tie could
# flip under float rounding and make the golden flaky, so such a model is rejected.
MIN_MARGIN = 1e-3


def log(msg: str) -> None:
    print(f"[make_tiny] {msg}", file=sys.stderr, flush=True)


def make_images(out: Path) -> list[str]:
    """Deterministic test pictures: PNG and JPEG, landscape, portrait, tiny, RGBA."""
    from PIL import Image, ImageDraw

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)

    def scene(w, h):
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack([x * 255 / max(w - 1, 1), y * 255 / max(h - 1, 1), (x + y) * 127 / max(w + h - 2, 1)], -1)
        noise = rng.integers(-20, 21, size=(h, w, 3))
        img = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")
        d = ImageDraw.Draw(img)
        d.rectangle([w // 5, h // 4, w // 2, h * 3 // 4], fill=(200, 30, 40))
        d.ellipse([w // 2, h // 6, w * 9 // 10, h // 2], fill=(20, 180, 60), outline=(255, 255, 255))
        d.line([0, h - 1, w - 1, 0], fill=(10, 10, 200), width=2)
        return img

    names = []
    scene(64, 48).save(out / "garage.png")
    names.append("garage.png")
    scene(50, 70).save(out / "porch.jpg", quality=90)
    names.append("porch.jpg")
    rgba = scene(24, 20).convert("RGBA")
    a = np.array(rgba)
    a[..., 3] = np.linspace(40, 255, a.shape[1]).astype(np.uint8)[None, :]
    Image.fromarray(a, "RGBA").save(out / "sticker.png")
    names.append("sticker.png")
    return names


def wordpiece_vocab(lines: list[str], size: int) -> dict[str, int]:
    """A BERT WordPiece vocab built deterministically (the `tokenizers` trainer
    breaks frequency ties in hash order): specials, every character alone and as
    a continuation, then the most frequent whole words."""
    import re
    from collections import Counter

    words = Counter()
    for line in lines:
        words.update(re.findall(r"\w+|[^\w\s]", line.lower()))
    chars = sorted({c for w in words for c in w})
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + c for c in chars]
    for w, _ in sorted(words.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(tokens) >= size:
            break
        if w not in tokens:
            tokens.append(w)
    return {t: i for i, t in enumerate(tokens)}


# (in_w, in_h, out_w, out_h): both pass orders of Pillow 13, up/down/mixed scaling, odd sizes.
RESIZE_CASES = [(64, 64, 32, 32), (50, 70, 32, 32), (64, 98, 32, 32), (46, 64, 32, 32), (24, 20, 32, 32),
                (30, 30, 40, 20), (33, 17, 17, 33), (97, 61, 14, 14), (7, 5, 30, 42), (40, 12, 40, 30)]
BILINEAR_CASES = [(50, 70, 32, 32), (24, 20, 32, 32)]


def resize_goldens() -> dict:
    """PIL BICUBIC resizes of seeded noise images: the preprocessing resize, isolated."""
    import base64
    from PIL import Image

    rng = np.random.default_rng(11)
    cases = []
    for (w, h, ow, oh), name in [(c, "bicubic") for c in RESIZE_CASES] + [(c, "bilinear") for c in BILINEAR_CASES]:
        src = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}[name]
        out = np.array(Image.fromarray(src, "RGB").resize((ow, oh), resample))
        cases.append({"in": [w, h], "out": [ow, oh], "filter": name,
                      "src": base64.b64encode(src.tobytes()).decode(),
                      "expected": base64.b64encode(out.tobytes()).decode()})
    return {"cases": cases}


def train_tokenizers(preset: dict, tmp: Path, lines: list[str] | None = None):
    """A LLaMA SentencePiece (BPE, byte fallback) and a BERT WordPiece tokenizer,
    both trained on `lines` (default: this file's corpus and prompts)."""
    import sentencepiece as spm
    from transformers import BertTokenizer, LlamaTokenizer

    if lines is None:
        lines = preset.get("corpus_lines") or CORPUS.splitlines() + PROMPTS
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines * 4),
        model_prefix=str(tmp / "llama"),
        vocab_size=preset["sp_vocab"],
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
        split_digits=True,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
    )
    llama_dir = tmp / "llama_tok"
    llama_dir.mkdir()
    shutil.copy(tmp / "llama.model", llama_dir / "tokenizer.model")
    tok = LlamaTokenizer.from_pretrained(llama_dir, add_bos_token=True, add_eos_token=False,
                                         clean_up_tokenization_spaces=False, legacy=False)

    vocab = wordpiece_vocab(lines, preset["bert_vocab"])
    qtok = BertTokenizer(vocab=vocab, do_lower_case=True, truncation_side="left")
    qtok.add_special_tokens({"bos_token": "[DEC]"})
    return tok, qtok, tmp / "llama.model"


def processor_and_config(preset: dict, tmp: Path, lines: list[str] | None = None):
    """The InstructBLIP processor (both tokenizers trained on `lines`) and model
    config of a preset; returns (processor, config, SentencePiece model path)."""
    from transformers import BlipImageProcessorPil, InstructBlipConfig, InstructBlipProcessor

    tok, qtok, sp_model = train_tokenizers(preset, tmp, lines)
    image_processor = BlipImageProcessorPil(size={"height": preset["image_size"], "width": preset["image_size"]})
    processor = InstructBlipProcessor(image_processor, tok, qtok, num_query_tokens=preset["num_query_tokens"])
    image_token_id = tok.convert_tokens_to_ids("<image>")
    n_vocab = preset.get("vocab_rows") or len(tok) + preset["extra_rows"]
    config = InstructBlipConfig(
        vision_config=dict(image_size=preset["image_size"], patch_size=preset["patch_size"],
                           layer_norm_eps=1e-6, **preset["vision"]),
        qformer_config=dict(vocab_size=len(qtok), **preset["qformer"]),
        text_config=dict(model_type="llama", vocab_size=n_vocab, bos_token_id=1, eos_token_id=2,
                         pad_token_id=None, rms_norm_eps=1e-6, tie_word_embeddings=False,
                         **preset["llama"]),
        num_query_tokens=preset["num_query_tokens"],
        image_token_index=image_token_id,
    )
    return processor, config, sp_model


def build_checkpoint(name: str, preset: dict, ckpt: Path) -> None:
    import torch
    from transformers import GenerationConfig, InstructBlipForConditionalGeneration

    with tempfile.TemporaryDirectory() as t:
        processor, config, sp_model = processor_and_config(preset, Path(t))
        n_vocab = config.text_config.vocab_size
        image_token_id = config.image_token_index
        qtok = processor.qformer_tokenizer
        torch.manual_seed(preset["seed"])
        model = InstructBlipForConditionalGeneration(config).eval()
        # Transformers' init is tiny (vision std 1e-10) and would make every logit tie:
        # draw weights wide enough that the greedy choice is decided by the input.
        gen = torch.Generator().manual_seed(preset["seed"])
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if p.ndim == 1:
                    if "norm" in pname or "layernorm" in pname.lower() or "LayerNorm" in pname:
                        p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
                    else:
                        p.copy_(0.05 * torch.randn(p.shape, generator=gen))
                else:
                    fan_in = p.shape[-1] if p.ndim == 2 else math.prod(p.shape[1:])
                    std = 1.0 / math.sqrt(fan_in)
                    if "embed" in pname or "query_tokens" in pname:
                        std = 0.5
                    if "lm_head" in pname:
                        std = 3.0 / math.sqrt(fan_in)
                    p.copy_(std * torch.randn(p.shape, generator=gen))
        model.generation_config = GenerationConfig(
            bos_token_id=1, eos_token_id=2, max_new_tokens=preset["max_new_tokens"], do_sample=False
        )
        ckpt.mkdir(parents=True)
        model.save_pretrained(ckpt)
        processor.save_pretrained(ckpt)
        shutil.copy(sp_model, ckpt / "tokenizer.model")
        log(f"{name}: checkpoint with {sum(p.numel() for p in model.parameters())} parameters, "
            f"LLaMA vocab {n_vocab} (image token {image_token_id}), Q-Former vocab {len(qtok)}")


def floats(t) -> list[float]:
    """f32 values with 9 significant digits: exact for float32, half the JSON size."""
    return [float(f"{v:.9g}") for v in t.flatten().tolist()]


def goldens(name: str, preset: dict, ckpt: Path, images: Path, image_names: list[str],
            min_margin: float | None = MIN_MARGIN, step_margins: bool = False) -> dict:
    """Transformers' outputs per image and per image x prompt. A greedy step
    decided by less than `min_margin` aborts (None: only record the margins);
    `step_margins` also records each step's top-1/top-2 logit margin."""
    import torch
    from PIL import Image
    from transformers import (
        AutoTokenizer,
        BlipImageProcessorPil,
        InstructBlipForConditionalGeneration,
        InstructBlipProcessor,
    )

    model = InstructBlipForConditionalGeneration.from_pretrained(
        ckpt, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    processor = InstructBlipProcessor(
        BlipImageProcessorPil.from_pretrained(ckpt),
        AutoTokenizer.from_pretrained(ckpt),
        AutoTokenizer.from_pretrained(ckpt / "qformer_tokenizer"),
        num_query_tokens=model.config.num_query_tokens,
    )
    nq = model.config.num_query_tokens
    out = {"preset": name, "num_query_tokens": nq, "max_new_tokens": preset["max_new_tokens"],
           "images": {}, "cases": []}
    for img_name in image_names:
        img = Image.open(images / img_name)
        pv = processor.image_processor(img, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            vis = model.vision_model(pixel_values=pv, return_dict=True).last_hidden_state
        out["images"][img_name] = {
            "pixel_values_shape": list(pv.shape),
            "pixel_values": floats(pv),
            "vision_shape": list(vis.shape),
            "vision": floats(vis),
        }
        for prompt in PROMPTS:
            inputs = processor(images=img, text=prompt, return_tensors="pt")
            assert torch.equal(inputs["pixel_values"], pv)
            with torch.no_grad():
                feats = model.get_image_features(
                    inputs["pixel_values"], qformer_input_ids=inputs["qformer_input_ids"],
                    qformer_attention_mask=inputs["qformer_attention_mask"], return_dict=True,
                ).pooler_output
                gen = model.generate(**inputs, do_sample=False, num_beams=1,
                                     max_new_tokens=preset["max_new_tokens"],
                                     output_scores=True, return_dict_in_generate=True)
            ids = inputs["input_ids"][0].tolist()
            assert ids[:nq] == [model.config.image_token_index] * nq
            new = gen.sequences[0, len(ids):].tolist()
            margins = []
            for s in gen.scores:
                top = torch.topk(s[0], 2).values
                margins.append(float(top[0] - top[1]))
            if min_margin is not None and min(margins) < min_margin:
                raise SystemExit(f"{name}: greedy step with logit margin {min(margins):g} < {min_margin}; "
                                 "change the preset's seed")
            text = processor.tokenizer.decode(new, skip_special_tokens=True)
            out["cases"].append({
                "image": img_name,
                "prompt": prompt,
                "qformer_input_ids": inputs["qformer_input_ids"][0].tolist(),
                "llm_input_ids": ids[nq:],
                "qformer_shape": list(feats.shape),
                "qformer": floats(feats),
                "tokens": new,
                "text": text,
                "min_logit_margin": min(margins),
                **({"logit_margins": margins} if step_margins else {}),
            })
            log(f"{name} {img_name} {prompt[:30]!r}: {len(new)} tokens, min margin {min(margins):.3f}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=HERE.parent / "tests" / "fixtures")
    ap.add_argument("--keep-checkpoints", type=Path, help="also keep the HF checkpoints in this folder")
    args = ap.parse_args()
    import torch

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    out: Path = args.out
    images = out / "images"
    image_names = make_images(images)
    (out / "goldens").mkdir(parents=True, exist_ok=True)
    (out / "goldens" / "resize.json").write_text(json.dumps(resize_goldens()) + "\n")
    with tempfile.TemporaryDirectory() as t:
        for name, preset in PRESETS.items():
            ckpt = (args.keep_checkpoints or Path(t)) / f"{name}-hf"
            if ckpt.exists():
                shutil.rmtree(ckpt)
            build_checkpoint(name, preset, ckpt)
            exporter.export(str(ckpt), out / name, "f32", None, force=True, label=f"models/make_tiny.py preset {name}")
            g = goldens(name, preset, ckpt, images, image_names)
            g["bundle"] = name
            (out / "goldens" / f"{name}.json").write_text(json.dumps(g) + "\n")
    log(f"fixtures written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
