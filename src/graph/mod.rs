//! tract plumbing shared by the vision and Q-Former stages.
//!
//! tract's life cycle is load -> optimize once -> run many
//! (`model_for_path` -> `into_optimized` -> `into_runnable`); everything
//! expensive happens in [`Graph::load`] at start-up. Each graph owns a
//! multithreaded executor sized by the caller, because tract's default
//! executor is single-threaded and reads no environment variable.

mod fold;
pub mod quantize;
pub mod rewrite;

pub use fold::fold_weight_work;
use std::path::Path;
use tract_onnx::prelude::*;

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("cannot load ONNX graph {path}: {message}")]
    Load { path: String, message: String },
    #[error("running {graph} failed: {message}")]
    Run {
        graph: &'static str,
        message: String,
    },
    #[error("{graph}: {message}")]
    Shape {
        graph: &'static str,
        message: String,
    },
}

/// An optimized, runnable ONNX graph.
pub struct Graph {
    name: &'static str,
    plan: Arc<TypedRunnableModel>,
}

impl Graph {
    /// Loads `path`, pins the given input facts (`None` keeps the graph's own),
    /// optimizes and prepares it to run on `threads` threads. The optimized
    /// graph's output shape must be `output` (the manifest's promise), so a
    /// graph from another bundle fails here, not at the first frame.
    pub fn load(
        name: &'static str,
        path: &Path,
        inputs: &[Option<InferenceFact>],
        output: &[usize],
        threads: usize,
    ) -> Result<Self, GraphError> {
        let err = |e: TractError| GraphError::Load {
            path: path.display().to_string(),
            message: format!("{e:#}"),
        };
        if !path.is_file() {
            return Err(GraphError::Load {
                path: path.display().to_string(),
                message: "file not found".into(),
            });
        }
        let mut model = tract_onnx::onnx()
            .with_ignore_value_info(true)
            .model_for_path(path)
            .map_err(err)?;
        for (i, fact) in inputs.iter().enumerate() {
            if let Some(f) = fact {
                model = model.with_input_fact(i, f.clone()).map_err(err)?;
            }
        }
        let executor = if threads > 1 {
            multithread::Executor::multithread_with_name(threads, name)
        } else {
            multithread::Executor::SingleThread
        };
        let options = RunOptions {
            executor: Some(executor),
            ..Default::default()
        };
        let plan = model
            .into_optimized()
            .and_then(|mut m| {
                let (folded, swapped) = finish(&mut m)?;
                tracing::debug!(
                    graph = name,
                    folded,
                    swapped,
                    "precomputed weight-only nodes"
                );
                m.into_runnable_with_options(&options)
            })
            .map_err(err)?;
        let fact = plan.model().output_fact(0).map_err(err)?;
        if fact.shape.as_concrete() != Some(output) {
            return Err(GraphError::Shape {
                graph: name,
                message: format!(
                    "{} produces {:?} but the manifest implies {:?}",
                    path.display(),
                    fact.shape,
                    output
                ),
            });
        }
        Ok(Self { name, plan })
    }

    /// Runs the graph; returns its first output.
    pub fn run(&self, inputs: TVec<TValue>) -> Result<Tensor, GraphError> {
        let mut out = self.plan.run(inputs).map_err(|e| GraphError::Run {
            graph: self.name,
            message: format!("{e:#}"),
        })?;
        if out.is_empty() {
            return Err(GraphError::Run {
                graph: self.name,
                message: "graph produced no output".into(),
            });
        }
        Ok(out.swap_remove(0).into_tensor())
    }

    pub fn name(&self) -> &'static str {
        self.name
    }
}

/// blipd's own steps after tract's `into_optimized`: precompute the work on
/// weights alone ([`fold_weight_work`]) and use the SIMD
/// [`quantize::DynamicQuantizeU8`]. Returns (nodes folded, ops swapped).
pub fn finish(model: &mut TypedModel) -> TractResult<(usize, usize)> {
    let folded = fold_weight_work(model)?;
    let mut swapped = 0;
    for node in model.nodes_mut() {
        if node.op.name() == quantize::TRACT_OP_NAME {
            node.op = Box::new(quantize::DynamicQuantizeU8);
            swapped += 1;
        }
    }
    Ok((folded, swapped))
}

/// Copies an f32 tensor out, checking its shape.
pub fn f32_output(
    graph: &'static str,
    t: &Tensor,
    shape: &[usize],
) -> Result<Vec<f32>, GraphError> {
    if t.shape() != shape {
        return Err(GraphError::Shape {
            graph,
            message: format!("output shape {:?}, expected {:?}", t.shape(), shape),
        });
    }
    let view = t
        .to_plain_array_view::<f32>()
        .map_err(|e| GraphError::Shape {
            graph,
            message: format!("output is not f32: {e}"),
        })?;
    Ok(view.iter().copied().collect())
}
