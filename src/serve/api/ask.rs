//! From an HTTP body to a queued job: the body read within its limits, the
//! request checked by the same intake rules as MQTT's, the job queued with
//! a channel its handler waits on.

use super::ApiState;
use crate::http::ApiError;
use crate::mqtt::wire::{self, ErrorCode};
use crate::serve::intake;
use crate::serve::worker::{HttpEvent, Job, Origin, PushError};
use axum::body::{Body, Bytes};
use http_body_util::BodyExt as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc::UnboundedReceiver;

/// Reads the whole body: at most the body limit, within `http.body_timeout`.
pub async fn read_body(
    s: &ApiState,
    headers: &axum::http::HeaderMap,
    body: Body,
) -> Result<Bytes, ApiError> {
    let limit = s.body_limit();
    let too_big = |n: Option<u64>| {
        let size = n
            .map(|n| format!("{n} bytes"))
            .unwrap_or_else(|| "larger".into());
        ApiError::new(
            ErrorCode::LimitExceeded,
            format!("the request body is {size}; the limit is {limit} bytes (http.max_body_bytes)"),
        )
        .status(413)
    };
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_big(declared));
    }
    let read = http_body_util::Limited::new(body, limit).collect();
    match tokio::time::timeout(s.config().http.body_timeout, read).await {
        Err(_) => Err(ApiError::bad(format!(
            "the request body did not arrive within {} (http.body_timeout)",
            humantime::format_duration(s.config().http.body_timeout)
        ))
        .status(408)),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_big(None)),
        Ok(Err(e)) => Err(ApiError::bad(format!("cannot read the request body: {e}"))),
        Ok(Ok(c)) => Ok(c.to_bytes()),
    }
}

/// A queued request: its id and the channel its result comes on.
pub struct Queued {
    pub id: String,
    pub events: UnboundedReceiver<HttpEvent>,
}

/// Checks and queues a request, as the MQTT intake does (the request's own
/// picture, else the camera; the limits; the queue's capacity). `picture`
/// is a picture fetched from a URL, in place of `req.image`. A refusal is
/// counted in the stats like an MQTT one.
pub fn submit(
    s: &ApiState,
    req: wire::Request,
    picture: Option<Arc<[u8]>>,
    stream: bool,
) -> Result<Queued, ApiError> {
    let r = queue(s, req, picture, stream);
    if let Err(e) = &r {
        s.stats.lock().error(e.code);
    }
    r
}

fn queue(
    s: &ApiState,
    req: wire::Request,
    picture: Option<Arc<[u8]>>,
    stream: bool,
) -> Result<Queued, ApiError> {
    let cfg = &s.config();
    let refusal = |(code, msg): intake::Refusal| ApiError::new(code, msg);
    let image = match picture {
        Some(p) => Some(p),
        None => intake::image(cfg, &req).map_err(refusal)?,
    };
    let camera = match (&image, &req.camera) {
        (Some(_), _) => String::new(),
        (None, Some(c)) => c.clone(),
        (None, None) => return Err(ApiError::bad("no image and no camera: nothing to look at")),
    };
    let cam = (!camera.is_empty()).then_some(camera.as_str());
    intake::validate(cfg, &s.cameras.names(), &req, cam).map_err(|(code, msg)| {
        let e = ApiError::new(code, msg);
        if code == ErrorCode::UnknownCamera {
            e.param("camera")
        } else {
            e
        }
    })?;
    let n = s.next_id.fetch_add(1, Ordering::Relaxed) + 1;
    let id = format!("http-{n}");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let job = Job {
        id: id.clone(),
        camera: camera.clone(),
        image,
        params: intake::params(&req, s.default_params.clone()),
        prompt: req.prompt,
        snapshot: false,
        origin: Origin::Http { reply: tx, stream },
        enqueued: Instant::now(),
    };
    match s.queue.try_push(job) {
        Ok(()) => {
            tracing::debug!(id, camera, "HTTP request queued");
            s.stats.lock().accepted();
            Ok(Queued { id, events: rx })
        }
        Err(PushError::Full) => Err(ApiError::new(
            ErrorCode::Busy,
            format!(
                "the queue is full ({} waiting); retry later",
                cfg.limits.queue
            ),
        )),
        Err(PushError::WorkerStopped) => Err(ApiError::new(
            ErrorCode::Busy,
            "the daemon is stopping; retry later",
        )),
    }
}

/// Waits for the next event of a job. A closed channel (the daemon
/// stopping between the worker and the session) reads as an error result.
pub async fn next(events: &mut UnboundedReceiver<HttpEvent>) -> HttpEvent {
    events.recv().await.unwrap_or_else(|| {
        HttpEvent::Done(Err(wire::ErrorReply::new(
            "",
            ErrorCode::Internal,
            "the daemon stopped before answering",
        )))
    })
}

/// Fetches an `image_url` that is an http(s) URL (only where
/// `http.allow_image_urls` is on): at most `limits.max_image_bytes`,
/// 10 s per step, no more than 3 redirects, off the runtime's threads.
pub async fn fetch_picture(s: &ApiState, url: String) -> Result<Arc<[u8]>, ApiError> {
    let shown = crate::mqtt::wire::shorten(&url);
    if !s.config().http.allow_image_urls {
        return Err(ApiError::bad(format!(
            "image_url {shown:?}: URLs are not fetched here (http.allow_image_urls is off); \
             send the picture as a data: URL"
        ))
        .param("messages"));
    }
    let max = s.config().limits.max_image_bytes;
    let job = tokio::task::spawn_blocking(move || fetch_blocking(&url, max));
    match job.await {
        Ok(Ok(bytes)) => Ok(bytes.into()),
        Ok(Err((code, msg))) => Err(ApiError::new(code, format!("image_url {shown:?}: {msg}"))),
        Err(e) => Err(ApiError::new(
            ErrorCode::Internal,
            format!("fetching the image: {e}"),
        )),
    }
}

fn fetch_blocking(url: &str, max: usize) -> Result<Vec<u8>, intake::Refusal> {
    use std::io::Read as _;
    let agent = crate::camera::http_agent(
        std::time::Duration::from_secs(10),
        Some(std::time::Duration::from_secs(30)),
        ureq::tls::TlsConfig::default(),
    );
    let resp = agent
        .get(url)
        .call()
        .map_err(|e| (ErrorCode::BadImage, format!("cannot fetch it: {e}")))?;
    let status = resp.status().as_u16();
    if !(200..300).contains(&status) {
        return Err((
            ErrorCode::BadImage,
            format!("the server answered HTTP {status}"),
        ));
    }
    let mut bytes = Vec::new();
    resp.into_body()
        .into_reader()
        .take(max as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| (ErrorCode::BadImage, format!("cannot read it: {e}")))?;
    if bytes.len() > max {
        return Err((
            ErrorCode::LimitExceeded,
            format!("the picture is over limits.max_image_bytes = {max}"),
        ));
    }
    if bytes.is_empty() {
        return Err((ErrorCode::BadImage, "the picture is empty".into()));
    }
    Ok(bytes)
}
