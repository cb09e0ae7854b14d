#!/usr/bin/env python3
"""blipd side by side with the reference runtimes, on the same machine, in the same run.

    python models/compare.py BUNDLE [--hf CHECKPOINT] [--threads 2] [--rounds 5] [--out docs/perf]

Per round, alternating (A B A B, after one warm-up round each):
  - PyTorch (transformers) vision encoder and Q-Former + projection, from the
    HF checkpoint the bundle was exported from (default: BUNDLE-hf, as written
    by models/make_random.py),
  - onnxruntime on the bundle's vision.onnx and qformer.onnx,
  - blipd (tract + llama.cpp) through `blipd bench --lockstep` (one load,
    one round per line on its stdin),
  - llama.cpp directly through its C API (benches/llama_harness.c, built
    here against the static llama.cpp blipd links) on the bundle's llm.gguf,
    same prompt length, same number of generated tokens, same threads,
  - with --hf-llm (a checkpoint with every LLaMA layer, e.g. make_random.py
    --preset small --full-hf): the whole transformers language model too.

Prints the table of medians (min-max) and the ratios, and writes
OUT/compare-<bundle>.json and OUT/compare-<bundle>.png (stage latencies per
runtime).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))


def log(msg: str) -> None:
    print(f"[compare] {msg}", file=sys.stderr, flush=True)


def spread(v: list[float]) -> dict:
    return {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)} if v else {}


def test_image():
    """The picture `blipd bench` generates (src/bench/mod.rs: test_image)."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:480, 0:640]
    block = ((x // 80) + (y // 60)) % 2 == 0
    rgb = np.stack([x * 255 // 639, y * 255 // 479, np.where(block, 200, 40)], -1).astype(np.uint8)
    return Image.fromarray(rgb, "RGB")


def build_harness() -> Path:
    """Compiles benches/llama_harness.c against blipd's own llama.cpp build."""
    outs = sorted(ROOT.glob("target/release/build/llama-cpp-sys-2-*/out/lib/libllama.a"),
                  key=lambda p: p.stat().st_mtime)
    if not outs:
        raise SystemExit("no llama.cpp build under target/release: run `cargo build --release` first")
    lib = outs[-1].parent
    inc = lib.parent / "include"
    exe = ROOT / "target" / "llama_harness"
    src = ROOT / "benches" / "llama_harness.c"
    if not exe.exists() or exe.stat().st_mtime < max(src.stat().st_mtime, outs[-1].stat().st_mtime):
        cmd = ["cc", "-O2", "-o", str(exe), str(src), f"-I{inc}",
               str(lib / "libllama.a"), str(lib / "libggml.a"), str(lib / "libggml-cpu.a"),
               str(lib / "libggml-base.a"), "-lstdc++", "-lgomp", "-lm", "-lpthread"]
        subprocess.run(cmd, check=True)
    return exe


class Lockstep:
    """A child process that runs one round per line written to its stdin."""

    def __init__(self, cmd: list[str]):
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)

    def round(self) -> dict:
        self.p.stdin.write("\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        if not line:
            raise SystemExit(f"{self.p.args[0]} stopped")
        return json.loads(line)

    def finish(self) -> str:
        self.p.stdin.close()
        out = self.p.stdout.read()
        self.p.wait()
        return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--hf", type=Path, help="HF checkpoint (default BUNDLE-hf)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=20)
    ap.add_argument("--no-torch", action="store_true",
                    help="vision: leave PyTorch out (no checkpoint needed; the bundle's own preprocessing and "
                         "Q-Former tokenizer feed onnxruntime)")
    ap.add_argument("--hf-llm", action="store_true", help="also time the transformers language model")
    ap.add_argument("--blipd", default=str(ROOT / "target" / "release" / "blipd"))
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "perf")
    ap.add_argument("--part", choices=["all", "vision", "llm"], default="all",
                    help="vision: PyTorch, onnxruntime and blipd on vision + Q-Former; llm: blipd and the "
                         "llama.cpp harness; all: both (a 7B bundle needs about 26 GB for all at once, so "
                         "run the parts one after the other on a 24 GB machine)")
    args = ap.parse_args(argv)

    import onnxruntime as ort
    import torch
    import transformers
    from transformers import InstructBlipForConditionalGeneration, InstructBlipProcessor

    import export as exporter

    hf = args.hf or args.bundle.parent / f"{args.bundle.name}-hf"
    manifest = json.loads((args.bundle / "bundle.json").read_text())
    torch.set_num_threads(args.threads)
    prompt = "Is the garage door open? Answer yes or no."  # blipd bench's first question

    do_vision, do_llm = args.part in ("all", "vision"), args.part in ("all", "llm")
    use_torch = (do_vision and not args.no_torch) or args.hf_llm
    if do_vision and not use_torch:
        import tempfile

        from tokenizers import Tokenizer as QTok
        from vision_precision import pixels

        with tempfile.TemporaryDirectory() as d:
            test_image().save(Path(d) / "bench.png")
            pixel_values = torch.from_numpy(pixels(Path(d) / "bench.png", manifest["image"]))
        qtok = QTok.from_file(str(args.bundle / manifest["qformer"]["tokenizer"]))
        q_ids = torch.tensor([qtok.encode(prompt).ids], dtype=torch.int64)
        q_mask = torch.ones_like(q_ids)
    if use_torch:
        log(f"loading {hf} in PyTorch")
        model = InstructBlipForConditionalGeneration.from_pretrained(hf, torch_dtype=torch.float32).eval()
        processor = InstructBlipProcessor.from_pretrained(hf)
        Vision, QFormer = exporter.make_wrappers()
        vision, qformer = Vision(model).eval(), QFormer(model).eval()
        enc = processor(images=test_image(), text=prompt, return_tensors="pt")
        pixel_values = enc["pixel_values"]
        q_ids, q_mask = enc["qformer_input_ids"], enc["qformer_attention_mask"]

    if do_vision:
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        log("loading the ONNX graphs in onnxruntime")
        ort_v = ort.InferenceSession(str(args.bundle / "vision.onnx"), so, providers=["CPUExecutionProvider"])
        ort_q = ort.InferenceSession(str(args.bundle / "qformer.onnx"), so, providers=["CPUExecutionProvider"])

    log("starting blipd bench --lockstep")
    cmd = [args.blipd, "bench", "--model", str(args.bundle), "--threads", str(args.threads),
           "--runs", str(args.rounds + 1), "--warmup", "0", "--tokens", str(args.tokens), "--lockstep"]
    if not do_llm:
        cmd.append("--no-repack")  # LLM speed is not measured here: save the repacked copy's memory
    blipd = Lockstep(cmd)
    blipd.round()  # warm-up
    n_ctx = min(2048, int(manifest["llm"]["context_length"]))
    harness_exe = build_harness()
    # blipd's prompt is the soft prompt (num_query_tokens) + the instruction's
    # tokens (the bundle's HF tokenizer, as blipd tokenizes): same length here.
    from tokenizers import Tokenizer

    llm_tok = Tokenizer.from_file(str(args.bundle / manifest["llm"]["tokenizer"]))
    n_prompt = manifest["qformer"]["num_query_tokens"] + len(llm_tok.encode(prompt).ids)
    harness = None
    if do_llm:
        log("starting the llama.cpp harness")
        harness = Lockstep([str(harness_exe), str(args.bundle / manifest["llm"]["file"]), str(n_prompt),
                            str(args.tokens), str(args.threads), str(n_ctx), str(args.rounds + 1),
                            "--lockstep"])
        harness.round()  # warm-up

    def timed(fn):
        t0 = time.perf_counter()
        r = fn()
        return (time.perf_counter() - t0) * 1e3, r

    with torch.no_grad():
        if do_vision:  # warm-up for PyTorch and onnxruntime
            if use_torch:
                image_embeds = vision(pixel_values)
                qformer(image_embeds, q_ids, q_mask)
                emb_np = image_embeds.numpy()
            else:
                emb_np = ort_v.run(None, {"pixel_values": pixel_values.numpy()})[0]
            ort_v.run(None, {"pixel_values": pixel_values.numpy()})
            ort_q.run(None, {"image_embeds": emb_np, "input_ids": q_ids.numpy(),
                             "attention_mask": q_mask.numpy()})

        hf_llm = None
        if args.hf_llm:
            lm = model.language_model
            head = model.get_output_embeddings()

            def next_token(out):
                logits = getattr(out, "logits", None)
                if logits is None:  # the base model: apply the LM head to the last position
                    logits = head(out.last_hidden_state[:, -1:])
                return logits[:, -1:].argmax(-1)

            hf_llm = {"prefill_ms": [], "prefill_tokens_per_s": [], "decode_tokens_per_s": []}
            ids = torch.tensor([[3 + (i * 7919) % (model.config.text_config.vocab_size - 3) for i in range(n_prompt)]])

        rows = {k: [] for k in ["torch_vision", "ort_vision", "torch_qformer", "ort_qformer"]}
        blipd_rows, harness_rows = [], []
        for r in range(args.rounds):
            log(f"round {r + 1}/{args.rounds}")
            if do_vision:
                if use_torch:
                    ms, image_embeds = timed(lambda: vision(pixel_values))
                    rows["torch_vision"].append(ms)
                ms, ort_out = timed(lambda: ort_v.run(None, {"pixel_values": pixel_values.numpy()}))
                rows["ort_vision"].append(ms)
                if not use_torch:
                    image_embeds = torch.from_numpy(ort_out[0])
            blipd_rows.append(blipd.round())
            if do_vision:
                if use_torch:
                    ms, _ = timed(lambda: qformer(image_embeds, q_ids, q_mask))
                    rows["torch_qformer"].append(ms)
                feeds = {"image_embeds": image_embeds.numpy(), "input_ids": q_ids.numpy(),
                         "attention_mask": q_mask.numpy()}
                ms, _ = timed(lambda: ort_q.run(None, feeds))
                rows["ort_qformer"].append(ms)
            if harness is not None:
                harness_rows.append(harness.round())
            if hf_llm is not None:
                t0 = time.perf_counter()
                out = lm(input_ids=ids, use_cache=True)
                t1 = time.perf_counter()
                past, nxt = out.past_key_values, next_token(out)
                for _ in range(args.tokens):
                    out = lm(input_ids=nxt, past_key_values=past, use_cache=True)
                    past, nxt = out.past_key_values, next_token(out)
                t2 = time.perf_counter()
                hf_llm["prefill_ms"].append((t1 - t0) * 1e3)
                hf_llm["prefill_tokens_per_s"].append(n_prompt / (t1 - t0))
                hf_llm["decode_tokens_per_s"].append(args.tokens / (t2 - t1))

    report = json.loads(blipd.finish().strip().splitlines()[-1])
    if harness is not None:
        harness.finish()
    if report["prompt_tokens"] != n_prompt:
        log(f"warning: blipd prefilled {report['prompt_tokens']} positions, the harness {n_prompt}")

    def col(rows_, key):
        return [x[key] for x in rows_]

    res = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "threads": args.threads, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
        "bundle": str(args.bundle), "llm": report["llm"], "prompt_tokens": n_prompt, "tokens": args.tokens,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "onnxruntime": ort.__version__},
        "part": args.part,
        "blipd": {k: report[k] for k in ["load_ms", "first_token_ms", "answer_ms", "cached_answer_ms",
                                          "rss_after_load_mib", "peak_rss_mib", "answer_tokens"]},
        "ratios": {},
    }
    if do_vision:
        torch_rows = lambda k: {"pytorch": spread(rows[k])} if rows[k] else {}  # noqa: E731
        res["vision_ms"] = {**torch_rows("torch_vision"), "onnxruntime": spread(rows["ort_vision"]),
                            "blipd (tract)": spread(col(blipd_rows, "vision_ms"))}
        res["qformer_ms"] = {**torch_rows("torch_qformer"), "onnxruntime": spread(rows["ort_qformer"]),
                             "blipd (tract)": spread(col(blipd_rows, "qformer_ms"))}
    if do_llm:
        res["prefill_tokens_per_s"] = {"llama.cpp C API": spread(col(harness_rows, "prefill_tokens_per_s")),
                                       "blipd (llama.cpp)": spread(col(blipd_rows, "prefill_tokens_per_s"))}
        res["decode_tokens_per_s"] = {"llama.cpp C API": spread(col(harness_rows, "decode_tokens_per_s")),
                                      "blipd (llama.cpp)": spread(col(blipd_rows, "decode_tokens_per_s"))}
    if hf_llm is not None:
        res.setdefault("prefill_tokens_per_s", {})
        res.setdefault("decode_tokens_per_s", {})
        res["prefill_tokens_per_s"]["pytorch"] = spread(hf_llm["prefill_tokens_per_s"])
        res["decode_tokens_per_s"]["pytorch"] = spread(hf_llm["decode_tokens_per_s"])

    # Ratios per round (same round = same machine state), then their median.
    def ratio(a, b):
        return spread([x / y for x, y in zip(a, b) if y])

    if do_vision:
        res["ratios"].update({
            "vision: onnxruntime time / tract time (>= 1: tract as fast)":
                ratio(rows["ort_vision"], col(blipd_rows, "vision_ms")),
            **({"vision: pytorch time / tract time": ratio(rows["torch_vision"], col(blipd_rows, "vision_ms"))}
               if rows["torch_vision"] else {}),
            "qformer: onnxruntime time / tract time": ratio(rows["ort_qformer"], col(blipd_rows, "qformer_ms")),
        })
    if do_llm:
        res["ratios"].update({
            "prefill: blipd t/s / llama.cpp t/s (target >= 0.95)":
                ratio(col(blipd_rows, "prefill_tokens_per_s"), col(harness_rows, "prefill_tokens_per_s")),
            "decode: blipd t/s / llama.cpp t/s (target >= 0.97)":
                ratio(col(blipd_rows, "decode_tokens_per_s"), col(harness_rows, "decode_tokens_per_s")),
        })

    args.out.mkdir(parents=True, exist_ok=True)
    name = args.bundle.name if args.part == "all" else f"{args.bundle.name}-{args.part}"
    (args.out / f"compare-{name}.json").write_text(json.dumps(res, indent=2) + "\n")
    chart(res, args.out / f"compare-{name}.png")
    print(table(res))
    log(f"wrote {args.out / f'compare-{name}.json'} and .png")
    return 0


def table(res: dict) -> str:
    lines = [f"# {res['bundle']} ({res['llm']}), {res['machine']['threads']} threads, {res['machine']['date']}",
             "", "| stage | runtime | median | min-max |", "|---|---|---|---|"]
    for stage, unit in [("vision_ms", "ms"), ("qformer_ms", "ms"), ("prefill_tokens_per_s", "t/s"),
                        ("decode_tokens_per_s", "t/s")]:
        for rt, s in res.get(stage, {}).items():
            lines.append(f"| {stage.replace('_ms', '').replace('_tokens_per_s', '')} | {rt} | "
                         f"{s['median']:.1f} {unit} | {s['min']:.1f}-{s['max']:.1f} |")
    lines += ["", "| ratio | median | min-max |", "|---|---|---|"]
    for k, s in res["ratios"].items():
        lines.append(f"| {k} | {s['median']:.3f} | {s['min']:.3f}-{s['max']:.3f} |")
    b = res["blipd"]
    lines += ["", f"blipd end to end: first token {b['first_token_ms']['median']:.0f} ms, "
                  f"{b['answer_tokens']}-token answer {b['answer_ms']['median']:.0f} ms, "
                  f"second question on the same frame {b['cached_answer_ms']['median']:.0f} ms, "
                  f"load {b['load_ms']:.0f} ms, peak RSS {b['peak_rss_mib']:.0f} MiB"]
    return "\n".join(lines)


def chart(res: dict, path: Path) -> None:
    """Horizontal bars of stage latency per runtime (PIL: no plotting dependency)."""
    from PIL import Image, ImageDraw

    bars = []
    for stage in ["vision_ms", "qformer_ms"]:
        for rt, s in res.get(stage, {}).items():
            bars.append((f"{stage[:-3]}: {rt}", s["median"], s["min"], s["max"]))
    n_prompt, tokens = res["prompt_tokens"], res["tokens"]
    for rt, s in res.get("prefill_tokens_per_s", {}).items():
        bars.append((f"prefill {n_prompt} tok: {rt}", 1e3 * n_prompt / s["median"],
                     1e3 * n_prompt / s["max"], 1e3 * n_prompt / s["min"]))
    for rt, s in res.get("decode_tokens_per_s", {}).items():
        bars.append((f"decode {tokens} tok: {rt}", 1e3 * tokens / s["median"],
                     1e3 * tokens / s["max"], 1e3 * tokens / s["min"]))
    w, row, left = 900, 26, 330
    img = Image.new("RGB", (w, 60 + row * len(bars)), "white")
    d = ImageDraw.Draw(img)
    d.text((10, 10), f"{res['bundle']}  ({res['llm']}), {res['machine']['threads']} threads, "
                     f"{res['machine']['date']}: median ms (whiskers: min-max)", fill="black")
    top = max(b[3] for b in bars) or 1
    scale = (w - left - 90) / top
    colours = {"pytorch": (238, 76, 44), "onnxruntime": (90, 90, 200), "blipd": (40, 160, 90),
               "llama.cpp": (120, 120, 120)}
    for i, (label, med, lo, hi) in enumerate(bars):
        y = 40 + i * row
        c = next((v for k, v in colours.items() if k in label.split(": ")[-1]), (0, 0, 0))
        d.text((10, y + 5), label, fill="black")
        d.rectangle([left, y + 3, left + max(1, med * scale), y + row - 5], fill=c)
        d.line([left + lo * scale, y + row // 2, left + hi * scale, y + row // 2], fill="black")
        d.text((left + hi * scale + 6, y + 5), f"{med:.0f}", fill="black")
    img.save(path)


if __name__ == "__main__":
    sys.exit(main())
