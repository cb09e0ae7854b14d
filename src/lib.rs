//! blipd: InstructBLIP on small boards.
//!
//! The data's journey, one module per stage:
//! [`preprocess`] (frame -> pixel_values) -> [`vision`] (image features) ->
//! [`qformer`] (instruction-aware soft prompt) -> [`llm`] (answer, llama.cpp).
//! [`pipeline`] wires them; [`bundle`] reads the exported model directory.

pub mod bundle;
pub mod graph;
pub mod llm;
pub mod pipeline;
pub mod preprocess;
pub mod qformer;
pub mod vision;

pub use pipeline::{Answer, Pipeline, PipelineError, PipelineOptions, StageTimings};
