"""`blipd quantize BUNDLE OUT --vision int8 --qformer int8` (the Rust
rewrite, src/graph/int8.rs) against the reference it follows: onnxruntime's
quantize_dynamic, as models/vision_precision.py runs it. The two graphs must
hold the same tensors byte for byte and the same nodes, pass onnx's checker,
and give onnxruntime the same outputs bit for bit, on the tiny fixtures and
on the demo bundle (whose derived accuracy tests/demo.rs holds to f32's).

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
    import onnxruntime as ort

    blipd = ROOT / "target" / "release" / "blipd"
    assert blipd.is_file(), "build blipd first (cargo build --release)"
    src = BUNDLES[name]
    rust, ref = tmp_path / "rust", tmp_path / "ref"
    r = subprocess.run([str(blipd), "quantize", str(src), str(rust), "--vision", "int8", "--qformer", "int8",
                        "--threads", "2"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "agreement with the f32 graphs" in r.stderr, r.stderr
    vision_precision.derive(src, ref, "int8", "int8")
    manifest = json.loads((src / "bundle.json").read_text())
    m = json.loads((rust / "bundle.json").read_text())
    for part in ("vision", "qformer"):
        assert m[part]["precision"] == "int8"
        d = m[part]["derived_from"]
        assert d["sha256"] == manifest["files"][manifest[part]["file"]]["sha256"]
        assert d["tool"].startswith("blipd quantize")
        assert d["agreement"]["runtime"] == "tract"
        assert d["agreement"]["vision_cosine_min"] > 0.999 and d["agreement"]["qformer_cosine_min"] > 0.999

    sessions = {}
    for graph in ("vision.onnx", "qformer.onnx"):
        same_graphs(ref, rust, graph)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sessions[graph] = [ort.InferenceSession(str(d / graph), opts, providers=["CPUExecutionProvider"])
                           for d in (ref, rust)]

    x = vision_precision.pixels(FIXTURES / "images" / "garage.png", manifest["image"])
    feats = [s.run(None, {s.get_inputs()[0].name: x})[0] for s in sessions["vision.onnx"]]
    assert np.array_equal(feats[0], feats[1])
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(src / manifest["qformer"]["tokenizer"]))
    ids = np.array([tok.encode(vision_precision.PROMPT).ids], dtype=np.int64)
    outs = []
    for s in sessions["qformer.onnx"]:
        names = [i.name for i in s.get_inputs()]
        outs.append(s.run(None, {names[0]: feats[0], names[1]: ids, names[2]: np.ones_like(ids)})[0])
    assert np.array_equal(outs[0], outs[1])


if __name__ == "__main__":
    for g in ("vision.onnx", "qformer.onnx"):
        same_graphs(Path(sys.argv[1]), Path(sys.argv[2]), g)
