//! Vision stage: `pixel_values` -> image features (EVA ViT, post-layernorm).
//!
//! The features of a frame do not depend on the instruction, so callers run
//! this once per frame and reuse the [`ImageFeatures`] for every question
//! about it (the most expensive stage by far on a board).

use crate::bundle::Bundle;
use crate::graph::{f32_output, Graph, GraphError};
use std::sync::Arc;
use tract_onnx::prelude::*;

/// Image features of one frame: `[positions, hidden]`, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageFeatures {
    pub positions: usize,
    pub hidden: usize,
    pub data: Arc<Vec<f32>>,
}

pub struct Vision {
    graph: Graph,
    input_shape: [usize; 4],
    positions: usize,
    hidden: usize,
}

impl Vision {
    pub fn load(bundle: &Bundle, threads: usize) -> Result<Self, GraphError> {
        let m = &bundle.manifest;
        let input_shape = [1, 3, m.image.height as usize, m.image.width as usize];
        let fact = f32::fact(input_shape).into();
        let graph = Graph::load(
            "vision",
            &bundle.path(&m.vision.file),
            &[Some(fact)],
            &[1, m.vision.num_positions, m.vision.hidden_size],
            threads,
        )?;
        Ok(Self {
            graph,
            input_shape,
            positions: m.vision.num_positions,
            hidden: m.vision.hidden_size,
        })
    }

    /// Runs the encoder on `pixel_values` (`[1,3,H,W]` flattened).
    pub fn run(&self, pixel_values: &[f32]) -> Result<ImageFeatures, GraphError> {
        let expected: usize = self.input_shape.iter().product();
        if pixel_values.len() != expected {
            return Err(GraphError::Shape {
                graph: "vision",
                message: format!(
                    "pixel_values has {} values, the graph takes {:?}",
                    pixel_values.len(),
                    self.input_shape
                ),
            });
        }
        let input =
            Tensor::from_shape(&self.input_shape, pixel_values).map_err(|e| GraphError::Shape {
                graph: "vision",
                message: e.to_string(),
            })?;
        let out = self.graph.run(tvec!(input.into_tvalue()))?;
        let data = f32_output("vision", &out, &[1, self.positions, self.hidden])?;
        Ok(ImageFeatures {
            positions: self.positions,
            hidden: self.hidden,
            data: Arc::new(data),
        })
    }
}
