"""The demo model's committed artefacts stay what the scripts make.

CI does not retrain (tens of minutes); it checks that the scene generator and
the held-out set still produce exactly the committed goldens, that the shipped
bundle is the exported checkpoint it claims to be, and that every question the
generator can ask tokenizes without unknown tokens.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GOLDENS = ROOT / "tests" / "fixtures" / "goldens"
sys.path.insert(0, str(ROOT / "models"))

import scenes  # noqa: E402
import train_demo  # noqa: E402


def test_scene_goldens_are_what_the_generator_draws():
    committed = json.loads((GOLDENS / "scenes.json").read_text())
    assert scenes.goldens() == committed


def test_heldout_set_is_reproducible():
    g = json.loads((GOLDENS / "demo.json").read_text())
    per_type = len(g["cases"]) // len(scenes.TYPES)
    fresh = train_demo.heldout_cases(per_type)
    assert [(c["type"], c["seed"], c["prompt"], c["answer"]) for c in g["cases"]] == [
        (c["type"], c["seed"], c["prompt"], c["answer"]) for c in fresh
    ]
    assert {c["type"] for c in fresh} == set(scenes.TYPES)


def test_heldout_scenes_are_not_training_seeds():
    # Training draws seeds below 2**62; the held-out ones start at 2**63.
    for c in train_demo.heldout_cases(5):
        assert c["seed"] > train_demo.TRAIN_SEED_MASK


def test_every_question_type_is_answerable_and_balanced():
    counts = {t: 0 for t in scenes.TYPES}
    answers = {t: set() for t in scenes.TYPES}
    for seed in range(3000):
        scene = scenes.sample_scene(seed)
        rng = scenes.SplitMix64(seed)
        for t in scenes.available(scene):
            _, q, a = scenes.sample_question(scene, rng, t)
            counts[t] += 1
            answers[t].add(a)
            assert q and a == a.strip().lower()
    assert all(n > 500 for n in counts.values()), counts
    assert answers["exists"] == {"yes", "no"}
    assert answers["count_shape"] == set(scenes.NUMBERS)
    assert answers["color"] == set(scenes.COLORS)


def test_bundle_tokenizers_cover_the_question_language():
    tok = json.loads((ROOT / "models" / "demo" / "llm-tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    assert "<0x41>" in vocab  # byte fallback: nothing is ever unknown
    qtok = json.loads((ROOT / "models" / "demo" / "qformer-tokenizer.json").read_text())
    qvocab = qtok["model"]["vocab"]
    for line in scenes.corpus():
        for word in line.lower().replace("?", " ").replace(".", " ").replace(",", " ").split():
            assert word in qvocab or all(c in qvocab for c in word), word


def test_stage1_targets_name_the_shapes_where_they_are():
    grid = 8
    for seed in range(200):
        scene = scenes.sample_scene(seed)
        labels, ranks = train_demo.patch_labels(scene, grid)
        slots = train_demo.slot_labels(scene, 3)
        assert len(labels) == len(ranks) == grid * grid and len(slots) == 3
        # Slots: the shapes left to right, then "none".
        assert [s for s in slots if s] == [
            1 + scenes.SHAPES.index(s.kind) * len(scenes.COLORS) + scenes.COLORS.index(s.color)
            for s in scene.shapes
        ]
        assert slots[len(scene.shapes):] == [0] * (3 - len(scene.shapes))
        # Each shape's class and rank from the left sit in the patch holding its centre.
        for rank, s in enumerate(sorted(scene.shapes, key=lambda s: s.cx), start=1):
            row, col = int(s.cy * grid), int(s.cx / scenes.ASPECT * grid)
            assert labels[row * grid + col] == slots[rank - 1]
            assert ranks[row * grid + col] == rank
        assert sum(1 for v in labels if v) == sum(1 for v in ranks if v) == len(scene.shapes)


def test_training_script_runs_end_to_end(tmp_path):
    # Two steps of every stage, evaluation of one case per type: not a model,
    # but the documented script, from fresh weights to a saved checkpoint.
    import subprocess

    out = subprocess.run(
        [sys.executable, str(ROOT / "models" / "train_demo.py"), "--steps", "2", "--vision-steps", "2",
         "--query-steps", "2", "--images", "2", "--stage1-images", "2", "--per-type", "1", "--no-export",
         "--ckpt", str(tmp_path / "ckpt")],
        capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    assert set(report["training"]["stage1"]) == {"vision", "queries"}
    assert sum(v["total"] for v in report["reference_accuracy"].values()) == len(scenes.TYPES)
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()
