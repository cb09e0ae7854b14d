//! The shape scenes of the demo model, drawn by the test-pattern camera.
//!
//! A port of `models/scenes.py`, the generator the demo model was trained and
//! evaluated on: the same SplitMix64 stream picks 1 to 3 shapes (circle,
//! square, triangle; red, green, blue, yellow; three sizes) at distinct
//! left-to-right positions on a plain or noisy background, and the same
//! float64 per-pixel geometry draws them. So the camera shows exactly the
//! pictures of the held-out evaluation (`tests/fixtures/goldens/scenes.json`
//! pins scenes and pixels), and the zero-config daemon answers questions about
//! what it "sees" as well as the evaluation says.
//!
//! The scene is a 4:3 canvas, x in [0, 4/3] and y in [0, 1] (y down); a W x H
//! picture samples it at pixel centres.

use image::RgbImage;

const ASPECT: f64 = 4.0 / 3.0;
const SIZES: [f64; 3] = [0.11, 0.14, 0.17];
const MIN_DX: f64 = 0.12;
const GAP: f64 = 0.03;
const NOISE: i32 = 24;
const BACKGROUNDS: [[u8; 3]; 5] = [
    [235, 235, 235],
    [128, 128, 128],
    [40, 40, 40],
    [200, 190, 170],
    [160, 180, 200],
];

/// Vigna's SplitMix64, bit-identical to `models/scenes.py`'s.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// A shape's outline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShapeKind {
    Circle,
    Square,
    Triangle,
}

impl ShapeKind {
    const ALL: [ShapeKind; 3] = [ShapeKind::Circle, ShapeKind::Square, ShapeKind::Triangle];

    pub fn as_str(self) -> &'static str {
        match self {
            ShapeKind::Circle => "circle",
            ShapeKind::Square => "square",
            ShapeKind::Triangle => "triangle",
        }
    }
}

/// A shape's fill colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Color {
    Red,
    Green,
    Blue,
    Yellow,
}

impl Color {
    const ALL: [Color; 4] = [Color::Red, Color::Green, Color::Blue, Color::Yellow];

    pub fn as_str(self) -> &'static str {
        match self {
            Color::Red => "red",
            Color::Green => "green",
            Color::Blue => "blue",
            Color::Yellow => "yellow",
        }
    }

    pub fn rgb(self) -> [u8; 3] {
        match self {
            Color::Red => [220, 40, 40],
            Color::Green => [40, 170, 60],
            Color::Blue => [40, 80, 220],
            Color::Yellow => [240, 210, 40],
        }
    }
}

/// One shape: centre and "radius" in canvas units (fractions of the height).
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    pub kind: ShapeKind,
    pub color: Color,
    pub cx: f64,
    pub cy: f64,
    pub r: f64,
}

impl Shape {
    /// Whether the canvas point (x, y) is inside (the same float64 expressions
    /// as `scenes.inside`).
    fn covers(&self, x: f64, y: f64) -> bool {
        let dx = x - self.cx;
        let dy = y - self.cy;
        let r = self.r;
        match self.kind {
            ShapeKind::Circle => dx * dx + dy * dy <= r * r,
            ShapeKind::Square => {
                let h = r * 0.88;
                dx.abs() <= h && dy.abs() <= h
            }
            ShapeKind::Triangle => {
                let t = (dy + r) / (1.8 * r);
                (0.0..=1.0).contains(&t) && dx.abs() <= t * (1.1 * r)
            }
        }
    }
}

/// One scene: what a seed draws.
#[derive(Debug, Clone, PartialEq)]
pub struct Scene {
    pub seed: u64,
    pub background: [u8; 3],
    pub noisy: bool,
    /// Left to right.
    pub shapes: Vec<Shape>,
}

impl Scene {
    /// The scene of `seed`: the numbers `scenes.sample_scene` draws, in its order.
    pub fn sample(seed: u64) -> Scene {
        let mut rng = SplitMix64::new(seed);
        let n = 1 + rng.below(3);
        let noisy = rng.below(2) == 1;
        let background = BACKGROUNDS[rng.below(BACKGROUNDS.len())];
        let mut shapes: Vec<Shape> = Vec::with_capacity(n);
        while shapes.len() < n {
            let kind = ShapeKind::ALL[rng.below(ShapeKind::ALL.len())];
            let color = Color::ALL[rng.below(Color::ALL.len())];
            let r = SIZES[rng.below(SIZES.len())];
            let cx = r + rng.uniform() * (ASPECT - 2.0 * r);
            let cy = r + rng.uniform() * (1.0 - 2.0 * r);
            let fits = shapes.iter().all(|s| {
                let dx = cx - s.cx;
                let dy = cy - s.cy;
                dx.abs() >= MIN_DX && (dx * dx + dy * dy).sqrt() >= r + s.r + GAP
            });
            if fits {
                shapes.push(Shape {
                    kind,
                    color,
                    cx,
                    cy,
                    r,
                });
            }
        }
        shapes.sort_by(|a, b| a.cx.total_cmp(&b.cx));
        Scene {
            seed,
            background,
            noisy,
            shapes,
        }
    }

    /// "a red circle, a blue square and a green triangle": left to right, the
    /// answer the demo model is trained to give to "Describe the scene."
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self
            .shapes
            .iter()
            .map(|s| format!("a {} {}", s.color.as_str(), s.kind.as_str()))
            .collect();
        match parts.split_last() {
            None => String::new(),
            Some((last, [])) => last.clone(),
            Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
        }
    }

    /// The scene drawn at `width` x `height`, pixel-identical to `scenes.render`.
    pub fn render(&self, width: u32, height: u32) -> RgbImage {
        let (w, h) = (f64::from(width), f64::from(height));
        RgbImage::from_fn(width, height, |px, py| {
            let x = (f64::from(px) + 0.5) * ASPECT / w;
            let y = (f64::from(py) + 0.5) / h;
            if let Some(s) = self.shapes.iter().rev().find(|s| s.covers(x, y)) {
                return image::Rgb(s.color.rgb());
            }
            let mut rgb = self.background;
            if self.noisy {
                let base = (u64::from(py) * u64::from(width) + u64::from(px)) * 3;
                for (c, v) in rgb.iter_mut().enumerate() {
                    let n = noise(self.seed, base + c as u64);
                    *v = (i32::from(*v) + n).clamp(0, 255) as u8;
                }
            }
            image::Rgb(rgb)
        })
    }
}

/// The noisy background's offset for one channel value: SplitMix64's
/// finaliser of (seed, index), in [-NOISE, NOISE].
fn noise(seed: u64, index: u64) -> i32 {
    let mut z = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add((index + 1).wrapping_mul(0xD1B5_4A32_D192_ED03));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z % (2 * NOISE as u64 + 1)) as i32 - NOISE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_the_reference_vector() {
        // SplitMix64 from seed 1234567 (Vigna's reference implementation).
        let mut r = SplitMix64::new(1234567);
        let got: Vec<u64> = (0..3).map(|_| r.next_u64()).collect();
        assert_eq!(
            got,
            [
                6457827717110365317,
                3203168211198807973,
                9817491932198370423
            ]
        );
    }

    #[test]
    fn scenes_have_one_to_three_separated_shapes() {
        for seed in 0..500 {
            let s = Scene::sample(seed);
            assert!((1..=3).contains(&s.shapes.len()));
            for pair in s.shapes.windows(2) {
                assert!(pair[1].cx - pair[0].cx >= MIN_DX);
            }
        }
    }

    #[test]
    fn describe_joins_left_to_right() {
        let mut s = Scene::sample(0);
        s.shapes.truncate(1);
        assert!(s.describe().starts_with("a "));
        assert!(!s.describe().contains(" and "));
    }
}
