"""The checkpoint reader and the LLaMA -> GGUF writer of models/export.py.

Nothing here builds the language model in torch: its tensors are read one at a
time from the checkpoint's safetensors shards and written straight into the
GGUF, so memory stays at about one tensor (plus the vision side, loaded alone
by export.py), whatever the checkpoint's size or dtype (f32, f16, bf16).

Tensors are read with plain `pread`s at the offsets of the safetensors header
rather than through `safetensors.safe_open`: safe_open memory-maps whole shards,
and every page of a mapped shard that has been read counts in the process'
resident memory until the mapping closes (a 10 GB shard read end to end shows
as 10 GB RSS), which is what the export must stay clear of on an 8 GB laptop.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import re
import struct
import sys
import time
from pathlib import Path

import numpy as np


class ExportError(Exception):
    """A checkpoint blipd cannot handle, or a step that failed; printed without a traceback."""


def log(msg: str) -> None:
    print(f"[export {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} GB"


class Progress:
    """A tqdm bar on a terminal; otherwise a log line every 10 % (so a log file shows progress too)."""

    def __init__(self, desc: str, total: int, unit: str = "B"):
        self.desc, self.total, self.unit, self.done = desc, max(int(total), 1), unit, 0
        # Small jobs get no intermediate lines in a log.
        self.next_pct = 10 if unit != "B" or total >= (256 << 20) else 100
        self.bar = None
        if sys.stderr.isatty():
            try:
                from tqdm import tqdm

                self.bar = tqdm(desc=desc, total=self.total, unit=unit, unit_scale=True, file=sys.stderr)
            except ImportError:
                pass

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        pct = 100 * self.done // self.total
        if pct >= self.next_pct:
            amount = human(self.done) if self.unit == "B" else f"{self.done}"
            total = human(self.total) if self.unit == "B" else f"{self.total}"
            log(f"{self.desc}: {pct}% ({amount} / {total})")
            self.next_pct = (pct // 10 + 1) * 10

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------------------
# safetensors shards, read lazily
# --------------------------------------------------------------------------------------

_DTYPES = {"F32": (np.float32, 4), "F16": (np.float16, 2), "BF16": (np.uint16, 2), "F64": (np.float64, 8),
           "I64": (np.int64, 8), "I32": (np.int32, 4)}


class Checkpoint:
    """The tensors of a Hugging Face checkpoint directory: `model.safetensors`, or the
    shards listed in `model.safetensors.index.json`. Only the headers are read up front."""

    def __init__(self, ckpt: Path):
        self.dir = ckpt
        index = ckpt / "model.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError) as e:
                raise ExportError(f"{index} is not a safetensors index: {e}") from e
            files = sorted(set(weight_map.values()))
        elif (ckpt / "model.safetensors").is_file():
            files = ["model.safetensors"]
        else:
            found = sorted(p.name for p in ckpt.glob("*.bin"))
            hint = f" (it has {', '.join(found)}: PyTorch pickles are not read; convert them to safetensors)" if found else ""
            raise ExportError(f"{ckpt} has no model.safetensors or model.safetensors.index.json{hint}")
        self.entries: dict[str, tuple[Path, str, tuple, int, int]] = {}
        for name in files:
            path = ckpt / name
            if not path.is_file():
                raise ExportError(f"{ckpt}: shard {name} listed in the index is missing")
            with open(path, "rb") as f:
                head = f.read(8)
                if len(head) != 8:
                    raise ExportError(f"{path} is not a safetensors file (truncated)")
                (n,) = struct.unpack("<Q", head)
                try:
                    header = json.loads(f.read(n))
                except ValueError as e:
                    raise ExportError(f"{path} is not a safetensors file: {e}") from e
            size = path.stat().st_size
            for key, info in header.items():
                if key == "__metadata__":
                    continue
                a, b = info["data_offsets"]
                if 8 + n + b > size:
                    raise ExportError(f"{path} is truncated (tensor {key} ends past the end of the file)")
                self.entries[key] = (path, info["dtype"], tuple(info["shape"]), 8 + n + a, b - a)
        self._fds: dict[Path, int] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def names(self):
        return self.entries.keys()

    def shape(self, name: str) -> tuple:
        return self.entries[name][2]

    def numel(self, name: str) -> int:
        n = 1
        for d in self.entries[name][2]:
            n *= d
        return n

    def read(self, name: str) -> np.ndarray:
        """The tensor as float32 (bf16 and f16 widened exactly), in a fresh writable array."""
        path, dtype, shape, offset, nbytes = self.entries[name]
        if dtype not in _DTYPES:
            raise ExportError(f"tensor {name} has dtype {dtype}; only F32, F16 and BF16 checkpoints are supported")
        np_type, width = _DTYPES[dtype]
        fd = self._fds.get(path)
        if fd is None:
            fd = self._fds[path] = os.open(path, os.O_RDONLY)
        raw = np.empty(nbytes // width, dtype=np_type)
        view, got = memoryview(raw).cast("B"), 0
        while got < nbytes:
            k = os.preadv(fd, [view[got:]], offset + got)
            if k <= 0:
                raise ExportError(f"{path}: short read of tensor {name}")
            got += k
        if dtype == "BF16":
            arr = (raw.astype(np.uint32) << 16).view(np.float32)
        elif np_type is np.float32:
            arr = raw
        else:
            arr = raw.astype(np.float32)
        return arr.reshape(shape)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


# Where the language model's tensors live: the hub files and what transformers 5 saves
# for InstructBlipForConditionalGeneration use "language_model.model.*" and
# "language_model.lm_head.weight"; other layouts seen in composite models are accepted too.
LM_PREFIXES = ("language_model.model.", "language_model.", "model.language_model.model.", "model.language_model.")
LM_HEADS = ("language_model.lm_head.weight", "lm_head.weight", "model.lm_head.weight", "model.language_model.lm_head.weight")


def lm_prefix(ck: Checkpoint) -> str:
    for p in LM_PREFIXES:
        if p + "embed_tokens.weight" in ck:
            return p
    raise ExportError(
        f"no language model embedding found in {ck.dir} (looked for "
        + ", ".join(p + "embed_tokens.weight" for p in LM_PREFIXES) + ")"
    )


def lm_head_name(ck: Checkpoint, tied: bool) -> str:
    """The output matrix: the checkpoint's lm_head, or the embedding when tied or absent (as transformers)."""
    if not tied:
        for name in LM_HEADS:
            if name in ck:
                return name
    return lm_prefix(ck) + "embed_tokens.weight"


def llm_tensor_count(ck: Checkpoint) -> int:
    """Elements of the language model as the GGUF holds it (the embedding twice when tied)."""
    p = lm_prefix(ck)
    n = sum(ck.numel(k) for k in ck.names() if k.startswith(p))
    head = [h for h in LM_HEADS if h in ck]
    return n + (ck.numel(head[0]) if head else ck.numel(p + "embed_tokens.weight"))


# --------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------


def _pad_vocab(tokens, scores, types, tokenizer, n_rows: int, base: int):
    """Tokens the HF tokenizer added above the base vocabulary (e.g. <image>, a pad token),
    then `[PAD<i>]` rows up to the embedding matrix's rows."""
    import gguf

    added = {int(i): tok for i, tok in tokenizer.added_tokens_decoder.items() if int(i) >= base}
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
        raise ExportError(f"the tokenizer's vocab has {len(tokens)} pieces but the embedding has {n_rows} rows")


def spm_vocab(sp_path: Path, tokenizer, n_rows: int):
    """SentencePiece vocab (pieces, scores, types) padded to the embedding matrix's rows."""
    import gguf
    import sentencepiece as spm

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
    _pad_vocab(tokens, scores, types, tokenizer, n_rows, len(tokens))
    ids = {"bos": sp.bos_id(), "eos": sp.eos_id(), "unk": sp.unk_id()}
    return tokens, scores, types, ids, True


def hf_json_vocab(json_path: Path, tokenizer, n_rows: int):
    """The same vocabulary from a Hugging Face `tokenizer.json` (what transformers 5 saves
    for a LLaMA tokenizer, with no tokenizer.model): a BPE model with byte fallback whose
    vocab ids are the SentencePiece ids.

    Scores: SentencePiece's BPE gives the pieces after the meta pieces (unknown, control,
    bytes: score 0) the scores 0, -1, -2, ... in the order it learnt them, and the HF
    converter lists the merges in that order. So every normal piece is ranked by the first
    merge that makes it (pieces no merge makes, the single characters, after those, by id)
    and scored -rank: the scores SentencePiece itself has, and in any case the order that
    llama.cpp's SentencePiece tokenizer needs to merge like the HF tokenizer."""
    import gguf

    tj = json.loads(json_path.read_text(encoding="utf-8"))
    model = tj.get("model", {})
    if model.get("type") != "BPE" or not model.get("byte_fallback", False):
        raise ExportError(
            f"{json_path} is not a LLaMA SentencePiece-style tokenizer (BPE with byte fallback; found "
            f"{model.get('type')}{'' if model.get('byte_fallback') else ' without byte fallback'}) and there is "
            "no tokenizer.model next to it"
        )
    vocab = model["vocab"]
    base = len(vocab)
    by_id = [None] * base
    for piece, i in vocab.items():
        if not 0 <= i < base or by_id[i] is not None:
            raise ExportError(f"{json_path}: vocab ids are not 0..{base - 1}")
        by_id[i] = piece
    specials = {int(t["id"]) for t in tj.get("added_tokens", []) if t.get("special")}
    unk_id = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else -1
    byte_re = re.compile(r"<0x[0-9A-Fa-f]{2}>")
    types = []
    for i, piece in enumerate(by_id):
        if i == unk_id:
            types.append(gguf.TokenType.UNKNOWN)
        elif i in specials:
            types.append(gguf.TokenType.CONTROL)
        elif byte_re.fullmatch(piece):
            types.append(gguf.TokenType.BYTE)
        else:
            types.append(gguf.TokenType.NORMAL)
    first_merge: dict[str, int] = {}
    merges = model.get("merges", [])
    for r, m in enumerate(merges):
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        first_merge.setdefault(a + b, r)
    normal = [i for i in range(base) if types[i] == gguf.TokenType.NORMAL]
    normal.sort(key=lambda i: (first_merge.get(by_id[i], len(merges)), i))
    scores = [0.0] * base
    for rank, i in enumerate(normal):
        scores[i] = -float(rank)
    tokens = [p.encode("utf-8") for p in by_id]
    _pad_vocab(tokens, scores, types, tokenizer, n_rows, base)

    def tid(tok):
        return tokenizer.convert_tokens_to_ids(tok) if tok is not None else -1

    ids = {"bos": tid(tokenizer.bos_token), "eos": tid(tokenizer.eos_token), "unk": unk_id}
    return tokens, scores, types, ids, _adds_space_prefix(tj)


def _adds_space_prefix(tj: dict) -> bool:
    """Whether the tokenizer prepends "▁" to the text (Metaspace, or the legacy Prepend normalizer)."""
    def walk(node):
        if isinstance(node, dict):
            if node.get("type") == "Metaspace" and node.get("prepend_scheme", "always") in ("always", "first"):
                return True
            if node.get("type") == "Prepend" and node.get("prepend") == "\u2581":
                return True
            return any(walk(v) for v in node.values())
        if isinstance(node, list):
            return any(walk(v) for v in node)
        return False

    return walk(tj.get("normalizer")) or walk(tj.get("pre_tokenizer"))


def llama_vocab(ckpt: Path, tokenizer, n_rows: int):
    """(tokens, scores, types, {bos, eos, unk}, add_space_prefix), from tokenizer.model when the
    checkpoint has one, else from tokenizer.json."""
    if (ckpt / "tokenizer.model").is_file():
        return spm_vocab(ckpt / "tokenizer.model", tokenizer, n_rows)
    if (ckpt / "tokenizer.json").is_file():
        return hf_json_vocab(ckpt / "tokenizer.json", tokenizer, n_rows)
    raise ExportError(
        f"{ckpt} has neither tokenizer.model nor tokenizer.json: blipd embeds the LLaMA vocabulary in the GGUF"
    )


# --------------------------------------------------------------------------------------
# LLaMA -> GGUF, one tensor at a time
# --------------------------------------------------------------------------------------


def permute_qk(w, n_head: int):
    """The row permutation llama.cpp's converter applies to q/k (HF rotate-half -> interleaved RoPE)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def rope_theta(tc) -> float:
    params = getattr(tc, "rope_parameters", None) or {}
    if isinstance(params, dict) and "rope_theta" in params:
        return float(params["rope_theta"])
    return float(getattr(tc, "rope_theta", 10000.0))


LAYER_TENSORS = [  # (GGUF name, HF name, permuted with n_head / n_kv / not)
    ("attn_norm", "input_layernorm.weight", None),
    ("attn_q", "self_attn.q_proj.weight", "head"),
    ("attn_k", "self_attn.k_proj.weight", "kv"),
    ("attn_v", "self_attn.v_proj.weight", None),
    ("attn_output", "self_attn.o_proj.weight", None),
    ("ffn_norm", "post_attention_layernorm.weight", None),
    ("ffn_gate", "mlp.gate_proj.weight", None),
    ("ffn_up", "mlp.up_proj.weight", None),
    ("ffn_down", "mlp.down_proj.weight", None),
]


def write_gguf(ck: Checkpoint, config, tokenizer, path: Path, llm_type: str, n_layers: int | None = None) -> dict:
    """Writes the language model of `ck` as a llama.cpp GGUF of type f32 or f16.

    The header and every tensor's info go first, then the tensors one by one, each read,
    permuted and converted just before it is written. `n_layers` above the checkpoint's
    layer count repeats its last layer (read again): full-depth random-weight speed models
    (models/make_random.py) from a one-layer checkpoint."""
    import gguf

    if llm_type not in ("f32", "f16"):
        raise ValueError(llm_type)
    tc = config.text_config
    n_src = int(tc.num_hidden_layers)
    n_blocks = max(int(n_layers or 0), n_src)
    prefix = lm_prefix(ck)
    n_head = int(tc.num_attention_heads)
    n_kv = int(tc.num_key_value_heads or n_head)
    head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // n_head
    embd = prefix + "embed_tokens.weight"
    n_rows = int(ck.shape(embd)[0])
    tokens, scores, types, ids, space_prefix = llama_vocab(ck.dir, tokenizer, n_rows)
    bos = tc.bos_token_id if tc.bos_token_id is not None else ids["bos"]
    eos = tc.eos_token_id if tc.eos_token_id is not None else ids["eos"]
    eos_ids = eos if isinstance(eos, list) else [eos]

    float_type = np.float16 if llm_type == "f16" else np.float32
    ftype = gguf.LlamaFileType.MOSTLY_F16 if llm_type == "f16" else gguf.LlamaFileType.ALL_F32

    plan = [("token_embd.weight", embd, None)]
    for i in range(n_blocks):
        src = min(i, n_src - 1)
        for dst, name, perm in LAYER_TENSORS:
            plan.append((f"blk.{i}.{dst}.weight", f"{prefix}layers.{src}.{name}",
                         n_head if perm == "head" else n_kv if perm == "kv" else None))
    plan.append(("output_norm.weight", prefix + "norm.weight", None))
    plan.append(("output.weight", lm_head_name(ck, bool(getattr(tc, "tie_word_embeddings", False))), None))
    for _, src, _ in plan:
        if src not in ck:
            raise ExportError(f"language model tensor {src} not found in the checkpoint")

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(ck.dir.name)
    w.add_context_length(int(tc.max_position_embeddings))
    w.add_embedding_length(int(tc.hidden_size))
    w.add_block_count(n_blocks)
    w.add_feed_forward_length(int(tc.intermediate_size))
    w.add_rope_dimension_count(int(head_dim))
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    if head_dim * n_head != tc.hidden_size:
        w.add_key_length(int(head_dim))
        w.add_value_length(int(head_dim))
    w.add_layer_norm_rms_eps(float(tc.rms_norm_eps))
    w.add_rope_freq_base(rope_theta(tc))
    w.add_vocab_size(n_rows)
    w.add_file_type(int(ftype))
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(int(bos))
    w.add_eos_token_id(int(eos_ids[0]))
    if ids["unk"] is not None and ids["unk"] >= 0:
        w.add_unk_token_id(int(ids["unk"]))
    if tc.pad_token_id is not None and 0 <= tc.pad_token_id < n_rows:
        w.add_pad_token_id(int(tc.pad_token_id))
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    # SentencePiece LLaMA tokenizers prepend a space ("▁") to the text.
    w.add_add_space_prefix(space_prefix)

    def out_type(src):
        return np.dtype(np.float32 if len(ck.shape(src)) == 1 else float_type)

    total = 0
    for dst, src, _ in plan:
        dt = out_type(src)
        nbytes = ck.numel(src) * dt.itemsize
        w.add_tensor_info(dst, ck.shape(src), dt, nbytes)
        total += nbytes
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    log(f"writing {path.name}: {len(plan)} tensors, {human(total)} ({llm_type})")
    bar = Progress(f"{path.name} tensors", total)
    try:
        for dst, src, heads in plan:
            arr = ck.read(src)
            if heads is not None:
                arr = permute_qk(arr, heads)
            arr = np.ascontiguousarray(arr, dtype=out_type(src))
            w.write_tensor_data(arr)
            bar.update(arr.nbytes)
            del arr
    finally:
        bar.close()
        w.close()
    return {
        "hidden_size": int(tc.hidden_size),
        "vocab_size": n_rows,
        "context_length": int(tc.max_position_embeddings),
        "bos_token_id": int(bos),
        "eos_token_ids": [int(e) for e in eos_ids],
    }


# Bytes per weight of each GGUF type (quantized ones rounded up: K-quant mixes keep some
# tensors at higher precision), for the free-space check before an export starts.
BYTES_PER_WEIGHT = {"f32": 4.0, "f16": 2.0, "q8_0": 1.07, "q6_k": 0.85, "q5_k_m": 0.75, "q4_k_m": 0.65, "q4_0": 0.6}


def check_disk(ck: Checkpoint, where: Path, llm_type: str, quantized: bool) -> None:
    """Refuses, before any heavy work, an export the disk under `where` cannot hold:
    the graphs (f32), the final LLM and, when quantizing, the f16 intermediate beside it."""
    n_llm = llm_tensor_count(ck)
    lm = lm_prefix(ck)
    n_graphs = sum(ck.numel(k) for k in ck.names()
                   if not k.startswith(lm) and not any(k == h for h in LM_HEADS))
    final = n_llm * BYTES_PER_WEIGHT.get(llm_type, 2.0)
    temp = n_llm * BYTES_PER_WEIGHT["f16"] if quantized else 0
    need = int(1.05 * (4 * n_graphs + final + temp)) + (64 << 20)
    free = shutil.disk_usage(where).free
    what = f"{human(4 * n_graphs)} of ONNX graphs, {human(final)} of {llm_type} LLM"
    what += f" and a {human(temp)} f16 intermediate" if temp else ""
    log(f"the bundle needs about {human(need)} of disk ({what}); {human(free)} free in {where}")
    if free < need:
        raise ExportError(f"not enough free disk in {where}: the export needs about {human(need)} ({what}), "
                          f"{human(free)} are free")


def peak_rss() -> str:
    """Peak RSS of this process and of its largest child (graph tracing, `blipd quantize`), from getrusage."""
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return f"{me / 2**30:.2f} GiB" + (f" (largest child process: {kids / 2**30:.2f} GiB)" if kids else "")


def sha256_file(path: Path, bar: Progress | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
            if bar is not None:
                bar.update(len(chunk))
    return h.hexdigest()
