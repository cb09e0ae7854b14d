//! A vectorizable `DynamicQuantizeLinear` for the int8 vision graph.
//!
//! onnxruntime's dynamic quantization puts one `DynamicQuantizeLinear` before
//! every int8 matmul: per call, the f32 activations' range (widened to hold
//! 0) gives a scale and a u8 zero point, and every value is divided, rounded
//! half to even and clamped. tract's op does this element by element through
//! ndarray folds and `f32::round_ties_even` (a libm call on baseline x86-64):
//! 0.96 s of a 3.2 s int8 ViT-g run on 2 cores (examples/tract_profile.rs).
//! This one computes the same bytes with loops the compiler turns into SIMD;
//! [`Graph::load`](super::Graph::load) swaps it in by name after optimizing.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

/// tract-onnx's op name for the node this replaces (its type is private).
pub const TRACT_OP_NAME: &str = "DynamicQuantizeLinearU8";

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct DynamicQuantizeU8;

impl Op for DynamicQuantizeU8 {
    fn name(&self) -> StaticName {
        "DynamicQuantizeU8 (blipd)".into()
    }

    op_as_typed_op!();
}

impl EvalOp for DynamicQuantizeU8 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = inputs[0].cast_to::<f32>()?;
        let xs = input.try_as_plain_ram()?.as_slice::<f32>()?;
        // Written in place: this runs 156 times per ViT-g frame.
        let mut quantized = Tensor::zero::<u8>(input.shape())?;
        let (scale, zero_point) = {
            let mut ram = quantized.try_as_plain_ram_mut()?;
            quantize(xs, ram.as_slice_mut::<u8>()?)
        };
        Ok(tvec!(
            quantized.into_tvalue(),
            tensor0(scale).into_tvalue(),
            tensor0(zero_point).into_tvalue()
        ))
    }
}

impl TypedOp for DynamicQuantizeU8 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut quantized = inputs[0].clone();
        quantized.datum_type = u8::datum_type();
        Ok(tvec!(quantized, f32::fact([0; 0]), u8::fact([0; 0])))
    }

    as_op!();
}

/// ONNX DynamicQuantizeLinear of `xs` into `ys`: returns (scale, zero point).
/// Bit for bit tract-onnx's (and the ONNX spec's) for finite inputs: the same
/// range, `x / scale` (not a multiplication by its inverse, which rounds some
/// values to the other integer), rounding half to even.
pub fn quantize(xs: &[f32], ys: &mut [u8]) -> (f32, u8) {
    const LANES: usize = 16;
    let (mut lo, mut hi) = ([0f32; LANES], [0f32; LANES]);
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            lo[i] = if c[i] < lo[i] { c[i] } else { lo[i] };
            hi[i] = if c[i] > hi[i] { c[i] } else { hi[i] };
        }
    }
    let (mut min, mut max) = (0f32, 0f32);
    for &x in lo.iter().chain(tail) {
        min = if x < min { x } else { min };
    }
    for &x in hi.iter().chain(tail) {
        max = if x > max { x } else { max };
    }
    let scale = (max - min) / u8::MAX as f32;
    let zero_point = (-min / scale).round_ties_even().clamp(0.0, 255.0) as u8;
    if scale == 0.0 || !scale.is_finite() {
        // All zeros (tract: 0/0 is NaN, which casts to 0, plus a zero point of 0).
        ys.fill(zero_point);
        return (scale, zero_point);
    }
    let zp = zero_point as f32;
    for (y, &x) in ys.iter_mut().zip(xs) {
        // |x / scale| <= 255, far below 2^22: adding and taking away 1.5 * 2^23
        // rounds half to even in the default rounding mode, in SIMD.
        const MAGIC: f32 = 12_582_912.0;
        let q = ((x / scale) + MAGIC) - MAGIC;
        *y = (q + zp).clamp(0.0, 255.0) as u8;
    }
    (scale, zero_point)
}

#[cfg(test)]
mod tests {
    use super::quantize;

    /// tract-onnx 0.23's scalar DynamicQuantizeLinearU8, transcribed (its
    /// max-then-min keeps NaN's way of becoming 0, which `clamp` would not).
    #[allow(clippy::manual_clamp)]
    fn reference(xs: &[f32]) -> (Vec<u8>, f32, u8) {
        let (min, max) = xs.iter().fold((0f32, 0f32), |(a, b), &v| {
            if v < a {
                (v, b)
            } else if v > b {
                (a, v)
            } else {
                (a, b)
            }
        });
        let scale = (max - min) / 255.0;
        let zp = (-min / scale).round_ties_even().max(0.0).min(255.0) as u8;
        let ys = xs
            .iter()
            .map(|x| (((x / scale).round_ties_even() as i32) + zp as i32).clamp(0, 255) as u8)
            .collect();
        (ys, scale, zp)
    }

    #[test]
    fn same_bytes_as_tracts_scalar_op() {
        // The ONNX spec's examples, seeded noise of several lengths and
        // ranges, one-signed inputs, exact halves and all zeros.
        let mut cases: Vec<Vec<f32>> = vec![
            vec![0., 2., -3., -2.5, 1.34, 0.5],
            vec![-1., -2.1, -1.3, -2.5, -3.34, -4.],
            vec![1., 2.1, 1.3, 2.5, 3.34, 4., 1.5, 2.6, 3.9, 4., 3., 2.345],
            vec![0.0; 37],
            (0..511).map(|i| i as f32 * 0.5 - 127.5).collect(),
        ];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for (len, range) in [
            (1, 1.0),
            (15, 3.0),
            (16, 0.01),
            (257 * 1408, 40.0),
            (1000, 1e6),
        ] {
            let v = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.3) * range
                })
                .collect();
            cases.push(v);
        }
        for xs in &cases {
            let (want, scale, zp) = reference(xs);
            let mut got = vec![0u8; xs.len()];
            assert_eq!(quantize(xs, &mut got), (scale, zp), "len {}", xs.len());
            assert_eq!(got, want, "len {}", xs.len());
        }
        // The spec's first example, by value.
        let mut got = [0u8; 6];
        quantize(&[0., 2., -3., -2.5, 1.34, 0.5], &mut got);
        assert_eq!(got, [153, 255, 0, 26, 221, 179]);
    }
}
