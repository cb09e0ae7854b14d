//! Ollama's API (github.com/ollama/ollama, docs/api.md): `/api/generate`,
//! `/api/chat`, `/api/tags`, `/api/show`, `/api/version`. Streams are
//! NDJSON, one object per line, the last with `done: true` and the timing
//! fields; errors are `{"error": "..."}`.

use super::{max_tokens, seed, shorten, target, temperature, ApiError, Picture, Target};
use crate::mqtt::wire::{self, AnswerReply};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The Ollama version whose API this follows (what `/api/version` says;
/// some clients check it before using `format` schemas or images).
pub const API_VERSION: &str = "0.6.3";

/// `options` of a request: the ones that mean something here. The rest
/// (`num_ctx`, `repeat_penalty`, ...) are accepted and ignored, as Ollama
/// ignores options a model does not use.
#[derive(Debug, Default, Deserialize)]
pub struct Options {
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub top_k: Option<i32>,
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub num_predict: Option<i64>,
}

/// What `/api/generate` and `/api/chat` have in common.
#[derive(Debug, Deserialize)]
pub struct Common {
    pub model: String,
    /// Default true, as in Ollama.
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub format: Option<Value>,
    #[serde(default)]
    pub options: Option<Options>,
    /// blipd's extension: ask this camera's newest frame.
    #[serde(default)]
    pub camera: Option<String>,
}

/// `POST /api/generate`.
#[derive(Debug, Deserialize)]
pub struct GenerateRequest {
    #[serde(flatten)]
    pub common: Common,
    #[serde(default)]
    pub prompt: String,
    /// Base64 pictures; InstructBLIP looks at one.
    #[serde(default)]
    pub images: Vec<String>,
}

/// One message of `/api/chat`.
#[derive(Debug, Deserialize)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: String,
    #[serde(default)]
    pub images: Vec<String>,
}

/// `POST /api/chat`: InstructBLIP answers one instruction about one
/// picture, so the last user message is the question and carries the image.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    #[serde(flatten)]
    pub common: Common,
    #[serde(default)]
    pub messages: Vec<Message>,
}

/// `POST /api/show`.
#[derive(Debug, Deserialize)]
pub struct ShowRequest {
    #[serde(default)]
    pub model: Option<String>,
    /// The older spelling.
    #[serde(default)]
    pub name: Option<String>,
}

/// A translated request: the daemon's request and whether to stream it.
#[derive(Debug)]
pub struct Translated {
    pub request: wire::Request,
    pub stream: bool,
}

/// What `/api/generate` with neither prompt nor images means in Ollama:
/// load the model (here: it is loaded) and say so.
pub fn is_load_only(r: &GenerateRequest) -> bool {
    r.prompt.trim().is_empty() && r.images.is_empty()
}

fn apply(mut req: wire::Request, c: Common, limit: usize) -> Result<wire::Request, ApiError> {
    let o = c.options.unwrap_or_default();
    req.max_tokens = max_tokens(o.num_predict, limit);
    req.temperature = temperature(o.temperature);
    req.top_p = o.top_p;
    req.top_k = o.top_k;
    req.seed = seed(o.seed, "options.seed")?;
    match c.format {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s.is_empty() => {}
        Some(Value::String(s)) if s == "json" => req.format = Some("json".into()),
        Some(schema @ Value::Object(_)) => {
            req.format = Some("json".into());
            req.schema = Some(schema);
        }
        Some(other) => {
            return Err(ApiError::bad(format!(
                "format must be \"json\" or a JSON schema, got {}",
                shorten(&other.to_string())
            ))
            .param("format"))
        }
    }
    Ok(req)
}

fn one_image(mut images: Vec<String>) -> Result<Option<Picture>, ApiError> {
    if images.len() > 1 {
        return Err(ApiError::bad(format!(
            "{} images: this model looks at one picture per question",
            images.len()
        ))
        .param("images"));
    }
    Ok(images.pop().map(Picture::Inline))
}

/// `/api/generate` as the daemon's request.
pub fn generate(
    r: GenerateRequest,
    cameras: &[String],
    limit: usize,
) -> Result<Translated, ApiError> {
    let c = r.common;
    let t = target(&c.model, c.camera.as_deref(), cameras)?;
    let image = one_image(r.images)?;
    let req = super::request(r.prompt, &t, image.as_ref())?;
    let stream = c.stream.unwrap_or(true);
    Ok(Translated {
        request: apply(req, c, limit)?,
        stream,
    })
}

/// `/api/chat` as the daemon's request: the last user message's text and
/// image (earlier turns cannot be shown to InstructBLIP; system messages
/// have no place in its prompt).
pub fn chat(r: ChatRequest, cameras: &[String], limit: usize) -> Result<Translated, ApiError> {
    let c = r.common;
    let t = target(&c.model, c.camera.as_deref(), cameras)?;
    let Some(last) = r.messages.into_iter().rev().find(|m| m.role == "user") else {
        return Err(ApiError::bad("no user message: nothing to answer").param("messages"));
    };
    let image = match t {
        Target::Image => one_image(last.images)?,
        Target::Camera(_) => None,
    };
    let req = super::request(last.content, &t, image.as_ref())?;
    let stream = c.stream.unwrap_or(true);
    Ok(Translated {
        request: apply(req, c, limit)?,
        stream,
    })
}

/// Ollama's timing fields, in nanoseconds, of a final chunk.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timing {
    pub total_duration: u64,
    pub load_duration: u64,
    pub prompt_eval_count: usize,
    pub prompt_eval_duration: u64,
    pub eval_count: usize,
    pub eval_duration: u64,
}

impl Timing {
    pub fn of(a: &AnswerReply) -> Self {
        let ns = |ms: f64| (ms.max(0.0) * 1e6) as u64;
        let s = &a.timings.stages;
        Self {
            total_duration: ns(a.timings.queue_ms + s.total_ms),
            // The model is loaded once, at start.
            load_duration: 0,
            prompt_eval_count: a.prompt_tokens,
            // Reading the prompt includes looking at the picture.
            prompt_eval_duration: ns(s.preprocess_ms + s.vision_ms + s.qformer_ms + s.prefill_ms),
            eval_count: a.tokens,
            eval_duration: ns(s.decode_ms),
        }
    }
}

/// One line of a `/api/generate` stream, or its whole answer.
#[derive(Debug, Serialize)]
pub struct GenerateChunk<'a> {
    pub model: &'a str,
    pub created_at: String,
    pub response: &'a str,
    pub done: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub done_reason: Option<&'static str>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub timing: Option<Timing>,
}

#[derive(Debug, Serialize)]
pub struct ChatMessage<'a> {
    pub role: &'static str,
    pub content: &'a str,
}

/// One line of a `/api/chat` stream, or its whole answer.
#[derive(Debug, Serialize)]
pub struct ChatChunk<'a> {
    pub model: &'a str,
    pub created_at: String,
    pub message: ChatMessage<'a>,
    pub done: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub done_reason: Option<&'static str>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub timing: Option<Timing>,
}

/// Which endpoint's shape a reply takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Generate,
    Chat,
}

fn now() -> String {
    wire::rfc3339(std::time::SystemTime::now())
}

/// A chunk of new text (`done: false`), as a JSON line.
pub fn text_line(ep: Endpoint, model: &str, text: &str) -> Vec<u8> {
    line(ep, model, text, None, None)
}

/// The final object: the whole answer when not streaming, "" after a stream.
pub fn final_line(ep: Endpoint, model: &str, text: &str, a: &AnswerReply) -> Vec<u8> {
    line(
        ep,
        model,
        text,
        Some(super::finish_reason(a.stop)),
        Some(Timing::of(a)),
    )
}

/// `/api/generate`'s reply to a load-only call.
pub fn load_line(model: &str) -> Vec<u8> {
    let c = GenerateChunk {
        model,
        created_at: now(),
        response: "",
        done: true,
        done_reason: Some("load"),
        timing: None,
    };
    to_line(&c)
}

fn line(
    ep: Endpoint,
    model: &str,
    text: &str,
    done_reason: Option<&'static str>,
    timing: Option<Timing>,
) -> Vec<u8> {
    let done = done_reason.is_some();
    match ep {
        Endpoint::Generate => to_line(&GenerateChunk {
            model,
            created_at: now(),
            response: text,
            done,
            done_reason,
            timing,
        }),
        Endpoint::Chat => to_line(&ChatChunk {
            model,
            created_at: now(),
            message: ChatMessage {
                role: "assistant",
                content: text,
            },
            done,
            done_reason,
            timing,
        }),
    }
}

fn to_line<T: Serialize>(v: &T) -> Vec<u8> {
    // Serialising these plain structs cannot fail.
    let mut out = serde_json::to_vec(v).unwrap_or_default();
    out.push(b'\n');
    out
}

/// `{"error": "..."}`: Ollama's error body, also the last line of a stream
/// that fails after it started.
pub fn error_body(e: &ApiError) -> Vec<u8> {
    to_line(&serde_json::json!({"error": e.message}))
}

/// What `/api/tags` and `/api/show` say about the model.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// The bundle's directory name.
    pub bundle: String,
    /// The LLM's description (`blipd info`), e.g. "llama 1B Q4_K - Medium".
    pub llm: String,
    /// The bundle's size on disk, in bytes.
    pub size: u64,
    /// RFC 3339 time the daemon started (the model's "modified_at").
    pub loaded_at: String,
}

impl ModelInfo {
    fn details(&self) -> Value {
        serde_json::json!({
            "parent_model": "",
            "format": "gguf",
            "family": "instructblip",
            "families": ["instructblip"],
            "parameter_size": "",
            "quantization_level": self.llm,
        })
    }

    /// `GET /api/tags`: `blipd:latest` and `blipd:<camera>` per camera.
    pub fn tags(&self, cameras: &[String]) -> Value {
        let models: Vec<Value> = std::iter::once(format!("{}:latest", super::MODEL))
            .chain(super::camera_models(cameras))
            .map(|n| {
                serde_json::json!({
                    "name": n,
                    "model": n,
                    "modified_at": self.loaded_at,
                    "size": self.size,
                    "digest": "",
                    "details": self.details(),
                })
            })
            .collect();
        serde_json::json!({ "models": models })
    }

    /// `POST /api/show` for a known name.
    pub fn show(&self) -> Value {
        serde_json::json!({
            "modelfile": "",
            "parameters": "",
            "template": "{{ .Prompt }}",
            "details": self.details(),
            "model_info": {
                "general.architecture": "instructblip",
                "general.basename": self.bundle,
            },
            "capabilities": ["completion", "vision"],
            "modified_at": self.loaded_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cams() -> Vec<String> {
        vec!["door".into()]
    }

    #[test]
    fn generate_maps_options_and_format() {
        let r: GenerateRequest = serde_json::from_str(
            r#"{"model":"blipd","prompt":"What is it?","images":["AAAA"],
                "format":{"type":"object","properties":{"n":{"type":"integer"}}},
                "options":{"temperature":0.5,"top_k":4,"seed":3,"num_predict":9999,"num_ctx":4096},
                "keep_alive":"5m"}"#,
        )
        .unwrap();
        let t = generate(r, &cams(), 256).unwrap();
        assert!(t.stream, "Ollama streams unless told not to");
        let q = t.request;
        assert_eq!(q.image.as_deref(), Some("AAAA"));
        assert_eq!(
            (q.max_tokens, q.temperature, q.top_k, q.seed),
            (Some(256), Some(0.5), Some(4), Some(3))
        );
        assert_eq!(q.format.as_deref(), Some("json"));
        assert!(q.schema.is_some());
    }

    #[test]
    fn chat_takes_the_last_user_message() {
        let r: ChatRequest = serde_json::from_str(
            r#"{"model":"blipd:door","stream":false,"format":"json","messages":[
                {"role":"system","content":"Be brief."},
                {"role":"user","content":"Old question"},
                {"role":"assistant","content":"Old answer"},
                {"role":"user","content":"Is the door open?"}]}"#,
        )
        .unwrap();
        let t = chat(r, &cams(), 256).unwrap();
        assert!(!t.stream);
        assert_eq!(t.request.prompt, "Is the door open?");
        assert_eq!(t.request.camera.as_deref(), Some("door"));
        assert_eq!(
            (t.request.format.as_deref(), t.request.temperature),
            (Some("json"), None)
        );
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let bad = |body: &str| {
            let r: GenerateRequest = serde_json::from_str(body).unwrap();
            generate(r, &cams(), 256).unwrap_err()
        };
        assert!(bad(r#"{"model":"blipd","prompt":"x"}"#)
            .message
            .contains("no image"));
        assert_eq!(bad(r#"{"model":"x","prompt":"x"}"#).status, 404);
        assert_eq!(
            bad(r#"{"model":"blipd","prompt":"x","images":["a","b"]}"#).param,
            Some("images")
        );
        assert_eq!(
            bad(r#"{"model":"blipd","prompt":"x","images":["a"],"format":"yaml"}"#).param,
            Some("format")
        );
        assert!(super::super::parse::<GenerateRequest>(br#"{"model":3}"#).is_err());
    }

    #[test]
    fn final_lines_carry_the_timings() {
        let mut a: AnswerReply = serde_json::from_value(serde_json::json!({
            "id":"i","answer":"a cat","tokens":3,"prompt_tokens":40,"stop":"eos",
            "frame_time":"t","model":"m","vision_cached":false,
            "timings":{"queue_ms":1.0,"preprocess_ms":1.0,"vision_ms":2.0,"qformer_ms":3.0,
                       "prefill_ms":4.0,"decode_ms":5.0,"decode_tokens_per_s":1.0,"total_ms":15.0}
        }))
        .unwrap();
        let v: Value =
            serde_json::from_slice(&final_line(Endpoint::Chat, "blipd", "", &a)).unwrap();
        assert_eq!(v["done"], true);
        assert_eq!(v["done_reason"], "stop");
        assert_eq!(v["message"]["role"], "assistant");
        assert_eq!(v["prompt_eval_count"], 40);
        assert_eq!(v["eval_count"], 3);
        assert_eq!(v["total_duration"], 16_000_000);
        assert_eq!(v["prompt_eval_duration"], 10_000_000);
        a.stop = crate::llm::StopReason::MaxTokens;
        let v: Value =
            serde_json::from_slice(&final_line(Endpoint::Generate, "blipd", "a cat", &a)).unwrap();
        assert_eq!(
            (v["done_reason"].as_str(), v["response"].as_str()),
            (Some("length"), Some("a cat"))
        );
        let v: Value =
            serde_json::from_slice(&text_line(Endpoint::Generate, "blipd", "a")).unwrap();
        assert_eq!(v["done"], false);
        assert!(v.get("eval_count").is_none());
    }
}
