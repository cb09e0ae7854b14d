//! The `test_pattern` source: colour bars that change every frame, or the
//! demo model's shape scenes.

use std::sync::Arc;

use image::RgbImage;

use super::capture::{run_ticks, Shared, Source};
use super::scene;

// ---------------------------------------------------------------------------
// Test pattern
// ---------------------------------------------------------------------------

/// Colour bars plus a block that moves with `seq` and the bits of `seq` in a
/// strip at the bottom, so every frame differs and is recognisable.
pub(super) struct TestPattern {
    width: u32,
    height: u32,
    /// Built on the capture thread at first use, so `spawn` stays cheap.
    bars: Option<RgbImage>,
}

impl TestPattern {
    const BARS: [[u8; 3]; 8] = [
        [255, 255, 255],
        [255, 255, 0],
        [0, 255, 255],
        [0, 255, 0],
        [255, 0, 255],
        [255, 0, 0],
        [0, 0, 255],
        [0, 0, 0],
    ];

    pub(super) fn new(width: u32, height: u32) -> Self {
        TestPattern {
            width,
            height,
            bars: None,
        }
    }

    fn frame(&mut self, seq: u64) -> RgbImage {
        let (width, height) = (self.width, self.height);
        let bars = self.bars.get_or_insert_with(|| {
            RgbImage::from_fn(width, height, |x, _| {
                let i = (x as u64 * Self::BARS.len() as u64 / width as u64) as usize;
                image::Rgb(Self::BARS[i.min(Self::BARS.len() - 1)])
            })
        });
        let mut img = bars.clone();
        let (w, h) = img.dimensions();
        // A grey block sliding left to right, one step per frame.
        let side = (w.min(h) / 6).max(1);
        let span = (w - side + 1) as u64;
        let step = (w as u64 / 32).max(1);
        let x0 = (seq.wrapping_mul(step) % span) as u32;
        let y0 = (h - side) / 2;
        for y in y0..y0 + side {
            for x in x0..x0 + side {
                img.put_pixel(x, y, image::Rgb([128, 128, 128]));
            }
        }
        // The low 32 bits of seq, white for 1 and black for 0.
        let cell = w / 32;
        let strip = (h / 16).max(1);
        if cell > 0 {
            for bit in 0..32u32 {
                let v = if (seq >> bit) & 1 == 1 { 255 } else { 0 };
                for y in h - strip..h {
                    for x in bit * cell..(bit + 1) * cell {
                        img.put_pixel(x, y, image::Rgb([v, v, v]));
                    }
                }
            }
        }
        img
    }
}

impl Source for TestPattern {
    fn run(&mut self, shared: &Shared) -> Result<(), String> {
        run_ticks(shared, |s| Ok(Arc::new(self.frame(s.next_seq()))))
    }
}

/// The demo scenes: scene `seed + n` during the n-th `interval`, counted in
/// frames so the sequence is the same however busy the machine is. A scene is
/// drawn once and its frame shared until the next one.
pub(super) struct SceneSource {
    width: u32,
    height: u32,
    seed: u64,
    frames_per_scene: u64,
    current: Option<(u64, Arc<RgbImage>)>,
}

impl SceneSource {
    pub(super) fn new(width: u32, height: u32, seed: u64, frames_per_scene: f32) -> Self {
        SceneSource {
            width,
            height,
            seed,
            frames_per_scene: (frames_per_scene.round() as u64).max(1),
            current: None,
        }
    }

    /// The scene seed shown at frame `seq`.
    fn scene_at(&self, seq: u64) -> u64 {
        self.seed.wrapping_add(seq / self.frames_per_scene)
    }

    fn frame(&mut self, seq: u64) -> Arc<RgbImage> {
        let want = self.scene_at(seq);
        match &self.current {
            Some((seed, img)) if *seed == want => img.clone(),
            _ => {
                let scene = scene::Scene::sample(want);
                tracing::debug!(seed = want, scene = %scene.describe(), "test pattern: next scene");
                let img = Arc::new(scene.render(self.width, self.height));
                self.current = Some((want, img.clone()));
                img
            }
        }
    }
}

impl Source for SceneSource {
    fn run(&mut self, shared: &Shared) -> Result<(), String> {
        run_ticks(shared, |s| Ok(self.frame(s.next_seq())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn test_pattern_frames_differ_and_are_deterministic() {
        for (w, h) in [(640, 480), (1, 1), (7, 3), (33, 100)] {
            let mut tp = TestPattern::new(w, h);
            let a = tp.frame(0);
            let b = tp.frame(1);
            assert_eq!(a.dimensions(), (w, h));
            if w >= 32 {
                assert_ne!(a, b);
            }
            assert_eq!(a, TestPattern::new(w, h).frame(0));
            // Large seq values must not overflow anything.
            let _ = tp.frame(u64::MAX);
        }
    }
}
