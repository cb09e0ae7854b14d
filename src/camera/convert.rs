//! Pixel-format conversion of raw camera buffers into 8-bit RGB.
//!
//! V4L2 hands over frames as the driver produced them: packed YUYV 4:2:2
//! (what nearly every UVC webcam offers uncompressed), packed RGB24 (some
//! CSI/ISP pipelines), or Motion-JPEG. These functions are pure so they can be
//! tested on recorded or synthetic buffers without a device, and they never
//! panic on malformed input: a short buffer or a corrupt JPEG is a
//! [`ConvertError`], because a camera that glitches must not take the daemon
//! down.
//!
//! Row strides are honoured everywhere: drivers may pad each line
//! (`bytesperline` > `width * bytes_per_pixel`), and the last line of a frame
//! is allowed to lack its padding.

use image::RgbImage;

/// Why a raw frame could not be converted.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("frame has no pixels ({width}x{height})")]
    Empty { width: u32, height: u32 },
    #[error(
        "row stride of {stride} bytes is smaller than one row of {width} pixels ({min} bytes)"
    )]
    StrideTooSmall {
        stride: usize,
        width: u32,
        min: usize,
    },
    #[error(
        "frame buffer too short: {got} bytes for {width}x{height} with a stride of {stride} \
         (need {need}); the driver delivered a truncated frame"
    )]
    ShortBuffer {
        got: usize,
        need: usize,
        width: u32,
        height: u32,
        stride: usize,
    },
    #[error("frame of {width}x{height} is too large to address")]
    TooLarge { width: u32, height: u32 },
    #[error("MJPEG frame could not be decoded: {0}")]
    Mjpeg(#[source] crate::preprocess::PreprocessError),
}

/// Checks the geometry and returns the number of bytes one row needs.
///
/// `row_bytes(width)` is the unpadded size of a row; the buffer must hold
/// `stride * (height - 1) + row_bytes` bytes. All arithmetic is checked so an
/// absurd size from a driver is an error, not an overflow panic.
fn check_geometry(
    buf: &[u8],
    width: u32,
    height: u32,
    stride: usize,
    row_bytes: impl Fn(usize) -> Option<usize>,
) -> Result<usize, ConvertError> {
    if width == 0 || height == 0 {
        return Err(ConvertError::Empty { width, height });
    }
    let too_large = || ConvertError::TooLarge { width, height };
    let row = row_bytes(width as usize).ok_or_else(too_large)?;
    if stride < row {
        return Err(ConvertError::StrideTooSmall {
            stride,
            width,
            min: row,
        });
    }
    let need = stride
        .checked_mul(height as usize - 1)
        .and_then(|n| n.checked_add(row))
        .ok_or_else(too_large)?;
    if buf.len() < need {
        return Err(ConvertError::ShortBuffer {
            got: buf.len(),
            need,
            width,
            height,
            stride,
        });
    }
    Ok(row)
}

/// BT.601 limited-range ("studio swing") YCbCr to RGB, the encoding UVC
/// webcams use for YUYV, in 8.8 fixed point with rounding and clamping.
#[inline]
fn ycbcr_to_rgb(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    let c = 298 * (y as i32 - 16);
    let d = cb as i32 - 128;
    let e = cr as i32 - 128;
    let clamp = |v: i32| ((v + 128) >> 8).clamp(0, 255) as u8;
    [
        clamp(c + 409 * e),
        clamp(c - 100 * d - 208 * e),
        clamp(c + 516 * d),
    ]
}

/// Converts packed YUYV 4:2:2 (`Y0 Cb Y1 Cr` per pixel pair, V4L2 `YUYV`)
/// into RGB.
///
/// `stride` is the driver's `bytesperline` (at least `2 * width`; an odd
/// width still occupies a whole final pixel pair). Colour is BT.601 limited
/// range, which is what the UVC spec and V4L2's default `SMPTE170M`/`SRGB`
/// colourspace mean for webcams.
pub fn yuyv_to_rgb(
    buf: &[u8],
    width: u32,
    height: u32,
    stride: usize,
) -> Result<RgbImage, ConvertError> {
    let row = check_geometry(buf, width, height, stride, |w| w.div_ceil(2).checked_mul(4))?;
    let mut out = RgbImage::new(width, height);
    for (y, dst) in out.chunks_exact_mut(width as usize * 3).enumerate() {
        let src = &buf[y * stride..y * stride + row];
        // One macropixel (4 bytes) gives two RGB pixels; with an odd width
        // the last output chunk is a single pixel.
        for (pair, px) in src.chunks_exact(4).zip(dst.chunks_mut(6)) {
            let &[y0, cb, y1, cr] = pair else { continue };
            px[..3].copy_from_slice(&ycbcr_to_rgb(y0, cb, cr));
            if px.len() == 6 {
                px[3..].copy_from_slice(&ycbcr_to_rgb(y1, cb, cr));
            }
        }
    }
    Ok(out)
}

/// Copies packed RGB24 (V4L2 `RGB3`: R, G, B bytes per pixel) into an image,
/// dropping any per-row padding.
pub fn rgb24_to_rgb(
    buf: &[u8],
    width: u32,
    height: u32,
    stride: usize,
) -> Result<RgbImage, ConvertError> {
    let row = check_geometry(buf, width, height, stride, |w| w.checked_mul(3))?;
    let mut out = RgbImage::new(width, height);
    for (y, dst) in out.chunks_exact_mut(row).enumerate() {
        dst.copy_from_slice(&buf[y * stride..y * stride + row]);
    }
    Ok(out)
}

/// Decodes one Motion-JPEG frame with the same decoder as still images
/// ([`crate::preprocess::decode_rgb`], libjpeg-turbo), so a camera frame and a
/// JPEG file of the same picture give the model identical pixels.
///
/// Many UVC cameras strip the Huffman tables (DHT) from every frame because
/// the MJPEG/AVI1 convention says the standard tables of JPEG Annex K.3 are
/// implied. libjpeg-turbo usually falls back to those by itself; when a
/// decode fails and the frame indeed has no DHT before its scan, the standard
/// tables are inserted and the decode retried.
pub fn mjpeg_to_rgb(buf: &[u8]) -> Result<RgbImage, ConvertError> {
    match crate::preprocess::decode_rgb(buf) {
        Ok(img) => Ok(img),
        Err(first) => match insert_standard_dht(buf) {
            Some(fixed) => crate::preprocess::decode_rgb(&fixed).map_err(ConvertError::Mjpeg),
            None => Err(ConvertError::Mjpeg(first)),
        },
    }
}

/// Where the first scan (SOS) starts if the JPEG has no Huffman table
/// (DHT) segment before it; `None` when it has one or is not parseable.
///
/// Walks marker segments only (their lengths), never entropy-coded data, so
/// it is cheap and bounds-checked on arbitrary bytes.
fn sos_without_dht(buf: &[u8]) -> Option<usize> {
    const SOI: u8 = 0xD8;
    const SOS: u8 = 0xDA;
    const DHT: u8 = 0xC4;
    if buf.len() < 4 || buf[0] != 0xFF || buf[1] != SOI {
        return None;
    }
    let mut pos = 2;
    loop {
        if *buf.get(pos)? != 0xFF {
            return None;
        }
        // Any number of 0xFF fill bytes may precede a marker code.
        let mut code_at = pos + 1;
        while *buf.get(code_at)? == 0xFF {
            code_at += 1;
        }
        let code = buf[code_at];
        match code {
            SOS => return Some(code_at - 1),
            DHT => return None,
            // Standalone markers carry no length field.
            0x01 | 0xD0..=0xD7 => pos = code_at + 1,
            _ => {
                let hi = *buf.get(code_at + 1)? as usize;
                let lo = *buf.get(code_at + 2)? as usize;
                let len = (hi << 8) | lo;
                if len < 2 {
                    return None;
                }
                pos = code_at + 1 + len;
            }
        }
    }
}

/// The four Huffman tables of JPEG Annex K.3 (luminance/chrominance DC and
/// AC), as `(class << 4 | id, code counts per length 1..=16, symbols)`;
/// identical to libjpeg's `jstdhuff.c`.
const STANDARD_TABLES: [(u8, [u8; 16], &[u8]); 4] = [
    (
        0x00,
        [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
        &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
    ),
    (
        0x01,
        [0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0],
        &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
    ),
    (
        0x10,
        [0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7d],
        &[
            0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51,
            0x61, 0x07, 0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xa1, 0x08, 0x23, 0x42, 0xb1, 0xc1,
            0x15, 0x52, 0xd1, 0xf0, 0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0a, 0x16, 0x17, 0x18,
            0x19, 0x1a, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39,
            0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57,
            0x58, 0x59, 0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74, 0x75,
            0x76, 0x77, 0x78, 0x79, 0x7a, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x92,
            0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7,
            0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3,
            0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8,
            0xd9, 0xda, 0xe1, 0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf1, 0xf2,
            0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa,
        ],
    ),
    (
        0x11,
        [0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77],
        &[
            0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07,
            0x61, 0x71, 0x13, 0x22, 0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xa1, 0xb1, 0xc1, 0x09,
            0x23, 0x33, 0x52, 0xf0, 0x15, 0x62, 0x72, 0xd1, 0x0a, 0x16, 0x24, 0x34, 0xe1, 0x25,
            0xf1, 0x17, 0x18, 0x19, 0x1a, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x35, 0x36, 0x37, 0x38,
            0x39, 0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56,
            0x57, 0x58, 0x59, 0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74,
            0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89,
            0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4, 0xa5,
            0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba,
            0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6,
            0xd7, 0xd8, 0xd9, 0xda, 0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf2,
            0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa,
        ],
    ),
];

/// The DHT segment (marker included) holding the four standard tables.
fn standard_dht_segment() -> Vec<u8> {
    let body: usize = STANDARD_TABLES
        .iter()
        .map(|(_, _, vals)| 1 + 16 + vals.len())
        .sum();
    let len = (2 + body) as u16; // 418: always fits
    let mut seg = Vec::with_capacity(2 + 2 + body);
    seg.extend_from_slice(&[0xFF, 0xC4]);
    seg.extend_from_slice(&len.to_be_bytes());
    for (class_id, counts, vals) in STANDARD_TABLES {
        seg.push(class_id);
        seg.extend_from_slice(&counts);
        seg.extend_from_slice(vals);
    }
    seg
}

/// A copy of `buf` with the standard Huffman tables inserted just before the
/// first scan, or `None` when the frame already has a DHT segment (or its
/// markers cannot be parsed, in which case inserting tables cannot help).
pub fn insert_standard_dht(buf: &[u8]) -> Option<Vec<u8>> {
    let sos = sos_without_dht(buf)?;
    let dht = standard_dht_segment();
    let mut out = Vec::with_capacity(buf.len() + dht.len());
    out.extend_from_slice(&buf[..sos]);
    out.extend_from_slice(&dht);
    out.extend_from_slice(&buf[sos..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RGB -> BT.601 limited-range YCbCr with the textbook (floating point)
    /// coefficients, rounded: how a camera's ISP encodes YUYV.
    fn rgb_to_ycbcr([r, g, b]: [u8; 3]) -> [u8; 3] {
        let (r, g, b) = (r as f64, g as f64, b as f64);
        let y = 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0;
        let cb = 128.0 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255.0;
        let cr = 128.0 + (112.0 * r - 93.786 * g - 18.214 * b) / 255.0;
        let q = |v: f64| v.round().clamp(0.0, 255.0) as u8;
        [q(y), q(cb), q(cr)]
    }

    /// Encodes an image to YUYV with `pad` bytes after each row; each pixel
    /// pair shares the chroma of its average colour, as a 4:2:2 camera does.
    fn encode_yuyv(img: &RgbImage, pad: usize) -> (Vec<u8>, usize) {
        let (w, h) = img.dimensions();
        let row = (w as usize).div_ceil(2) * 4;
        let stride = row + pad;
        let mut buf = vec![0xA5u8; stride * h as usize];
        for y in 0..h {
            for pair in 0..(w as usize).div_ceil(2) {
                let x0 = (pair * 2) as u32;
                let x1 = (x0 + 1).min(w - 1);
                let p0 = img.get_pixel(x0, y).0;
                let p1 = img.get_pixel(x1, y).0;
                let avg: [u8; 3] =
                    std::array::from_fn(|c| (p0[c] as u16 + p1[c] as u16).div_ceil(2) as u8);
                let [y0, _, _] = rgb_to_ycbcr(p0);
                let [y1, _, _] = rgb_to_ycbcr(p1);
                let [_, cb, cr] = rgb_to_ycbcr(avg);
                let at = y as usize * stride + pair * 4;
                buf[at..at + 4].copy_from_slice(&[y0, cb, y1, cr]);
            }
        }
        (buf, stride)
    }

    fn assert_close(got: &RgbImage, want: &RgbImage, tol: u8) {
        assert_eq!(got.dimensions(), want.dimensions());
        for (x, y, p) in want.enumerate_pixels() {
            let g = got.get_pixel(x, y);
            for c in 0..3 {
                assert!(
                    g.0[c].abs_diff(p.0[c]) <= tol,
                    "pixel ({x},{y}) channel {c}: got {:?}, want {:?}",
                    g.0,
                    p.0
                );
            }
        }
    }

    #[test]
    fn yuyv_primaries_and_grey_ramp_round_trip() {
        let colours: [[u8; 3]; 8] = [
            [255, 255, 255],
            [0, 0, 0],
            [255, 0, 0],
            [0, 255, 0],
            [0, 0, 255],
            [255, 255, 0],
            [0, 255, 255],
            [255, 0, 255],
        ];
        // Row 0..8: one flat colour per row; rows 8..: grey ramps 0..=255.
        let mut img = RgbImage::new(256, 10);
        for (y, c) in colours.iter().enumerate() {
            for x in 0..256 {
                img.put_pixel(x, y as u32, image::Rgb(*c));
            }
        }
        for x in 0..256u32 {
            let v = x as u8;
            img.put_pixel(x, 8, image::Rgb([v, v, v]));
            img.put_pixel(x, 9, image::Rgb([255 - v, 255 - v, 255 - v]));
        }
        let (buf, stride) = encode_yuyv(&img, 0);
        let got = yuyv_to_rgb(&buf, 256, 10, stride).unwrap();
        assert_close(&got, &img, 2);
    }

    #[test]
    fn yuyv_extreme_codes_clamp() {
        // Codes outside the nominal range (Y 16..=235, Cb/Cr 16..=240) give
        // values beyond 0..=255 that must clamp, not wrap: Y=Cb=Cr=255 is
        // R=481 G=125 B=601 before clamping, Y=Cb=Cr=0 is R=-223 G=135 B=-277.
        let buf = [255u8, 255, 255, 255, 0, 0, 0, 0];
        let img = yuyv_to_rgb(&buf, 4, 1, 8).unwrap();
        assert_eq!(img.get_pixel(0, 0).0, [255, 125, 255]);
        assert_eq!(img.get_pixel(1, 0).0, [255, 125, 255]);
        assert_eq!(img.get_pixel(2, 0).0, [0, 135, 0]);
        assert_eq!(img.get_pixel(3, 0).0, [0, 135, 0]);
    }

    #[test]
    fn yuyv_padded_stride_and_odd_width() {
        let mut img = RgbImage::new(7, 5);
        for (x, y, p) in img.enumerate_pixels_mut() {
            // Flat colour per pixel pair so 4:2:2 loses nothing.
            let v = (x / 2 * 60 + y * 20) as u8;
            *p = image::Rgb([v, 255 - v, v / 2]);
        }
        for pad in [0usize, 1, 13, 64] {
            let (mut buf, stride) = encode_yuyv(&img, pad);
            // The last row's padding is optional.
            buf.truncate(buf.len() - pad);
            let got = yuyv_to_rgb(&buf, 7, 5, stride).unwrap();
            assert_close(&got, &img, 2);
        }
    }

    #[test]
    fn yuyv_bad_geometry_is_an_error() {
        let buf = vec![128u8; 4 * 2 * 3];
        assert!(matches!(
            yuyv_to_rgb(&buf, 4, 4, 8),
            Err(ConvertError::ShortBuffer {
                got: 24,
                need: 32,
                ..
            })
        ));
        assert!(matches!(
            yuyv_to_rgb(&buf, 4, 3, 7),
            Err(ConvertError::StrideTooSmall { min: 8, .. })
        ));
        assert!(matches!(
            yuyv_to_rgb(&buf, 0, 3, 8),
            Err(ConvertError::Empty { .. })
        ));
        assert!(matches!(
            yuyv_to_rgb(&[], 4, 1, 8),
            Err(ConvertError::ShortBuffer { .. })
        ));
        // Sizes whose byte counts overflow are errors, not panics.
        assert!(yuyv_to_rgb(&buf, u32::MAX, u32::MAX, usize::MAX).is_err());
        let msg = yuyv_to_rgb(&buf, 4, 4, 8).unwrap_err().to_string();
        assert!(
            msg.contains("too short") && msg.contains("need 32"),
            "{msg}"
        );
    }

    #[test]
    fn rgb24_with_padding() {
        let (w, h) = (5u32, 3u32);
        let stride = 5 * 3 + 3;
        let mut buf = vec![0xEEu8; stride * h as usize];
        for y in 0..h as usize {
            for x in 0..w as usize {
                let at = y * stride + x * 3;
                buf[at..at + 3].copy_from_slice(&[x as u8, y as u8, (x * y) as u8]);
            }
        }
        let img = rgb24_to_rgb(&buf[..buf.len() - 3], w, h, stride).unwrap();
        for (x, y, p) in img.enumerate_pixels() {
            assert_eq!(p.0, [x as u8, y as u8, (x * y) as u8]);
        }
        assert!(matches!(
            rgb24_to_rgb(&buf, w, h, 14),
            Err(ConvertError::StrideTooSmall { min: 15, .. })
        ));
        assert!(matches!(
            rgb24_to_rgb(&buf[..40], w, h, stride),
            Err(ConvertError::ShortBuffer { .. })
        ));
    }

    fn test_jpeg() -> (Vec<u8>, RgbImage) {
        let mut img = RgbImage::new(64, 48);
        for (x, y, p) in img.enumerate_pixels_mut() {
            *p = image::Rgb([(x * 4) as u8, (y * 5) as u8, ((x + y) * 2) as u8]);
        }
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 85)
            .encode_image(&img)
            .unwrap();
        (jpeg, img)
    }

    /// Removes every DHT segment before the first scan, as DHT-less MJPEG
    /// webcams send frames.
    fn strip_dht(jpeg: &[u8]) -> Vec<u8> {
        let mut out = jpeg[..2].to_vec();
        let mut pos = 2;
        loop {
            assert_eq!(jpeg[pos], 0xFF);
            let code = jpeg[pos + 1];
            if code == 0xDA {
                out.extend_from_slice(&jpeg[pos..]);
                return out;
            }
            let len = u16::from_be_bytes([jpeg[pos + 2], jpeg[pos + 3]]) as usize;
            if code != 0xC4 {
                out.extend_from_slice(&jpeg[pos..pos + 2 + len]);
            }
            pos += 2 + len;
        }
    }

    /// The (class/id, counts, values) tables of every DHT segment.
    fn dht_tables(jpeg: &[u8]) -> Vec<(u8, Vec<u8>, Vec<u8>)> {
        let mut tables = Vec::new();
        let mut pos = 2;
        while jpeg[pos + 1] != 0xDA {
            let len = u16::from_be_bytes([jpeg[pos + 2], jpeg[pos + 3]]) as usize;
            if jpeg[pos + 1] == 0xC4 {
                let mut p = pos + 4;
                while p < pos + 2 + len {
                    let counts = jpeg[p + 1..p + 17].to_vec();
                    let n: usize = counts.iter().map(|&c| c as usize).sum();
                    tables.push((jpeg[p], counts, jpeg[p + 17..p + 17 + n].to_vec()));
                    p += 17 + n;
                }
            }
            pos += 2 + len;
        }
        tables.sort();
        tables
    }

    #[test]
    fn mjpeg_with_and_without_huffman_tables() {
        let (jpeg, original) = test_jpeg();
        let reference = crate::preprocess::decode_rgb(&jpeg).unwrap();
        assert_close(&reference, &original, 40);

        let got = mjpeg_to_rgb(&jpeg).unwrap();
        assert_eq!(got, reference);

        let stripped = strip_dht(&jpeg);
        assert!(dht_tables(&stripped).is_empty());
        let got = mjpeg_to_rgb(&stripped).unwrap();
        assert_eq!(
            got, reference,
            "DHT-less frame must decode like the full one"
        );
    }

    #[test]
    fn inserted_tables_are_the_standard_ones() {
        let (jpeg, _) = test_jpeg();
        // The image crate's encoder writes the Annex K tables: the inserted
        // segment must carry exactly the same tables.
        let stripped = strip_dht(&jpeg);
        let fixed = insert_standard_dht(&stripped).expect("no DHT, so tables are inserted");
        assert_eq!(dht_tables(&fixed), dht_tables(&jpeg));
        assert_eq!(
            crate::preprocess::decode_rgb(&fixed).unwrap(),
            crate::preprocess::decode_rgb(&jpeg).unwrap()
        );
        // A strict decoder (the `image` crate's, which has no built-in
        // fallback tables) accepts the repaired frame too.
        let strict = image::load_from_memory(&fixed).unwrap();
        assert_eq!((strict.width(), strict.height()), (64, 48));
        // Frames that already have tables are left alone.
        assert!(insert_standard_dht(&jpeg).is_none());
        assert_eq!(standard_dht_segment().len(), 420);
    }

    #[test]
    fn mjpeg_garbage_is_an_error() {
        let (jpeg, _) = test_jpeg();
        for bad in [
            &[][..],
            &[0xFF, 0xD8][..],
            &[0xFF, 0xD8, 0xFF, 0xDA, 0, 0][..],
            &jpeg[..jpeg.len() / 2],
            &strip_dht(&jpeg)[..300],
            b"not a jpeg at all",
        ] {
            assert!(
                matches!(mjpeg_to_rgb(bad), Err(ConvertError::Mjpeg(_))),
                "{} bytes",
                bad.len()
            );
            // The marker walk never panics either.
            let _ = insert_standard_dht(bad);
        }
    }
}
