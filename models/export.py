#!/usr/bin/env python3
"""Export a Hugging Face InstructBLIP (LLaMA/Vicuna) checkpoint into a blipd bundle.

    python models/export.py CHECKPOINT_DIR_OR_HUB_ID OUT_DIR [--llm-type f32|f16|q8_0|q4_k_m]

The bundle is a directory that blipd loads as a whole:

    vision.onnx (+ vision.onnx.data)   pixel_values [1,3,H,W] -> image_embeds [1,P,Dv]
    qformer.onnx (+ .data)             image_embeds, input_ids [1,L], attention_mask [1,L]
                                       -> query_embeds [1,Q,Dllm] (query tokens, Q-Former,
                                       language_projection in one graph)
    qformer-tokenizer.json             the Q-Former's BERT WordPiece tokenizer
    llm.gguf                           the language model in llama.cpp's LLaMA layout
    llm-tokenizer.json                 the LLM's Hugging Face tokenizer (prompt + answer text)
    bundle.json                        the manifest (see README.md, "Bundle format")

Only what the reference does is exported: the graphs are traced from
transformers' own modules (eager attention, opset 18: what tract runs), and
each graph is checked against PyTorch with onnxruntime before the bundle is
written. Nothing is written to OUT_DIR unless every step succeeded.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXPORTER_VERSION = "0.1.0"
FORMAT_VERSION = 1
ONNX_OPSET = 18
# Tolerance of the onnxruntime-vs-PyTorch check done on every export.
EXPORT_ATOL = 1e-3

LLM_TYPES = ["f32", "f16", "q8_0", "q4_0", "q4_k_m", "q5_k_m", "q6_k"]


class ExportError(Exception):
    """A checkpoint blipd cannot handle, or a step that failed; printed without a traceback."""


def log(msg: str) -> None:
    print(f"[export {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------
# Loading and checking the checkpoint
# --------------------------------------------------------------------------------------


def resolve_checkpoint(src: str) -> Path:
    p = Path(src)
    if p.is_dir():
        return p
    if p.exists():
        raise ExportError(f"{src} is a file; pass the checkpoint directory or a hub id")
    if src.count("/") != 1:
        raise ExportError(f"{src} is neither a directory nor a hub id like Salesforce/instructblip-vicuna-7b")
    log(f"downloading {src} from the Hugging Face hub (once; cached by huggingface_hub)")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(src, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))
    except Exception as e:  # network, auth, missing repo: say what failed
        raise ExportError(f"could not download {src}: {e}") from e


def check_config(config) -> None:
    if config.model_type != "instructblip":
        raise ExportError(
            f"checkpoint model_type is {config.model_type!r}; blipd exports InstructBLIP "
            "(InstructBlipForConditionalGeneration) checkpoints only"
        )
    tc = config.text_config
    if tc.model_type != "llama":
        raise ExportError(
            f"the language model of this checkpoint is {tc.model_type!r}; blipd runs LLaMA/Vicuna "
            "language models in llama.cpp (e.g. Salesforce/instructblip-vicuna-7b or -13b). "
            "Flan-T5 (encoder-decoder) InstructBLIP checkpoints are not supported"
        )
    if getattr(tc, "attention_bias", False) or getattr(tc, "mlp_bias", False):
        raise ExportError("LLaMA with attention/MLP biases is not supported by this exporter")
    scaling = rope_scaling(tc)
    if scaling:
        raise ExportError(f"RoPE scaling {scaling} is not supported by this exporter")
    if config.image_token_index is None:
        raise ExportError("config.image_token_index is not set; the checkpoint is too old for transformers 5")


def rope_theta(tc) -> float:
    params = getattr(tc, "rope_parameters", None) or {}
    if isinstance(params, dict) and "rope_theta" in params:
        return float(params["rope_theta"])
    return float(getattr(tc, "rope_theta", 10000.0))


def rope_scaling(tc):
    params = getattr(tc, "rope_parameters", None) or {}
    kind = params.get("rope_type", "default") if isinstance(params, dict) else "default"
    legacy = getattr(tc, "rope_scaling", None)
    if kind not in (None, "default"):
        return params
    if legacy and legacy.get("rope_type", legacy.get("type")) not in (None, "default"):
        return legacy
    return None


def load_checkpoint(ckpt: Path):
    import torch
    from transformers import (
        AutoConfig,
        AutoTokenizer,
        BlipImageProcessorPil,
        GenerationConfig,
        InstructBlipForConditionalGeneration,
    )

    try:
        config = AutoConfig.from_pretrained(ckpt)
    except Exception as e:
        raise ExportError(f"{ckpt} has no readable config.json: {e}") from e
    check_config(config)
    log("loading the checkpoint in float32 (eager attention)")
    model = InstructBlipForConditionalGeneration.from_pretrained(
        ckpt, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    # The reference preprocessing is the PIL backend of BlipImageProcessor.
    image_processor = BlipImageProcessorPil.from_pretrained(ckpt)
    tokenizer = AutoTokenizer.from_pretrained(ckpt)
    qsub = ckpt / "qformer_tokenizer"
    if not qsub.is_dir():
        raise ExportError(f"{ckpt} has no qformer_tokenizer/ folder (InstructBlipProcessor.save_pretrained writes it)")
    qformer_tokenizer = AutoTokenizer.from_pretrained(qsub)
    try:
        generation = GenerationConfig.from_pretrained(ckpt)
    except OSError:
        generation = model.generation_config
    return model, image_processor, tokenizer, qformer_tokenizer, generation


# --------------------------------------------------------------------------------------
# ONNX graphs
# --------------------------------------------------------------------------------------


def make_wrappers():
    import torch
    from torch import nn

    class Vision(nn.Module):
        """pixel_values -> post-layernorm last_hidden_state (what the Q-Former consumes)."""

        def __init__(self, model):
            super().__init__()
            self.vision_model = model.vision_model

        def forward(self, pixel_values):
            return self.vision_model(pixel_values=pixel_values, return_dict=True).last_hidden_state

    class QFormer(nn.Module):
        """The instruction-aware part of `get_image_features` + `language_projection`."""

        def __init__(self, model):
            super().__init__()
            self.query_tokens = model.query_tokens
            self.qformer = model.qformer
            self.language_projection = model.language_projection

        def forward(self, image_embeds, input_ids, attention_mask):
            query_tokens = self.query_tokens.expand(image_embeds.shape[0], -1, -1)
            n_query = query_tokens.shape[1]
            query_mask = torch.ones(query_tokens.shape[:-1], dtype=attention_mask.dtype)
            mask = torch.cat([query_mask, attention_mask], dim=1)
            image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long)
            out = self.qformer(
                input_ids=input_ids,
                attention_mask=mask,
                query_embeds=query_tokens,
                encoder_hidden_states=image_embeds,
                encoder_attention_mask=image_mask,
                return_dict=True,
            )
            return self.language_projection(out.last_hidden_state[:, :n_query, :])

    return Vision, QFormer


def onnx_export(module, args, path: Path, input_names, output_names, dynamic_shapes=None) -> None:
    import torch

    with torch.no_grad():
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=dynamic_shapes,
            dynamo=True,
            opset_version=ONNX_OPSET,
            optimize=True,
            external_data=True,
            verbose=False,
        )
    strip_local_paths(path)


def strip_local_paths(path: Path) -> None:
    """Drops the exporter's per-node Python stack traces: they hold absolute
    paths of this checkout and venv, which made bundles differ by location."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    graphs = [model.graph] + [f for f in model.functions]
    for g in graphs:
        for node in g.node:
            keep = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
            del node.metadata_props[:]
            node.metadata_props.extend(keep)
    onnx.save(model, str(path))


def check_onnx(path: Path, feeds: dict, expected) -> float:
    """Runs the exported graph in onnxruntime and returns the max abs diff to PyTorch."""
    import numpy as np
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, feeds)[0]
    diff = float(np.max(np.abs(got - expected)))
    if not np.isfinite(diff) or diff > EXPORT_ATOL:
        raise ExportError(f"{path.name}: onnxruntime output differs from PyTorch by {diff:g} (> {EXPORT_ATOL})")
    return diff


def export_graphs(model, image_size, qformer_tokenizer, out: Path) -> dict:
    import torch

    Vision, QFormer = make_wrappers()
    h, w = image_size
    gen = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(1, 3, h, w, generator=gen)

    log("exporting vision.onnx")
    vision = Vision(model).eval()
    with torch.no_grad():
        image_embeds = vision(pixel_values)
    onnx_export(vision, (pixel_values,), out / "vision.onnx", ["pixel_values"], ["image_embeds"])
    vdiff = check_onnx(out / "vision.onnx", {"pixel_values": pixel_values.numpy()}, image_embeds.numpy())
    log(f"vision.onnx matches PyTorch (max abs diff {vdiff:.2e})")

    log("exporting qformer.onnx")
    qformer = QFormer(model).eval()
    enc = qformer_tokenizer(["an example instruction for tracing the graph"], return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    max_text = int(model.config.qformer_config.max_position_embeddings)
    L = torch.export.Dim("L", min=2, max=max_text)
    with torch.no_grad():
        query_embeds = qformer(image_embeds, ids, mask)
    onnx_export(
        qformer,
        (image_embeds, ids, mask),
        out / "qformer.onnx",
        ["image_embeds", "input_ids", "attention_mask"],
        ["query_embeds"],
        dynamic_shapes={"image_embeds": None, "input_ids": {1: L}, "attention_mask": {1: L}},
    )
    # Check at a different length than the trace, so a length baked into the graph shows.
    enc2 = qformer_tokenizer(["what is shown here?"], return_tensors="pt")
    with torch.no_grad():
        expected2 = qformer(image_embeds, enc2["input_ids"], enc2["attention_mask"]).numpy()
    qdiff = check_onnx(
        out / "qformer.onnx",
        {
            "image_embeds": image_embeds.numpy(),
            "input_ids": enc2["input_ids"].numpy(),
            "attention_mask": enc2["attention_mask"].numpy(),
        },
        expected2,
    )
    log(f"qformer.onnx matches PyTorch (max abs diff {qdiff:.2e})")
    return {
        "vision_positions": int(image_embeds.shape[1]),
        "vision_hidden": int(image_embeds.shape[2]),
        "query_shape": list(query_embeds.shape),
        "max_text_tokens": max_text,
        "onnx_check": {"vision_max_abs": vdiff, "qformer_max_abs": qdiff},
    }


# --------------------------------------------------------------------------------------
# LLaMA -> GGUF
# --------------------------------------------------------------------------------------


def permute_qk(w, n_head: int):
    """The row permutation llama.cpp's converter applies to q/k (HF rotate-half -> interleaved RoPE)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama_vocab(ckpt: Path, tokenizer, n_rows: int):
    """SentencePiece vocab (pieces, scores, types) padded to the embedding matrix's rows."""
    import gguf
    import sentencepiece as spm

    sp_path = ckpt / "tokenizer.model"
    if not sp_path.is_file():
        raise ExportError(
            f"{ckpt} has no tokenizer.model: blipd embeds the LLaMA SentencePiece vocabulary in the GGUF "
            "and needs the original tokenizer.model next to config.json"
        )
    sp = spm.SentencePieceProcessor(model_file=str(sp_path))
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        piece = sp.id_to_piece(i)
        t = gguf.TokenType.NORMAL
        if sp.is_unknown(i):
            t = gguf.TokenType.UNKNOWN
        elif sp.is_control(i):
            t = gguf.TokenType.CONTROL
        elif sp.is_unused(i):
            t = gguf.TokenType.UNUSED
        elif sp.is_byte(i):
            t = gguf.TokenType.BYTE
        tokens.append(piece.encode("utf-8"))
        scores.append(sp.get_score(i))
        types.append(t)
    # Tokens the HF tokenizer added on top (e.g. <image>, a pad token).
    added = {int(i): tok for i, tok in tokenizer.added_tokens_decoder.items() if int(i) >= len(tokens)}
    if any(i >= n_rows for i in added):
        raise ExportError(f"tokenizer has tokens beyond the embedding matrix ({n_rows} rows)")
    for i in range(len(tokens), n_rows):
        if i in added:
            tok = added[i]
            tokens.append(tok.content.encode("utf-8"))
            types.append(gguf.TokenType.CONTROL if tok.special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(f"[PAD{i}]".encode("utf-8"))
            types.append(gguf.TokenType.UNUSED)
        scores.append(-1000.0)
    if len(tokens) > n_rows:
        raise ExportError(f"SentencePiece vocab has {len(tokens)} pieces but the embedding has {n_rows} rows")
    return tokens, scores, types, sp


def write_gguf(model, tokenizer, ckpt: Path, path: Path, llm_type: str, n_layers: int | None = None) -> dict:
    """`n_layers` above the checkpoint's layer count repeats its last layer
    (same arrays, written again): for full-depth random-weight speed models
    (models/make_random.py) without holding every layer in memory."""
    import gguf
    import numpy as np

    tc = model.config.text_config
    n_blocks = max(int(n_layers or 0), int(tc.num_hidden_layers))
    lm = model.language_model
    state = {k: v.detach().float().numpy() for k, v in lm.state_dict().items()}
    state["lm_head.weight"] = model.get_output_embeddings().weight.detach().float().numpy()

    def get(name):
        for prefix in ("", "model."):
            if prefix + name in state:
                return state[prefix + name]
        raise ExportError(f"language model tensor {name} not found in the checkpoint")

    n_head = tc.num_attention_heads
    n_kv = tc.num_key_value_heads or n_head
    head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // n_head
    embd = get("embed_tokens.weight")
    n_rows = embd.shape[0]
    tokens, scores, types, sp = llama_vocab(ckpt, tokenizer, n_rows)
    bos = tc.bos_token_id if tc.bos_token_id is not None else sp.bos_id()
    eos = tc.eos_token_id if tc.eos_token_id is not None else sp.eos_id()
    eos_ids = eos if isinstance(eos, list) else [eos]

    float_type = np.float16 if llm_type == "f16" else np.float32
    ftype = gguf.LlamaFileType.MOSTLY_F16 if llm_type == "f16" else gguf.LlamaFileType.ALL_F32

    log(f"writing llm.gguf ({llm_type if llm_type in ('f32', 'f16') else 'f32, then quantized'})")
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(ckpt.name)
    w.add_context_length(int(tc.max_position_embeddings))
    w.add_embedding_length(int(tc.hidden_size))
    w.add_block_count(n_blocks)
    w.add_feed_forward_length(int(tc.intermediate_size))
    w.add_rope_dimension_count(int(head_dim))
    w.add_head_count(int(n_head))
    w.add_head_count_kv(int(n_kv))
    if head_dim * n_head != tc.hidden_size:
        w.add_key_length(int(head_dim))
        w.add_value_length(int(head_dim))
    w.add_layer_norm_rms_eps(float(tc.rms_norm_eps))
    w.add_rope_freq_base(rope_theta(tc))
    w.add_vocab_size(int(n_rows))
    w.add_file_type(int(ftype))
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(int(bos))
    w.add_eos_token_id(int(eos_ids[0]))
    if sp.unk_id() >= 0:
        w.add_unk_token_id(int(sp.unk_id()))
    if tc.pad_token_id is not None and 0 <= tc.pad_token_id < n_rows:
        w.add_pad_token_id(int(tc.pad_token_id))
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    # SentencePiece LLaMA tokenizers prepend a space ("▁") to the text.
    w.add_add_space_prefix(True)

    converted = {}

    def add(name, arr, quantizable=True, key=None):
        # `key`: the source tensor; a repeated layer reuses its converted array.
        if key is not None and key in converted:
            w.add_tensor(name, converted[key])
            return
        arr = np.ascontiguousarray(arr)
        if arr.ndim == 1 or not quantizable:
            arr = arr.astype(np.float32)
        else:
            arr = arr.astype(float_type)
        if key is not None:
            converted[key] = arr
        w.add_tensor(name, arr)

    add("token_embd.weight", embd)
    for i in range(n_blocks):
        src = min(i, tc.num_hidden_layers - 1)
        p = f"layers.{src}."
        for dst, name, fn in [
            ("attn_norm", "input_layernorm.weight", None),
            ("attn_q", "self_attn.q_proj.weight", n_head),
            ("attn_k", "self_attn.k_proj.weight", n_kv),
            ("attn_v", "self_attn.v_proj.weight", None),
            ("attn_output", "self_attn.o_proj.weight", None),
            ("ffn_norm", "post_attention_layernorm.weight", None),
            ("ffn_gate", "mlp.gate_proj.weight", None),
            ("ffn_up", "mlp.up_proj.weight", None),
            ("ffn_down", "mlp.down_proj.weight", None),
        ]:
            t = get(p + name) if f"{src}.{name}" not in converted else None
            if t is not None and fn is not None:
                t = permute_qk(t, fn)
            add(f"blk.{i}.{dst}.weight", t, key=f"{src}.{name}")
    add("output_norm.weight", get("norm.weight"))
    add("output.weight", state["lm_head.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=sys.stderr.isatty())
    w.close()
    return {
        "hidden_size": int(tc.hidden_size),
        "vocab_size": int(n_rows),
        "context_length": int(tc.max_position_embeddings),
        "bos_token_id": int(bos),
        "eos_token_ids": [int(e) for e in eos_ids],
    }


def find_blipd(explicit: str | None) -> str:
    candidates = [explicit, os.environ.get("BLIPD")]
    repo = Path(__file__).resolve().parent.parent
    candidates += [shutil.which("blipd"), str(repo / "target/release/blipd"), str(repo / "target/debug/blipd")]
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return c
    raise ExportError(
        "--llm-type other than f32/f16 quantizes with llama.cpp through `blipd quantize`, and no blipd "
        "binary was found: build it (cargo build --release) or pass --blipd PATH"
    )


# --------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------


def generation_defaults(gc) -> dict:
    """Generation defaults as blipd applies them (new tokens, not total length).

    InstructBLIP's `generate` passes both the soft-prompt embeddings and the ids to the
    LLM; transformers then counts `max_length` from the end of that input, so a
    checkpoint that only sets `max_length` gets that many new tokens.
    """
    max_new = gc.max_new_tokens if gc.max_new_tokens is not None else gc.max_length
    return {
        "max_new_tokens": int(max_new if max_new is not None else 20),
        "do_sample": bool(gc.do_sample),
        "temperature": float(gc.temperature if gc.temperature is not None else 1.0),
        "top_k": int(gc.top_k if gc.top_k is not None else 50),
        "top_p": float(gc.top_p if gc.top_p is not None else 1.0),
        "repetition_penalty": float(gc.repetition_penalty if gc.repetition_penalty is not None else 1.0),
    }


def versions() -> dict:
    import gguf  # noqa: F401
    import onnx
    import torch
    import transformers
    from importlib.metadata import version

    return {
        "name": "blipd models/export.py",
        "version": EXPORTER_VERSION,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "gguf": version("gguf"),
        "onnx_opset": ONNX_OPSET,
    }


def export(src: str, out_dir: Path, llm_type: str, blipd: str | None, force: bool, label: str | None = None,
           n_layers: int | None = None, intermediate: str = "f32") -> dict:
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise ExportError(f"{out_dir} exists and is not empty (pass --force to replace it)")
    if llm_type not in LLM_TYPES:
        raise ExportError(f"--llm-type {llm_type} is not one of {', '.join(LLM_TYPES)}")
    quantizer = find_blipd(blipd) if llm_type not in ("f32", "f16") else None
    ckpt = resolve_checkpoint(src)
    model, image_processor, tokenizer, qformer_tokenizer, gc = load_checkpoint(ckpt)
    cfg = model.config

    size = image_processor.size
    if not (getattr(size, "height", None) or (isinstance(size, dict) and size.get("height"))):
        raise ExportError(f"image processor size {size} is not a fixed height x width; not supported")
    h = size["height"] if isinstance(size, dict) else size.height
    wd = size["width"] if isinstance(size, dict) else size.width
    if not image_processor.do_resize or not image_processor.do_rescale or not image_processor.do_normalize:
        raise ExportError("image processor with resize/rescale/normalize turned off is not supported")
    if getattr(image_processor, "do_center_crop", False):
        raise ExportError("image processor with center crop is not supported")
    resample = {3: "bicubic", 2: "bilinear"}.get(int(image_processor.resample))
    if resample is None:
        raise ExportError(f"resample filter {image_processor.resample} is not supported")

    # Build in a temporary folder beside the output, move into place at the end.
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir.parent))
    try:
        graphs = export_graphs(model, (h, wd), qformer_tokenizer, tmp)
        log("saving qformer-tokenizer.json")
        qformer_tokenizer.backend_tokenizer.save(str(tmp / "qformer-tokenizer.json"))
        # The LLM's own HF tokenizer: blipd tokenizes the prompt and decodes the answer
        # with it, so both are byte-for-byte what transformers does (the GGUF keeps its
        # embedded vocabulary for llama.cpp and other tools).
        log("saving llm-tokenizer.json")
        tokenizer.backend_tokenizer.save(str(tmp / "llm-tokenizer.json"))

        gguf_name = "llm.gguf"
        if quantizer:
            unquantized = tmp / f"llm-{intermediate}.gguf"
            llm = write_gguf(model, tokenizer, ckpt, unquantized, intermediate, n_layers)
            log(f"quantizing to {llm_type} with {quantizer}")
            r = subprocess.run([quantizer, "quantize", str(unquantized), str(tmp / gguf_name), llm_type])
            if r.returncode != 0:
                raise ExportError(f"blipd quantize failed with exit code {r.returncode}")
            unquantized.unlink()
        else:
            llm = write_gguf(model, tokenizer, ckpt, tmp / gguf_name, llm_type, n_layers)

        if graphs["query_shape"][2] != llm["hidden_size"]:
            raise ExportError("language_projection width differs from the LLM hidden size")

        files = {}
        for f in sorted(tmp.iterdir()):
            log(f"hashing {f.name}")
            files[f.name] = {"sha256": sha256_file(f), "size": f.stat().st_size}
        manifest = {
            "format": "blipd-bundle",
            "format_version": FORMAT_VERSION,
            "source": {
                "checkpoint": label or src,
                "model_type": cfg.model_type,
                "language_model": cfg.text_config.model_type,
            },
            "exporter": {**versions(), "onnx_check": graphs["onnx_check"]},
            "image": {
                "height": int(h),
                "width": int(wd),
                "resample": resample,
                "rescale_factor": float(image_processor.rescale_factor),
                "mean": [float(x) for x in image_processor.image_mean],
                "std": [float(x) for x in image_processor.image_std],
            },
            "vision": {
                "file": "vision.onnx",
                "hidden_size": graphs["vision_hidden"],
                "num_positions": graphs["vision_positions"],
                "patch_size": int(cfg.vision_config.patch_size),
                "num_layers": int(cfg.vision_config.num_hidden_layers),
            },
            "qformer": {
                "file": "qformer.onnx",
                "tokenizer": "qformer-tokenizer.json",
                "num_query_tokens": int(cfg.num_query_tokens),
                "hidden_size": int(cfg.qformer_config.hidden_size),
                "output_size": int(graphs["query_shape"][2]),
                "max_text_tokens": graphs["max_text_tokens"],
            },
            "llm": {
                "file": gguf_name,
                "tokenizer": "llm-tokenizer.json",
                "weight_type": llm_type,
                **llm,
                "add_bos": True,
                "clean_up_tokenization_spaces": bool(getattr(tokenizer, "clean_up_tokenization_spaces", False)),
            },
            "generation": generation_defaults(gc),
            "files": files,
        }
        (tmp / "bundle.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    total = sum(f["size"] for f in files.values())
    log(f"bundle written to {out_dir} ({total / 1e6:.1f} MB)")
    return manifest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", help="checkpoint directory or Hugging Face hub id")
    ap.add_argument("out_dir", type=Path, help="bundle directory to write")
    ap.add_argument("--llm-type", default="f16", choices=LLM_TYPES, help="GGUF weight type of the LLM (default f16)")
    ap.add_argument("--blipd", help="blipd binary used to quantize (default: PATH or target/release/blipd)")
    ap.add_argument("--force", action="store_true", help="replace OUT_DIR if it exists")
    args = ap.parse_args(argv)
    try:
        export(args.checkpoint, args.out_dir, args.llm_type, args.blipd, args.force)
    except ExportError as e:
        print(f"export.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
