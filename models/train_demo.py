#!/usr/bin/env python3
"""Train the demo model: a small InstructBLIP that answers questions about shape scenes.

    .venv/bin/python models/train_demo.py                # train, evaluate, export models/demo, goldens
    .venv/bin/python models/train_demo.py --steps 200    # a quick smoke run (not accurate)
    .venv/bin/python models/train_demo.py --eval-only models/out/demo-hf   # re-evaluate, re-export

The real InstructBLIP weights are 15 GB; this model is a few MB and is what
blipd runs on its zero-configuration defaults, so a new user sees it *work*: the
test-pattern camera draws scenes from the generator in models/scenes.py and the
model answers questions about them ("How many circles are there?", "What color
is the square?", "Describe the scene.").

It is the real architecture, `InstructBlipForConditionalGeneration` (ViT,
instruction-aware Q-Former, projection, LLaMA), with a SentencePiece and a
WordPiece tokenizer trained here on the question/answer language. Training is
on CPU, seeded and deterministic (one fixed number of steps, data drawn from
SplitMix64 seeds, torch deterministic algorithms): running it twice gives the
same accuracy within a small margin.

Steps:
  1. tokenizers and model config (models/make_tiny.py helpers), fresh weights;
  2. stage 1, seeing (see `pretrain`): the ViT learns to name the shape centred
     in each patch, its rank from the left and the patch's own place, then the
     ViT and Q-Former learn to name the shapes left to right in the first
     query outputs; all these heads are thrown away;
  3. stage 2, answering: AdamW on freshly drawn scenes, each step renders B
     scenes at a random camera resolution and asks K questions about each
     ("which is further left" twice as often as the rest);
     the loss is the answer tokens' (and EOS's) cross-entropy, the image and
     prompt are context only; the ViT and Q-Former move slower;
  4. evaluation with transformers' own `generate` on held-out scenes (seeds
     the training never draws), per question type;
  5. export with models/export.py (f32 GGUF) to models/demo/, and goldens for
     the Rust tests to tests/fixtures/goldens/demo.json: the held-out cases with
     their true answers, and for a subset HF's greedy tokens and Q-Former output.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import export as exporter  # noqa: E402
import make_tiny  # noqa: E402
import scenes  # noqa: E402

PRESET = dict(
    seed=2026,
    image_size=64,
    patch_size=8,
    vision=dict(hidden_size=96, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4),
    qformer=dict(hidden_size=96, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 cross_attention_frequency=1, max_position_embeddings=64),
    num_query_tokens=8,
    # 256-wide so every matrix row is a whole number of Q4_K blocks (llama.cpp's
    # k-quants work on 256 values): the q4_k_m bundle is really Q4_K.
    llama=dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=4, max_position_embeddings=256, rope_theta=10000.0),
    # 256 of these are byte-fallback pieces; at 300 only ~40 merges were left,
    # "yellow" took 7 tokens and the longest description 44, beyond
    # max_new_tokens. At 384 every word of the question language is one piece.
    sp_vocab=384,
    extra_rows=0,
    bert_vocab=200,
    max_new_tokens=24,
)

# Camera resolutions the training renders at (then resized like the processor
# does): the test-pattern camera's default 640x480 and smaller ones.
RESOLUTIONS = [(640, 480), (320, 240), (160, 120), (128, 96)]
# Held-out scenes: seeds from here on; training seeds are SplitMix64 outputs
# below 2**62, so they never meet (the chance is ~1e-12 per draw).
HELDOUT_BASE = (1 << 63) + 12345
TRAIN_SEED_MASK = (1 << 62) - 1


def log(msg: str) -> None:
    print(f"[train_demo] {msg}", file=sys.stderr, flush=True)


def init_weights(model, seed: int) -> None:
    """Seeded init: normal(0, 0.02) matrices and embeddings, unit norms, zero biases."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.fill_(1.0 if "norm" in name.lower() and name.endswith("weight") else 0.0)
            else:
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))


class Batcher:
    """Draws training batches: B scenes x K questions, all from SplitMix64 seeds."""

    def __init__(self, processor, config, seed: int, images: int, questions: int):
        self.tok = processor.tokenizer
        self.qtok = processor.qformer_tokenizer
        self.size = config.vision_config.image_size
        self.nq = config.num_query_tokens
        self.image_token = config.image_token_index
        self.rng = scenes.SplitMix64(seed)
        self.images, self.questions = images, questions
        self.cache: dict[str, tuple[list[int], list[int]]] = {}
        self.answers: dict[str, list[int]] = {}
        mean = np.array(processor.image_processor.image_mean, dtype=np.float32)
        std = np.array(processor.image_processor.image_std, dtype=np.float32)
        self.mean, self.std = mean[:, None, None], std[:, None, None]

    def encode(self, q: str):
        if q not in self.cache:
            self.cache[q] = (self.qtok(q)["input_ids"], self.tok(q)["input_ids"])
        return self.cache[q]

    def answer(self, a: str) -> list[int]:
        if a not in self.answers:
            self.answers[a] = self.tok(a, add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]
        return self.answers[a]

    def pixels(self, img: np.ndarray) -> np.ndarray:
        from PIL import Image

        small = Image.fromarray(img, "RGB").resize((self.size, self.size), Image.BICUBIC)
        x = np.asarray(small, dtype=np.float32).transpose(2, 0, 1) * (1.0 / 255.0)
        return (x - self.mean) / self.std

    def scene(self) -> tuple[scenes.Scene, np.ndarray]:
        """A fresh training scene, rendered at a random camera resolution and preprocessed."""
        scene = scenes.sample_scene(self.rng.next() & TRAIN_SEED_MASK)
        w, h = RESOLUTIONS[self.rng.below(len(RESOLUTIONS))]
        return scene, self.pixels(scenes.render(scene, w, h))

    def vision_batch(self, grid: int, slots: int, questions: bool):
        """Stage 1's batch: B scenes; per ViT patch, the class and rank of the shape
        centred in it (see `patch_labels`); the shapes left to right as `slots`
        classes; and (if `questions`) one question about each scene, for the Q-Former."""
        import torch

        pix, classes, ranks, found, asked = [], [], [], [], []
        for _ in range(self.images):
            scene, x = self.scene()
            pix.append(x)
            c, r = patch_labels(scene, grid)
            classes.append(c)
            ranks.append(r)
            found.append(slot_labels(scene, slots))
            if questions:
                asked.append(self.encode(scenes.sample_question(scene, self.rng)[1])[0])
        qids, qmask = pad(asked)
        return (torch.from_numpy(np.stack(pix)), torch.from_numpy(np.stack(classes)),
                torch.from_numpy(np.stack(ranks)), torch.tensor(found), qids, qmask)

    def next(self):
        import torch

        pix, rows = [], []
        self.types: list[str] = []  # the question type of each row, for the training log
        for i in range(self.images):
            scene, x = self.scene()
            pix.append(x)
            types = scenes.available(scene)
            # "Which is further left" twice as often as the rest: when it was
            # drawn like the others, the model settled on "the leftmost shape
            # of the scene", which is right unless the two asked about are the
            # middle and the right one of three; those cases need the practice.
            types += ["left"] if "left" in types else []
            for _ in range(self.questions):
                qtype, q, a = scenes.sample_question(scene, self.rng, types[self.rng.below(len(types))])
                qids, pids = self.encode(q)
                rows.append((i, qids, pids, self.answer(a)))
                self.types.append(qtype)
        n = len(rows)
        qids, qmask = pad([r[1] for r in rows])
        llen = self.nq + max(len(r[2]) + len(r[3]) for r in rows)
        ids = torch.zeros(n, llen, dtype=torch.long)
        targets = torch.full((n, llen), -100, dtype=torch.long)
        for j, (_, q, p, a) in enumerate(rows):
            seq = [self.image_token] * self.nq + p + a
            ids[j, : len(seq)] = torch.tensor(seq)
            start = self.nq + len(p)
            targets[j, start: start + len(a)] = torch.tensor(a)
        image_of = torch.tensor([r[0] for r in rows])
        return torch.from_numpy(np.stack(pix)), image_of, qids, qmask, ids, targets


def pad(seqs: list[list[int]]):
    """Token id lists as a zero-padded batch and its attention mask."""
    import torch

    width = max((len(q) for q in seqs), default=0)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for j, q in enumerate(seqs):
        ids[j, : len(q)] = torch.tensor(q)
        mask[j, : len(q)] = 1
    return ids, mask


N_PATCH_CLASSES = 1 + len(scenes.SHAPES) * len(scenes.COLORS)
MAX_SHAPES = 3


def shape_class(s: scenes.Shape) -> int:
    """Stage 1's class of a shape: 1 + kind * 4 + colour (0 is "no shape")."""
    return 1 + scenes.SHAPES.index(s.kind) * len(scenes.COLORS) + scenes.COLORS.index(s.color)


def patch_labels(scene: scenes.Scene, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Per patch of the ViT's grid x grid (row-major, like its patch tokens): the
    class of the shape whose centre falls in it, and that shape's rank from the
    left (1, 2, 3); 0 for both where no centre does."""
    classes = np.zeros((grid, grid), dtype=np.int64)
    ranks = np.zeros((grid, grid), dtype=np.int64)
    for rank, s in enumerate(scene.shapes, start=1):  # scene.shapes is left to right
        col = min(grid - 1, int(s.cx / scenes.ASPECT * grid))
        row = min(grid - 1, int(s.cy * grid))
        classes[row, col] = shape_class(s)
        ranks[row, col] = rank
    return classes.reshape(-1), ranks.reshape(-1)


def slot_labels(scene: scenes.Scene, slots: int) -> list[int]:
    """The scene's shapes left to right as classes, padded with 0 to `slots`."""
    out = [shape_class(s) for s in scene.shapes]
    return out + [0] * (slots - len(out))


def pretrain(model, batches: "Batcher", steps: int, lr: float, slots: bool) -> dict:
    """Stage 1: teach the ViT (and then the Q-Former) to see shapes before the LLM reads them.

    Trained end to end from scratch, the ViT learns colours but never outlines:
    the answer loss reaches it only through the Q-Former and the LLM, and three
    full trainings plateaued with shape answers at the majority class. (The
    real InstructBLIP never trains its ViT from scratch either: it is EVA-CLIP,
    pretrained, and its Q-Former is pretrained too, in BLIP-2's first stage.)

    Dense part (always): every ViT patch token predicts, through a linear head
    that is then thrown away, which shape (kind and colour) is centred in that
    patch, if any, and a second head its rank from the left (first, second,
    third). That puts "the second shape from the left is a red circle, here"
    into the token the Q-Former attends to, so a query can find "the second
    shape" by content, in one attention step, instead of working out an order
    between objects itself. A third head has every patch token say which
    column and row it is in, so positions stay in the features the Q-Former's
    keys are made of. (In a probe of the slot part, 800 steps from the same
    ViT: slots 66 % right, 38 % of whole scenes without these two heads; 87 %
    and 69 % with them.) Object patches weigh 5x, as they are one in 20.

    Slot part (`slots`): the Q-Former, given the scene and a question about it,
    has its first three query outputs name the shapes left to right (or none),
    through another throw-away head. Counting, "which is further left" and
    describing all read off those slots. Like BLIP-2's first stage, this trains
    the Q-Former on the picture with a direct signal, before any LLM reads it.
    """
    import torch
    import torch.nn.functional as F

    vis = model.vision_model
    cfg = model.config.vision_config
    grid = cfg.image_size // cfg.patch_size
    head = torch.nn.Linear(cfg.hidden_size, N_PATCH_CLASSES)
    rank_head = torch.nn.Linear(cfg.hidden_size, 1 + MAX_SHAPES)
    where_head = torch.nn.Linear(cfg.hidden_size, 2 * grid)
    params = [*vis.parameters(), *head.parameters(), *rank_head.parameters(), *where_head.parameters()]
    if slots:
        slot_head = torch.nn.Linear(model.config.qformer_config.hidden_size, N_PATCH_CLASSES)
        params += [*model.qformer.parameters(), model.query_tokens, *slot_head.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    warmup = 50
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    t0 = time.time()
    stats = []
    colors = len(scenes.COLORS)
    cells = torch.arange(grid * grid)
    where_target = torch.stack([cells % grid, cells // grid], dim=1)[None]  # (1, patches, [column, row])

    def dense_loss(logits, labels):
        # Object patches weigh 5x: they are one in 20.
        weight = torch.where(labels > 0, 5.0, 1.0).reshape(-1)
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none")
        return (ce * weight).sum() / weight.sum()

    for step in range(steps):
        pix, labels, ranks, found, qids, qmask = batches.vision_batch(grid, MAX_SHAPES, questions=slots)
        feats = vis(pixel_values=pix, return_dict=True).last_hidden_state
        logits, rank_logits = head(feats[:, 1:]), rank_head(feats[:, 1:])
        loss = dense_loss(logits, labels) + dense_loss(rank_logits, ranks)
        # Every patch token says where it is (column, row), so "further left" is
        # in the features the Q-Former's keys are made of.
        where = where_head(feats[:, 1:]).reshape(-1, 2, grid).transpose(1, 2)  # (tokens, classes, 2)
        loss = loss + F.cross_entropy(where, where_target.expand(len(pix), -1, -1).reshape(-1, 2))
        with torch.no_grad():
            pred, obj = logits.argmax(-1), labels > 0
            row = [(((pred - 1) // colors == (labels - 1) // colors) & (pred > 0))[obj].float().mean().item(),
                   (((pred - 1) % colors == (labels - 1) % colors) & (pred > 0))[obj].float().mean().item(),
                   (rank_logits.argmax(-1) == ranks)[obj].float().mean().item()]
        if slots:
            slot_logits = slot_head(query_outputs(model, feats, qids, qmask)[:, :MAX_SHAPES])
            loss = loss + F.cross_entropy(slot_logits.reshape(-1, N_PATCH_CLASSES), found.reshape(-1))
            with torch.no_grad():
                hit = slot_logits.argmax(-1) == found
                row += [hit.float().mean().item(), hit.all(dim=1).float().mean().item()]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        stats.append(row)
        if step % 100 == 0 or step == steps - 1:
            mean = np.mean(stats[-100:], axis=0)
            msg = f"shape centres: kind {100 * mean[0]:.0f}% colour {100 * mean[1]:.0f}% rank {100 * mean[2]:.0f}%"
            if slots:
                msg += f" | slots {100 * mean[3]:.0f}%, whole scenes {100 * mean[4]:.0f}%"
            log(f"{'queries' if slots else 'vision'} {step}/{steps} loss {loss.item():.4f} "
                f"{time.time() - t0:.0f} s | {msg}")
    mean = np.mean(stats[-100:], axis=0)
    report = {"steps": steps, "images_per_step": batches.images, "lr": lr, "seconds": round(time.time() - t0, 1),
              "final_loss": loss.item(), "centre_kind": mean[0], "centre_color": mean[1], "centre_rank": mean[2]}
    if slots:
        report.update(slots=mean[3], whole_scenes=mean[4])
    return report


def query_outputs(model, vis, qids, qmask):
    """The Q-Former's query outputs for image features `vis` and instructions `qids`."""
    import torch

    nq = model.config.num_query_tokens
    query = model.query_tokens.expand(vis.shape[0], -1, -1)
    mask = torch.cat([torch.ones(vis.shape[0], nq, dtype=torch.long), qmask], dim=1)
    return model.qformer(input_ids=qids, attention_mask=mask, query_embeds=query, encoder_hidden_states=vis,
                         encoder_attention_mask=torch.ones(vis.shape[:-1], dtype=torch.long),
                         return_dict=True).last_hidden_state[:, :nq]


def forward_loss(model, pixel_values, image_of, qids, qmask, ids, targets):
    """The InstructBLIP forward of `get_image_features` + the LLM, with the vision
    encoder run once per image (not once per question), and the answer-only loss."""
    import torch
    import torch.nn.functional as F

    vis = model.vision_model(pixel_values=pixel_values, return_dict=True).last_hidden_state[image_of]
    nq = model.config.num_query_tokens
    feats = model.language_projection(query_outputs(model, vis, qids, qmask))
    emb = model.get_input_embeddings()(ids[:, nq:])
    logits = model.language_model(inputs_embeds=torch.cat([feats, emb], dim=1)).logits
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets[:, 1:].reshape(-1),
                           ignore_index=-100)
    return loss, logits


def batch_hits(logits, targets) -> list[bool]:
    """Per row: is every answer token (and EOS) the argmax, given the ones before?"""
    pred = logits[:, :-1].argmax(-1)
    want = targets[:, 1:]
    return ((pred == want) | (want == -100)).all(dim=1).tolist()


def heldout_cases(per_type: int) -> list[dict]:
    """`per_type` held-out questions of every type, each on its own scene."""
    cases = []
    seed = HELDOUT_BASE
    for qtype in scenes.TYPES:
        n = 0
        while n < per_type:
            scene = scenes.sample_scene(seed)
            if qtype in scenes.available(scene):
                _, q, a = scenes.sample_question(scene, scenes.SplitMix64(seed ^ 0x5EED), qtype)
                cases.append({"type": qtype, "seed": seed, "prompt": q, "answer": a})
                n += 1
            seed += 1
    return cases


EVAL_SIZE = (640, 480)  # the test-pattern camera's default


def load_reference(ckpt: Path):
    import torch
    from transformers import (AutoTokenizer, BlipImageProcessorPil, InstructBlipForConditionalGeneration,
                              InstructBlipProcessor)

    model = InstructBlipForConditionalGeneration.from_pretrained(
        ckpt, dtype=torch.float32, attn_implementation="eager").eval()
    processor = InstructBlipProcessor(
        BlipImageProcessorPil.from_pretrained(ckpt), AutoTokenizer.from_pretrained(ckpt),
        AutoTokenizer.from_pretrained(ckpt / "qformer_tokenizer"), num_query_tokens=model.config.num_query_tokens)
    return model, processor


def evaluate(ckpt: Path, cases: list[dict], goldens: int = 0) -> tuple[dict, list[dict]]:
    """HF transformers' greedy answers on `cases`; accuracy per type. The first
    `goldens` cases of each type also get their tokens, Q-Former output and the
    smallest logit margin recorded."""
    import torch
    from PIL import Image

    model, processor = load_reference(ckpt)
    correct: dict[str, list[int]] = {t: [0, 0] for t in scenes.TYPES}
    seen: dict[str, int] = {t: 0 for t in scenes.TYPES}
    out = []
    for case in cases:
        img = Image.fromarray(scenes.render(scenes.sample_scene(case["seed"]), *EVAL_SIZE), "RGB")
        inputs = processor(images=img, text=case["prompt"], return_tensors="pt")
        with torch.no_grad():
            gen = model.generate(**inputs, do_sample=False, num_beams=1, max_new_tokens=PRESET["max_new_tokens"],
                                 output_scores=True, return_dict_in_generate=True)
        n_in = inputs["input_ids"].shape[1]
        tokens = gen.sequences[0, n_in:].tolist()
        # Recorded as blipd reports them: the answer's tokens, the EOS it
        # stopped on as `stop`.
        stop = "max_tokens"
        if tokens and tokens[-1] == model.generation_config.eos_token_id:
            tokens, stop = tokens[:-1], "eos"
        text = processor.tokenizer.decode(tokens, skip_special_tokens=True)
        ok = text.strip() == case["answer"]
        correct[case["type"]][0] += ok
        correct[case["type"]][1] += 1
        c = dict(case, reference_text=text, reference_correct=ok)
        if seen[case["type"]] < goldens:
            seen[case["type"]] += 1
            with torch.no_grad():
                feats = model.get_image_features(
                    inputs["pixel_values"], qformer_input_ids=inputs["qformer_input_ids"],
                    qformer_attention_mask=inputs["qformer_attention_mask"], return_dict=True).pooler_output
            margins = [float(torch.topk(s[0], 2).values.diff().abs()) for s in gen.scores]
            c.update(golden=True, tokens=tokens, stop=stop, min_logit_margin=min(margins),
                     qformer_input_ids=inputs["qformer_input_ids"][0].tolist(),
                     llm_input_ids=inputs["input_ids"][0, model.config.num_query_tokens:].tolist(),
                     qformer_shape=list(feats.shape), qformer=make_tiny.floats(feats))
        out.append(c)
    acc = {t: {"correct": v[0], "total": v[1], "accuracy": v[0] / max(v[1], 1)} for t, v in correct.items()}
    return acc, out


def table(acc: dict) -> str:
    lines = ["| question type | correct | accuracy |", "|---|---|---|"]
    for t, v in acc.items():
        lines.append(f"| {t} | {v['correct']}/{v['total']} | {100 * v['accuracy']:.1f} % |")
    return "\n".join(lines)


def train(ckpt: Path, args) -> dict:
    import torch
    from transformers import GenerationConfig, InstructBlipForConditionalGeneration

    steps, images, questions, lr, seed = args.steps, args.images, args.questions, args.lr, args.seed
    with tempfile.TemporaryDirectory() as t:
        processor, config, sp_model = make_tiny.processor_and_config(PRESET, Path(t), scenes.corpus())
        torch.manual_seed(seed)
        model = InstructBlipForConditionalGeneration(config)
        init_weights(model, seed)
        n_params = sum(p.numel() for p in model.parameters())
        log(f"{n_params} parameters; LLaMA vocab {config.text_config.vocab_size}, "
            f"Q-Former vocab {config.qformer_config.vocab_size}")
        model.train()
        stage1 = {}
        if args.vision_steps:
            stage1["vision"] = pretrain(model, Batcher(processor, config, seed ^ 0x5EE5, args.stage1_images, 1),
                                        args.vision_steps, args.stage1_lr, slots=False)
        if args.query_steps:
            stage1["queries"] = pretrain(model, Batcher(processor, config, seed ^ 0x51075, args.stage1_images, 1),
                                         args.query_steps, args.stage1_lr, slots=True)
        # Stage 2: everything on the answers; what stage 1 taught moves slower.
        def lr_scale(name: str) -> float:
            if name.startswith("vision_model.") and args.vision_steps:
                return args.vision_lr_scale
            if name.startswith(("qformer.", "query_tokens")) and args.query_steps:
                return args.qformer_lr_scale
            return 1.0

        by_key: dict[tuple[float, float], list] = {}
        for name, p in model.named_parameters():  # each parameter in exactly one group
            by_key.setdefault((lr_scale(name), 0.01 if p.ndim >= 2 else 0.0), []).append(p)
        groups = [{"params": ps, "lr": lr * scale, "weight_decay": wd} for (scale, wd), ps in by_key.items()]
        opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98))
        warmup = max(1, steps // 20)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
        batches = Batcher(processor, config, seed, images, questions)
        t0 = time.time()
        ema = None
        hits: dict[str, list[int]] = {t: [0, 0] for t in scenes.TYPES}
        for step in range(steps):
            batch = batches.next()
            loss, logits = forward_loss(model, *batch)
            with torch.no_grad():
                for qtype, hit in zip(batches.types, batch_hits(logits, batch[-1])):
                    hits[qtype][0] += hit
                    hits[qtype][1] += 1
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            value = loss.item()
            ema = value if ema is None else 0.98 * ema + 0.02 * value
            if step % 100 == 0 or step == steps - 1:
                acc = " ".join(f"{t} {100 * h / max(n, 1):.0f}%" for t, (h, n) in hits.items())
                log(f"step {step}/{steps} loss {ema:.4f} lr {max(sched.get_last_lr()):.2e} "
                    f"{time.time() - t0:.0f} s | training batches, teacher-forced: {acc}")
                hits = {t: [0, 0] for t in scenes.TYPES}
        train_s = time.time() - t0
        model.eval()
        model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2,
                                                   max_new_tokens=PRESET["max_new_tokens"], do_sample=False)
        if ckpt.exists():
            shutil.rmtree(ckpt)
        ckpt.mkdir(parents=True)
        model.save_pretrained(ckpt)
        processor.save_pretrained(ckpt)
        shutil.copy(sp_model, ckpt / "tokenizer.model")
    return {"steps": steps, "images_per_step": images, "questions_per_image": questions, "lr": lr, "seed": seed,
            "vision_lr_scale": args.vision_lr_scale, "qformer_lr_scale": args.qformer_lr_scale,
            "parameters": n_params, "stage1": stage1, "stage2_seconds": round(train_s, 1),
            "train_seconds": round(train_s + sum(r["seconds"] for r in stage1.values()), 1), "final_loss": ema}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=2500, help="stage 2 (answers) steps")
    ap.add_argument("--images", type=int, default=24, help="scenes per step")
    ap.add_argument("--questions", type=int, default=4, help="questions per scene")
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--vision-steps", type=int, default=1500, help="stage 1a (ViT, dense) steps; 0 skips it")
    ap.add_argument("--query-steps", type=int, default=2500, help="stage 1b (ViT + Q-Former, slots) steps; 0 skips it")
    ap.add_argument("--stage1-images", type=int, default=32, help="scenes per stage 1 step")
    ap.add_argument("--stage1-lr", type=float, default=1e-3)
    ap.add_argument("--vision-lr-scale", type=float, default=0.1, help="the ViT's stage 2 lr, as a fraction of --lr")
    ap.add_argument("--qformer-lr-scale", type=float, default=0.3, help="the Q-Former's stage 2 lr, likewise")
    ap.add_argument("--seed", type=int, default=PRESET["seed"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ckpt", type=Path, default=HERE / "out" / "demo-hf", help="where the HF checkpoint goes")
    ap.add_argument("--bundle", type=Path, default=HERE / "demo", help="where the blipd bundle goes")
    ap.add_argument("--goldens", type=Path, default=HERE.parent / "tests" / "fixtures" / "goldens" / "demo.json")
    ap.add_argument("--per-type", type=int, default=300, help="held-out questions per type")
    ap.add_argument("--eval-only", type=Path, metavar="CKPT", help="evaluate this checkpoint, no training")
    ap.add_argument("--no-export", action="store_true", help="train and evaluate only")
    args = ap.parse_args()
    import torch

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(args.threads)
    report = {}
    ckpt = args.ckpt
    if args.eval_only:
        ckpt = args.eval_only
    else:
        report["training"] = train(ckpt, args)
    cases = heldout_cases(args.per_type)
    t0 = time.time()
    acc, evaluated = evaluate(ckpt, cases, goldens=4)
    report["reference_accuracy"] = acc
    log(f"held-out accuracy (transformers, {time.time() - t0:.0f} s):\n{table(acc)}")
    if args.no_export:
        print(json.dumps(report, indent=1))
        return 0
    if "training" in report:
        (ckpt / "training.json").write_text(json.dumps(report["training"], indent=1) + "\n")
    elif (ckpt / "training.json").is_file():
        report["training"] = json.loads((ckpt / "training.json").read_text())
    exporter.export(str(ckpt), args.bundle, "f32", None, force=True,
                    label="models/train_demo.py (shape-scene demo model)")
    golden = {"bundle": "demo", "eval_size": list(EVAL_SIZE), "max_new_tokens": PRESET["max_new_tokens"],
              "report": report, "cases": evaluated}
    args.goldens.write_text(json.dumps(golden) + "\n")
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
