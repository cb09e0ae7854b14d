"""`blipd quantize BUNDLE OUT --vision int8 --qformer int8` and `--vision
f16` (the Rust rewrites, src/graph/rewrite/) against the references they
follow: onnxruntime's quantize_dynamic and its float16 converter, as
models/vision_precision.py runs them. The two graphs must hold the same
tensors byte for byte and the same nodes, pass onnx's checker, and give
onnxruntime the same outputs bit for bit, on the tiny fixtures and on the
demo bundle (whose derived accuracy tests/demo.rs holds to f32's).

    python models/tests/test_quantize_graph.py REF_BUNDLE RUST_BUNDLE

compares two derived bundles' graphs the same way (e.g. a 7B bundle from
models/vision_precision.py against `blipd quantize`'s).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
sys.path.insert(0, str(ROOT / "models"))

import vision_precision  # noqa: E402

BUNDLES = {"tiny-a": FIXTURES / "tiny-a", "tiny-b": FIXTURES / "tiny-b", "demo": ROOT / "models" / "demo"}


def run_blipd_quantize(src: Path, out: Path, *args: str) -> None:
    blipd = ROOT / "target" / "release" / "blipd"
    assert blipd.is_file(), "build blipd first (cargo build --release)"
    r = subprocess.run([str(blipd), "quantize", str(src), str(out), *args, "--threads", "2"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "agreement with the f32 graphs" in r.stderr, r.stderr


def check_derived(src: Path, rust: Path, parts: dict[str, str]) -> None:
    """The manifest records each derived graph: precision, source, tool, tract's agreement."""
    manifest = json.loads((src / "bundle.json").read_text())
    m = json.loads((rust / "bundle.json").read_text())
    for part, precision in parts.items():
        assert m[part]["precision"] == precision
        d = m[part]["derived_from"]
        assert d["sha256"] == manifest["files"][manifest[part]["file"]]["sha256"]
        assert d["tool"].startswith("blipd quantize")
        assert d["agreement"]["runtime"] == "tract"
        assert d["agreement"]["vision_cosine_min"] > 0.999 and d["agreement"]["qformer_cosine_min"] > 0.999


def same_outputs(src: Path, ref: Path, rust: Path, graph: str) -> None:
    """onnxruntime gives both graphs' outputs bit for bit the same."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    manifest = json.loads((src / "bundle.json").read_text())
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sessions = [ort.InferenceSession(str(d / graph), opts, providers=["CPUExecutionProvider"]) for d in (ref, rust)]
    x = vision_precision.pixels(FIXTURES / "images" / "garage.png", manifest["image"])
    if graph == "vision.onnx":
        outs = [s.run(None, {s.get_inputs()[0].name: x})[0] for s in sessions]
    else:
        v = ort.InferenceSession(str(src / "vision.onnx"), opts, providers=["CPUExecutionProvider"])
        feats = v.run(None, {v.get_inputs()[0].name: x})[0]
        tok = Tokenizer.from_file(str(src / manifest["qformer"]["tokenizer"]))
        ids = np.array([tok.encode(vision_precision.PROMPT).ids], dtype=np.int64)
        outs = []
        for s in sessions:
            names = [i.name for i in s.get_inputs()]
            outs.append(s.run(None, {names[0]: feats, names[1]: ids, names[2]: np.ones_like(ids)})[0])
    assert np.array_equal(outs[0], outs[1]), graph


def nodes(model) -> list[str]:
    """The graph's nodes, in any order, attributes by value (prost leaves out
    a zero `i`, which ONNX reads as the same 0)."""
    from onnx.helper import get_attribute_value

    return sorted(f"{n.op_type} {n.name} {list(n.input)} {list(n.output)} "
                  f"{sorted((a.name, repr(get_attribute_value(a))) for a in n.attribute)}" for n in model.graph.node)


def same_graphs(ref: Path, rust: Path, graph: str) -> None:
    """Equal tensors (name, type, shape, bytes) and equal nodes; the Rust
    graph passes onnx's checker."""
    import onnx
    from onnx import numpy_helper

    a, b = onnx.load(str(ref / graph)), onnx.load(str(rust / graph))
    onnx.checker.check_model(b)
    ta = {t.name: numpy_helper.to_array(t) for t in a.graph.initializer}
    tb = {t.name: numpy_helper.to_array(t) for t in b.graph.initializer}
    assert sorted(ta) == sorted(tb), graph
    for k, v in ta.items():
        assert v.dtype == tb[k].dtype and v.shape == tb[k].shape and v.tobytes() == tb[k].tobytes(), f"{graph} {k}"
    assert nodes(a) == nodes(b), graph
    print(f"{graph}: {len(ta)} tensors and {len(a.graph.node)} nodes equal")


@pytest.mark.parametrize("name", sorted(BUNDLES))
def test_rust_int8_graphs_equal_onnxruntime_quantize_dynamic(tmp_path, name):
    src = BUNDLES[name]
    rust, ref = tmp_path / "rust", tmp_path / "ref"
    run_blipd_quantize(src, rust, "--vision", "int8", "--qformer", "int8")
    vision_precision.derive(src, ref, "int8", "int8")
    check_derived(src, rust, {"vision": "int8", "qformer": "int8"})
    for graph in ("vision.onnx", "qformer.onnx"):
        same_graphs(ref, rust, graph)
        same_outputs(src, ref, rust, graph)


@pytest.mark.parametrize("name", sorted(BUNDLES))
def test_rust_f16_graph_equals_onnxruntime_float16(tmp_path, name):
    src = BUNDLES[name]
    rust, ref = tmp_path / "rust", tmp_path / "ref"
    run_blipd_quantize(src, rust, "--vision", "f16")
    vision_precision.derive(src, ref, "f16")
    check_derived(src, rust, {"vision": "f16"})
    same_graphs(ref, rust, "vision.onnx")
    same_outputs(src, ref, rust, "vision.onnx")


if __name__ == "__main__":
    for g in ("vision.onnx", "qformer.onnx"):
        same_graphs(Path(sys.argv[1]), Path(sys.argv[2]), g)
