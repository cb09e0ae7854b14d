//! Where a tract graph spends its time, op by op: the profile behind the
//! int8/f16 vision figures of docs/PERFORMANCE.md.
//!
//!     cargo run --release --example tract_profile -- GRAPH.onnx [--threads 2] [--runs 3]
//!         [--input 1,3,224,224] [--f16] [--block-quant] [--text N]
//!
//! Loads the graph the way `blipd` does (tract-onnx, optimize, a multithread
//! executor), runs it once to warm up, then `--runs` times with a timer
//! around every node, and prints the time per op kind (median run) and the
//! ten slowest nodes, with each node's optimized op description, and the
//! matmuls grouped by kernel (time, multiply-adds, rate). `--f16`
//! applies tract's `f32_to_f16` transform before optimizing, `--block-quant`
//! its `block_quant` (the constant matmul weights in Q4_0). `--text N`
//! profiles a Q-Former: its input 0 is the image features (`--input
//! 1,257,1408`), inputs 1 and 2 the N token ids and their mask.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tract_onnx::prelude::*;

fn main() -> TractResult<()> {
    let mut args = std::env::args().skip(1);
    let mut path = None;
    let (mut threads, mut runs, mut f16, mut bq) = (2usize, 3usize, false, false);
    let mut text: Option<usize> = None;
    let mut input = vec![1usize, 3, 224, 224];
    while let Some(a) = args.next() {
        match a.as_str() {
            "--threads" => threads = args.next().unwrap_or_default().parse()?,
            "--runs" => runs = args.next().unwrap_or_default().parse()?,
            "--f16" => f16 = true,
            "--block-quant" => bq = true,
            "--text" => text = Some(args.next().unwrap_or_default().parse()?),
            "--input" => {
                input = args
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            _ => path = Some(a),
        }
    }
    let path = path.ok_or_else(|| anyhow::anyhow!("usage: tract_profile GRAPH.onnx [options]"))?;
    let t0 = Instant::now();
    let mut model = tract_onnx::onnx()
        .with_ignore_value_info(true)
        .model_for_path(&path)?
        .with_input_fact(0, f32::fact(&input).into())?;
    if let Some(n) = text {
        model = model
            .with_input_fact(1, i64::fact([1, n]).into())?
            .with_input_fact(2, i64::fact([1, n]).into())?;
    }
    let mut model = model.into_typed()?.into_decluttered()?;
    for (on, name) in [(f16, "f32_to_f16"), (bq, "block_quant")] {
        if on {
            let t = tract_onnx::tract_core::transform::get_transform(name)?
                .ok_or_else(|| anyhow::anyhow!("no {name} transform"))?;
            t.transform(&mut model)?;
        }
    }
    eprintln!("decluttered in {:.1} s", t0.elapsed().as_secs_f64());
    let mut model = model.into_optimized()?;
    eprintln!("optimized in {:.1} s", t0.elapsed().as_secs_f64());
    // As blipd's Graph::load does.
    let (folded, swapped) = blipd::graph::finish(&mut model)?;
    eprintln!("{folded} weight-only nodes precomputed, {swapped} ops swapped");
    let options = RunOptions {
        executor: Some(multithread::Executor::multithread_with_name(
            threads, "profile",
        )),
        ..Default::default()
    };
    let plan = model.into_runnable_with_options(&options)?;
    eprintln!(
        "loaded and optimized in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let n: usize = input.iter().product();
    let values: Vec<f32> = (0..n).map(|i| ((i % 17) as f32 - 8.0) / 8.0).collect();
    let mut inputs: TVec<TValue> = tvec!(Tensor::from_shape(&input, &values)?.into());
    if let Some(n) = text {
        // [CLS] words [SEP], ids inside any BERT vocabulary.
        let ids: Vec<i64> = (0..n as i64)
            .map(|i| {
                if i == 0 {
                    101
                } else if i == n as i64 - 1 {
                    102
                } else {
                    1000 + 37 * i
                }
            })
            .collect();
        inputs.push(Tensor::from_shape(&[1, n], &ids)?.into());
        inputs.push(Tensor::from_shape(&[1, n], &vec![1i64; n])?.into());
    }

    let mut per_run: Vec<(Duration, Vec<Duration>)> = Vec::new();
    for run in 0..=runs {
        let mut state = tract_onnx::tract_core::plan::SimpleState::new(&plan)?;
        let mut times = vec![Duration::ZERO; plan.model().nodes().len()];
        let t = Instant::now();
        state.run_plan_with_eval(inputs.clone(), |ctx, st, node, inputs| {
            let t = Instant::now();
            let r = tract_onnx::tract_core::plan::eval(ctx, st, node, inputs);
            times[node.id] += t.elapsed();
            r
        })?;
        let total = t.elapsed();
        eprintln!("run {run}: {:.3} s", total.as_secs_f64());
        if run > 0 {
            per_run.push((total, times));
        }
    }
    per_run.sort_by_key(|r| r.0);
    let (total, times) = &per_run[per_run.len() / 2];
    let nodes = plan.model().nodes();
    let mut by_op: BTreeMap<String, (Duration, usize)> = BTreeMap::new();
    for n in nodes {
        let e = by_op.entry(n.op().name().to_string()).or_default();
        e.0 += times[n.id];
        e.1 += 1;
    }
    let mut by_op: Vec<_> = by_op.into_iter().collect();
    by_op.sort_by_key(|(_, (d, _))| std::cmp::Reverse(*d));
    println!(
        "median run {:.3} s ({} runs, {threads} threads){}",
        total.as_secs_f64(),
        per_run.len(),
        match (f16, bq) {
            (true, _) => ", f32_to_f16",
            (_, true) => ", block_quant",
            _ => "",
        }
    );
    println!("{:>9} {:>6} {:>6}  op", "ms", "%", "nodes");
    for (op, (d, n)) in by_op.iter().take(15) {
        println!(
            "{:>9.1} {:>5.1}% {:>6}  {op}",
            d.as_secs_f64() * 1e3,
            100.0 * d.as_secs_f64() / total.as_secs_f64(),
            n
        );
    }
    // The matmuls by kernel: how much work each did and at what rate
    // (multiply-adds = output elements x k, from the op's own description).
    let mut by_kernel: BTreeMap<String, (Duration, usize, f64)> = BTreeMap::new();
    for n in nodes.iter().filter(|n| n.op().name() == "OptMatMul") {
        let info = n.op().info().unwrap_or_default().join("; ");
        let field = |key: &str| {
            info.split(key)
                .nth(1)
                .map(|s| s.split([' ', ';']).next().unwrap_or(""))
        };
        let kernel = info
            .split("with [")
            .nth(1)
            .and_then(|s| s.split(']').next())
            .unwrap_or("?")
            .to_string();
        let outputs: f64 = field("c_shape:")
            .unwrap_or("")
            .split(',')
            .filter_map(|d| d.parse::<f64>().ok())
            .product();
        let k: f64 = field(" k:").and_then(|k| k.parse().ok()).unwrap_or(0.0);
        let e = by_kernel.entry(kernel).or_default();
        e.0 += times[n.id];
        e.1 += 1;
        e.2 += outputs * k;
    }
    println!("matmuls by kernel:");
    for (kernel, (d, n, macs)) in &by_kernel {
        println!(
            "{:>9.1} ms {:>5} nodes {:>8.1} GMAC {:>7.1} GMAC/s  {kernel}",
            d.as_secs_f64() * 1e3,
            n,
            macs / 1e9,
            macs / 1e9 / d.as_secs_f64().max(1e-9)
        );
    }
    let mut slow: Vec<_> = nodes.iter().collect();
    slow.sort_by_key(|n| std::cmp::Reverse(times[n.id]));
    println!("slowest nodes:");
    for n in slow.iter().take(10) {
        let info = n.op().info().unwrap_or_default().join("; ");
        println!(
            "{:>9.1} ms  {} [{}] {}",
            times[n.id].as_secs_f64() * 1e3,
            n.name,
            n.op().name(),
            info.chars().take(160).collect::<String>()
        );
    }
    Ok(())
}
