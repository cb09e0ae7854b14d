//! blipd: InstructBLIP on small boards.
//!
//! The data's journey, one module per stage:
//! [`preprocess`] (frame -> pixel_values) -> [`vision`] (image features) ->
//! [`qformer`] (instruction-aware soft prompt) -> [`llm`] (answer, llama.cpp).
//! [`pipeline`] wires them; [`bundle`] reads the exported model directory.
//! The daemon: [`camera`] (frames in), [`mqtt`] (questions in, answers out),
//! [`http`] (the Ollama/OpenAI-compatible API's shapes),
//! [`serve`] (worker, queue, wiring), [`config`].
//! [`doctor`] checks a board (config, bundle, memory, cameras, broker) before and after install;
//! [`bench`] measures every stage on it.

pub mod bench;
pub mod bundle;
pub mod camera;
pub mod config;
pub mod doctor;
pub mod graph;
pub mod http;
pub mod llm;
pub mod mqtt;
pub mod pipeline;
pub mod preprocess;
pub mod qformer;
pub mod serve;
pub mod vision;

pub use pipeline::{Answer, Pipeline, PipelineError, PipelineOptions, StageTimings};
