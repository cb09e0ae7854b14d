//! Work on the weights alone, done once at load.

use tract_onnx::prelude::*;

/// Precomputes every node of an optimized graph whose inputs are all
/// constants, however large: work on the weights alone, done once at load
/// instead of at every frame.
///
/// tract folds constants during optimization too, but only within a 4 MiB
/// budget for a weight that feeds several nodes. An int8 `MatMulInteger`
/// becomes, at codegen, a matmul on the i8 weight plus a zero-point
/// correction that sums that same weight over k (`cast` to i32, `sum`), so
/// each ViT-g weight (6 to 9 MB) feeds two nodes and neither its packing
/// for the matmul kernel nor its column sums were folded: they took 70 % of
/// an int8 ViT-g run (10.7 of 15.7 s on 2 cores, examples/tract_profile.rs).
/// Like tract's own pass this walks single-successor chains, so cast -> sum
/// keeps only the sums, and it never keeps a result larger than its inputs
/// (or 4 MiB).
pub fn fold_weight_work(model: &mut TypedModel) -> TractResult<usize> {
    use tract_onnx::tract_core::ops::cast::Cast;
    use tract_onnx::tract_core::ops::konst::Const;
    const SMALL: usize = 4 << 20;
    let mem = |ts: &[TValue]| -> usize {
        ts.iter()
            .map(|t| t.datum_type().size_of() * t.volume())
            .sum()
    };
    let mut folded = 0;
    // Nodes found not worth folding: node ids are stable until `compact`.
    let mut rejected = std::collections::HashSet::new();
    loop {
        let mut patch = None;
        for id in model.eval_order()? {
            let node = model.node(id);
            if node.inputs.is_empty() || node.op_is::<Const>() || rejected.contains(&id) {
                continue;
            }
            let facts = model.node_input_facts(id)?;
            let Some(inputs) = facts
                .iter()
                .map(|f| f.konst.clone().map(|k| k.into_tvalue()))
                .collect::<Option<TVec<TValue>>>()
            else {
                continue;
            };
            let budget = mem(&inputs).max(SMALL);
            let mut last = node;
            // cast -> sum of a weight: summed straight from the i8 values.
            let summed = model
                .single_succ(id)?
                .filter(|_| node.op_is::<Cast>())
                .and_then(|succ| Some((succ, fast_sum(succ, &inputs)?)));
            let first = match summed {
                Some((succ, sum)) => {
                    last = succ;
                    Some(sum)
                }
                None => node.op.eval_out_of_plan(inputs).transpose(),
            };
            let Some(Ok(mut values)) = first else {
                rejected.insert(id);
                continue;
            };
            while let Some(succ) = model.single_succ(last.id)? {
                if succ.inputs.len() != 1 {
                    break;
                }
                match fast_sum(succ, &values)
                    .or_else(|| succ.op.eval_out_of_plan(values.clone()).transpose())
                {
                    Some(Ok(v)) => {
                        values = v;
                        last = succ;
                    }
                    _ => break,
                }
            }
            if mem(&values) > budget {
                rejected.insert(id);
                continue;
            }
            let mut p = TypedModelPatch::default();
            for (ix, value) in values.into_iter().enumerate() {
                let outlet = OutletId::new(last.id, ix);
                let exotic = model.outlet_fact(outlet)?.exotic_fact.clone();
                let konst = Const::new_with_opt_exotic_fact(value.into_arc_tensor(), exotic)?;
                let wire = p.wire_node(format!("{}.folded.{ix}", last.name), konst, &[])?[0];
                p.shunt_outside(model, outlet, wire)?;
            }
            patch = Some(p);
            break;
        }
        let Some(p) = patch else { break };
        p.apply(model)?;
        folded += 1;
    }
    model.compact()?;
    Ok(folded)
}

/// The i32 `sum` of `node` (a tract `Reduce`) over `values` (i32, or the
/// i8/u8 values a `cast` to i32 would widen). tract's own walks a weight's
/// leading axis element by element (95 ms for one 1408 x 6144 ViT-g weight,
/// 9 s of start-up for all of them, plus the cast); ndarray adds whole rows.
/// Integer sums, so the result is exactly the same.
fn fast_sum(node: &TypedNode, values: &[TValue]) -> Option<TractResult<TVec<TValue>>> {
    use tract_onnx::tract_core::ops::nn::{Reduce, Reducer};
    let op = node.op_as::<Reduce>()?;
    let [input] = values else { return None };
    if !matches!(op.reducer, Reducer::Sum) || node.outputs[0].fact.datum_type != i32::datum_type() {
        return None;
    }
    let mut sum = match input.datum_type() {
        DatumType::I32 => input.to_plain_array_view::<i32>().ok()?.to_owned(),
        DatumType::I8 => input.to_plain_array_view::<i8>().ok()?.mapv(i32::from),
        DatumType::U8 => input.to_plain_array_view::<u8>().ok()?.mapv(i32::from),
        _ => return None,
    };
    for &axis in &op.axes {
        if axis >= sum.ndim() {
            return None;
        }
        sum = sum
            .sum_axis(tract_ndarray::Axis(axis))
            .insert_axis(tract_ndarray::Axis(axis));
    }
    Some(Ok(tvec!(sum.into_tensor().into_tvalue())))
}
