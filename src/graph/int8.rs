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
//! (tests/quantize_graph.rs holds them to a graph onnxruntime wrote). The
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

use prost::Message;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};
use tract_onnx::pb::{
    attribute_proto::AttributeType, tensor_proto::DataLocation, tensor_proto::DataType,
    AttributeProto, NodeProto, StringStringEntryProto, TensorProto,
};

/// What the tool is, as the manifest's `derived_from.tool` records it.
pub const TOOL: &str =
    "blipd quantize (dynamic int8 MatMul, int8 weights per tensor, as onnxruntime quantize_dynamic)";

/// Tensors at least this large go to the external data file (onnx's own
/// default threshold when it saves with external data).
const EXTERNAL_THRESHOLD: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum Int8Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not an ONNX model: {message}")]
    Decode { path: PathBuf, message: String },
    #[error("{path}: tensor {tensor}: {message}")]
    Tensor {
        path: PathBuf,
        tensor: String,
        message: String,
    },
    #[error("{path}: no MatMul with a constant f32 weight to quantize (already int8?)")]
    NothingToQuantize { path: PathBuf },
}

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
pub fn quantize_graph(src: &Path, dst: &Path) -> Result<Int8Summary, Int8Error> {
    let bytes = std::fs::read(src).map_err(|source| Int8Error::Io {
        path: src.to_path_buf(),
        source,
    })?;
    let mut model =
        tract_onnx::pb::ModelProto::decode(bytes.as_slice()).map_err(|e| Int8Error::Decode {
            path: src.to_path_buf(),
            message: e.to_string(),
        })?;
    drop(bytes);
    let Some(graph) = model.graph.as_mut() else {
        return Err(Int8Error::Decode {
            path: src.to_path_buf(),
            message: "no graph".into(),
        });
    };
    let src_dir = src.parent().unwrap_or(Path::new(".")).to_path_buf();
    let data_name = format!(
        "{}.data",
        dst.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "graph.onnx".into())
    );
    let data_path = dst.with_file_name(&data_name);
    let mut data = DataFile::create(&data_path, data_name)?;
    let mut reader = Reader::new(src_dir, src.to_path_buf());

    let initializers: HashMap<String, usize> = graph
        .initializer
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.clone(), i))
        .collect();
    let mut summary = Int8Summary::default();
    let mut quantized_inputs: HashSet<String> = HashSet::new();
    let mut quantized_weights: HashSet<String> = HashSet::new();
    let mut new_initializers = Vec::new();
    let mut nodes = Vec::with_capacity(graph.node.len() * 2);
    for node in std::mem::take(&mut graph.node) {
        let weight = (node.op_type == "MatMul" && node.domain.is_empty() && node.input.len() == 2)
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
            nodes.push(NodeProto {
                input: vec![x.clone()],
                output: vec![q_name(x), scale_name(x), zp_name(x)],
                name: format!("{x}_QuantizeLinear"),
                op_type: "DynamicQuantizeLinear".into(),
                ..Default::default()
            });
        }
        if quantized_weights.insert(w.clone()) {
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
        nodes.push(NodeProto {
            input: vec![q_name(x), q_name(w), zp_name(x), zp_name(w)],
            output: vec![int_out.clone()],
            name: base.clone(),
            op_type: "MatMulInteger".into(),
            ..Default::default()
        });
        nodes.push(NodeProto {
            input: vec![int_out.clone()],
            output: vec![cast_out.clone()],
            name: format!("{int_out}_cast"),
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
            name: scales,
            op_type: "Mul".into(),
            ..Default::default()
        });
        nodes.push(NodeProto {
            input: vec![cast_out, scales_out],
            output: vec![y.clone()],
            name: if base.is_empty() {
                String::new()
            } else {
                format!("{base}_output_scale_mul")
            },
            op_type: "Mul".into(),
            ..Default::default()
        });
    }
    if summary.matmuls == 0 {
        drop(data);
        let _ = std::fs::remove_file(&data_path);
        return Err(Int8Error::NothingToQuantize {
            path: src.to_path_buf(),
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
    data.finish()?;

    model.producer_name = "blipd quantize".into();
    model.producer_version = env!("CARGO_PKG_VERSION").into();
    let io = |source| Int8Error::Io {
        path: dst.to_path_buf(),
        source,
    };
    std::fs::write(dst, model.encode_to_vec()).map_err(io)?;
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

fn is_external(t: &TensorProto) -> bool {
    t.data_location == Some(DataLocation::External as i32)
}

fn entry<'a>(t: &'a TensorProto, key: &str) -> Option<&'a str> {
    t.external_data
        .iter()
        .find(|e| e.key == key)
        .map(|e| e.value.as_str())
}

/// Reads tensor data from the source graph and its external files, which
/// must lie inside the graph's folder (as tract requires too).
struct Reader {
    dir: PathBuf,
    graph: PathBuf,
    open: Option<(PathBuf, File)>,
}

impl Reader {
    fn new(dir: PathBuf, graph: PathBuf) -> Self {
        Self {
            dir,
            graph,
            open: None,
        }
    }

    fn bad(&self, t: &TensorProto, message: impl Into<String>) -> Int8Error {
        Int8Error::Tensor {
            path: self.graph.clone(),
            tensor: t.name.clone(),
            message: message.into(),
        }
    }

    fn elements(&self, t: &TensorProto) -> Result<usize, Int8Error> {
        t.dims.iter().try_fold(1usize, |n, &d| {
            usize::try_from(d)
                .ok()
                .and_then(|d| n.checked_mul(d))
                .ok_or_else(|| self.bad(t, format!("bad dims {:?}", t.dims)))
        })
    }

    /// The f32 values of a FLOAT tensor, wherever they are stored.
    fn f32_values(&mut self, t: &TensorProto) -> Result<Vec<f32>, Int8Error> {
        let n = self.elements(t)?;
        if !t.float_data.is_empty() {
            if t.float_data.len() != n {
                return Err(self.bad(t, "float_data does not match its dims"));
            }
            return Ok(t.float_data.clone());
        }
        let raw = self.raw(t)?;
        if raw.len() != n * 4 {
            return Err(self.bad(t, format!("{} bytes of data for {n} f32 values", raw.len())));
        }
        Ok(raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    /// The raw bytes of a tensor stored as `raw_data` or externally.
    fn raw(&mut self, t: &TensorProto) -> Result<Vec<u8>, Int8Error> {
        if !is_external(t) {
            return Ok(t.raw_data.clone());
        }
        let location = entry(t, "location").ok_or_else(|| self.bad(t, "no location"))?;
        let rel = Path::new(location);
        if !rel
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(self.bad(
                t,
                format!("external data {location:?} is not inside the graph's folder"),
            ));
        }
        let number = |key: &str| -> Result<Option<u64>, Int8Error> {
            entry(t, key)
                .map(|v| {
                    v.parse::<u64>()
                        .map_err(|_| self.bad(t, format!("bad {key} {v:?}")))
                })
                .transpose()
        };
        let offset = number("offset")?.unwrap_or(0);
        let length = number("length")?;
        let path = self.dir.join(rel);
        let io = |source| Int8Error::Io {
            path: path.clone(),
            source,
        };
        // Consecutive weights mostly share one data file: keep it open.
        let f = match &mut self.open {
            Some((p, f)) if *p == path => f,
            slot => {
                &mut slot
                    .insert((path.clone(), File::open(&path).map_err(io)?))
                    .1
            }
        };
        let size = f.metadata().map_err(io)?.len();
        let length = length.unwrap_or(size.saturating_sub(offset));
        if offset.checked_add(length).is_none_or(|end| end > size) {
            return Err(self.bad(
                t,
                format!("bytes {offset}+{length} lie past the end of {location} ({size} bytes)"),
            ));
        }
        f.seek(SeekFrom::Start(offset)).map_err(io)?;
        let mut buf = vec![0u8; length as usize];
        f.read_exact(&mut buf).map_err(io)?;
        Ok(buf)
    }
}

/// The new graph's external data file, written in order.
struct DataFile {
    path: PathBuf,
    name: String,
    out: BufWriter<File>,
    offset: u64,
}

impl DataFile {
    fn create(path: &Path, name: String) -> Result<Self, Int8Error> {
        let f = File::create(path).map_err(|source| Int8Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            name,
            out: BufWriter::with_capacity(1 << 20, f),
            offset: 0,
        })
    }

    /// Stores `raw` as `t`'s data: inline when small, else appended here.
    fn store(&mut self, t: &mut TensorProto, raw: Vec<u8>) -> Result<(), Int8Error> {
        if raw.len() < EXTERNAL_THRESHOLD {
            t.raw_data = raw;
            return Ok(());
        }
        // Each tensor starts on a 4 KiB boundary (ONNX's external data
        // format allows the gap): a reader may map it page-aligned.
        let pad = (4096 - self.offset % 4096) % 4096;
        let io = |source| Int8Error::Io {
            path: self.path.clone(),
            source,
        };
        self.out.write_all(&vec![0u8; pad as usize]).map_err(io)?;
        self.offset += pad;
        self.out.write_all(&raw).map_err(io)?;
        let kv = |k: &str, v: String| StringStringEntryProto {
            key: k.into(),
            value: v,
        };
        t.raw_data.clear();
        t.data_location = Some(DataLocation::External as i32);
        t.external_data = vec![
            kv("location", self.name.clone()),
            kv("offset", self.offset.to_string()),
            kv("length", raw.len().to_string()),
        ];
        self.offset += raw.len() as u64;
        Ok(())
    }

    fn finish(mut self) -> Result<(), Int8Error> {
        let io = |source| Int8Error::Io {
            path: self.path.clone(),
            source,
        };
        self.out.flush().map_err(io)?;
        self.out.get_ref().sync_all().map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::pb::{GraphProto, ModelProto};

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
        let model = ModelProto {
            ir_version: 8,
            graph: Some(GraphProto {
                node: vec![NodeProto {
                    input: vec!["x".into(), "W".into()],
                    output: vec!["y".into()],
                    name: "mm".into(),
                    op_type: "MatMul".into(),
                    ..Default::default()
                }],
                initializer: vec![w],
                ..Default::default()
            }),
            ..Default::default()
        };
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
        std::fs::write(dir.join("g.onnx.data"), vec![0u8; 1024]).unwrap();
        let out = root.path().join("out.onnx");
        for (location, offset, length, says) in [
            ("../outside.bin", 0, 1024, "not inside the graph's folder"),
            ("/etc/passwd", 0, 1024, "not inside the graph's folder"),
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

    #[test]
    fn a_graph_without_constant_matmul_weights_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("g.onnx");
        std::fs::write(&src, ModelProto::default().encode_to_vec()).unwrap();
        let e = quantize_graph(&src, &dir.path().join("o.onnx")).unwrap_err();
        assert!(e.to_string().contains("no graph"), "{e}");
        std::fs::write(&src, b"not a protobuf at all \xff\xff").unwrap();
        let e = quantize_graph(&src, &dir.path().join("o.onnx")).unwrap_err();
        assert!(matches!(e, Int8Error::Decode { .. }), "{e}");
    }
}
