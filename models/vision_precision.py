#!/usr/bin/env python3
"""Derive a bundle whose vision encoder runs in int8.

    python models/vision_precision.py SRC_BUNDLE OUT_BUNDLE --vision int8

The vision graph's MatMuls (every projection and MLP weight of the ViT:
nearly all of its weights and time) are quantized with onnxruntime's
dynamic quantization: int8 weights, per-tensor, activations quantized per
call (DynamicQuantizeLinear + MatMulInteger, which tract runs with its int8
kernels). LayerNorm, softmax, GELU and the patch embedding stay in f32. The
Q-Former, the LLM and the tokenizers are copied unchanged.

Before the bundle is written, the f32 and int8 graphs are compared under
onnxruntime on the test pictures: the image features and the Q-Former output
(with a fixed instruction) of the int8 bundle against the f32 one, cosine and
max-abs. The figures go into the manifest (`vision.derived_from.agreement`)
and are printed. Quantized vision does not keep token identity with the
reference (the f32 bundle does); tests/demo.rs holds the int8 demo bundle to
the f32 one's accuracy.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PICTURES = ["garage.png", "porch.jpg", "sticker.png"]
PROMPT = "What is in the picture?"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pixels(path: Path, image: dict) -> np.ndarray:
    """BlipImageProcessor's preprocessing, as the bundle states it."""
    from PIL import Image

    resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}[image["resample"]]
    im = Image.open(path)
    if im.mode in ("RGBA", "LA", "P"):
        im = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, im)
    im = im.convert("RGB").resize((image["width"], image["height"]), resample)
    x = np.asarray(im, dtype=np.float32) * np.float32(image["rescale_factor"])
    x = (x - np.array(image["mean"], np.float32)) / np.array(image["std"], np.float32)
    return x.transpose(2, 0, 1)[None].astype(np.float32)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def agreement(src: Path, int8_vision: Path, manifest: dict) -> dict:
    """Image features and Q-Former output of the int8 vision graph vs f32."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    run = lambda p: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])  # noqa: E731
    v32, v8 = run(src / manifest["vision"]["file"]), run(int8_vision)
    qf = run(src / manifest["qformer"]["file"])
    tok = Tokenizer.from_file(str(src / manifest["qformer"]["tokenizer"]))
    ids = np.array([tok.encode(PROMPT).ids], dtype=np.int64)
    feeds = {i.name: i for i in qf.get_inputs()}
    names = list(feeds)
    out = {"pictures": [], "vision_cosine_min": 1.0, "vision_max_abs": 0.0,
           "qformer_cosine_min": 1.0, "qformer_max_abs": 0.0}
    for name in PICTURES:
        x = pixels(ROOT / "tests" / "fixtures" / "images" / name, manifest["image"])
        f32 = v32.run(None, {v32.get_inputs()[0].name: x})[0]
        i8 = v8.run(None, {v8.get_inputs()[0].name: x})[0]
        q = []
        for feats in (f32, i8):
            inputs = {names[0]: feats, names[1]: ids, names[2]: np.ones_like(ids)}
            q.append(qf.run(None, inputs)[0])
        row = {"picture": name, "vision_cosine": cosine(f32, i8),
               "vision_max_abs": float(np.abs(f32 - i8).max()),
               "qformer_cosine": cosine(q[0], q[1]), "qformer_max_abs": float(np.abs(q[0] - q[1]).max())}
        out["pictures"].append(row)
        for k in ("vision", "qformer"):
            out[f"{k}_cosine_min"] = min(out[f"{k}_cosine_min"], row[f"{k}_cosine"])
            out[f"{k}_max_abs"] = max(out[f"{k}_max_abs"], row[f"{k}_max_abs"])
    return out


def derive(src: Path, out: Path, vision: str) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if vision != "int8":
        raise SystemExit(f"--vision {vision}: only int8 is derived here")
    manifest = json.loads((src / "bundle.json").read_text())
    if manifest["vision"].get("precision", "f32") != "f32":
        raise SystemExit(f"{src}: its vision is already {manifest['vision']['precision']}; derive from an f32 bundle")
    if out.exists():
        raise SystemExit(f"{out} already exists; choose a new folder for the derived bundle")
    vfile = manifest["vision"]["file"]
    src_sha = manifest["files"][vfile]["sha256"]
    vision_files = {f for f in manifest["files"] if f == vfile or f.startswith(vfile + ".")}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".vision-int8-", dir=out.parent))
    try:
        quantize_dynamic(
            str(src / vfile),
            str(tmp / vfile),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"],
            per_channel=False,
            use_external_data_format=True,
        )
        report = agreement(src, tmp / vfile, manifest)
        for f in manifest["files"]:
            if f not in vision_files:
                shutil.copy2(src / f, tmp / f)
        files = {f: e for f, e in manifest["files"].items() if f not in vision_files}
        for p in sorted(tmp.iterdir()):
            if p.name.startswith(vfile):
                files[p.name] = {"sha256": sha256_file(p), "size": p.stat().st_size}
        manifest["files"] = dict(sorted(files.items()))
        manifest["vision"]["precision"] = "int8"
        manifest["vision"]["derived_from"] = {
            "precision": "f32",
            "sha256": src_sha,
            "tool": "onnxruntime.quantization.quantize_dynamic (MatMul, QInt8 weights, per tensor)",
            "agreement": report,
        }
        (tmp / "bundle.json").write_text(json.dumps(manifest, indent=2) + "\n")
        # mkdtemp and onnx make owner-only files: a bundle is read by the service's user.
        tmp.chmod(0o755)
        for p in tmp.iterdir():
            p.chmod(0o644)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--vision", default="int8", choices=["int8"])
    a = ap.parse_args(argv)
    r = derive(a.src, a.out, a.vision)
    for row in r["pictures"]:
        print(f"{row['picture']:12} vision cosine {row['vision_cosine']:.6f} max-abs {row['vision_max_abs']:.4g}   "
              f"Q-Former cosine {row['qformer_cosine']:.6f} max-abs {row['qformer_max_abs']:.4g}")
    print(f"wrote {a.out} (vision int8)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
