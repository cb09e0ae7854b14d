"""Synthetic shape scenes and questions about them: the demo model's world.

A scene is 1 to 3 shapes (circle, square, triangle) in one of four colours and
three sizes, at distinct left-to-right positions, on a plain or noisy
background. Everything derives from one 64-bit seed through SplitMix64, and the
drawing is plain per-pixel geometry in float64, so `src/camera/scene.rs` (the
test-pattern camera of blipd) reproduces both the scene and its pixels exactly;
`tests/fixtures/goldens/scenes.json` pins that.

Coordinates: the scene is a 4:3 canvas, x in [0, 4/3] and y in [0, 1] (y down).
A W x H picture samples it at pixel centres: x = (px + 0.5) * (4/3) / W,
y = (py + 0.5) / H.

Questions come in six types (see `TYPES`); each answer is a short lower-case
phrase, the same text the model is trained to generate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MASK64 = (1 << 64) - 1
ASPECT = 4.0 / 3.0

SHAPES = ["circle", "square", "triangle"]
COLORS = ["red", "green", "blue", "yellow"]
RGB = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
}
# Background tones: greys and muted tints, none close to a shape colour.
BACKGROUNDS = [(235, 235, 235), (128, 128, 128), (40, 40, 40), (200, 190, 170), (160, 180, 200)]
# Shape "radius" as a fraction of the canvas height.
SIZES = [0.11, 0.14, 0.17]
# Centres at least this far apart in x (so "left of" and the left-to-right
# description are never ambiguous), and outlines this far apart.
MIN_DX = 0.12
GAP = 0.03
# The noisy background: each channel moves by up to this much, per pixel.
NOISE = 24
NUMBERS = ["zero", "one", "two", "three"]

TYPES = ["color", "count_shape", "count_color", "exists", "left", "describe"]


class SplitMix64:
    """Vigna's SplitMix64: tiny, and bit-identical to the Rust port."""

    def __init__(self, seed: int):
        self.state = seed & MASK64

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)

    def below(self, n: int) -> int:
        return self.next() % n

    def uniform(self) -> float:
        return (self.next() >> 11) * (1.0 / (1 << 53))


@dataclass(frozen=True)
class Shape:
    kind: str
    color: str
    cx: float
    cy: float
    r: float

    def describe(self) -> str:
        return f"{self.color} {self.kind}"


@dataclass(frozen=True)
class Scene:
    seed: int
    background: tuple[int, int, int]
    noisy: bool
    shapes: tuple[Shape, ...]  # left to right

    def to_json(self) -> dict:
        return {
            "seed": self.seed,
            "background": list(self.background),
            "noisy": self.noisy,
            "shapes": [
                {"kind": s.kind, "color": s.color, "cx": s.cx, "cy": s.cy, "r": s.r} for s in self.shapes
            ],
        }


def sample_scene(seed: int) -> Scene:
    """The scene of `seed`. The Rust port draws the same numbers in the same order."""
    rng = SplitMix64(seed)
    n = 1 + rng.below(3)
    noisy = rng.below(2) == 1
    background = BACKGROUNDS[rng.below(len(BACKGROUNDS))]
    shapes: list[Shape] = []
    while len(shapes) < n:
        kind = SHAPES[rng.below(len(SHAPES))]
        color = COLORS[rng.below(len(COLORS))]
        r = SIZES[rng.below(len(SIZES))]
        cx = r + rng.uniform() * (ASPECT - 2.0 * r)
        cy = r + rng.uniform() * (1.0 - 2.0 * r)
        fits = True
        for s in shapes:
            dx = cx - s.cx
            dy = cy - s.cy
            if abs(dx) < MIN_DX or math.sqrt(dx * dx + dy * dy) < r + s.r + GAP:
                fits = False
                break
        if fits:
            shapes.append(Shape(kind, color, cx, cy, r))
    shapes.sort(key=lambda s: s.cx)
    return Scene(seed, background, noisy, tuple(shapes))


def _noise(seed: int, width: int, height: int) -> np.ndarray:
    """Per-pixel, per-channel offsets in [-NOISE, NOISE]: SplitMix64's finaliser of
    (seed, channel index), so any pixel can be computed alone (Rust does so)."""
    idx = np.arange(width * height * 3, dtype=np.uint64).reshape(height, width, 3)
    with np.errstate(over="ignore"):
        z = np.uint64(seed & MASK64) * np.uint64(0x9E3779B97F4A7C15) + (idx + np.uint64(1)) * np.uint64(
            0xD1B54A32D192ED03
        )
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z % np.uint64(2 * NOISE + 1)).astype(np.int32) - NOISE


def inside(kind: str, x: np.ndarray, y: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    """Which sample points the shape covers (the same float64 expressions as Rust)."""
    dx = x - cx
    dy = y - cy
    if kind == "circle":
        return dx * dx + dy * dy <= r * r
    if kind == "square":
        h = r * 0.88
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    # Triangle, apex up: from y = cy - r to y = cy + 0.8 r, half-width growing to 1.1 r.
    t = (dy + r) / (1.8 * r)
    return (t >= 0.0) & (t <= 1.0) & (np.abs(dx) <= t * (1.1 * r))


def render(scene: Scene, width: int, height: int) -> np.ndarray:
    """The scene as an H x W x 3 uint8 RGB array."""
    img = np.empty((height, width, 3), dtype=np.int32)
    img[:] = np.array(scene.background, dtype=np.int32)
    if scene.noisy:
        img += _noise(scene.seed, width, height)
        np.clip(img, 0, 255, out=img)
    xs = (np.arange(width, dtype=np.float64) + 0.5) * ASPECT / width
    ys = (np.arange(height, dtype=np.float64) + 0.5) / height
    x, y = np.meshgrid(xs, ys)
    for s in scene.shapes:
        img[inside(s.kind, x, y, s.cx, s.cy, s.r)] = RGB[s.color]
    return img.astype(np.uint8)


# ---------------------------------------------------------------------------
# Questions
# ---------------------------------------------------------------------------

def _join(parts: list[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def describe(scene: Scene) -> str:
    """'a red circle, a blue square and a green triangle', left to right."""
    return _join([f"a {s.describe()}" for s in scene.shapes])


def available(scene: Scene) -> list[str]:
    kinds = [s.kind for s in scene.shapes]
    descs = [s.describe() for s in scene.shapes]
    out = ["count_shape", "count_color", "exists", "describe"]
    if any(kinds.count(k) == 1 for k in SHAPES):
        out.insert(0, "color")
    if sum(descs.count(d) == 1 for d in descs) >= 2:
        out.insert(-1, "left")
    return out


def question(scene: Scene, qtype: str, rng: SplitMix64) -> tuple[str, str]:
    """A (question, answer) of `qtype` about `scene`; `qtype` must be available."""
    shapes = scene.shapes
    if qtype == "color":
        unique = [s for s in shapes if sum(t.kind == s.kind for t in shapes) == 1]
        s = unique[rng.below(len(unique))]
        word = ["color", "colour"][rng.below(2)]
        return f"What {word} is the {s.kind}?", s.color
    if qtype == "count_shape":
        kind = SHAPES[rng.below(len(SHAPES))]
        n = sum(s.kind == kind for s in shapes)
        return f"How many {kind}s are there?", NUMBERS[n]
    if qtype == "count_color":
        color = COLORS[rng.below(len(COLORS))]
        n = sum(s.color == color for s in shapes)
        return f"How many {color} shapes are there?", NUMBERS[n]
    if qtype == "exists":
        with_color = rng.below(2) == 1
        present = {(s.color if with_color else "") + s.kind for s in shapes}
        want_yes = rng.below(2) == 1
        pool = [(c if with_color else "", k) for c in (COLORS if with_color else [""]) for k in SHAPES]
        pool = [p for p in pool if ((p[0] + p[1]) in present) == want_yes]
        if not pool:  # every shape kind present, asked without colour: only "yes" possible
            pool = [(c if with_color else "", k) for c in (COLORS if with_color else [""]) for k in SHAPES]
        c, k = pool[rng.below(len(pool))]
        desc = f"{c} {k}" if c else k
        return f"Is there a {desc}?", "yes" if (c + k) in present else "no"
    if qtype == "left":
        descs = [s.describe() for s in shapes]
        unique = [s for s in shapes if descs.count(s.describe()) == 1]
        i = rng.below(len(unique))
        j = rng.below(len(unique) - 1)
        if j >= i:
            j += 1
        a, b = unique[i], unique[j]
        left = a if a.cx < b.cx else b
        return f"Which is further left, the {a.describe()} or the {b.describe()}?", left.describe()
    if qtype == "describe":
        q = ["Describe the scene.", "What do you see?"][rng.below(2)]
        return q, describe(scene)
    raise ValueError(qtype)


def sample_question(scene: Scene, rng: SplitMix64, qtype: str | None = None) -> tuple[str, str, str]:
    """(type, question, answer): `qtype`, or a type drawn uniformly from those the scene allows."""
    types = available(scene)
    if qtype is None:
        qtype = types[rng.below(len(types))]
    q, a = question(scene, qtype, rng)
    return qtype, q, a


def corpus() -> list[str]:
    """Every question and answer form, for training the tokenizers."""
    lines = []
    for k in SHAPES:
        lines += [f"What color is the {k}?", f"What colour is the {k}?", f"How many {k}s are there?",
                  f"Is there a {k}?"]
        for c in COLORS:
            lines += [f"Is there a {c} {k}?", f"a {c} {k}, a {c} {k} and a {c} {k}"]
    for c in COLORS:
        lines.append(f"How many {c} shapes are there?")
    for a in [f"{c} {k}" for c in COLORS for k in SHAPES]:
        lines.append(f"Which is further left, the {a} or the {a}?")
    lines += ["Describe the scene.", "What do you see?", " ".join(NUMBERS), "yes no"]
    return lines


# ---------------------------------------------------------------------------
# Goldens for the Rust port, and a look at a scene
# ---------------------------------------------------------------------------

GOLDEN_SEEDS = list(range(12)) + [2**63 + 12345, 2**64 - 1, 0x123456789ABCDEF]
GOLDEN_SIZES = [(640, 480), (97, 61), (32, 32)]


def goldens() -> dict:
    """Scenes and the sha256 of their pixels at a few sizes (what tests/camera.rs checks)."""
    import hashlib
    import struct

    out = {"cases": []}
    for seed in GOLDEN_SEEDS:
        scene = sample_scene(seed)
        case = scene.to_json()
        for shape in case["shapes"]:  # exact bits: JSON readers may round the last digit
            shape["bits"] = [struct.unpack("<Q", struct.pack("<d", shape[k]))[0] for k in ("cx", "cy", "r")]
        case["describe"] = describe(scene)
        case["renders"] = [{"width": w, "height": h, "sha256": hashlib.sha256(render(scene, w, h).tobytes()).hexdigest()}
                           for w, h in GOLDEN_SIZES]
        out["cases"].append(case)
    rng = SplitMix64(1234567)
    out["splitmix64_1234567"] = [rng.next() for _ in range(3)]
    return out


def main() -> int:
    import argparse
    import json
    import sys
    from pathlib import Path

    ap = argparse.ArgumentParser(description="Draw a demo scene, or write the Rust port's goldens.")
    ap.add_argument("seed", nargs="?", type=lambda s: int(s, 0), help="draw this scene (PNG) and print its questions")
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--png", type=Path, default=Path("scene.png"))
    ap.add_argument("--goldens", type=Path, help="write the goldens JSON here")
    args = ap.parse_args()
    if args.goldens:
        args.goldens.write_text(json.dumps(goldens(), indent=1) + "\n")
    if args.seed is not None:
        from PIL import Image

        w, h = (int(v) for v in args.size.split("x"))
        scene = sample_scene(args.seed)
        Image.fromarray(render(scene, w, h), "RGB").save(args.png)
        print(f"{args.png}: {describe(scene)}")
        rng = SplitMix64(args.seed)
        for t in available(scene):
            _, q, a = sample_question(scene, rng, t)
            print(f"  {q} -> {a}")
    return 0 if (args.goldens or args.seed is not None) else (ap.print_usage(sys.stderr) or 2)


if __name__ == "__main__":
    raise SystemExit(main())
