//! The HTTP APIs the tools already speak: Ollama's (`/api/...`) and
//! OpenAI's chat completions (`/v1/...`), as protocol only: their request
//! and response shapes, how a request becomes the daemon's own
//! [`wire::Request`], and their error shapes. The server that takes
//! connections and queues the requests is `serve::api`; like `mqtt/`, this
//! room holds plain data and pure functions, unit-tested without a socket.

pub mod ollama;
pub mod openai;
pub mod prometheus;

use crate::llm::StopReason;
use crate::mqtt::wire::{self, shorten, ErrorCode};

/// The model name every client may use: answers about the picture sent.
pub const MODEL: &str = "blipd";

/// What a request asks about, from its model name (`blipd`, `blipd:latest`:
/// the attached picture; `blipd:<camera>`: that camera's newest frame) and
/// the `camera` extension field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Image,
    Camera(String),
}

/// A failure reported before (or instead of) an answer: the HTTP status,
/// the daemon's error code and a message, rendered in each API's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub code: ErrorCode,
    pub message: String,
    /// The request field at fault (OpenAI's `param`).
    pub param: Option<&'static str>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status: status_of(code),
            code,
            message: message.into(),
            param: None,
        }
    }

    pub fn bad(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    pub fn param(mut self, p: &'static str) -> Self {
        self.param = Some(p);
        self
    }

    pub fn status(mut self, s: u16) -> Self {
        self.status = s;
        self
    }

    /// An unknown model name: 404, as both APIs answer it.
    pub fn unknown_model(name: &str, cameras: &[String]) -> Self {
        let mut names = vec![MODEL.to_string()];
        names.extend(camera_models(cameras));
        Self::new(
            ErrorCode::UnknownCamera,
            format!(
                "model {:?} not found (models here: {})",
                shorten(name),
                names.join(", ")
            ),
        )
        .status(404)
        .param("model")
    }
}

/// The HTTP status of each error code.
pub fn status_of(code: ErrorCode) -> u16 {
    match code {
        ErrorCode::BadRequest
        | ErrorCode::BadResponseTopic
        | ErrorCode::EmptyPrompt
        | ErrorCode::PromptTooLong
        | ErrorCode::LimitExceeded
        | ErrorCode::BadImage => 400,
        ErrorCode::UnknownCamera => 404,
        ErrorCode::CameraUnavailable | ErrorCode::Busy => 503,
        ErrorCode::Internal => 500,
    }
}

impl From<wire::ErrorReply> for ApiError {
    fn from(e: wire::ErrorReply) -> Self {
        Self::new(e.error.code, e.error.message)
    }
}

/// `blipd:<camera>` for each camera (the model names that ask a camera).
pub fn camera_models(cameras: &[String]) -> impl Iterator<Item = String> + '_ {
    cameras.iter().map(|c| format!("{MODEL}:{c}"))
}

/// Resolves a model name and the `camera` extension to what is asked about.
/// `cameras` are the configured camera names.
pub fn target(model: &str, camera: Option<&str>, cameras: &[String]) -> Result<Target, ApiError> {
    let from_model = match model.split_once(':') {
        None if model == MODEL => None,
        Some((MODEL, "latest")) => None,
        Some((MODEL, cam)) if cameras.iter().any(|c| c == cam) => Some(cam.to_string()),
        _ => return Err(ApiError::unknown_model(model, cameras)),
    };
    match (from_model, camera) {
        (Some(a), Some(b)) if a != b => Err(ApiError::bad(format!(
            "the model names camera {a:?} and the request camera {:?}",
            shorten(b)
        ))
        .param("camera")),
        (Some(c), _) => Ok(Target::Camera(c)),
        (None, Some(c)) => Ok(Target::Camera(c.to_string())),
        (None, None) => Ok(Target::Image),
    }
}

/// Generation limits that are maxima in both APIs (`num_predict`,
/// `max_tokens`): non-positive means "the model's default", anything above
/// `limits.max_tokens` is that limit (clients routinely send 4096).
pub fn max_tokens(n: Option<i64>, limit: usize) -> Option<usize> {
    match n {
        Some(n) if n > 0 => Some((n as u64).min(limit as u64) as usize),
        _ => None,
    }
}

/// Sampling only with a positive temperature; 0 (and none) is greedy.
pub fn temperature(t: Option<f32>) -> Option<f32> {
    t.filter(|t| *t != 0.0)
}

/// A seed as the sampler takes it.
pub fn seed(s: Option<i64>, param: &'static str) -> Result<Option<u32>, ApiError> {
    s.map(|s| {
        u32::try_from(s).map_err(|_| {
            ApiError::bad(format!("{param} must be 0..={}, got {s}", u32::MAX)).param(param)
        })
    })
    .transpose()
}

/// A body that is not the request's JSON: what serde says, as a 400.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("invalid request body: {e}")))
}

/// Where the picture a request sends is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Picture {
    /// Base64 (or a `data:` URL): the daemon's request carries it as it is.
    Inline(String),
    /// An http(s) URL, fetched by the server (only where
    /// `http.allow_image_urls` is on) before the request is queued.
    Url(String),
}

/// The daemon's request for a prompt about `target`: a camera, or the
/// picture sent (an inline one goes into `image`; a URL's bytes are added
/// by the server after fetching it).
pub fn request(
    prompt: String,
    target: &Target,
    picture: Option<&Picture>,
) -> Result<wire::Request, ApiError> {
    let (camera, image) = match (target, picture) {
        (Target::Camera(_), Some(_)) => {
            return Err(ApiError::bad(
                "a request asks a camera (model blipd:<camera> or \"camera\") or sends an image, not both",
            ))
        }
        (Target::Camera(c), None) => (Some(c.clone()), None),
        (Target::Image, Some(Picture::Inline(i))) => (None, Some(i.clone())),
        (Target::Image, Some(Picture::Url(_))) => (None, None),
        (Target::Image, None) => {
            return Err(ApiError::bad(
                "no image: attach one, or ask a camera with the model blipd:<camera>",
            ))
        }
    };
    Ok(wire::Request {
        id: None,
        camera,
        image,
        prompt,
        max_tokens: None,
        temperature: None,
        top_p: None,
        top_k: None,
        seed: None,
        stream: false,
        choices: None,
        format: None,
        schema: None,
        snapshot: false,
        response_topic: None,
    })
}

/// Why an answer ended, in both APIs' words.
pub fn finish_reason(stop: StopReason) -> &'static str {
    match stop {
        StopReason::Eos => "stop",
        StopReason::MaxTokens | StopReason::ContextFull => "length",
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cams() -> Vec<String> {
        vec!["door".into(), "garage".into()]
    }

    #[test]
    fn model_names_pick_the_target() {
        assert_eq!(target("blipd", None, &cams()), Ok(Target::Image));
        assert_eq!(target("blipd:latest", None, &cams()), Ok(Target::Image));
        assert_eq!(
            target("blipd:door", None, &cams()),
            Ok(Target::Camera("door".into()))
        );
        assert_eq!(
            target("blipd", Some("garage"), &cams()),
            Ok(Target::Camera("garage".into()))
        );
        let e = target("llava:7b", None, &cams()).unwrap_err();
        assert_eq!((e.status, e.param), (404, Some("model")));
        assert!(e.message.contains("blipd:door"), "{}", e.message);
        assert_eq!(
            target("blipd:attic", None, &cams()).unwrap_err().status,
            404
        );
        assert_eq!(
            target("blipd:door", Some("garage"), &cams())
                .unwrap_err()
                .status,
            400
        );
    }

    #[test]
    fn limits_and_sampling_values() {
        assert_eq!(max_tokens(Some(4096), 256), Some(256));
        assert_eq!(max_tokens(Some(12), 256), Some(12));
        assert_eq!(max_tokens(Some(-1), 256), None);
        assert_eq!(max_tokens(None, 256), None);
        assert_eq!(temperature(Some(0.0)), None);
        assert_eq!(temperature(Some(0.7)), Some(0.7));
        assert_eq!(seed(Some(7), "seed"), Ok(Some(7)));
        assert_eq!(seed(Some(-1), "seed").unwrap_err().status, 400);
    }

    #[test]
    fn a_request_needs_exactly_one_picture_source() {
        let inline = Picture::Inline("abc".into());
        let r = request("What?".into(), &Target::Image, Some(&inline)).unwrap();
        assert_eq!((r.camera, r.image.as_deref()), (None, Some("abc")));
        let url = Picture::Url("http://cam/a.jpg".into());
        let r = request("What?".into(), &Target::Image, Some(&url)).unwrap();
        assert_eq!(
            (r.camera, r.image),
            (None, None),
            "a URL's bytes come later"
        );
        let r = request("What?".into(), &Target::Camera("door".into()), None).unwrap();
        assert_eq!(r.camera.as_deref(), Some("door"));
        assert!(request("What?".into(), &Target::Image, None).is_err());
        assert!(request("W".into(), &Target::Camera("door".into()), Some(&inline)).is_err());
    }
}
