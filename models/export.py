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

Memory stays small whatever the checkpoint's size: the vision encoder and then
the Q-Former side are built alone from the safetensors shards (the language
model is never built in torch), and the language model is streamed tensor by
tensor from the shards into the GGUF (models/export_llm.py). Quantized types
are made by `blipd quantize` from an f16 intermediate. The free disk is checked
before any heavy work; the peak memory and total time are printed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from export_llm import (  # noqa: E402
    Checkpoint,
    ExportError,
    Progress,
    check_disk,
    human,
    log,
    peak_rss,
    sha256_file,
    write_gguf,
)
from vision_precision import QFORMER_TYPES, VISION_TYPES, derive  # noqa: E402

EXPORTER_VERSION = "0.1.0"
FORMAT_VERSION = 1
ONNX_OPSET = 18
# Tolerance of the onnxruntime-vs-PyTorch check done on every export.
EXPORT_ATOL = 1e-3

LLM_TYPES = ["f32", "f16", "q8_0", "q4_0", "q4_k_m", "q5_k_m", "q6_k"]


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
    """Config, preprocessing, tokenizers and generation defaults: everything but the weights."""
    from transformers import AutoConfig, AutoTokenizer, BlipImageProcessorPil, GenerationConfig

    try:
        config = AutoConfig.from_pretrained(ckpt)
    except Exception as e:
        raise ExportError(f"{ckpt} has no readable config.json: {e}") from e
    check_config(config)
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
        generation = GenerationConfig.from_model_config(config)
    return config, image_processor, tokenizer, qformer_tokenizer, generation


def vision_prefix(ck: Checkpoint) -> str:
    for p in ("", "model."):
        if p + "query_tokens" in ck:
            return p
    raise ExportError(f"{ck.dir}: no query_tokens tensor; not an InstructBLIP checkpoint")


def load_part(ck: Checkpoint, config, part: str):
    """One part of InstructBlipForConditionalGeneration, in float32 with eager attention,
    built alone (transformers' own module classes) and filled from the checkpoint: the
    vision encoder ("vision"), or the query tokens, Q-Former and language_projection
    ("qformer"). The language model is never built."""
    import torch
    from torch import nn
    from transformers.initialization import no_init_weights
    from transformers.models.instructblip.modeling_instructblip import (
        InstructBlipQFormerModel,
        InstructBlipVisionModel,
    )

    p = vision_prefix(ck)
    m = nn.Module()
    with no_init_weights():
        if part == "vision":
            m.vision_model = InstructBlipVisionModel._from_config(
                config.vision_config, dtype=torch.float32, attn_implementation="eager")
        else:
            m.query_tokens = nn.Parameter(torch.zeros(1, config.num_query_tokens, config.qformer_config.hidden_size))
            m.qformer = InstructBlipQFormerModel._from_config(
                config.qformer_config, dtype=torch.float32, attn_implementation="eager")
            m.language_projection = nn.Linear(config.qformer_config.hidden_size, config.text_config.hidden_size)
    wanted = m.state_dict().keys()
    missing = [k for k in wanted if p + k not in ck]
    if missing:
        raise ExportError(f"{ck.dir}: {part} tensors missing from the checkpoint: {', '.join(p + k for k in missing[:5])}"
                          + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    total = sum(ck.numel(p + k) * 4 for k in wanted)
    bar = Progress(f"loading {part} weights", total)
    state = {}
    for k in wanted:
        state[k] = torch.from_numpy(ck.read(p + k))
        bar.update(state[k].numel() * 4)
    bar.close()
    # assign: the module takes these tensors as its parameters (its own empty ones were
    # never touched, so never resident): one copy of the weights, not two.
    try:
        m.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise ExportError(f"{ck.dir}: the {part} tensors do not fit config.json: {e}") from e
    del state
    m.config = config
    return m.eval()


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


# Parts whose weights are larger than this are traced in a child process: torch.onnx
# keeps references to the traced module's weights after the export (found with gc: its
# IR tensors stay alive), so only the end of a process frees them, and onnxruntime's
# copy would come on top. Small parts (the tiny test models) are traced in-process.
CHILD_MIN_BYTES = 256 << 20


def trace_part(ck: Checkpoint, config, part: str, feeds: dict, out: Path) -> dict:
    """Loads one part (see load_part), runs it on `feeds` (numpy arrays) and writes its
    ONNX graph; returns the PyTorch outputs the onnxruntime check compares with."""
    import torch

    Vision, QFormer = make_wrappers()
    t = {k: torch.from_numpy(v) for k, v in feeds.items()}
    if part == "vision":
        module = Vision(load_part(ck, config, "vision")).eval()
        log("exporting vision.onnx")
        with torch.no_grad():
            image_embeds = module(t["pixel_values"])
        onnx_export(module, (t["pixel_values"],), out / "vision.onnx", ["pixel_values"], ["image_embeds"])
        return {"image_embeds": image_embeds.numpy()}
    module = QFormer(load_part(ck, config, "qformer")).eval()
    log("exporting qformer.onnx")
    args = (t["image_embeds"], t["input_ids"], t["attention_mask"])
    L = torch.export.Dim("L", min=2, max=int(config.qformer_config.max_position_embeddings))
    with torch.no_grad():
        query_embeds = module(*args)
    onnx_export(
        module,
        args,
        out / "qformer.onnx",
        ["image_embeds", "input_ids", "attention_mask"],
        ["query_embeds"],
        dynamic_shapes={"image_embeds": None, "input_ids": {1: L}, "attention_mask": {1: L}},
    )
    # Checked at a different length than the trace, so a length baked into the graph shows.
    with torch.no_grad():
        expected2 = module(t["image_embeds"], t["input_ids2"], t["attention_mask2"]).numpy()
    return {"query_shape": list(query_embeds.shape), "expected2": expected2}


def _trace_in_child(ckpt: str, part: str, feeds: dict, out: str, threads: int, deterministic: bool) -> dict:
    import torch
    from transformers import AutoConfig

    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)
    ck = Checkpoint(Path(ckpt))
    try:
        return trace_part(ck, AutoConfig.from_pretrained(ckpt), part, feeds, Path(out))
    finally:
        ck.close()


def run_part(ck: Checkpoint, config, part: str, feeds: dict, out: Path) -> dict:
    import importlib
    import multiprocessing

    import torch

    # Always through the module named "export" (also when this file runs as __main__):
    # the graphs record the wrapper classes' module, which must not depend on how the
    # exporter was started (__main__, __mp_main__ in a child).
    mod = importlib.import_module("export")
    p = vision_prefix(ck)
    if part == "vision":
        names = [k for k in ck.names() if k.startswith(p + "vision_model.")]
    else:
        names = [k for k in ck.names() if k.startswith((p + "qformer.", p + "query_tokens", p + "language_projection."))]
    if 4 * sum(ck.numel(k) for k in names) < CHILD_MIN_BYTES:
        return mod.trace_part(ck, config, part, feeds, out)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(mod._trace_in_child, (str(ck.dir), part, feeds, str(out), torch.get_num_threads(),
                                                torch.are_deterministic_algorithms_enabled()))


def export_graphs(ck: Checkpoint, config, image_size, qformer_tokenizer, out: Path) -> dict:
    """Each part is loaded, traced and freed, then checked in onnxruntime: at most one
    copy of one part's weights is in memory at a time."""
    import torch

    h, w = image_size
    gen = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(1, 3, h, w, generator=gen).numpy()
    image_embeds = run_part(ck, config, "vision", {"pixel_values": pixel_values}, out)["image_embeds"]
    log("checking vision.onnx in onnxruntime")
    vdiff = check_onnx(out / "vision.onnx", {"pixel_values": pixel_values}, image_embeds)
    log(f"vision.onnx matches PyTorch (max abs diff {vdiff:.2e})")

    enc = qformer_tokenizer(["an example instruction for tracing the graph"], return_tensors="np")
    enc2 = qformer_tokenizer(["what is shown here?"], return_tensors="np")
    feeds = {"image_embeds": image_embeds, "input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
             "input_ids2": enc2["input_ids"], "attention_mask2": enc2["attention_mask"]}
    q = run_part(ck, config, "qformer", feeds, out)
    log("checking qformer.onnx in onnxruntime")
    qdiff = check_onnx(
        out / "qformer.onnx",
        {"image_embeds": image_embeds, "input_ids": enc2["input_ids"], "attention_mask": enc2["attention_mask"]},
        q["expected2"],
    )
    log(f"qformer.onnx matches PyTorch (max abs diff {qdiff:.2e})")
    return {
        "vision_positions": int(image_embeds.shape[1]),
        "vision_hidden": int(image_embeds.shape[2]),
        "query_shape": q["query_shape"],
        "max_text_tokens": int(config.qformer_config.max_position_embeddings),
        "onnx_check": {"vision_max_abs": vdiff, "qformer_max_abs": qdiff},
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
           n_layers: int | None = None, intermediate: str = "f16", vision_type: str = "f32",
           qformer_type: str = "f32") -> dict:
    t_start = time.monotonic()
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise ExportError(f"{out_dir} exists and is not empty (pass --force to replace it)")
    if llm_type not in LLM_TYPES:
        raise ExportError(f"--llm-type {llm_type} is not one of {', '.join(LLM_TYPES)}")
    quantizer = find_blipd(blipd) if llm_type not in ("f32", "f16") else None
    ckpt = resolve_checkpoint(src)
    cfg, image_processor, tokenizer, qformer_tokenizer, gc = load_checkpoint(ckpt)
    ck = Checkpoint(ckpt)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    check_disk(ck, out_dir.parent, llm_type, quantizer is not None)

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
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir.parent))
    try:
        graphs = export_graphs(ck, cfg, (h, wd), qformer_tokenizer, tmp)
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
            llm = write_gguf(ck, cfg, tokenizer, unquantized, intermediate, n_layers)
            log(f"quantizing {unquantized.name} ({human(unquantized.stat().st_size)}) to {llm_type} with {quantizer}")
            t0 = time.monotonic()
            r = subprocess.run([quantizer, "quantize", str(unquantized), str(tmp / gguf_name), llm_type])
            if r.returncode != 0:
                raise ExportError(f"blipd quantize failed with exit code {r.returncode}")
            unquantized.unlink()
            log(f"quantized to {human((tmp / gguf_name).stat().st_size)} in {time.monotonic() - t0:.0f} s")
        else:
            llm = write_gguf(ck, cfg, tokenizer, tmp / gguf_name, llm_type, n_layers)
        ck.close()

        if graphs["query_shape"][2] != llm["hidden_size"]:
            raise ExportError("language_projection width differs from the LLM hidden size")

        files = {}
        todo = sorted(tmp.iterdir())
        bar = Progress("hashing", sum(f.stat().st_size for f in todo))
        for f in todo:
            files[f.name] = {"sha256": sha256_file(f, bar), "size": f.stat().st_size}
        bar.close()
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
        if vision_type != "f32" or qformer_type != "f32":
            log(f"deriving vision {vision_type}, Q-Former {qformer_type} (and comparing them with f32)")
            derived = tmp.with_name(tmp.name + "-derived")
            report = derive(tmp, derived, vision_type, qformer_type)
            log(f"agreement with f32: image features cosine >= {report['vision_cosine_min']:.6f}, "
                f"Q-Former output cosine >= {report['qformer_cosine_min']:.6f}")
            shutil.rmtree(tmp)
            tmp = derived
            manifest = json.loads((tmp / "bundle.json").read_text())
            files = manifest["files"]
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        ck.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    total = sum(f["size"] for f in files.values())
    log(f"bundle written to {out_dir} ({human(total)})")
    log(f"done in {time.monotonic() - t_start:.0f} s; peak resident memory {peak_rss()}")
    return manifest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", help="checkpoint directory or Hugging Face hub id")
    ap.add_argument("out_dir", type=Path, help="bundle directory to write")
    ap.add_argument("--llm-type", default="f16", choices=LLM_TYPES, help="GGUF weight type of the LLM (default f16)")
    ap.add_argument("--vision-type", default="f32", choices=VISION_TYPES,
                    help="precision of the vision encoder (default f32; int8 and f16 via models/vision_precision.py)")
    ap.add_argument("--qformer-type", default="f32", choices=QFORMER_TYPES,
                    help="precision of the Q-Former (default f32)")
    ap.add_argument("--blipd", help="blipd binary used to quantize (default: PATH or target/release/blipd)")
    ap.add_argument("--force", action="store_true", help="replace OUT_DIR if it exists")
    args = ap.parse_args(argv)
    try:
        export(args.checkpoint, args.out_dir, args.llm_type, args.blipd, args.force,
               vision_type=args.vision_type, qformer_type=args.qformer_type)
    except ExportError as e:
        print(f"export.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
