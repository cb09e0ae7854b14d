"""Tests of the exporter itself, so it cannot rot: run by `make test` and CI.

They rebuild the tiny fixtures from scratch and require them to be identical to
the committed ones, check the clear failures on checkpoints blipd cannot run,
and export a quantized bundle through `blipd quantize`.
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
sys.path.insert(0, str(ROOT / "models"))

import export  # noqa: E402
import make_tiny  # noqa: E402


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory):
    out = tmp_path_factory.mktemp("fixtures")
    ckpts = tmp_path_factory.mktemp("ckpts")
    r = subprocess.run(
        [sys.executable, str(ROOT / "models" / "make_tiny.py"), "--out", str(out), "--keep-checkpoints", str(ckpts)],
        capture_output=True, text=True,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    return out, ckpts


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.mark.parametrize("preset", list(make_tiny.PRESETS))
def test_bundles_are_reproducible(regenerated, preset):
    out, _ = regenerated
    new = json.loads((out / preset / "bundle.json").read_text())
    old = json.loads((FIXTURES / preset / "bundle.json").read_text())
    for key in ("image", "vision", "qformer", "llm", "generation", "source"):
        assert new[key] == old[key], key
    assert new["files"] == old["files"], "committed bundle differs from a fresh export: run models/make_tiny.py"
    for name, entry in new["files"].items():
        assert sha(out / preset / name) == entry["sha256"]


@pytest.mark.parametrize("preset", list(make_tiny.PRESETS))
def test_goldens_are_reproducible(regenerated, preset):
    out, _ = regenerated
    new = json.loads((out / "goldens" / f"{preset}.json").read_text())
    old = json.loads((FIXTURES / "goldens" / f"{preset}.json").read_text())
    assert len(new["cases"]) == len(old["cases"]) == 9
    for a, b in zip(new["cases"], old["cases"]):
        for key in ("image", "prompt", "qformer_input_ids", "llm_input_ids", "tokens", "text"):
            assert a[key] == b[key], key
        assert max(abs(x - y) for x, y in zip(a["qformer"], b["qformer"])) < 1e-5
        assert a["min_logit_margin"] >= make_tiny.MIN_MARGIN


def test_goldens_cover_the_required_cases():
    for preset in make_tiny.PRESETS:
        g = json.loads((FIXTURES / "goldens" / f"{preset}.json").read_text())
        images = {c["image"] for c in g["cases"]}
        assert any(i.endswith(".png") for i in images) and any(i.endswith(".jpg") for i in images)
        assert len(images) >= 3 and len({c["prompt"] for c in g["cases"]}) >= 3
        assert max(len(c["llm_input_ids"]) for c in g["cases"]) > 40
        assert max(len(c["qformer_input_ids"]) for c in g["cases"]) > 40


def test_manifest_describes_the_checkpoint(regenerated):
    out, ckpts = regenerated
    m = json.loads((out / "tiny-b" / "bundle.json").read_text())
    cfg = json.loads((ckpts / "tiny-b-hf" / "config.json").read_text())
    assert m["format"] == "blipd-bundle" and m["format_version"] == export.FORMAT_VERSION
    assert m["image"]["height"] == m["image"]["width"] == cfg["vision_config"]["image_size"]
    assert m["image"]["resample"] == "bicubic"
    assert m["qformer"]["num_query_tokens"] == cfg["num_query_tokens"]
    assert m["llm"]["hidden_size"] == cfg["text_config"]["hidden_size"]
    assert m["llm"]["vocab_size"] == cfg["text_config"]["vocab_size"]
    assert m["generation"]["max_new_tokens"] == make_tiny.PRESETS["tiny-b"]["max_new_tokens"]
    assert m["exporter"]["onnx_check"]["vision_max_abs"] < 1e-4
    n = (cfg["vision_config"]["image_size"] // cfg["vision_config"]["patch_size"]) ** 2 + 1
    assert m["vision"]["num_positions"] == n


def test_gguf_vocab_covers_every_embedding_row(regenerated):
    import gguf

    out, _ = regenerated
    m = json.loads((out / "tiny-a" / "bundle.json").read_text())
    r = gguf.GGUFReader(str(out / "tiny-a" / "llm.gguf"))
    tokens = r.fields["tokenizer.ggml.tokens"]
    assert len(tokens.data) == m["llm"]["vocab_size"]
    emb = next(t for t in r.tensors if t.name == "token_embd.weight")
    assert int(emb.shape[1]) == m["llm"]["vocab_size"]


def write_config(tmp_path: Path, text_config: dict, model_type="instructblip") -> Path:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    cfg = {
        "model_type": model_type,
        "vision_config": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                          "intermediate_size": 64, "image_size": 16, "patch_size": 8},
        "qformer_config": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                           "intermediate_size": 64},
        "text_config": text_config,
        "num_query_tokens": 4,
        "image_token_index": 5,
    }
    (ckpt / "config.json").write_text(json.dumps(cfg))
    return ckpt


def test_flan_t5_checkpoint_is_refused_clearly(tmp_path):
    ckpt = write_config(tmp_path, {"model_type": "t5", "d_model": 32, "num_layers": 1, "num_heads": 2})
    out = tmp_path / "bundle"
    with pytest.raises(export.ExportError, match="Flan-T5"):
        export.export(str(ckpt), out, "f32", None, force=False)
    assert not out.exists()


def test_other_model_type_is_refused(tmp_path):
    ckpt = write_config(tmp_path, {"model_type": "opt"}, model_type="blip-2")
    with pytest.raises(export.ExportError, match="InstructBLIP"):
        export.export(str(ckpt), tmp_path / "bundle", "f32", None, force=False)


def test_cli_reports_error_without_traceback(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "models" / "export.py"), str(tmp_path / "nope"), str(tmp_path / "o")],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "export.py: error:" in r.stderr and "Traceback" not in r.stderr


def test_quantized_export_through_blipd(regenerated, tmp_path):
    blipd = ROOT / "target" / "release" / "blipd"
    assert blipd.is_file(), "build blipd first (cargo build --release): the q8_0 export quantizes with it"
    _, ckpts = regenerated
    out = tmp_path / "q8"
    m = export.export(str(ckpts / "tiny-a-hf"), out, "q8_0", str(blipd), force=False)
    assert m["llm"]["weight_type"] == "q8_0"
    f32_size = json.loads((FIXTURES / "tiny-a" / "bundle.json").read_text())["files"]["llm.gguf"]["size"]
    assert m["files"]["llm.gguf"]["size"] < f32_size
    r = subprocess.run([str(blipd), "ask", "--model", str(out), "--image", str(FIXTURES / "images" / "garage.png"),
                        "--json", "What is in the picture?"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    ans = json.loads(r.stdout)
    assert 0 < len(ans["tokens"]) <= m["generation"]["max_new_tokens"]
    assert math.isfinite(ans["timings"]["total_ms"])


@pytest.mark.parametrize("vision,qformer", [("int8", "int8"), ("f16", "f32")])
def test_export_with_vision_and_qformer_precision(regenerated, tmp_path, vision, qformer):
    """export.py --vision-type/--qformer-type: the derived graphs, their
    agreement with f32 in the manifest, and tract runs them (blipd ask)."""
    blipd = ROOT / "target" / "release" / "blipd"
    assert blipd.is_file(), "build blipd first (cargo build --release): the bundle is run with it"
    _, ckpts = regenerated
    out = tmp_path / f"v-{vision}-q-{qformer}"
    m = export.export(str(ckpts / "tiny-a-hf"), out, "f32", None, force=False,
                      vision_type=vision, qformer_type=qformer)
    assert m["vision"]["precision"] == vision
    assert m["qformer"].get("precision", "f32") == qformer
    a = m["vision"]["derived_from"]["agreement"]
    assert a["vision_cosine_min"] > 0.999 and a["qformer_cosine_min"] > 0.999, a
    assert ("derived_from" in m["qformer"]) == (qformer != "f32")
    for name, entry in m["files"].items():
        assert sha(out / name) == entry["sha256"], name
    assert not list(tmp_path.glob(".export-*")), "temporary folders left behind"
    r = subprocess.run([str(blipd), "ask", "--model", str(out), "--image", str(FIXTURES / "images" / "garage.png"),
                        "--json", "What is in the picture?"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["tokens"]
    r = subprocess.run([str(blipd), "check-bundle", str(out)], capture_output=True, text=True)
    assert r.returncode == 0 and f"vision {vision}, qformer {qformer}" in r.stderr, r.stderr
