//! Port of Pillow's `libImaging/Resample.c` (8 bits per channel path), as of
//! Pillow 13 (the version pinned in `models/requirements.txt`).
//!
//! Kept deliberately close to the C source so that a reader can check it line
//! by line: `precompute_coeffs`, `normalize_coeffs_8bpc`,
//! `ImagingResampleHorizontal_8bpc`, `ImagingResampleVertical_8bpc` and the
//! pass order of `ImagingResampleInner`. The order matters: each pass rounds
//! to 8 bits, so horizontal-then-vertical and the reverse differ by a few
//! levels.

use image::RgbImage;

/// Resampling filters with Pillow's definitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    Bilinear,
    Bicubic,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        match self {
            Filter::Bilinear => {
                let x = x.abs();
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Filter::Bicubic => {
                // a = -0.5, as in Pillow (PyTorch/OpenCV use -0.75).
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Integer coefficients for one axis: for each output index, the first input
/// index and the fixed-point weights of the `len` following inputs.
struct Coeffs {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    kk: Vec<i32>,
}

fn precompute_coeffs(in_size: usize, out_size: usize, filter: Filter) -> Coeffs {
    let in0 = 0.0f64;
    let in1 = in_size as f64;
    let scale = (in1 - in0) / out_size as f64;
    let filterscale = if scale < 1.0 { 1.0 } else { scale };
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;

    let mut prekk = vec![0.0f64; out_size * ksize];
    let mut bounds = Vec::with_capacity(out_size);
    for xx in 0..out_size {
        let center = in0 + (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C truncates toward zero with an (int) cast; the argument can be
        // negative only before the clamp, where truncation vs floor does not
        // matter because the result is clamped to 0 anyway... except for
        // values in (-1, 0), which both give 0.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize - xmin;
        let k = &mut prekk[xx * ksize..(xx + 1) * ksize];
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(xmax) {
            let w = filter.weight((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        for kx in k.iter_mut().take(xmax) {
            if ww != 0.0 {
                *kx /= ww;
            }
        }
        bounds.push((xmin, xmax));
    }
    // normalize_coeffs_8bpc
    let kk = prekk
        .iter()
        .map(|&v| {
            let scaled = v * (1u32 << PRECISION_BITS) as f64;
            if v < 0.0 {
                (-0.5 + scaled) as i32
            } else {
                (0.5 + scaled) as i32
            }
        })
        .collect();
    Coeffs { ksize, bounds, kk }
}

#[inline]
fn clip8(v: i32) -> u8 {
    // Pillow: ss >> PRECISION_BITS, then clamp through a lookup table.
    let v = v >> PRECISION_BITS;
    v.clamp(0, 255) as u8
}

fn resample_horizontal(src: &[u8], w: usize, h: usize, out_w: usize, c: &Coeffs) -> Vec<u8> {
    let mut out = vec![0u8; out_w * h * 3];
    for y in 0..h {
        let row = &src[y * w * 3..(y + 1) * w * 3];
        let orow = &mut out[y * out_w * 3..(y + 1) * out_w * 3];
        for xx in 0..out_w {
            let (xmin, xmax) = c.bounds[xx];
            let k = &c.kk[xx * c.ksize..xx * c.ksize + xmax];
            let mut ss = [1i32 << (PRECISION_BITS - 1); 3];
            for (x, &kx) in k.iter().enumerate() {
                let p = &row[(x + xmin) * 3..(x + xmin) * 3 + 3];
                ss[0] += p[0] as i32 * kx;
                ss[1] += p[1] as i32 * kx;
                ss[2] += p[2] as i32 * kx;
            }
            orow[xx * 3] = clip8(ss[0]);
            orow[xx * 3 + 1] = clip8(ss[1]);
            orow[xx * 3 + 2] = clip8(ss[2]);
        }
    }
    out
}

fn resample_vertical(src: &[u8], w: usize, out_h: usize, c: &Coeffs) -> Vec<u8> {
    let mut out = vec![0u8; w * out_h * 3];
    for yy in 0..out_h {
        let (ymin, ymax) = c.bounds[yy];
        let k = &c.kk[yy * c.ksize..yy * c.ksize + ymax];
        let orow = &mut out[yy * w * 3..(yy + 1) * w * 3];
        for (xx, o) in orow.iter_mut().enumerate() {
            let mut ss = 1i32 << (PRECISION_BITS - 1);
            for (y, &ky) in k.iter().enumerate() {
                ss += src[(y + ymin) * w * 3 + xx] as i32 * ky;
            }
            *o = clip8(ss);
        }
    }
    out
}

/// Resizes an RGB image exactly like `PIL.Image.resize((out_w, out_h), filter)`
/// with no `box` and no `reducing_gap`.
pub fn resize_rgb8(img: &RgbImage, out_w: u32, out_h: u32, filter: Filter) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    if (w, h) == (out_w as usize, out_h as usize) {
        return img.clone();
    }
    let (ow, oh) = (out_w as usize, out_h as usize);
    let need_horizontal = ow != w;
    let need_vertical = oh != h;
    // Pillow >= 12: "If height is being scaled down more than twice the
    // amount the width is, run the vertical pass first".
    let (dh, dw) = (h as i64 - oh as i64, w as i64 - ow as i64);
    let horizontal_first = !(dh > 0 && dh > dw * 2);
    let mut buf: Vec<u8> = img.as_raw().clone();
    let mut cur_w = w;
    let mut cur_h = h;
    let horizontal = |buf: &[u8], cur_h: usize| {
        let c = precompute_coeffs(w, ow, filter);
        resample_horizontal(buf, w, cur_h, ow, &c)
    };
    if horizontal_first && need_horizontal {
        buf = horizontal(&buf, cur_h);
        cur_w = ow;
    }
    if need_vertical {
        let c = precompute_coeffs(h, oh, filter);
        buf = resample_vertical(&buf, cur_w, oh, &c);
        cur_h = oh;
    }
    if !horizontal_first && need_horizontal {
        buf = horizontal(&buf, cur_h);
    }
    RgbImage::from_raw(out_w, out_h, buf).expect("buffer size matches dimensions by construction")
}
