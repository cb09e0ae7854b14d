//! Rewrites an ONNX graph file into its f16 form on the board: the graph
//! onnxruntime's `convert_float_to_float16(keep_io_types=True,
//! op_block_list=DEFAULT_OP_BLOCK_LIST + F16_KEEP)` writes, which is what
//! `models/vision_precision.py --vision f16` runs on a workstation.
//!
//! - Every f32 initializer some f16 node reads becomes f16 (values below
//!   f16's smallest subnormal keep their sign as that subnormal, finite
//!   values past 65504 become 65504, as onnxruntime clamps them); those only
//!   the kept-f32 nodes read (LayerNorm's scale and bias) stay f32.
//! - Every f32 value the graph declares (its `value_info`) becomes f16,
//!   except the graph's inputs and outputs: a `Cast` to f16 follows each f32
//!   input (`graph_input_cast_<i>`) and one back to f32 precedes each f32
//!   output (`graph_output_cast_<i>`).
//! - The nodes that need f32's range and precision ([`KEPT_F32`]:
//!   LayerNormalization, Softmax and the parts of a hand-written norm) stay
//!   f32, with a `Cast` to f32 on each f16 input (`<x>_cast_to_fp32`) and a
//!   `Cast` back to f16 on each output (`<y>_cast_to_fp16`).
//! - `Cast`s to f32 inside the graph cast to f16 instead, and float
//!   attribute tensors become f16.
//!
//! Names and values are onnxruntime's (models/tests/test_quantize_graph.py
//! holds the two graphs equal, tensor by tensor and node by node). One thing
//! differs on purpose: onnxruntime appends its `Cast` nodes at the end of the
//! node list, which leaves the graph out of topological order; here each
//! stands beside the node it serves, so the graph passes onnx's checker.

use super::store::is_external;
use super::{Names, RewriteError, Source};
use half::f16;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use tract_onnx::pb::{
    attribute_proto::AttributeType, tensor_proto::DataType, type_proto, AttributeProto, NodeProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

/// What the tool is, as the manifest's `derived_from.tool` records it.
pub const TOOL: &str = "blipd quantize (f16 weights and arithmetic, inputs/outputs, LayerNorm and softmax kept f32, as onnxruntime.transformers.float16)";

/// Nodes left in f32: onnxruntime's `DEFAULT_OP_BLOCK_LIST` and
/// models/vision_precision.py's `F16_KEEP` (normalisation and softmax need
/// the range and the precision: a ViT-g's activations reach the hundreds
/// before LayerNorm).
pub const KEPT_F32: &[&str] = &[
    "ArrayFeatureExtractor",
    "Binarizer",
    "CastMap",
    "CategoryMapper",
    "DictVectorizer",
    "FeatureVectorizer",
    "Imputer",
    "LabelEncoder",
    "LinearClassifier",
    "LinearRegressor",
    "Normalizer",
    "OneHotEncoder",
    "RandomUniformLike",
    "SVMClassifier",
    "SVMRegressor",
    "Scaler",
    "TreeEnsembleClassifier",
    "TreeEnsembleRegressor",
    "TreeEnsemble",
    "ZipMap",
    "NonMaxSuppression",
    "TopK",
    "RoiAlign",
    "Range",
    "CumSum",
    "Min",
    "Max",
    "Upsample",
    // vision_precision.py's F16_KEEP
    "LayerNormalization",
    "Softmax",
    "ReduceMean",
    "Pow",
    "Sqrt",
    "Reciprocal",
];

/// Ops whose float type onnxruntime's converter rewrites in ways this port
/// does not carry (inputs fixed to f32, dtype attributes): refused. None of
/// them is in an InstructBLIP graph.
const REFUSED: &[&str] = &[
    "Resize",
    "GroupNorm",
    "SkipGroupNorm",
    "EyeLike",
    "Multinomial",
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "SequenceEmpty",
    "Bernoulli",
];

const FLOAT: i32 = DataType::Float as i32;
const FLOAT16: i32 = DataType::Float16 as i32;

/// What [`f16_graph`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct F16Summary {
    /// Initializers written in f16, and those kept in f32.
    pub tensors: usize,
    pub kept_f32_tensors: usize,
    /// Nodes kept in f32 (each with its casts).
    pub kept_f32_nodes: usize,
    /// Cast nodes added.
    pub casts: usize,
    /// f32 bytes of the converted initializers, and their f16 bytes.
    pub f32_bytes: u64,
    pub f16_bytes: u64,
}

/// onnxruntime's `convert_np_to_float16` for one value: sign and
/// finiteness kept, magnitudes below `5.96e-08` raised to it (f16's
/// smallest subnormal), finite ones above 65504 lowered to it, then rounded
/// to nearest even.
pub fn to_f16(x: f32) -> f16 {
    const MIN_POSITIVE: f64 = 5.96e-08;
    const MAX_FINITE: f32 = 65504.0;
    let wide = f64::from(x);
    if wide > 0.0 && wide < MIN_POSITIVE {
        f16::from_f64(MIN_POSITIVE)
    } else if wide < 0.0 && wide > -MIN_POSITIVE {
        f16::from_f64(-MIN_POSITIVE)
    } else if x.is_finite() {
        f16::from_f32(x.clamp(-MAX_FINITE, MAX_FINITE))
    } else {
        f16::from_f32(x)
    }
}

fn elem_type(v: &ValueInfoProto) -> Option<i32> {
    match v.r#type.as_ref()?.value.as_ref()? {
        type_proto::Value::TensorType(t) => Some(t.elem_type),
    }
}

fn set_elem_type(v: &mut ValueInfoProto, elem: i32) {
    if let Some(TypeProto {
        value: Some(type_proto::Value::TensorType(t)),
        ..
    }) = v.r#type.as_mut()
    {
        t.elem_type = elem;
    }
}

/// Records `v` as an f16 value; the first declaration of a name counts, as
/// in onnxruntime's list lookup.
fn declare(map: &mut HashMap<String, ValueInfoProto>, v: &ValueInfoProto) {
    map.entry(v.name.clone()).or_insert_with(|| v.clone());
}

/// A new value `name`, declared as `like` is but of type `elem`.
fn redeclare(
    names: &mut Names,
    like: &ValueInfoProto,
    name: &str,
    elem: i32,
) -> Result<ValueInfoProto, RewriteError> {
    names.value(name)?;
    let mut d = like.clone();
    d.name = name.to_string();
    set_elem_type(&mut d, elem);
    Ok(d)
}

fn cast(name: String, input: String, output: String, to: i32) -> NodeProto {
    NodeProto {
        input: vec![input],
        output: vec![output],
        name,
        op_type: "Cast".into(),
        attribute: vec![AttributeProto {
            name: "to".into(),
            r#type: AttributeType::Int as i32,
            i: i64::from(to),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// An inline FLOAT tensor (an attribute's) in f16: `float_data` moves to
/// `int32_data` as f16 bits, `raw_data` is converted in place.
fn tensor_to_f16(t: &mut TensorProto) {
    if t.data_type != FLOAT {
        return;
    }
    t.data_type = FLOAT16;
    if !t.float_data.is_empty() {
        t.int32_data = t
            .float_data
            .drain(..)
            .map(|x| i32::from(to_f16(x).to_bits()))
            .collect();
    }
    if !t.raw_data.is_empty() {
        t.raw_data = raw_to_f16(&t.raw_data);
    }
}

fn raw_to_f16(raw: &[u8]) -> Vec<u8> {
    raw.chunks_exact(4)
        .flat_map(|b| to_f16(f32::from_le_bytes([b[0], b[1], b[2], b[3]])).to_le_bytes())
        .collect()
}

/// Writes the f16 form of the ONNX graph `src` to `dst` (and its weights to
/// `dst` + `.data` beside it).
pub fn f16_graph(src: &Path, dst: &Path) -> Result<F16Summary, RewriteError> {
    let Source {
        mut model,
        mut reader,
        mut data,
        ..
    } = Source::open(src, dst)?;
    let graph = super::graph_mut(&mut model, src)?;
    let mut names = Names::of(graph, src);
    let mut summary = F16Summary::default();
    if let Some(n) = graph
        .node
        .iter()
        .find(|n| REFUSED.contains(&n.op_type.as_str()))
    {
        return Err(RewriteError::Unsupported {
            path: src.to_path_buf(),
            message: format!(
                "node {} ({}): its float types are not rewritten to f16 here",
                n.name, n.op_type
            ),
        });
    }

    // The values known to be f16 after the rewrite, with their declarations
    // (the first one of a name counts, as onnxruntime's list lookup).
    let mut f16_values: HashMap<String, ValueInfoProto> = HashMap::new();
    let mut renamed: HashMap<String, String> = HashMap::new();
    let mut head = Vec::new();
    let mut tail = Vec::new();
    let mut new_declarations = Vec::new();
    for (i, v) in graph.input.iter().enumerate() {
        if elem_type(v) != Some(FLOAT) {
            continue;
        }
        let out = format!("graph_input_cast_{i}");
        let d = redeclare(&mut names, v, &out, FLOAT16)?;
        declare(&mut f16_values, &d);
        new_declarations.push(d);
        head.push(cast(
            names.node(format!("graph_input_cast{i}"))?,
            v.name.clone(),
            out.clone(),
            FLOAT16,
        ));
        renamed.insert(v.name.clone(), out);
    }
    for (i, v) in graph.output.iter().enumerate() {
        if elem_type(v) != Some(FLOAT) {
            continue;
        }
        let inp = format!("graph_output_cast_{i}");
        let d = redeclare(&mut names, v, &inp, FLOAT16)?;
        declare(&mut f16_values, &d);
        new_declarations.push(d);
        tail.push(cast(
            names.node(format!("graph_output_cast{i}"))?,
            inp.clone(),
            v.name.clone(),
            FLOAT,
        ));
        renamed.insert(v.name.clone(), inp);
    }
    let io: HashSet<String> = renamed.keys().cloned().collect();

    // Which f32 initializers f16 nodes read, and which kept-f32 nodes read.
    let float_inits: HashMap<String, usize> = graph
        .initializer
        .iter()
        .enumerate()
        .filter(|(_, t)| t.data_type == FLOAT)
        .map(|(i, t)| (t.name.clone(), i))
        .collect();
    let mut read_as_f16: HashSet<usize> = HashSet::new();
    let mut kept_nodes: Vec<bool> = Vec::with_capacity(graph.node.len());
    for node in &mut graph.node {
        for name in node.input.iter_mut().chain(node.output.iter_mut()) {
            if let Some(new) = renamed.get(name.as_str()) {
                name.clone_from(new);
            }
        }
        let kept = KEPT_F32.contains(&node.op_type.as_str());
        kept_nodes.push(kept);
        if kept {
            summary.kept_f32_nodes += 1;
            continue;
        }
        read_as_f16.extend(node.input.iter().filter_map(|n| float_inits.get(n)));
        if node.op_type == "Cast" {
            if let Some(to) = node.attribute.iter_mut().find(|a| a.name == "to") {
                if to.i == i64::from(FLOAT) {
                    to.i = i64::from(FLOAT16);
                }
            }
        }
        if node.op_type == "ConstantOfShape"
            && (node.domain.is_empty() || node.domain == "ai.onnx")
            && !node.attribute.iter().any(|a| a.name == "value")
        {
            node.attribute.push(AttributeProto {
                name: "value".into(),
                r#type: AttributeType::Tensor as i32,
                t: Some(TensorProto {
                    name: "value".into(),
                    dims: vec![1],
                    data_type: FLOAT16,
                    int32_data: vec![0],
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        for a in &mut node.attribute {
            a.t.iter_mut()
                .chain(a.tensors.iter_mut())
                .for_each(tensor_to_f16);
        }
    }
    for v in graph
        .input
        .iter_mut()
        .chain(graph.output.iter_mut())
        .chain(graph.value_info.iter_mut())
    {
        if elem_type(v) == Some(FLOAT) && !io.contains(&v.name) {
            set_elem_type(v, FLOAT16);
            declare(&mut f16_values, v);
        }
    }

    // The weights, one at a time into the new data file: in f16 where an
    // f16 node reads them.
    for (i, t) in graph.initializer.iter_mut().enumerate() {
        let in_f16 = read_as_f16.contains(&i);
        let raw = if in_f16 {
            let values = reader.f32_values(t)?;
            summary.tensors += 1;
            summary.f32_bytes += values.len() as u64 * 4;
            summary.f16_bytes += values.len() as u64 * 2;
            t.float_data.clear();
            t.data_type = FLOAT16;
            declare(
                &mut f16_values,
                &ValueInfoProto {
                    name: t.name.clone(),
                    r#type: Some(TypeProto {
                        value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                            elem_type: FLOAT16,
                            shape: Some(TensorShapeProto {
                                dim: t
                                    .dims
                                    .iter()
                                    .map(|&d| tract_onnx::pb::tensor_shape_proto::Dimension {
                                        value: Some(
                                            tract_onnx::pb::tensor_shape_proto::dimension::Value::DimValue(d),
                                        ),
                                        ..Default::default()
                                    })
                                    .collect(),
                            }),
                        })),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            );
            values
                .iter()
                .flat_map(|&x| to_f16(x).to_le_bytes())
                .collect()
        } else if is_external(t) {
            if t.data_type == FLOAT {
                summary.kept_f32_tensors += 1;
            }
            reader.raw(t)?
        } else {
            if t.data_type == FLOAT {
                summary.kept_f32_tensors += 1;
            }
            continue;
        };
        t.external_data.clear();
        t.data_location = None;
        data.store(t, raw)?;
    }
    if summary.tensors == 0 {
        return Err(RewriteError::NothingToRewrite {
            path: src.to_path_buf(),
            what: "no f32 weight to rewrite in f16 (already f16?)",
        });
    }

    // The kept-f32 nodes, with a cast on each f16 value they read or write;
    // a value read by several of them is cast once.
    let mut to_f32: HashMap<String, String> = HashMap::new();
    summary.casts += head.len() + tail.len();
    let mut nodes = Vec::with_capacity(graph.node.len() + head.len() + tail.len());
    nodes.append(&mut head);
    for (mut node, kept) in std::mem::take(&mut graph.node).into_iter().zip(kept_nodes) {
        if !kept {
            nodes.push(node);
            continue;
        }
        for input in &mut node.input {
            let Some(d) = f16_values.get(input.as_str()) else {
                continue;
            };
            if let Some(cast_name) = to_f32.get(input.as_str()) {
                input.clone_from(cast_name);
                continue;
            }
            let out = format!("{input}_cast_to_fp32");
            new_declarations.push(redeclare(&mut names, d, &out, FLOAT)?);
            nodes.push(cast(
                names.node(format!("{input}_cast_to_fp32_node"))?,
                input.clone(),
                out.clone(),
                FLOAT,
            ));
            summary.casts += 1;
            to_f32.insert(input.clone(), out.clone());
            *input = out;
        }
        let mut after = Vec::new();
        for output in &mut node.output {
            let Some(d) = f16_values.get(output.as_str()) else {
                continue;
            };
            let inner = format!("{output}_cast_to_fp16");
            new_declarations.push(redeclare(&mut names, d, &inner, FLOAT)?);
            after.push(cast(
                names.node(format!("{output}_cast_to_fp16_node"))?,
                inner.clone(),
                output.clone(),
                FLOAT16,
            ));
            summary.casts += 1;
            *output = inner;
        }
        nodes.push(node);
        nodes.append(&mut after);
    }
    nodes.append(&mut tail);
    graph.node = nodes;
    graph.value_info.append(&mut new_declarations);
    super::write(model, dst, data)?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use tract_onnx::pb::{GraphProto, ModelProto, OperatorSetIdProto};

    #[test]
    fn values_round_as_onnxruntimes_converter() {
        // convert_np_to_float16 (onnxruntime 1.31) on the same f32 values.
        let cases: [(f32, u16); 16] = [
            (1e-9, 0x0001),
            (-1e-9, 0x8001),
            (3e-8, 0x0001),
            (5.96e-8, 0x0001),
            (6e-8, 0x0001),
            (70000.0, 0x7bff),
            (-70000.0, 0xfbff),
            (f32::INFINITY, 0x7c00),
            (f32::NEG_INFINITY, 0xfc00),
            (0.1, 0x2e66),
            (65519.0, 0x7bff),
            (65520.0, 0x7bff),
            (0.0, 0x0000),
            (-0.0, 0x8000),
            (1.000_488_3, 0x3c00),
            (1.0, 0x3c00),
        ];
        for (x, bits) in cases {
            assert_eq!(to_f16(x).to_bits(), bits, "{x:e}");
        }
        assert!(to_f16(f32::NAN).is_nan());
    }

    fn value(name: &str, elem: i32, dims: &[i64]) -> ValueInfoProto {
        ValueInfoProto {
            name: name.into(),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: elem,
                    shape: Some(TensorShapeProto {
                        dim: dims
                            .iter()
                            .map(|&d| tract_onnx::pb::tensor_shape_proto::Dimension {
                                value: Some(
                                    tract_onnx::pb::tensor_shape_proto::dimension::Value::DimValue(
                                        d,
                                    ),
                                ),
                                ..Default::default()
                            })
                            .collect(),
                    }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
        NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            name: name.into(),
            op_type: op.into(),
            ..Default::default()
        }
    }

    fn weight(name: &str, values: &[f32]) -> TensorProto {
        TensorProto {
            name: name.into(),
            dims: vec![values.len() as i64],
            data_type: FLOAT,
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        }
    }

    /// A graph of `nodes` over input x [1,4], output y [1,4], weights W
    /// [4,4], g and b [4], and f32 value declarations for h, n and m.
    fn write_model(dir: &Path, nodes: Vec<NodeProto>) -> std::path::PathBuf {
        let w: Vec<f32> = (0..16).map(|i| i as f32 * 0.25 - 2.0).collect();
        let model = ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: 18,
            }],
            graph: Some(GraphProto {
                node: nodes,
                initializer: vec![
                    TensorProto {
                        dims: vec![4, 4],
                        ..weight("W", &w)
                    },
                    weight("g", &[1.0, 1.0, 1.0, 1.0]),
                    weight("b", &[0.0, 0.0, 0.0, 1e-9]),
                ],
                input: vec![value("x", FLOAT, &[1, 4])],
                output: vec![value("y", FLOAT, &[1, 4])],
                value_info: vec![
                    value("h", FLOAT, &[1, 4]),
                    value("n", FLOAT, &[1, 4]),
                    value("m", FLOAT, &[1, 4]),
                ],
                ..Default::default()
            }),
            ..Default::default()
        };
        let path = dir.join("src").join("g.onnx");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, model.encode_to_vec()).unwrap();
        path
    }

    fn read(path: &Path) -> GraphProto {
        ModelProto::decode(std::fs::read(path).unwrap().as_slice())
            .unwrap()
            .graph
            .unwrap()
    }

    fn show(n: &NodeProto) -> String {
        let to = n.attribute.iter().find(|a| a.name == "to").map(|a| a.i);
        format!(
            "{} {} {:?} -> {:?} {to:?}",
            n.op_type, n.name, n.input, n.output
        )
    }

    #[test]
    fn f16_nodes_casts_and_kept_norms_follow_onnxruntime() {
        let dir = tempfile::tempdir().unwrap();
        let src = write_model(
            dir.path(),
            vec![
                node("MatMul", "mm", &["x", "W"], &["h"]),
                node("LayerNormalization", "ln1", &["h", "g", "b"], &["n"]),
                node("LayerNormalization", "ln2", &["h", "g", "b"], &["m"]),
                node("Add", "add1", &["n", "m"], &["s"]),
                node("Add", "add2", &["s", "h"], &["y"]),
            ],
        );
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let s = f16_graph(&src, &out.join("g.onnx")).unwrap();
        assert_eq!(
            s,
            F16Summary {
                tensors: 1,
                kept_f32_tensors: 2,
                kept_f32_nodes: 2,
                casts: 5,
                f32_bytes: 64,
                f16_bytes: 32,
            }
        );
        let g = read(&out.join("g.onnx"));
        let nodes: Vec<String> = g.node.iter().map(show).collect();
        assert_eq!(
            nodes,
            [
                r#"Cast graph_input_cast0 ["x"] -> ["graph_input_cast_0"] Some(10)"#,
                r#"MatMul mm ["graph_input_cast_0", "W"] -> ["h"] None"#,
                r#"Cast h_cast_to_fp32_node ["h"] -> ["h_cast_to_fp32"] Some(1)"#,
                r#"LayerNormalization ln1 ["h_cast_to_fp32", "g", "b"] -> ["n_cast_to_fp16"] None"#,
                r#"Cast n_cast_to_fp16_node ["n_cast_to_fp16"] -> ["n"] Some(10)"#,
                r#"LayerNormalization ln2 ["h_cast_to_fp32", "g", "b"] -> ["m_cast_to_fp16"] None"#,
                r#"Cast m_cast_to_fp16_node ["m_cast_to_fp16"] -> ["m"] Some(10)"#,
                r#"Add add1 ["n", "m"] -> ["s"] None"#,
                r#"Add add2 ["s", "h"] -> ["graph_output_cast_0"] None"#,
                r#"Cast graph_output_cast0 ["graph_output_cast_0"] -> ["y"] Some(1)"#,
            ]
        );
        // W in f16 (its values exact in f16), g and b kept in f32 untouched
        // (only LayerNorm reads them; b's tiny value is not clamped).
        let init: HashMap<&str, &TensorProto> =
            g.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
        assert_eq!(init["W"].data_type, FLOAT16);
        let w: Vec<u8> = (0..16)
            .flat_map(|i| f16::from_f32(i as f32 * 0.25 - 2.0).to_le_bytes())
            .collect();
        assert_eq!(init["W"].raw_data, w);
        assert_eq!(init["b"].data_type, FLOAT);
        assert_eq!(
            init["b"].raw_data,
            [0f32, 0.0, 0.0, 1e-9]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>()
        );
        // Inputs and outputs stay f32; the inner values are f16, the casts'
        // own values declared.
        let elem = |v: &[ValueInfoProto], name: &str| {
            v.iter().find(|v| v.name == name).and_then(elem_type)
        };
        assert_eq!(elem(&g.input, "x"), Some(FLOAT));
        assert_eq!(elem(&g.output, "y"), Some(FLOAT));
        for (name, t) in [
            ("h", FLOAT16),
            ("n", FLOAT16),
            ("graph_input_cast_0", FLOAT16),
            ("graph_output_cast_0", FLOAT16),
            ("h_cast_to_fp32", FLOAT),
            ("n_cast_to_fp16", FLOAT),
        ] {
            assert_eq!(elem(&g.value_info, name), Some(t), "{name}");
        }
    }

    #[test]
    fn what_the_port_does_not_carry_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let src = write_model(
            dir.path(),
            vec![
                node("MatMul", "mm", &["x", "W"], &["h"]),
                node("Resize", "rs", &["h"], &["y"]),
            ],
        );
        let e = f16_graph(&src, &out.join("g.onnx")).unwrap_err();
        assert!(e.to_string().contains("rs (Resize)"), "{e}");
        assert!(!out.join("g.onnx.data").exists());
        // Only LayerNorm reads the weights: nothing to run in f16.
        let src = write_model(
            dir.path(),
            vec![node("LayerNormalization", "ln", &["x", "g", "b"], &["y"])],
        );
        let e = f16_graph(&src, &out.join("g.onnx")).unwrap_err();
        assert!(matches!(e, RewriteError::NothingToRewrite { .. }), "{e}");
        // A name the rewrite needs is taken.
        let src = write_model(
            dir.path(),
            vec![
                node("MatMul", "mm", &["x", "W"], &["graph_input_cast_0"]),
                node("Add", "add", &["graph_input_cast_0", "x"], &["y"]),
            ],
        );
        let e = f16_graph(&src, &out.join("g.onnx")).unwrap_err();
        assert!(matches!(e, RewriteError::NameClash { .. }), "{e}");
    }
}
