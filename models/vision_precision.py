#!/usr/bin/env python3
"""Derive a bundle whose vision encoder and Q-Former run in int8 or f16.

    python models/vision_precision.py SRC_BUNDLE OUT_BUNDLE --vision int8 [--qformer int8]
    python models/vision_precision.py SRC_BUNDLE OUT_BUNDLE --vision f16

`int8`: the graph's MatMuls (every projection and MLP weight of the ViT or
the Q-Former: nearly all of its weights and time) are quantized with
onnxruntime's dynamic quantization: int8 weights, per tensor, activations
quantized per call (DynamicQuantizeLinear + MatMulInteger, which tract runs
with its int8 kernels). LayerNorm, softmax, GELU, the patch embedding and the
Q-Former's word embeddings stay in f32.

`f16` (vision only): the weights and arithmetic become half precision
(onnxruntime's float16 converter, inputs and outputs kept f32); LayerNorm and
softmax stay f32. tract runs f16 matmuls with native kernels where the CPU has
f16 arithmetic (ARMv8.2 FP16: Cortex-A76/A78AE, i.e. Pi 5 and Orin) and
converts f16 weights on the fly elsewhere; the weights take half the memory
either way.

Whatever is not named keeps its precision; the LLM and the tokenizers are
copied unchanged. Before the bundle is written, the source and the derived
graphs are compared under onnxruntime on the test pictures: the image
features and the Q-Former output (with a fixed instruction), cosine and
max-abs. The figures go into the manifest (`vision.derived_from.agreement`,
`qformer.derived_from`) and are printed. Derived bundles do not keep token
identity with the reference (the f32 bundle does); tests/demo.rs holds the
derived demo bundles to the f32 one's accuracy.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
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


def agreement(src: Path, manifest: dict, vision: Path, qformer: Path) -> dict:
    """Image features and Q-Former output of the derived graphs vs the source's."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    run = lambda p: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])  # noqa: E731
    v_src, v_new = run(src / manifest["vision"]["file"]), run(vision)
    q_src = run(src / manifest["qformer"]["file"])
    q_new = run(qformer) if qformer != src / manifest["qformer"]["file"] else q_src
    tok = Tokenizer.from_file(str(src / manifest["qformer"]["tokenizer"]))
    ids = np.array([tok.encode(PROMPT).ids], dtype=np.int64)
    out = {"pictures": [], "vision_cosine_min": 1.0, "vision_max_abs": 0.0,
           "qformer_cosine_min": 1.0, "qformer_max_abs": 0.0}
    for name in PICTURES:
        x = pixels(ROOT / "tests" / "fixtures" / "images" / name, manifest["image"])
        f_src = v_src.run(None, {v_src.get_inputs()[0].name: x})[0]
        f_new = v_new.run(None, {v_new.get_inputs()[0].name: x})[0]
        q = []
        for sess, feats in ((q_src, f_src), (q_new, f_new)):
            names = [i.name for i in sess.get_inputs()]
            q.append(sess.run(None, {names[0]: feats, names[1]: ids, names[2]: np.ones_like(ids)})[0])
        row = {"picture": name, "vision_cosine": cosine(f_src, f_new),
               "vision_max_abs": float(np.abs(f_src - f_new).max()),
               "qformer_cosine": cosine(q[0], q[1]), "qformer_max_abs": float(np.abs(q[0] - q[1]).max())}
        out["pictures"].append(row)
        for k in ("vision", "qformer"):
            out[f"{k}_cosine_min"] = min(out[f"{k}_cosine_min"], row[f"{k}_cosine"])
            out[f"{k}_max_abs"] = max(out[f"{k}_max_abs"], row[f"{k}_max_abs"])
    return out


VISION_TYPES = ["f32", "int8", "f16"]
QFORMER_TYPES = ["f32", "int8"]
INT8_TOOL = "onnxruntime.quantization.quantize_dynamic (MatMul, QInt8 weights, per tensor)"
F16_TOOL = "onnxruntime.transformers.float16 (inputs/outputs, LayerNorm and softmax kept f32)"
# Kept in f32 in an f16 graph: normalisation and softmax need the range and the
# precision (a ViT-g's activations reach the hundreds before LayerNorm).
F16_KEEP = ["LayerNormalization", "Softmax", "ReduceMean", "Pow", "Sqrt", "Reciprocal"]


def graph_files(names, graph: str) -> set[str]:
    """A graph file and its external data (`vision.onnx`, `vision.onnx.data`)."""
    return {n for n in names if n == graph or n.startswith(graph + ".")}


def int8_graph(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # quantize_dynamic writes a shape-inferred copy beside its input: work on
    # a copy, so the source bundle may be read-only (e.g. /usr/share/blipd).
    work = dst.parent / f".{src.name}.work"
    work.mkdir()
    try:
        for name in graph_files(os.listdir(src.parent), src.name):
            shutil.copy2(src.parent / name, work / name)
        quantize_dynamic(str(work / src.name), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                         per_channel=False, use_external_data_format=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def f16_graph(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(src))
    model = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True,
                                     op_block_list=DEFAULT_OP_BLOCK_LIST + F16_KEEP)
    onnx.save_model(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=dst.name + ".data", size_threshold=1024)


def derive(src: Path, out: Path, vision: str, qformer: str = "f32") -> dict:
    if vision not in VISION_TYPES or qformer not in QFORMER_TYPES:
        raise SystemExit(f"--vision {vision} --qformer {qformer}: vision is f32, int8 or f16, the Q-Former f32 or int8")
    if vision == "f32" and qformer == "f32":
        raise SystemExit("nothing to derive: name --vision int8|f16 and/or --qformer int8")
    manifest = json.loads((src / "bundle.json").read_text())
    for part in ("vision", "qformer"):
        if manifest[part].get("precision", "f32") != "f32":
            raise SystemExit(f"{src}: its {part} is already {manifest[part]['precision']}; derive from an f32 bundle")
    if out.exists():
        raise SystemExit(f"{out} already exists; choose a new folder for the derived bundle")
    todo = {"vision": vision, "qformer": qformer}
    source_files = dict(manifest["files"])
    graphs = {part: graph_files(source_files, manifest[part]["file"]) for part in todo}
    replaced = set().union(*(graphs[part] for part, kind in todo.items() if kind != "f32"))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".precision-", dir=out.parent))
    try:
        paths = {}
        for part, kind in todo.items():
            f = manifest[part]["file"]
            paths[part] = tmp / f if kind != "f32" else src / f
            if kind == "int8":
                int8_graph(src / f, tmp / f)
            elif kind == "f16":
                f16_graph(src / f, tmp / f)
        report = agreement(src, manifest, paths["vision"], paths["qformer"])
        kept_graphs = set().union(*graphs.values()) - replaced
        for f in source_files.keys() - replaced:
            # The LLM is hard-linked where the file system allows (a 7B GGUF is
            # not copied); graphs are copied: onnx refuses to read external
            # data from a file with several links (a "hardlink attack").
            if f not in kept_graphs:
                try:
                    (tmp / f).hardlink_to(src / f)
                    continue
                except OSError:
                    pass
            shutil.copy2(src / f, tmp / f)
        files = {f: e for f, e in source_files.items() if f not in replaced}
        for p in sorted(tmp.iterdir()):
            if p.name not in files:
                files[p.name] = {"sha256": sha256_file(p), "size": p.stat().st_size}
        manifest["files"] = dict(sorted(files.items()))
        for part, kind in todo.items():
            if kind == "f32":
                continue
            f = manifest[part]["file"]
            manifest[part]["precision"] = kind
            manifest[part]["derived_from"] = {
                "precision": "f32",
                "sha256": source_files[f]["sha256"],
                "tool": INT8_TOOL if kind == "int8" else F16_TOOL,
                "agreement": report,
            }
        (tmp / "bundle.json").write_text(json.dumps(manifest, indent=2) + "\n")
        # mkdtemp and onnx make owner-only files: a bundle is read by the service's user.
        tmp.chmod(0o755)
        for p in tmp.iterdir():
            if p.stat().st_nlink == 1:  # not the hard-linked source files
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
    ap.add_argument("--vision", default="int8", choices=VISION_TYPES,
                    help="precision of the vision encoder (default int8)")
    ap.add_argument("--qformer", default="f32", choices=QFORMER_TYPES,
                    help="precision of the Q-Former (default f32)")
    a = ap.parse_args(argv)
    r = derive(a.src, a.out, a.vision, a.qformer)
    for row in r["pictures"]:
        print(f"{row['picture']:12} vision cosine {row['vision_cosine']:.6f} max-abs {row['vision_max_abs']:.4g}   "
              f"Q-Former cosine {row['qformer_cosine']:.6f} max-abs {row['qformer_max_abs']:.4g}")
    print(f"wrote {a.out} (vision {a.vision}, Q-Former {a.qformer})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
