//! OpenAI's chat completions API (`POST /v1/chat/completions`,
//! `GET /v1/models`): images as `image_url` parts, streams as server-sent
//! events ending in `data: [DONE]`, errors as
//! `{"error": {"message", "type", "param", "code"}}`.

use super::{max_tokens, seed, target, temperature, ApiError, Picture};
use crate::mqtt::wire::{self, AnswerReply, ErrorCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Deserialize)]
pub struct ImageUrl {
    pub url: String,
    #[serde(default)]
    pub detail: Option<String>,
}

/// One part of a message's content.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Part {
    Text { text: String },
    ImageUrl { image_url: ImageUrl },
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

#[derive(Debug, Deserialize)]
pub struct JsonSchema {
    #[serde(default)]
    pub schema: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchema },
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// `POST /v1/chat/completions`. Fields this model has no use for (`tools`,
/// `user`, `presence_penalty`, ...) are accepted and ignored.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Message>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub max_tokens: Option<i64>,
    #[serde(default)]
    pub max_completion_tokens: Option<i64>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub n: Option<u32>,
    #[serde(default)]
    pub response_format: Option<ResponseFormat>,
    /// blipd's extension: ask this camera's newest frame.
    #[serde(default)]
    pub camera: Option<String>,
}

/// A translated request.
#[derive(Debug)]
pub struct Translated {
    pub request: wire::Request,
    /// When `Some(Url)`, the server fetches it into `request.image`.
    pub picture: Option<Picture>,
    pub stream: bool,
    pub include_usage: bool,
}

/// The last user message's text and picture.
fn last_user(messages: Vec<Message>) -> Result<(String, Option<Picture>), ApiError> {
    let Some(last) = messages.into_iter().rev().find(|m| m.role == "user") else {
        return Err(ApiError::bad("no user message: nothing to answer").param("messages"));
    };
    let mut text = Vec::new();
    let mut pictures = Vec::new();
    match last.content {
        None => {}
        Some(Content::Text(t)) => text.push(t),
        Some(Content::Parts(parts)) => {
            for p in parts {
                match p {
                    Part::Text { text: t } => text.push(t),
                    Part::ImageUrl { image_url } => pictures.push(image_url.url),
                }
            }
        }
    }
    if pictures.len() > 1 {
        return Err(ApiError::bad(format!(
            "{} images: this model looks at one picture per question",
            pictures.len()
        ))
        .param("messages"));
    }
    let picture = pictures.pop().map(|url| {
        if url.starts_with("http://") || url.starts_with("https://") {
            Picture::Url(url)
        } else {
            Picture::Inline(url)
        }
    });
    Ok((text.join("\n"), picture))
}

/// `/v1/chat/completions` as the daemon's request. An http(s) picture is
/// left for the server to fetch: the request's `image` is then None.
pub fn chat(r: ChatRequest, cameras: &[String], limit: usize) -> Result<Translated, ApiError> {
    let t = target(&r.model, r.camera.as_deref(), cameras)?;
    if r.n.is_some_and(|n| n != 1) {
        return Err(ApiError::bad("n must be 1: one answer per question").param("n"));
    }
    let (prompt, picture) = last_user(r.messages)?;
    let mut req = super::request(prompt, &t, picture.as_ref())?;
    req.max_tokens = max_tokens(r.max_completion_tokens.or(r.max_tokens), limit);
    req.temperature = temperature(r.temperature);
    req.top_p = r.top_p;
    req.seed = seed(r.seed, "seed")?;
    match r.response_format {
        None | Some(ResponseFormat::Text) => {}
        Some(ResponseFormat::JsonObject) => req.format = Some("json".into()),
        Some(ResponseFormat::JsonSchema { json_schema }) => {
            req.format = Some("json".into());
            req.schema = json_schema.schema;
        }
    }
    let stream = r.stream.unwrap_or(false);
    Ok(Translated {
        request: req,
        picture: picture.filter(|p| matches!(p, Picture::Url(_))),
        stream,
        include_usage: stream && r.stream_options.is_some_and(|o| o.include_usage),
    })
}

#[derive(Debug, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

impl Usage {
    pub fn of(a: &AnswerReply) -> Self {
        Self {
            prompt_tokens: a.prompt_tokens,
            completion_tokens: a.tokens,
            total_tokens: a.prompt_tokens + a.tokens,
        }
    }
}

/// The non-streamed reply.
pub fn completion(id: &str, model: &str, created: u64, a: &AnswerReply) -> Value {
    serde_json::json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": a.answer, "refusal": null},
            "logprobs": null,
            "finish_reason": super::finish_reason(a.stop),
        }],
        "usage": Usage::of(a),
    })
}

/// One `data:` event of a stream: a delta (`role` in the first, `content`
/// after), the finish reason in the last, or the usage-only chunk.
pub fn chunk(
    id: &str,
    model: &str,
    created: u64,
    delta: Value,
    finish: Option<&str>,
    usage: Option<Usage>,
) -> Vec<u8> {
    let choices = if usage.is_some() {
        serde_json::json!([])
    } else {
        serde_json::json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}])
    };
    let mut v = serde_json::json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": choices,
    });
    if let Some(u) = usage {
        v["usage"] = serde_json::to_value(u).unwrap_or_default();
    }
    event(&v)
}

/// A server-sent event carrying `v`.
pub fn event(v: &Value) -> Vec<u8> {
    format!("data: {v}\n\n").into_bytes()
}

/// The stream's end marker.
pub const DONE: &[u8] = b"data: [DONE]\n\n";

/// OpenAI's error type and code for an error.
fn kind(e: &ApiError) -> (&'static str, &'static str) {
    match (e.status, e.code) {
        (401, _) => ("authentication_error", "invalid_api_key"),
        (404, _) => ("invalid_request_error", "model_not_found"),
        (413, _) => ("invalid_request_error", "request_too_large"),
        (_, ErrorCode::Busy) => ("server_error", "busy"),
        (_, ErrorCode::CameraUnavailable) => ("server_error", "camera_unavailable"),
        (_, ErrorCode::Internal) => ("server_error", "internal"),
        (_, c) => (
            "invalid_request_error",
            match c {
                ErrorCode::EmptyPrompt => "empty_prompt",
                ErrorCode::PromptTooLong => "prompt_too_long",
                ErrorCode::LimitExceeded => "limit_exceeded",
                ErrorCode::UnknownCamera => "unknown_camera",
                ErrorCode::BadImage => "bad_image",
                _ => "bad_request",
            },
        ),
    }
}

/// `{"error": {...}}`.
pub fn error_value(e: &ApiError) -> Value {
    let (ty, code) = kind(e);
    serde_json::json!({"error": {
        "message": e.message,
        "type": ty,
        "param": e.param,
        "code": code,
    }})
}

/// `GET /v1/models`.
pub fn models(names: &[String], created: u64) -> Value {
    let data: Vec<Value> = names
        .iter()
        .map(|n| serde_json::json!({"id": n, "object": "model", "created": created, "owned_by": "blipd"}))
        .collect();
    serde_json::json!({"object": "list", "data": data})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<Translated, ApiError> {
        let r: ChatRequest =
            serde_json::from_str(body).map_err(|e| ApiError::bad(e.to_string()))?;
        chat(r, &["door".to_string()], 256)
    }

    #[test]
    fn image_parts_and_limits() {
        let t = parse(
            r#"{"model":"blipd","max_tokens":4096,"max_completion_tokens":20,"temperature":0,
                "response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"object"},"strict":true}},
                "messages":[{"role":"system","content":"Be brief."},{"role":"user","content":[
                  {"type":"text","text":"What is this?"},
                  {"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA","detail":"low"}}]}]}"#,
        )
        .unwrap();
        assert_eq!(t.request.prompt, "What is this?");
        assert_eq!(
            t.request.image.as_deref(),
            Some("data:image/png;base64,AAAA")
        );
        assert_eq!(
            (t.request.max_tokens, t.request.temperature),
            (Some(20), None)
        );
        assert_eq!(t.request.format.as_deref(), Some("json"));
        assert_eq!(t.request.schema, Some(serde_json::json!({"type":"object"})));
        assert!(!t.stream && t.picture.is_none());
    }

    #[test]
    fn urls_cameras_and_refusals() {
        let t = parse(
            r#"{"model":"blipd","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":[
               {"type":"text","text":"Who?"},{"type":"image_url","image_url":{"url":"https://cam.local/a.jpg"}}]}]}"#,
        )
        .unwrap();
        assert_eq!(
            t.picture,
            Some(Picture::Url("https://cam.local/a.jpg".into()))
        );
        assert!(t.request.image.is_none() && t.stream && t.include_usage);
        let t = parse(r#"{"model":"blipd:door","messages":[{"role":"user","content":"Open?"}]}"#)
            .unwrap();
        assert_eq!(t.request.camera.as_deref(), Some("door"));
        let e = parse(r#"{"model":"blipd","messages":[{"role":"user","content":"Open?"}]}"#)
            .unwrap_err();
        assert!(e.message.contains("no image"), "{}", e.message);
        let e =
            parse(r#"{"model":"gpt-4o","messages":[{"role":"user","content":"x"}]}"#).unwrap_err();
        assert_eq!(error_value(&e)["error"]["code"], "model_not_found");
        let e = parse(r#"{"model":"blipd:door","n":2,"messages":[{"role":"user","content":"x"}]}"#)
            .unwrap_err();
        assert_eq!(error_value(&e)["error"]["param"], "n");
        assert!(parse(
            r#"{"model":"blipd","messages":[{"role":"user","content":[{"type":"audio"}]}]}"#
        )
        .is_err());
    }

    #[test]
    fn stream_chunks_are_server_sent_events() {
        let c = chunk(
            "c1",
            "blipd",
            5,
            serde_json::json!({"content":"a"}),
            None,
            None,
        );
        let text = String::from_utf8(c).unwrap();
        assert!(
            text.starts_with("data: {") && text.ends_with("}\n\n"),
            "{text}"
        );
        let v: Value = serde_json::from_str(text.trim_start_matches("data: ").trim()).unwrap();
        assert_eq!(v["object"], "chat.completion.chunk");
        assert_eq!(v["choices"][0]["delta"]["content"], "a");
    }
}
