//! Q-Former stage: image features + instruction -> soft prompt for the LLM.
//!
//! InstructBLIP's Q-Former is *instruction-aware*: its learned queries attend
//! to the image features and to the instruction's BERT tokens, so it runs once
//! per question. The graph includes `language_projection`, so its output is
//! already `[num_query_tokens, llm_hidden]`, ready to be decoded as
//! embeddings by the LLM stage.

use crate::bundle::{Bundle, QFormerSpec};
use crate::graph::{f32_output, Graph, GraphError};
use crate::vision::ImageFeatures;
use tokenizers::Tokenizer;
use tract_onnx::prelude::*;

#[derive(Debug, thiserror::Error)]
pub enum QFormerError {
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error("cannot load the Q-Former tokenizer {path}: {message}")]
    Tokenizer { path: String, message: String },
    #[error("tokenizing the instruction for the Q-Former failed: {0}")]
    Encode(String),
    #[error("the instruction is empty")]
    EmptyPrompt,
    #[error("the instruction has {tokens} Q-Former tokens; the model takes at most {max}")]
    PromptTooLong { tokens: usize, max: usize },
    #[error("image features are {positions}x{hidden}, the Q-Former expects {expected_positions}x{expected_hidden}")]
    FeatureShape {
        positions: usize,
        hidden: usize,
        expected_positions: usize,
        expected_hidden: usize,
    },
}

/// The instruction as the Q-Former sees it: `[CLS] wordpieces [SEP]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QFormerInput {
    pub ids: Vec<i64>,
}

pub struct QFormer {
    graph: Graph,
    tokenizer: Tokenizer,
    spec: QFormerSpec,
    image_positions: usize,
    image_hidden: usize,
}

impl QFormer {
    pub fn load(bundle: &Bundle, threads: usize) -> Result<Self, QFormerError> {
        let m = &bundle.manifest;
        let spec = m.qformer.clone();
        let tok_path = bundle.path(&spec.tokenizer);
        let tokenizer = Tokenizer::from_file(&tok_path).map_err(|e| QFormerError::Tokenizer {
            path: tok_path.display().to_string(),
            message: e.to_string(),
        })?;
        let image_fact = f32::fact([1, m.vision.num_positions, m.vision.hidden_size]).into();
        let graph = Graph::load(
            "qformer",
            &bundle.path(&spec.file),
            &[Some(image_fact), None, None],
            &[1, spec.num_query_tokens, spec.output_size],
            threads,
        )?;
        Ok(Self {
            graph,
            tokenizer,
            spec,
            image_positions: m.vision.num_positions,
            image_hidden: m.vision.hidden_size,
        })
    }

    pub fn num_query_tokens(&self) -> usize {
        self.spec.num_query_tokens
    }

    /// Tokenizes the instruction like the reference's `qformer_tokenizer(prompt)`.
    pub fn tokenize(&self, prompt: &str) -> Result<QFormerInput, QFormerError> {
        if prompt.trim().is_empty() {
            return Err(QFormerError::EmptyPrompt);
        }
        let enc = self
            .tokenizer
            .encode(prompt, true)
            .map_err(|e| QFormerError::Encode(e.to_string()))?;
        let ids: Vec<i64> = enc.get_ids().iter().map(|&i| i as i64).collect();
        if ids.len() > self.spec.max_text_tokens {
            return Err(QFormerError::PromptTooLong {
                tokens: ids.len(),
                max: self.spec.max_text_tokens,
            });
        }
        Ok(QFormerInput { ids })
    }

    /// Runs the Q-Former + projection: returns `num_query_tokens * output_size` floats.
    pub fn run(
        &self,
        image: &ImageFeatures,
        text: &QFormerInput,
    ) -> Result<Vec<f32>, QFormerError> {
        if image.positions != self.image_positions || image.hidden != self.image_hidden {
            return Err(QFormerError::FeatureShape {
                positions: image.positions,
                hidden: image.hidden,
                expected_positions: self.image_positions,
                expected_hidden: self.image_hidden,
            });
        }
        let shape_err = |e: TractError| GraphError::Shape {
            graph: "qformer",
            message: e.to_string(),
        };
        let l = text.ids.len();
        let feats = Tensor::from_shape(&[1, image.positions, image.hidden], &image.data)
            .map_err(shape_err)?;
        let ids = Tensor::from_shape(&[1, l], &text.ids).map_err(shape_err)?;
        let mask = Tensor::from_shape(&[1, l], &vec![1i64; l]).map_err(shape_err)?;
        let out = self.graph.run(tvec!(
            feats.into_tvalue(),
            ids.into_tvalue(),
            mask.into_tvalue()
        ))?;
        Ok(f32_output(
            "qformer",
            &out,
            &[1, self.spec.num_query_tokens, self.spec.output_size],
        )?)
    }
}
