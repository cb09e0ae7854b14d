//! Rewrites of an ONNX graph file on the board, with no Python: the graphs
//! `models/vision_precision.py` writes on a workstation with onnxruntime's
//! tools, so a board can derive its bundle from an f32 one.
//!
//! - [`int8`]: dynamic int8 MatMuls (onnxruntime's `quantize_dynamic`);
//! - [`f16`]: f16 weights and arithmetic (onnxruntime's float16 converter).
//!
//! Both stream: the protobuf (without weights) is decoded once, each weight
//! is read, rewritten and appended to the new `<file>.data` in turn, so
//! memory stays near one weight, not the graph (a ViT-g's f32 weights are
//! 4 GB). What tract's ONNX schema does not know is not written back: the
//! exporter's per-node metadata (IR 10 `metadata_props`, PyTorch's source
//! locations) and zero-valued attribute fields, which ONNX reads as the
//! same 0.

pub mod f16;
pub mod int8;
mod store;

use prost::Message;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use store::{is_external, DataFile, Reader};
use tract_onnx::pb::{GraphProto, ModelProto};

#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
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
    #[error("{path}: {what}")]
    NothingToRewrite { path: PathBuf, what: &'static str },
    #[error("{path}: {message}")]
    Unsupported { path: PathBuf, message: String },
    #[error(
        "{path}: the rewritten graph would need the name {name}, which the graph already uses"
    )]
    NameClash { path: PathBuf, name: String },
}

/// A source graph, checked for what a rewrite could not carry over right,
/// and the new graph's data file (removed again unless [`write`] is reached).
struct Source {
    model: ModelProto,
    /// The default domain's opset.
    opset: i64,
    reader: Reader,
    data: DataFile,
}

impl Source {
    fn open(src: &Path, dst: &Path) -> Result<Self, RewriteError> {
        let bytes = std::fs::read(src).map_err(|source| RewriteError::Io {
            path: src.to_path_buf(),
            source,
        })?;
        let mut model = ModelProto::decode(bytes.as_slice()).map_err(|e| RewriteError::Decode {
            path: src.to_path_buf(),
            message: e.to_string(),
        })?;
        drop(bytes);
        let graph = graph_mut(&mut model, src)?;
        let unsupported = |message: String| RewriteError::Unsupported {
            path: src.to_path_buf(),
            message,
        };
        let src_dir = src.parent().unwrap_or(Path::new(".")).to_path_buf();
        if dst.parent().and_then(|d| d.canonicalize().ok()) == src_dir.canonicalize().ok() {
            return Err(unsupported(
                "the rewritten graph must be written to another folder (its data file would replace the source's)"
                    .into(),
            ));
        }
        // Tensors a rewrite would not move to the new data file, or names it
        // would not see: refused rather than written wrong.
        if !graph.sparse_initializer.is_empty() {
            return Err(unsupported("sparse initializers are not supported".into()));
        }
        for node in &graph.node {
            for a in &node.attribute {
                if a.g.is_some() || !a.graphs.is_empty() {
                    return Err(unsupported(format!(
                        "node {} ({}) has a subgraph; subgraphs are not supported",
                        node.name, node.op_type
                    )));
                }
                if a.t.iter().chain(&a.tensors).any(is_external) {
                    return Err(unsupported(format!(
                        "node {} keeps an attribute tensor in external data; not supported",
                        node.name
                    )));
                }
            }
        }
        let opset = model
            .opset_import
            .iter()
            .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
            .map_or(0, |o| o.version);
        let data_name = format!(
            "{}.data",
            dst.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "graph.onnx".into())
        );
        let data = DataFile::create(&dst.with_file_name(&data_name), data_name)?;
        Ok(Self {
            model,
            opset,
            reader: Reader::new(src_dir, src.to_path_buf()),
            data,
        })
    }
}

fn graph_mut<'a>(
    model: &'a mut ModelProto,
    src: &Path,
) -> Result<&'a mut GraphProto, RewriteError> {
    model.graph.as_mut().ok_or_else(|| RewriteError::Decode {
        path: src.to_path_buf(),
        message: "no graph".into(),
    })
}

/// Finishes the data file, then writes the graph beside it.
fn write(mut model: ModelProto, dst: &Path, data: DataFile) -> Result<(), RewriteError> {
    data.finish()?;
    model.producer_name = "blipd quantize".into();
    model.producer_version = env!("CARGO_PKG_VERSION").into();
    std::fs::write(dst, model.encode_to_vec()).map_err(|source| RewriteError::Io {
        path: dst.to_path_buf(),
        source,
    })
}

/// The graph's value and node names, and the ones this rewrite adds: a new
/// name must be new (ONNX graphs assign each value once).
struct Names {
    path: PathBuf,
    values: HashSet<String>,
    nodes: HashSet<String>,
}

impl Names {
    fn of(g: &tract_onnx::pb::GraphProto, path: &Path) -> Self {
        let values = (g.input.iter().map(|i| &i.name))
            .chain(g.initializer.iter().map(|t| &t.name))
            .chain(g.node.iter().flat_map(|n| &n.output))
            .cloned()
            .collect();
        let nodes = g.node.iter().map(|n| n.name.clone()).collect();
        Self {
            path: path.to_path_buf(),
            values,
            nodes,
        }
    }

    fn clash(&self, name: &str) -> RewriteError {
        RewriteError::NameClash {
            path: self.path.clone(),
            name: name.into(),
        }
    }

    fn value(&mut self, name: &str) -> Result<(), RewriteError> {
        if self.values.insert(name.to_string()) {
            Ok(())
        } else {
            Err(self.clash(name))
        }
    }

    /// Node names are optional in ONNX: an empty one may repeat.
    fn node(&mut self, name: String) -> Result<String, RewriteError> {
        if name.is_empty() || self.nodes.insert(name.clone()) {
            Ok(name)
        } else {
            Err(self.clash(&name))
        }
    }
}
