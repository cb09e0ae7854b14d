//! Rewrites an ONNX graph file into its dynamic-int8 form on the board, with
//! no Python: the same graph onnxruntime's
//! `quantize_dynamic(op_types_to_quantize=["MatMul"], weight_type=QInt8,
//! per_channel=False)` writes, which is what `models/vision_precision.py`
//! runs on a workstation.
//!
//! Every `MatMul` whose second input is an f32 initializer (the projection
//! and MLP weights: nearly all of a ViT's or Q-Former's weights and time)
//! becomes
//!
//! ```text
//! x -> DynamicQuantizeLinear -> (x_q u8, x_scale, x_zp)      once per x
//! MatMulInteger(x_q, W_q i8, x_zp, W_zp) -> i32 -> Cast f32 -> * (x_scale * W_scale)
//! ```
//!
//! with `W_q = clip(round_half_even(W / s), -128, 127)`, `s = max|W| / 127`
//! (symmetric, zero point 0), computed in the same float widths as
//! onnxruntime 1.31 so the int8 weights and scales are the same bytes
//! (models/tests/test_quantize_graph.py holds them to the graphs onnxruntime
//! writes). The
//! tensor names follow onnxruntime's (`W_quantized`, `W_scale`,
//! `x_QuantizeLinear`), so the two graphs can be compared name by name.
//!
//! The file is rewritten as a stream: the protobuf (without weights) is
//! decoded once, each weight is read, quantized and appended to the new
//! `<file>.data` in turn, so memory stays near one weight, not the graph (a
//! ViT-g's f32 weights are 4 GB). The f32 initializers nothing else uses are
//! dropped; the others are copied as they were. What tract's ONNX schema
//! does not know is not written back: the exporter's per-node metadata
//! (IR 10 `metadata_props`, PyTorch's source locations) and zero-valued
//! attribute fields, which ONNX reads as the same 0.

use super::store::is_external;
use super::{Names, RewriteError, Source};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use tract_onnx::pb::{
    attribute_proto::AttributeType, tensor_proto::DataType, AttributeProto, NodeProto, TensorProto,
};

/// What the tool is, as the manifest's `derived_from.tool` records it.
pub const TOOL: &str =
    "blipd quantize (dynamic int8 MatMul, int8 weights per tensor, as onnxruntime quantize_dynamic)";

/// What [`quantize_graph`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Int8Summary {
    /// MatMuls rewritten to MatMulInteger.
    pub matmuls: usize,
    /// Distinct weights quantized (a weight shared by two MatMuls counts once).
    pub weights: usize,
    /// MatMuls left in f32 (both inputs computed, e.g. attention's Q K^T).
    pub kept: usize,
    /// f32 bytes of the quantized weights, and their int8 bytes.
    pub f32_bytes: u64,
    pub int8_bytes: u64,
}

/// onnxruntime's symmetric int8 scale and values for one weight
/// (`compute_scale_zp` + `quantize_nparray`): the range always holds 0, the
/// scale is computed in f64 and stored in f32, the division in f32, ties
/// rounded to even, clipped to the full i8 range.
pub fn quantize_weight(w: &[f32]) -> (f32, Vec<i8>) {
    let (lo, hi) = w
        .iter()
        .fold((0f32, 0f32), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    let absmax = lo.abs().max(hi.abs());
    let scale = (f64::from(absmax) - f64::from(-absmax)) / 254.0;
    let scale = if scale < f64::from(f32::MIN_POSITIVE) {
        1.0
    } else {
        scale as f32
    };
    let q = w
        .iter()
        .map(|&x| (x / scale).round_ties_even().clamp(-128.0, 127.0) as i8)
        .collect();
    (scale, q)
}

/// Writes the int8 form of the ONNX graph `src` to `dst` (and its weights
/// to `dst` + `.data` beside it).
pub fn quantize_graph(src: &Path, dst: &Path) -> Result<Int8Summary, RewriteError> {
    let Source {
        mut model,
        opset,
        mut reader,
        mut data,
    } = Source::open(src, dst)?;
    if opset < 11 {
        return Err(RewriteError::Unsupported {
            path: src.to_path_buf(),
            message: format!("opset {opset}: DynamicQuantizeLinear needs 11 or later; re-export"),
        });
    }
    let graph = super::graph_mut(&mut model, src)?;
    let mut names = Names::of(graph, src);
    // A weight that is also a graph input may be fed at run time: not a constant.
    let inputs: HashSet<&str> = graph.input.iter().map(|i| i.name.as_str()).collect();
    let initializers: HashMap<String, usize> = graph
        .initializer
        .iter()
        .enumerate()
        .filter(|(_, t)| !inputs.contains(t.name.as_str()))
        .map(|(i, t)| (t.name.clone(), i))
        .collect();
    drop(inputs);
    let mut summary = Int8Summary::default();
    let mut quantized_inputs: HashSet<String> = HashSet::new();
    let mut quantized_weights: HashSet<String> = HashSet::new();
    let mut new_initializers = Vec::new();
    let mut nodes = Vec::with_capacity(graph.node.len() * 2);
    for node in std::mem::take(&mut graph.node) {
        let weight = (node.op_type == "MatMul"
            && node.domain.is_empty()
            && node.input.len() == 2
            && node.output.len() == 1)
            .then(|| initializers.get(&node.input[1]).copied())
            .flatten()
            .filter(|&i| graph.initializer[i].data_type == DataType::Float as i32);
        let Some(wi) = weight else {
            if node.op_type == "MatMul" {
                summary.kept += 1;
            }
            nodes.push(node);
            continue;
        };
        let (x, w, y) = (&node.input[0], &node.input[1], &node.output[0]);
        if quantized_inputs.insert(x.clone()) {
            for n in [q_name(x), scale_name(x), zp_name(x)] {
                names.value(&n)?;
            }
            nodes.push(NodeProto {
                input: vec![x.clone()],
                output: vec![q_name(x), scale_name(x), zp_name(x)],
                name: names.node(format!("{x}_QuantizeLinear"))?,
                op_type: "DynamicQuantizeLinear".into(),
                ..Default::default()
            });
        }
        if quantized_weights.insert(w.clone()) {
            for n in [q_name(w), scale_name(w), zp_name(w)] {
                names.value(&n)?;
            }
            let t = &graph.initializer[wi];
            let values = reader.f32_values(t)?;
            let (scale, q) = quantize_weight(&values);
            summary.weights += 1;
            summary.f32_bytes += values.len() as u64 * 4;
            summary.int8_bytes += q.len() as u64;
            drop(values);
            let raw: Vec<u8> = q.into_iter().map(|v| v as u8).collect();
            let mut qt = TensorProto {
                dims: t.dims.clone(),
                data_type: DataType::Int8 as i32,
                name: q_name(w),
                ..Default::default()
            };
            data.store(&mut qt, raw)?;
            new_initializers.push(qt);
            new_initializers.push(TensorProto {
                data_type: DataType::Float as i32,
                float_data: vec![scale],
                name: scale_name(w),
                ..Default::default()
            });
            new_initializers.push(TensorProto {
                data_type: DataType::Int8 as i32,
                int32_data: vec![0],
                name: zp_name(w),
                ..Default::default()
            });
        }
        summary.matmuls += 1;
        let base = if node.name.is_empty() {
            String::new()
        } else {
            format!("{}_quant", node.name)
        };
        let int_out = format!("{y}_output_quantized");
        let cast_out = format!("{int_out}_cast_output");
        let scales = if base.is_empty() {
            format!("{}_{}_mul", scale_name(x), scale_name(w))
        } else {
            format!("{base}_scales_mul")
        };
        let scales_out = format!("{scales}:0");
        for n in [&int_out, &cast_out, &scales_out] {
            names.value(n)?;
        }
        nodes.push(NodeProto {
            input: vec![q_name(x), q_name(w), zp_name(x), zp_name(w)],
            output: vec![int_out.clone()],
            name: names.node(base.clone())?,
            op_type: "MatMulInteger".into(),
            ..Default::default()
        });
        nodes.push(NodeProto {
            input: vec![int_out.clone()],
            output: vec![cast_out.clone()],
            name: names.node(format!("{int_out}_cast"))?,
            op_type: "Cast".into(),
            attribute: vec![AttributeProto {
                name: "to".into(),
                r#type: AttributeType::Int as i32,
                i: DataType::Float as i64,
                ..Default::default()
            }],
            ..Default::default()
        });
        nodes.push(NodeProto {
            input: vec![scale_name(x), scale_name(w)],
            output: vec![scales_out.clone()],
            name: names.node(scales)?,
            op_type: "Mul".into(),
            ..Default::default()
        });
        nodes.push(NodeProto {
            input: vec![cast_out, scales_out],
            output: vec![y.clone()],
            name: names.node(if base.is_empty() {
                String::new()
            } else {
                format!("{base}_output_scale_mul")
            })?,
            op_type: "Mul".into(),
            ..Default::default()
        });
    }
    if summary.matmuls == 0 {
        return Err(RewriteError::NothingToRewrite {
            path: src.to_path_buf(),
            what: "no MatMul with a constant f32 weight to quantize (already int8?)",
        });
    }
    graph.node = nodes;

    // Keep the f32 initializers something still reads; external ones are
    // copied into the new data file (the source's may not be writable, and
    // its name belongs to the source graph).
    let used: HashSet<&str> = graph
        .node
        .iter()
        .flat_map(|n| n.input.iter().map(String::as_str))
        .chain(graph.output.iter().map(|o| o.name.as_str()))
        .collect();
    let mut kept = Vec::with_capacity(graph.initializer.len() + new_initializers.len());
    for mut t in std::mem::take(&mut graph.initializer) {
        if quantized_weights.contains(&t.name) && !used.contains(t.name.as_str()) {
            continue;
        }
        if is_external(&t) {
            let raw = reader.raw(&t)?;
            t.external_data.clear();
            t.data_location = None;
            data.store(&mut t, raw)?;
        }
        kept.push(t);
    }
    drop(used);
    kept.extend(new_initializers);
    graph.initializer = kept;
    super::write(model, dst, data)?;
    Ok(summary)
}

fn q_name(t: &str) -> String {
    format!("{t}_quantized")
}
fn scale_name(t: &str) -> String {
    format!("{t}_scale")
}
fn zp_name(t: &str) -> String {
    format!("{t}_zero_point")
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use std::path::PathBuf;
    use tract_onnx::pb::tensor_proto::DataLocation;
    use tract_onnx::pb::{
        GraphProto, ModelProto, OperatorSetIdProto, StringStringEntryProto, ValueInfoProto,
    };

    fn model(graph: GraphProto, opset: i64) -> ModelProto {
        ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: opset,
            }],
            graph: Some(graph),
            ..Default::default()
        }
    }

    fn matmul(name: &str, x: &str, w: &str, y: &str) -> NodeProto {
        NodeProto {
            input: vec![x.into(), w.into()],
            output: vec![y.into()],
            name: name.into(),
            op_type: "MatMul".into(),
            ..Default::default()
        }
    }

    /// A 16x16 f32 weight `name`, stored inline.
    fn weight(name: &str) -> TensorProto {
        TensorProto {
            dims: vec![16, 16],
            data_type: DataType::Float as i32,
            name: name.into(),
            raw_data: (0..256)
                .flat_map(|i| (i as f32 / 64.0 - 2.0).to_le_bytes())
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn scale_and_values_follow_onnxruntime() {
        // max |w| = 2.54 -> scale 0.02; 1.27 / 0.02 = 63.5 rounds to even (64).
        let (s, q) = quantize_weight(&[-2.54, 1.27, 0.01, 0.03, 2.0]);
        assert_eq!(s, ((2.54f32 as f64 * 2.0) / 254.0) as f32);
        assert_eq!(q[0], -127);
        assert_eq!(q[2], (0.01f32 / s).round_ties_even() as i8);
        assert_eq!(q[4], (2.0f32 / s).round_ties_even() as i8);
        // All zero: onnxruntime's scale is 1, the values 0.
        assert_eq!(quantize_weight(&[0.0, 0.0]), (1.0, vec![0, 0]));
        // Only positive values: the range still holds 0 (symmetric anyway).
        let (s, q) = quantize_weight(&[0.5, 1.0]);
        assert_eq!(s, (2.0f64 / 254.0) as f32);
        assert_eq!(q, vec![64, 127]);
    }

    /// A graph `y = x @ W` whose 16x16 weight is stored externally at
    /// `location`, `offset`, `length`.
    fn write_graph(dir: &Path, location: &str, offset: u64, length: u64) -> PathBuf {
        let kv = |k: &str, v: String| StringStringEntryProto {
            key: k.into(),
            value: v,
        };
        let w = TensorProto {
            dims: vec![16, 16],
            data_type: DataType::Float as i32,
            name: "W".into(),
            data_location: Some(DataLocation::External as i32),
            external_data: vec![
                kv("location", location.into()),
                kv("offset", offset.to_string()),
                kv("length", length.to_string()),
            ],
            ..Default::default()
        };
        let model = model(
            GraphProto {
                node: vec![matmul("mm", "x", "W", "y")],
                initializer: vec![w],
                ..Default::default()
            },
            18,
        );
        let path = dir.join("g.onnx");
        std::fs::write(&path, model.encode_to_vec()).unwrap();
        path
    }

    #[test]
    fn external_data_outside_the_folder_or_past_its_end_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("graph");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(root.path().join("outside.bin"), vec![0u8; 1024]).unwrap();
        std::os::unix::fs::symlink("../outside.bin", dir.join("link.bin")).unwrap();
        std::fs::write(dir.join("g.onnx.data"), vec![0u8; 1024]).unwrap();
        let out = root.path().join("out.onnx");
        for (location, offset, length, says) in [
            ("../outside.bin", 0, 1024, "not inside the graph's folder"),
            ("/etc/passwd", 0, 1024, "not inside the graph's folder"),
            ("link.bin", 0, 1024, "leads outside the graph's folder"),
            ("g.onnx.data", 512, 1024, "past the end"),
            ("g.onnx.data", u64::MAX, 2, "past the end"),
            (
                "g.onnx.data",
                0,
                512,
                "512 bytes of data for 256 f32 values",
            ),
        ] {
            let src = write_graph(&dir, location, offset, length);
            let e = quantize_graph(&src, &out).unwrap_err().to_string();
            assert!(
                e.contains(says) && e.contains("tensor W"),
                "{location}: {e}"
            );
        }
        // The same graph with its weight in place is rewritten.
        let src = write_graph(&dir, "g.onnx.data", 0, 1024);
        let s = quantize_graph(&src, &out).unwrap();
        assert_eq!((s.matmuls, s.weights, s.kept), (1, 1, 0));
        assert_eq!((s.f32_bytes, s.int8_bytes), (1024, 256));
    }

    /// Decodes a rewritten graph.
    fn read(path: &Path) -> GraphProto {
        let m = ModelProto::decode(std::fs::read(path).unwrap().as_slice()).unwrap();
        m.graph.unwrap()
    }

    #[test]
    fn matmuls_become_onnxruntimes_int8_nodes_and_unused_weights_go() {
        let dir = tempfile::tempdir().unwrap();
        let (src, out) = (dir.path().join("g.onnx"), dir.path().join("out"));
        std::fs::create_dir(&out).unwrap();
        // y1 = x @ W (W used once: dropped), y2 = x @ V and z = V + 1... V
        // feeds an Add too, so its f32 copy stays.
        let g = GraphProto {
            node: vec![
                matmul("a", "x", "W", "y1"),
                matmul("b", "x", "V", "y2"),
                NodeProto {
                    input: vec!["V".into(), "y2".into()],
                    output: vec!["z".into()],
                    name: "add".into(),
                    op_type: "Add".into(),
                    ..Default::default()
                },
                matmul("c", "y1", "z", "k"),
            ],
            initializer: vec![weight("W"), weight("V")],
            ..Default::default()
        };
        std::fs::write(&src, model(g, 18).encode_to_vec()).unwrap();
        let s = quantize_graph(&src, &out.join("g.onnx")).unwrap();
        assert_eq!((s.matmuls, s.weights, s.kept), (2, 2, 1));
        let g = read(&out.join("g.onnx"));
        let ops: Vec<_> = g.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(
            ops,
            [
                "DynamicQuantizeLinear", // x, once for both MatMuls
                "MatMulInteger",
                "Cast",
                "Mul",
                "Mul",
                "MatMulInteger",
                "Cast",
                "Mul",
                "Mul",
                "Add",
                "MatMul"
            ]
        );
        assert_eq!(
            g.node[1].input,
            ["x_quantized", "W_quantized", "x_zero_point", "W_zero_point"]
        );
        assert_eq!(g.node[4].output, ["y1"]);
        let names: Vec<_> = g.initializer.iter().map(|t| t.name.as_str()).collect();
        assert!(!names.contains(&"W") && names.contains(&"V"), "{names:?}");
        let t = |n: &str| g.initializer.iter().find(|t| t.name == n).unwrap();
        // max |w| = 2.0 -> scale 2/127; 256 int8 bytes stay inline (< 1 KiB).
        assert_eq!(t("W_scale").float_data, [(4.0f64 / 254.0) as f32]);
        assert_eq!(t("W_zero_point").int32_data, [0]);
        assert_eq!(t("W_quantized").data_type, DataType::Int8 as i32);
        assert_eq!(t("W_quantized").raw_data.len(), 256);
        assert_eq!(t("W_quantized").raw_data[0] as i8, -127);
        assert!(!is_external(t("W_quantized")));
    }

    #[test]
    fn what_the_rewrite_cannot_do_right_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (src, out) = (dir.path().join("g.onnx"), dir.path().join("out"));
        std::fs::create_dir(&out).unwrap();
        let dst = out.join("g.onnx");
        let refuse = |g: GraphProto, opset: i64, says: &str| {
            std::fs::write(&src, model(g, opset).encode_to_vec()).unwrap();
            let e = quantize_graph(&src, &dst).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
            assert!(!out.join("g.onnx.data").exists(), "data file left behind");
        };
        let plain = GraphProto {
            node: vec![matmul("a", "x", "W", "y")],
            initializer: vec![weight("W")],
            ..Default::default()
        };
        refuse(plain.clone(), 10, "opset 10");
        // No constant weight; a weight that is also a graph input.
        refuse(
            GraphProto {
                node: vec![matmul("a", "x", "y", "z")],
                ..Default::default()
            },
            18,
            "no MatMul with a constant f32 weight",
        );
        let mut fed = plain.clone();
        fed.input.push(ValueInfoProto {
            name: "W".into(),
            ..Default::default()
        });
        refuse(fed, 18, "no MatMul with a constant f32 weight");
        // A name the rewrite needs is taken.
        let mut taken = plain.clone();
        taken.node.push(NodeProto {
            input: vec!["y".into()],
            output: vec!["x_scale".into()],
            name: "relu".into(),
            op_type: "Relu".into(),
            ..Default::default()
        });
        refuse(taken, 18, "the name x_scale");
        // Subgraphs are not looked into.
        let mut sub = plain.clone();
        sub.node.push(NodeProto {
            op_type: "If".into(),
            name: "branch".into(),
            attribute: vec![AttributeProto {
                name: "then_branch".into(),
                g: Some(GraphProto::default()),
                ..Default::default()
            }],
            ..Default::default()
        });
        refuse(sub, 18, "subgraphs are not supported");
        // The source's own folder: its data file would be replaced.
        std::fs::write(&src, model(plain, 18).encode_to_vec()).unwrap();
        let e = quantize_graph(&src, &dir.path().join("int8.onnx")).unwrap_err();
        assert!(e.to_string().contains("another folder"), "{e}");
    }

    #[test]
    fn a_file_that_is_not_a_graph_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("g.onnx");
        let dst = dir.path().join("out.onnx");
        std::fs::create_dir(&dst).unwrap();
        let dst = dst.join("g.onnx");
        std::fs::write(&src, ModelProto::default().encode_to_vec()).unwrap();
        let e = quantize_graph(&src, &dst).unwrap_err();
        assert!(e.to_string().contains("no graph"), "{e}");
        std::fs::write(&src, b"not a protobuf at all \xff\xff").unwrap();
        let e = quantize_graph(&src, &dst).unwrap_err();
        assert!(matches!(e, RewriteError::Decode { .. }), "{e}");
    }
}
