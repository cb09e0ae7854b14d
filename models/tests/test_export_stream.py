"""The streaming exporter on sharded checkpoints in the hub's layout.

Checkpoints are rebuilt from the tiny presets (models/make_tiny.py) and re-saved
(1) by hand the way the hub files are laid out (several `model-0000k-of-0000n`
shards, an index, `language_model.model.*` / `language_model.lm_head.weight`,
f32), and (2) by transformers 5's own `save_pretrained` in bf16 with small
shards and no `tokenizer.model`. The GGUF tensors are compared with what is
computed here independently from the model transformers loads, and the GGUF
vocabulary built from tokenizer.json with the one built from tokenizer.model.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
sys.path.insert(0, str(ROOT / "models"))

import export  # noqa: E402
import export_llm  # noqa: E402
import make_tiny  # noqa: E402

TOKENIZER_FILES = ["config.json", "generation_config.json", "processor_config.json", "tokenizer.json",
                   "tokenizer_config.json", "tokenizer.model", "qformer_tokenizer"]


def copy_side_files(src: Path, dst: Path, sp_model: bool = True) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if name == "tokenizer.model" and not sp_model:
            continue
        s = src / name
        if s.is_dir():
            shutil.copytree(s, dst / name)
        elif s.is_file():
            shutil.copy(s, dst / name)


def hub_shards(src: Path, dst: Path, n_shards: int, drop=(), config_patch=None, sp_model=True) -> Path:
    """src's tensors re-saved as the hub's files are: f32 shards + model.safetensors.index.json."""
    from safetensors.torch import load_file, save_file

    copy_side_files(src, dst, sp_model)
    if config_patch:
        cfg = json.loads((dst / "config.json").read_text())
        config_patch(cfg)
        (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    state = {k: v for k, v in load_file(src / "model.safetensors").items() if k not in drop}
    # Interleave the parts across shards, so no shard holds one part whole.
    names = sorted(state)
    weight_map = {}
    for k in range(n_shards):
        fname = f"model-{k + 1:05d}-of-{n_shards:05d}.safetensors"
        part = {n: state[n].contiguous() for n in names[k::n_shards]}
        save_file(part, str(dst / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in part})
    total = sum(v.numel() * v.element_size() for v in state.values())
    (dst / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return dst


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    base = tmp_path_factory.mktemp("stream")
    out = {}
    for name in make_tiny.PRESETS:
        c = base / "orig" / f"{name}-hf"
        c.parent.mkdir(exist_ok=True)
        make_tiny.build_checkpoint(name, make_tiny.PRESETS[name], c)
        out[name] = c
    return base, out


def hf_model(ckpt: Path):
    import torch
    from transformers import InstructBlipForConditionalGeneration

    return InstructBlipForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32).eval()


def expected_llm(model) -> dict:
    """GGUF name -> float32 array, computed from the model transformers loaded: q/k rows
    interleaved per head (row h*d + 2i + j of the GGUF is row h*d + j*d/2 + i of HF)."""
    tc = model.config.text_config
    sd = {k: v.detach().float().numpy() for k, v in model.language_model.state_dict().items()}
    hd = tc.hidden_size // tc.num_attention_heads if not getattr(tc, "head_dim", None) else tc.head_dim

    def interleave(w, heads):
        out = np.empty_like(w)
        for h in range(heads):
            for i in range(hd // 2):
                for j in range(2):
                    out[h * hd + 2 * i + j] = w[h * hd + j * (hd // 2) + i]
        return out

    exp = {"token_embd.weight": sd["model.embed_tokens.weight"], "output_norm.weight": sd["model.norm.weight"],
           "output.weight": model.get_output_embeddings().weight.detach().float().numpy()}
    for i in range(tc.num_hidden_layers):
        p = f"model.layers.{i}."
        for dst, name, perm in export_llm.LAYER_TENSORS:
            w = sd[p + name]
            if perm:
                w = interleave(w, tc.num_attention_heads if perm == "head" else tc.num_key_value_heads)
            exp[f"blk.{i}.{dst}.weight"] = w
    return exp


def gguf_tensors(path: Path) -> dict:
    import gguf

    r = gguf.GGUFReader(str(path))
    return {t.name: np.array(t.data) for t in r.tensors}


def gguf_vocab(path: Path) -> dict:
    import gguf

    r = gguf.GGUFReader(str(path))
    f = r.fields

    def val(key):
        fld = f[key]
        if fld.types[0] == gguf.GGUFValueType.ARRAY:
            if fld.types[-1] == gguf.GGUFValueType.STRING:
                return [bytes(fld.parts[i]) for i in fld.data]
            return [fld.parts[i].tolist()[0] for i in fld.data]
        return fld.parts[fld.data[0]].tolist()[0]

    keys = [k for k in f if k.startswith("tokenizer.")]
    return {k: val(k) for k in keys}


def write_llm(ckpt: Path, path: Path, llm_type: str) -> dict:
    from transformers import AutoConfig, AutoTokenizer

    ck = export_llm.Checkpoint(ckpt)
    try:
        return export_llm.write_gguf(ck, AutoConfig.from_pretrained(ckpt), AutoTokenizer.from_pretrained(ckpt),
                                     path, llm_type)
    finally:
        ck.close()


def test_hub_layout_shards_give_the_committed_bundle(ckpts, tmp_path, monkeypatch):
    """f32 hub-layout shards -> byte-for-byte the fixture bundle (ONNX graphs and GGUF),
    with the graphs traced in child processes as large checkpoints are."""
    _, orig = ckpts
    monkeypatch.setattr(export, "CHILD_MIN_BYTES", 0)
    ckpt = hub_shards(orig["tiny-a"], tmp_path / "hub" / "tiny-a-hf", 4)
    assert len(list(ckpt.glob("model-*-of-00004.safetensors"))) == 4
    m = export.export(str(ckpt), tmp_path / "bundle", "f32", None, force=False,
                      label="models/make_tiny.py preset tiny-a")
    assert m["files"] == json.loads((FIXTURES / "tiny-a" / "bundle.json").read_text())["files"]


@pytest.fixture(scope="module")
def bf16_ckpt(ckpts):
    """transformers 5 `save_pretrained` in bf16, small shards, GQA model, no tokenizer.model."""
    import torch

    base, orig = ckpts
    model = hf_model(orig["tiny-b"]).to(torch.bfloat16)
    ckpt = base / "tiny-b-bf16"
    model.save_pretrained(ckpt, max_shard_size="100KB")
    copy_side_files(orig["tiny-b"], ckpt, sp_model=False)
    (ckpt / "config.json").unlink()
    model.config.save_pretrained(ckpt)
    assert len(list(ckpt.glob("model-*.safetensors"))) > 2 and (ckpt / "model.safetensors.index.json").is_file()
    assert not (ckpt / "tokenizer.model").exists()
    return ckpt


@pytest.mark.parametrize("llm_type", ["f32", "f16"])
def test_bf16_checkpoint_saved_by_transformers(bf16_ckpt, tmp_path, llm_type):
    info = write_llm(bf16_ckpt, tmp_path / "llm.gguf", llm_type)
    got = gguf_tensors(tmp_path / "llm.gguf")
    model = hf_model(bf16_ckpt)  # bf16 values, widened to f32 by transformers
    exp = expected_llm(model)
    assert set(got) == set(exp)
    for name, want in exp.items():
        want = want.astype(np.float16 if llm_type == "f16" and want.ndim == 2 else np.float32)
        assert got[name].dtype == want.dtype, name
        assert np.array_equal(got[name].reshape(want.shape), want), name
    assert info["vocab_size"] == model.config.text_config.vocab_size


def test_bf16_bundle_end_to_end_without_building_the_llm(bf16_ckpt, tmp_path, monkeypatch):
    """The whole export of the bf16 json-tokenizer checkpoint, with LLaMA's torch modules
    made unbuildable (the language model must only be streamed), then blipd answers."""
    import subprocess

    from transformers.models.llama import modeling_llama

    def refuse(*a, **k):
        raise AssertionError("the exporter built the language model in torch")

    monkeypatch.setattr(modeling_llama.LlamaModel, "__init__", refuse)
    monkeypatch.setattr(modeling_llama.LlamaForCausalLM, "__init__", refuse)
    out = tmp_path / "bundle"
    m = export.export(str(bf16_ckpt), out, "f16", None, force=False)
    assert m["llm"]["weight_type"] == "f16" and m["exporter"]["onnx_check"]["vision_max_abs"] < 1e-4
    blipd = ROOT / "target" / "release" / "blipd"
    if blipd.is_file():
        r = subprocess.run([str(blipd), "ask", "--model", str(out), "--image", str(FIXTURES / "images" / "garage.png"),
                            "--json", "What is in the picture?"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert 0 < len(json.loads(r.stdout)["tokens"]) <= m["generation"]["max_new_tokens"]


def test_missing_lm_head_of_a_tied_checkpoint_is_the_embedding(ckpts, tmp_path):
    _, orig = ckpts

    def tie(cfg):
        cfg["text_config"]["tie_word_embeddings"] = True

    ckpt = hub_shards(orig["tiny-a"], tmp_path / "tiny-a-tied", 3, drop={"language_model.lm_head.weight"},
                      config_patch=tie)
    write_llm(ckpt, tmp_path / "llm.gguf", "f32")
    got = gguf_tensors(tmp_path / "llm.gguf")
    assert np.array_equal(got["output.weight"], got["token_embd.weight"])
    exp = expected_llm(hf_model(ckpt))  # transformers ties it the same way
    assert np.array_equal(got["output.weight"].reshape(exp["output.weight"].shape), exp["output.weight"])


def spm_tokenize(vocab: dict, text: str) -> list[int]:
    """llama.cpp's SentencePiece tokenizer (llm_tokenizer_spm), on a GGUF's vocabulary:
    merge the adjacent pair whose concatenation is the best-scored token (leftmost on ties),
    then spell what is not a token in <0xXX> byte tokens."""
    import heapq

    tokens = [t.decode("utf-8") for t in vocab["tokenizer.ggml.tokens"]]
    scores = vocab["tokenizer.ggml.scores"]
    ids = {t: i for i, t in enumerate(tokens)}
    if vocab.get("tokenizer.ggml.add_space_prefix", True):
        text = " " + text
    syms = list(text.replace(" ", "\u2581"))
    alive = [True] * len(syms)
    nxt = list(range(1, len(syms) + 1))
    prv = list(range(-1, len(syms) - 1))
    heap = []

    def push(left):
        right = nxt[left] if left >= 0 else -1
        if left < 0 or right >= len(syms):
            return
        t = syms[left] + syms[right]
        if t in ids:
            heapq.heappush(heap, (-scores[ids[t]], left, t))

    for i in range(len(syms) - 1):
        push(i)
    while heap:
        _, left, t = heapq.heappop(heap)
        right = nxt[left]
        if not alive[left] or right >= len(syms) or syms[left] + syms[right] != t:
            continue
        syms[left] = t
        alive[right] = False
        nxt[left] = nxt[right]
        if nxt[left] < len(syms):
            prv[nxt[left]] = left
        push(prv[left])
        push(left)
    out = []
    for i, s in enumerate(syms):
        if not alive[i]:
            continue
        if s in ids:
            out.append(ids[s])
        else:
            out.extend(ids[f"<0x{b:02X}>"] for b in s.encode("utf-8"))
    return out


@pytest.mark.parametrize("preset", list(make_tiny.PRESETS))
def test_vocab_from_tokenizer_json_equals_tokenizer_model(ckpts, tmp_path, preset):
    """Same tokens, ids, scores, types, special ids: the whole GGUF is the same file, and
    llama.cpp's tokenizer on that vocabulary tokenizes the prompts like transformers."""
    from transformers import AutoTokenizer

    _, orig = ckpts
    with_sp = hub_shards(orig[preset], tmp_path / "sp" / f"{preset}-hf", 2)
    json_only = hub_shards(orig[preset], tmp_path / "json" / f"{preset}-hf", 2, sp_model=False)
    write_llm(with_sp, tmp_path / "sp.gguf", "f32")
    write_llm(json_only, tmp_path / "json.gguf", "f32")
    a, b = gguf_vocab(tmp_path / "sp.gguf"), gguf_vocab(tmp_path / "json.gguf")
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == b[k], k
    assert (tmp_path / "sp.gguf").read_bytes() == (tmp_path / "json.gguf").read_bytes()
    assert (tmp_path / "sp.gguf").read_bytes() == (FIXTURES / preset / "llm.gguf").read_bytes()
    tok = AutoTokenizer.from_pretrained(json_only)
    bos = b["tokenizer.ggml.bos_token_id"]
    for prompt in make_tiny.PROMPTS + ["naïve café ✓ 42", "two  spaces and\ta tab"]:
        assert [bos] + spm_tokenize(b, prompt) == tok(prompt)["input_ids"], prompt


def test_not_enough_disk_is_refused_before_any_work(ckpts, tmp_path, monkeypatch):
    _, orig = ckpts
    real = shutil.disk_usage

    def tiny_disk(path):
        return real(path)._replace(free=1000)

    monkeypatch.setattr(export.shutil, "disk_usage", tiny_disk)
    out = tmp_path / "bundle"
    with pytest.raises(export.ExportError, match="not enough free disk"):
        export.export(str(orig["tiny-a"]), out, "f16", None, force=False)
    assert not out.exists() and not list(tmp_path.glob(".export-*"))


def test_pytorch_pickles_are_refused_clearly(ckpts, tmp_path):
    _, orig = ckpts
    ckpt = tmp_path / "bin-ckpt"
    copy_side_files(orig["tiny-a"], ckpt)
    (ckpt / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(export.ExportError, match="pytorch_model.bin"):
        export.export(str(ckpt), tmp_path / "bundle", "f32", None, force=False)


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_make_random_hub_layout_checkpoint(tmp_path, dtype):
    """models/make_random.py --hub-layout, on a tiny preset: shards transformers loads whole
    (no missing or unexpected tensor), and that the streaming exporter reads."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, InstructBlipForConditionalGeneration

    import make_random

    ckpt = tmp_path / "tiny-hub"
    make_random.write_hub_checkpoint("tiny-hub", make_tiny.PRESETS["tiny-b"], ckpt, dtype, shard_gb=0.0002)
    shards = sorted(ckpt.glob("model-*.safetensors"))
    assert len(shards) >= 3 and all(s.name.endswith(f"-of-{len(shards):05d}.safetensors") for s in shards)
    for f in ("tokenizer.model", "tokenizer.json", "qformer_tokenizer/tokenizer_config.json",
              "processor_config.json", "generation_config.json"):
        assert (ckpt / f).is_file(), f
    model, info = InstructBlipForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32,
                                                                       output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    ck = export_llm.Checkpoint(ckpt)
    w = ck.read("language_model.model.layers.1.mlp.up_proj.weight")
    assert np.array_equal(w, model.language_model.model.layers[1].mlp.up_proj.weight.detach().numpy())
    export_llm.write_gguf(ck, AutoConfig.from_pretrained(ckpt), AutoTokenizer.from_pretrained(ckpt),
                          tmp_path / "llm.gguf", "f16")
    ck.close()
    assert len(gguf_tensors(tmp_path / "llm.gguf")) == 2 + 9 * model.config.text_config.num_hidden_layers + 1
