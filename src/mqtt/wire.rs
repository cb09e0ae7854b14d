//! The MQTT wire format: request, answer, stream chunk and error payloads.
//!
//! Plain data with serde, so that the protocol is readable in one place and
//! testable without a broker. `docs/mqtt.md` documents the same examples.
//!
//! A request (JSON; every field but `prompt` optional):
//! ```json
//! {"id": "q1", "camera": "door", "prompt": "Is the garage door open?",
//!  "max_tokens": 20, "temperature": 0.7, "top_p": 0.9, "seed": 1, "stream": false,
//!  "snapshot": false}
//! ```
//! A payload that is not a JSON object is taken as the prompt for the
//! default camera. The answer:
//! ```json
//! {"id": "q1", "camera": "door", "answer": "yes", "tokens": 2, "stop": "eos",
//!  "frame_time": "2026-11-26T08:00:00.123Z", "model": "vicuna7b-q4",
//!  "vision_cached": false, "timings": {"vision_ms": 2100.0, "...": 0.0}}
//! ```
//! An error: `{"id": "q1", "error": {"code": "unknown_camera", "message": "..."}}`.

use crate::llm::StopReason;
use crate::pipeline::StageTimings;
use serde::{Deserialize, Serialize};

/// A question, as sent by a client.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Client-chosen id, echoed in the answer and used to suppress duplicate
    /// answers on redelivery. Generated when absent.
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub camera: Option<String>,
    /// The picture to answer about, base64 (JPEG, PNG, ...; a `data:` URL
    /// prefix is accepted), instead of a camera's newest frame.
    #[serde(default)]
    pub image: Option<String>,
    pub prompt: String,
    #[serde(default)]
    pub max_tokens: Option<usize>,
    /// Sampling instead of greedy decoding when set (> 0).
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub top_k: Option<i32>,
    #[serde(default)]
    pub seed: Option<u32>,
    #[serde(default)]
    pub stream: bool,
    /// The answer must be exactly one of these (greedy within them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choices: Option<Vec<String>>,
    /// `"number"` or `"json"`: the answer must be one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// With `"format": "json"`: a JSON Schema the answer validates against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<serde_json::Value>,
    /// Also publish the JPEG of the answered frame (see [`SnapshotInfo`]).
    #[serde(default)]
    pub snapshot: bool,
    /// Where to answer, for MQTT 3.1.1 clients (v5 clients use the response
    /// topic property instead).
    #[serde(default)]
    pub response_topic: Option<String>,
}

/// Why a watch runs now (reported in its state message).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// First run after start or reload, so the retained state is current.
    Start,
    Schedule,
    Change,
    /// Asked now: the watch's Home Assistant button, or a `run` publish.
    Manual,
}

/// Error codes of [`ErrorReply`]; stable strings clients can match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The payload is not a valid request (malformed JSON, wrong field types).
    BadRequest,
    /// The request named a reply topic that is malformed or not allowed
    /// (`mqtt.reply_topics`); this error goes to the default answer topic.
    BadResponseTopic,
    EmptyPrompt,
    PromptTooLong,
    /// A limit of the configuration was exceeded (payload size, max_tokens, sampling values).
    LimitExceeded,
    UnknownCamera,
    /// The request's `image` is not base64 or not a picture blipd can decode.
    BadImage,
    /// The camera exists but has no current frame (unplugged, file removed).
    CameraUnavailable,
    /// The queue is full; retry later.
    Busy,
    /// A failure inside the model; the daemon keeps serving.
    Internal,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

/// `{"id", "error": {"code", "message"}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub camera: Option<String>,
    pub error: ErrorBody,
}

impl ErrorReply {
    pub fn new(id: impl Into<String>, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            camera: None,
            error: ErrorBody {
                code,
                message: message.into(),
            },
        }
    }
}

/// Per-stage times of an answer, in milliseconds: the time spent queued,
/// then the pipeline's stages (flattened into the same JSON object).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub queue_ms: f64,
    #[serde(flatten)]
    pub stages: StageTimings,
}

/// The final answer to a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnswerReply {
    pub id: String,
    /// The camera answered about; absent when the request carried its image.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub camera: String,
    pub answer: String,
    /// Number of generated tokens.
    pub tokens: usize,
    /// Positions of the prompt the LLM read: the image's query tokens and
    /// the instruction's tokens.
    #[serde(default)]
    pub prompt_tokens: usize,
    /// Why generation stopped: `eos`, `max_tokens` or `context_full`.
    pub stop: StopReason,
    /// Capture time of the frame that was answered (RFC 3339, UTC).
    pub frame_time: String,
    pub model: String,
    /// True when the frame's image features came from the cache.
    pub vision_cached: bool,
    pub timings: Timings,
    /// Where the JPEG of the answered frame went, when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotInfo>,
}

/// A published snapshot: the JPEG bytes are the payload of `topic`,
/// published just before the message that refers to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub topic: String,
    pub width: u32,
    pub height: u32,
    pub bytes: usize,
}

/// The retained state of a watch on `<prefix>/<device>/watch/<name>`:
/// ```json
/// {"name": "door", "camera": "garage", "prompt": "Is the garage door open?",
///  "answer": "yes", "matched": true, "trigger": "schedule",
///  "time": "2026-11-26T08:00:02.500Z", "frame_time": "2026-11-26T08:00:00.123Z",
///  "changed_at": "2026-11-26T07:40:02.400Z", "tokens": 2, "model": "vicuna7b-q4",
///  "timings": {"queue_ms": 0.1, "vision_ms": 2100.0, "...": 0.0}}
/// ```
/// After a failed run `error` is set and `answer` still holds the last good one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatchState {
    pub name: String,
    pub camera: String,
    pub prompt: String,
    /// The newest successful answer (None until the first one).
    pub answer: Option<String>,
    /// Whether `answer` matches the watch's `only_if` (absent without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched: Option<bool>,
    pub trigger: Trigger,
    /// When this run finished.
    pub time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame_time: Option<String>,
    /// When the answer last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timings: Option<Timings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

/// Published (not retained) on `<prefix>/<device>/watch/<name>/event` when a
/// watch's answer changes (and matches `only_if`, when set):
/// ```json
/// {"name": "door", "camera": "garage", "answer": "yes", "previous": "no",
///  "time": "2026-11-26T08:00:02.500Z", "frame_time": "2026-11-26T08:00:00.123Z",
///  "trigger": "change"}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatchEvent {
    pub name: String,
    pub camera: String,
    pub answer: String,
    /// The answer before (None on the first answer the daemon knows of).
    pub previous: Option<String>,
    pub time: String,
    pub frame_time: String,
    pub trigger: Trigger,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotInfo>,
}

/// A piece of a streamed answer: `text` is the new text since the previous
/// chunk; chunks are numbered from 0 and followed by the [`AnswerReply`],
/// whose `answer` is the concatenation of all chunks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamChunk {
    pub id: String,
    pub seq: u32,
    pub text: String,
}

/// Why a payload could not be turned into a [`Request`].
#[derive(Debug, Clone, PartialEq)]
pub struct ParseError {
    pub code: ErrorCode,
    pub message: String,
    /// The id, when the payload was JSON that carried one.
    pub id: Option<String>,
}

/// Parses a request payload: a JSON object, or plain UTF-8 text taken as the prompt.
pub fn parse_request(payload: &[u8]) -> Result<Request, ParseError> {
    let err = |code, message: String, id| ParseError { code, message, id };
    let text = std::str::from_utf8(payload).map_err(|e| {
        err(
            ErrorCode::BadRequest,
            format!("payload is not UTF-8: {e}"),
            None,
        )
    })?;
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') {
        return serde_json::from_str::<Request>(trimmed).map_err(|e| {
            // Keep the id if the JSON is otherwise readable, so the error can be correlated.
            let id = serde_json::from_str::<serde_json::Value>(trimmed)
                .ok()
                .and_then(|v| v.get("id").and_then(|i| i.as_str()).map(str::to_string));
            err(
                ErrorCode::BadRequest,
                format!("invalid request JSON: {e}"),
                id,
            )
        });
    }
    if trimmed.starts_with('[') || trimmed.starts_with('"') {
        return Err(err(
            ErrorCode::BadRequest,
            "a request is a JSON object or plain text".into(),
            None,
        ));
    }
    Ok(Request {
        prompt: text.to_string(),
        ..Default::default()
    })
}

/// RFC 3339 UTC timestamp with milliseconds, without a date-time dependency.
/// Client text quoted in an error message, cut to a readable length.
pub fn shorten(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

pub fn rfc3339(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_request_with_all_fields() {
        let r = parse_request(
            br#"{"id":"q1","camera":"door","prompt":"Is it open?","max_tokens":12,
                "temperature":0.5,"top_p":0.9,"top_k":40,"seed":3,"stream":true}"#,
        )
        .unwrap();
        assert_eq!(r.id.as_deref(), Some("q1"));
        assert_eq!(r.camera.as_deref(), Some("door"));
        assert_eq!(r.max_tokens, Some(12));
        assert!(r.stream);
    }

    #[test]
    fn plain_text_is_a_prompt() {
        let r = parse_request(b"Is the garage door open?").unwrap();
        assert_eq!(r.prompt, "Is the garage door open?");
        assert_eq!(r.id, None);
        assert_eq!(r.camera, None);
    }

    #[test]
    fn malformed_json_is_bad_request_with_id_when_readable() {
        let e = parse_request(br#"{"id": "x", "prompt": 5}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert_eq!(e.id.as_deref(), Some("x"));
        let e = parse_request(br#"{"prompt": "hi", "colour": "red"}"#).unwrap_err();
        assert!(e.message.contains("colour"), "{}", e.message);
        let e = parse_request(b"{not json").unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert_eq!(e.id, None);
        assert_eq!(
            parse_request(&[0xff, 0xfe]).unwrap_err().code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            parse_request(b"[1,2]").unwrap_err().code,
            ErrorCode::BadRequest
        );
    }

    #[test]
    fn error_reply_shape() {
        let e = ErrorReply::new("q", ErrorCode::Busy, "queue full");
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id":"q","error":{"code":"busy","message":"queue full"}})
        );
    }

    #[test]
    fn timestamps() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_795_000_000_123);
        assert_eq!(rfc3339(t), "2026-11-18T11:06:40.123Z");
        assert_eq!(rfc3339(std::time::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }
}
