//! Image preprocessing: decoded frame -> normalised `pixel_values` (NCHW f32).
//!
//! The reference (`BlipImageProcessor` with the PIL backend) resizes the 8-bit
//! RGB image straight to the bundle's size with PIL's BICUBIC filter, then
//! rescales and normalises. Generic Rust resizers differ from PIL in the
//! filter's `a`, in antialiasing support and in rounding, and those 1-LSB
//! differences move the vision features. So this module is a faithful port of
//! Pillow's `libImaging/Resample.c` 8-bit path: same coefficients, same
//! 22-bit fixed point accumulation, same rounding and clamping, same pass order
//! (horizontal then vertical).

mod resample;

pub use resample::{resize_rgb8, Filter};

use crate::bundle::ImageSpec;
use image::RgbImage;

/// Errors of the preprocessing stage.
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    #[error("image is empty ({width}x{height})")]
    EmptyImage { width: u32, height: u32 },
    #[error("could not read image {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: image::ImageError,
    },
    #[error("unsupported resample filter {0:?} in bundle manifest (supported: bicubic, bilinear)")]
    UnsupportedFilter(String),
    #[error("image {path} is {width}x{height}: over limits.max_image_pixels = {max_pixels}")]
    TooLarge {
        path: String,
        width: u32,
        height: u32,
        max_pixels: u64,
    },
}

/// Largest image (width x height) any decoder here will allocate for; checked
/// from the header, before decoding, because a few-KB file may declare
/// 65535x65535 (12 GiB of RGB), which would abort the process. One limit for
/// the whole process (cameras decode on their own threads), set at start
/// from `limits.max_image_pixels`.
static MAX_PIXELS: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(DEFAULT_MAX_PIXELS);

/// 40 megapixels (e.g. 7680x5200): above any camera frame, 120 MB as RGB.
pub const DEFAULT_MAX_PIXELS: u64 = 40_000_000;

/// Sets the pixel limit of every later decode.
pub fn set_max_pixels(n: u64) {
    MAX_PIXELS.store(n.max(1), std::sync::atomic::Ordering::Relaxed);
}

/// A picture of `width` x `height` is within the process-wide pixel limit
/// (for frames that arrive already decoded, e.g. from a video stream).
pub fn check_pixels(width: u32, height: u32) -> Result<(), PreprocessError> {
    check_size("<video>", width, height)
}

fn check_size(name: &str, width: u32, height: u32) -> Result<(), PreprocessError> {
    let max_pixels = MAX_PIXELS.load(std::sync::atomic::Ordering::Relaxed);
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(PreprocessError::TooLarge {
            path: name.to_string(),
            width,
            height,
            max_pixels,
        });
    }
    Ok(())
}

/// Reads and decodes an image file into 8-bit RGB like the reference.
pub fn load_rgb(path: &std::path::Path) -> Result<RgbImage, PreprocessError> {
    let bytes = std::fs::read(path).map_err(|e| PreprocessError::Read {
        path: path.display().to_string(),
        source: image::ImageError::IoError(e),
    })?;
    decode_named(&bytes, &path.display().to_string())
}

/// Decodes an encoded image (PNG, JPEG, ...) held in memory.
pub fn decode_rgb(bytes: &[u8]) -> Result<RgbImage, PreprocessError> {
    decode_named(bytes, "<memory>")
}

fn decode_named(bytes: &[u8], name: &str) -> Result<RgbImage, PreprocessError> {
    // PIL decodes JPEG with libjpeg-turbo (accurate integer IDCT, "fancy"
    // upsampling); pure-Rust decoders differ by up to ~20 levels on chroma
    // edges. Decoding with libjpeg-turbo too makes the pixels identical.
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        use turbojpeg::Colorspace;
        let header = turbojpeg::read_header(bytes).map_err(|e| jpeg_err(name, e))?;
        check_size(name, header.width as u32, header.height as u32)?;
        // TurboJPEG cannot turn CMYK/YCCK into RGB; those (rare, never from a
        // camera) go to the generic decoder below.
        if matches!(
            header.colorspace,
            Colorspace::RGB | Colorspace::YCbCr | Colorspace::Gray
        ) {
            // A truncated or corrupt frame is an error here (libjpeg's
            // "premature end" warning included), as it is for PIL.
            return turbojpeg::decompress_image::<image::Rgb<u8>>(bytes)
                .map_err(|e| jpeg_err(name, e));
        }
    }
    let read = |source| PreprocessError::Read {
        path: name.to_string(),
        source,
    };
    let reader = || {
        image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| read(image::ImageError::IoError(e)))
    };
    let (width, height) = reader()?.into_dimensions().map_err(read)?;
    check_size(name, width, height)?;
    let mut limits = image::Limits::default();
    // The decoded image (up to 16 bytes a pixel) and the decoder's buffers.
    limits.max_alloc =
        Some(MAX_PIXELS.load(std::sync::atomic::Ordering::Relaxed) * 16 + (64 << 20));
    let mut r = reader()?;
    r.limits(limits);
    let img = r.decode().map_err(read)?;
    Ok(to_rgb(img))
}

fn jpeg_err(name: &str, e: turbojpeg::Error) -> PreprocessError {
    PreprocessError::Read {
        path: name.to_string(),
        source: image::ImageError::Decoding(image::error::DecodingError::new(
            image::error::ImageFormatHint::Exact(image::ImageFormat::Jpeg),
            e,
        )),
    }
}

/// transformers' `convert_to_rgb`: images with transparency are composited
/// onto opaque white (`PIL.Image.alpha_composite`), others converted directly.
pub fn to_rgb(img: image::DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        return img.into_rgb8();
    }
    let rgba = img.into_rgba8();
    let (w, h) = rgba.dimensions();
    let mut out = RgbImage::new(w, h);
    for (o, p) in out.pixels_mut().zip(rgba.pixels()) {
        o.0 = composite_over_white(p.0);
    }
    out
}

/// Pillow's `AlphaComposite.c` with an opaque white destination, in its
/// integer arithmetic (7 extra bits of precision, rounded divisions by 255).
fn composite_over_white([r, g, b, a]: [u8; 4]) -> [u8; 3] {
    const PRECISION_BITS: u32 = 7;
    if a == 0 {
        return [255, 255, 255];
    }
    let a = a as u32;
    let shift_div255 = |v: u32| ((v >> 8) + v) >> 8;
    let blend = 255 * (255 - a);
    let outa255 = a * 255 + blend;
    let coef1 = a * 255 * 255 * (1 << PRECISION_BITS) / outa255;
    let coef2 = 255 * (1 << PRECISION_BITS) - coef1;
    let ch = |c: u8| {
        let tmp = c as u32 * coef1 + 255 * coef2;
        (shift_div255(tmp + (0x80 << PRECISION_BITS)) >> PRECISION_BITS) as u8
    };
    [ch(r), ch(g), ch(b)]
}

/// Turns RGB frames into the tensor layout the vision graph expects.
///
/// Built once from the bundle's [`ImageSpec`]; [`Preprocessor::run_into`]
/// reuses the caller's buffer so the per-frame path does not allocate the
/// output tensor.
#[derive(Debug, Clone)]
pub struct Preprocessor {
    width: u32,
    height: u32,
    filter: Filter,
    rescale: f64,
    mean: [f32; 3],
    std: [f32; 3],
}

impl Preprocessor {
    pub fn new(spec: &ImageSpec) -> Result<Self, PreprocessError> {
        let filter = match spec.resample.as_str() {
            "bicubic" => Filter::Bicubic,
            "bilinear" => Filter::Bilinear,
            other => return Err(PreprocessError::UnsupportedFilter(other.to_string())),
        };
        Ok(Self {
            width: spec.width,
            height: spec.height,
            filter,
            rescale: spec.rescale_factor,
            mean: spec.mean,
            std: spec.std,
        })
    }

    /// Output tensor shape `[1, 3, height, width]`.
    pub fn shape(&self) -> [usize; 4] {
        [1, 3, self.height as usize, self.width as usize]
    }

    /// Resizes and normalises `img` into `out` (resized to `3*H*W`, CHW order).
    pub fn run_into(&self, img: &RgbImage, out: &mut Vec<f32>) -> Result<(), PreprocessError> {
        if img.width() == 0 || img.height() == 0 {
            return Err(PreprocessError::EmptyImage {
                width: img.width(),
                height: img.height(),
            });
        }
        let resized = resize_rgb8(img, self.width, self.height, self.filter);
        let plane = (self.width * self.height) as usize;
        out.clear();
        out.resize(3 * plane, 0.0);
        for (i, px) in resized.pixels().enumerate() {
            for c in 0..3 {
                // Same arithmetic as the reference: the rescale in f64 then
                // cast to f32 (`np_rescale`), the normalisation in f32
                // (`np_normalize`). This makes the output bit-identical.
                let v = (px.0[c] as f64 * self.rescale) as f32;
                out[c * plane + i] = (v - self.mean[c]) / self.std[c];
            }
        }
        Ok(())
    }

    /// Convenience wrapper around [`Preprocessor::run_into`].
    pub fn run(&self, img: &RgbImage) -> Result<Vec<f32>, PreprocessError> {
        let mut out = Vec::new();
        self.run_into(img, &mut out)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/images")
            .join(name)
    }

    #[test]
    fn images_declaring_huge_sizes_are_refused_before_decoding() {
        // A few hundred bytes each, declaring 65000x65000 (12 GiB of RGB).
        for name in ["bomb.jpg", "bomb.png"] {
            match load_rgb(&fixture(name)) {
                Err(PreprocessError::TooLarge { width, height, .. }) => {
                    assert_eq!((width, height), (65000, 65000), "{name}");
                }
                other => panic!("{name}: {other:?}"),
            }
        }
        // Real pictures are under the default limit.
        assert!(load_rgb(&fixture("porch.jpg")).is_ok());
        assert!(load_rgb(&fixture("garage.png")).is_ok());
    }
}
