//! Q-Former in tract with a symbolic text length (as blipd loads it) against
//! the same graph with the length pinned (the padded tail masked out).
//!
//!     cargo run --release --example qformer_buckets -- BUNDLE [--threads 2] [--runs 10] [--len 9] [--bucket 16]
use blipd::bundle::Bundle;
use blipd::graph::{Graph, GraphError};
use std::time::Instant;
use tract_onnx::prelude::*;

/// The Q-Former as blipd loads it ([`Graph::load`]), the text length
/// symbolic or pinned to `len`.
fn load(b: &Bundle, len: Option<usize>, threads: usize) -> Result<Graph, GraphError> {
    let m = &b.manifest;
    let text = len.map(|l| i64::fact([1, l]).into());
    Graph::load(
        "qformer",
        &b.path(&m.qformer.file),
        &[
            Some(f32::fact([1, m.vision.num_positions, m.vision.hidden_size]).into()),
            text.clone(),
            text,
        ],
        &[1, m.qformer.num_query_tokens, m.qformer.output_size],
        threads,
    )
}

fn main() -> TractResult<()> {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().unwrap_or_default());
    let (mut threads, mut runs, mut len, mut bucket) = (2usize, 10usize, 9usize, 16usize);
    while let Some(a) = args.next() {
        let v: usize = args.next().unwrap_or_default().parse()?;
        match a.as_str() {
            "--threads" => threads = v,
            "--runs" => runs = v,
            "--len" => len = v,
            "--bucket" => bucket = v,
            _ => anyhow::bail!("{a}?"),
        }
    }
    let b = blipd::bundle::Bundle::open(&dir)?;
    let m = &b.manifest;
    let (pos, hid) = (m.vision.num_positions, m.vision.hidden_size);
    let feats: Vec<f32> = (0..pos * hid)
        .map(|i| (i * 7919 % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let ids: Vec<i64> = (0..len)
        .map(|i| {
            if i == 0 {
                101
            } else if i == len - 1 {
                102
            } else {
                1000 + i as i64 * 37
            }
        })
        .collect();
    let input = |l: usize| -> TractResult<TVec<TValue>> {
        let mut id = ids.clone();
        id.resize(l, 0);
        let mut mask = vec![1i64; len];
        mask.resize(l, 0);
        Ok(tvec!(
            Tensor::from_shape(&[1, pos, hid], &feats)?.into_tvalue(),
            Tensor::from_shape(&[1, l], &id)?.into_tvalue(),
            Tensor::from_shape(&[1, l], &mask)?.into_tvalue()
        ))
    };
    let t = Instant::now();
    let sym = load(&b, None, threads)?;
    eprintln!("symbolic loaded in {:.1} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let fixed = load(&b, Some(bucket), threads)?;
    eprintln!(
        "pinned to {bucket} loaded in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let a = sym.run(input(len)?)?;
    let c = fixed.run(input(bucket)?)?;
    let a: Vec<f32> = a.to_plain_array_view::<f32>()?.iter().copied().collect();
    let c: Vec<f32> = c.to_plain_array_view::<f32>()?.iter().copied().collect();
    let md = a
        .iter()
        .zip(&c)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    let same = a == c;
    eprintln!("max-abs symbolic vs pinned: {md} (bit-identical: {same})");
    let (mut ts, mut tf) = (vec![], vec![]);
    for _ in 0..runs {
        let i = input(len)?;
        let t = Instant::now();
        sym.run(i)?;
        ts.push(t.elapsed().as_secs_f64() * 1e3);
        let i = input(bucket)?;
        let t = Instant::now();
        fixed.run(i)?;
        tf.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ts.sort_by(f64::total_cmp);
    tf.sort_by(f64::total_cmp);
    eprintln!("symbolic len {len}: median {:.1} ms ({:.1}-{:.1}); pinned {bucket}: median {:.1} ms ({:.1}-{:.1})", ts[runs/2], ts[0], ts[runs-1], tf[runs/2], tf[0], tf[runs-1]);
    Ok(())
}
