//! The endpoints: Ollama's under `/api`, OpenAI's under `/v1`, and
//! `/metrics`, `/healthz`; authentication and CORS in front of all of them.

use super::ask::{self, Queued};
use super::ApiState;
use crate::http::ollama::{self, Endpoint};
use crate::http::{self, openai, ApiError};
use crate::mqtt::wire::{AnswerReply, ErrorCode};
use crate::serve::worker::HttpEvent;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;

type S = State<Arc<ApiState>>;

/// Whose error shape a reply takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Ollama,
    OpenAi,
}

impl Api {
    fn of(path: &str) -> Self {
        if path.starts_with("/v1/") {
            Api::OpenAi
        } else {
            Api::Ollama
        }
    }
}

pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/api/version", get(version))
        .route("/api/tags", get(tags))
        .route("/api/show", post(show))
        .route("/api/generate", post(generate))
        .route("/api/chat", post(chat))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(completions))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

fn json(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn value(v: serde_json::Value) -> Response {
    json(StatusCode::OK, v.to_string().into_bytes())
}

fn error(s: &ApiState, api: Api, e: &ApiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = match api {
        Api::Ollama => ollama::error_body(e),
        Api::OpenAi => openai::error_value(e).to_string().into_bytes(),
    };
    let mut r = json(status, body);
    if e.code == ErrorCode::Busy {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(retry_after(s)));
    }
    r
}

/// Seconds until a place in the queue is likely: the mean answer time.
fn retry_after(s: &ApiState) -> u64 {
    let ms = s.stats.lock().mean_total_ms().unwrap_or(1000.0);
    ((ms / 1000.0).ceil() as u64).clamp(1, 300)
}

/// Bearer-token authentication (all but `/healthz`) and CORS for the
/// configured origins; a preflight is answered here.
async fn guard(State(s): S, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .map(str::to_string);
    let allowed = origin.as_deref().filter(|o| {
        s.config()
            .http
            .cors_origins
            .iter()
            .any(|c| c == "*" || c == o)
    });
    let allow = allowed.and_then(|o| HeaderValue::from_str(o).ok());
    if req.method() == Method::OPTIONS && origin.is_some() {
        let Some(allow) = allow else {
            return StatusCode::FORBIDDEN.into_response();
        };
        let mut r = StatusCode::NO_CONTENT.into_response();
        let h = r.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        return r;
    }
    if let Some(key) = &s.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if path != "/healthz" && !given.is_some_and(|g| same(g.as_bytes(), key.as_bytes())) {
            let e =
                ApiError::bad("a valid API key is needed: Authorization: Bearer <key>").status(401);
            let mut r = error(&s, Api::of(&path), &e);
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    let mut r = next.run(req).await;
    if let Some(allow) = allow {
        r.headers_mut()
            .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
        r.headers_mut()
            .insert(header::VARY, HeaderValue::from_static("origin"));
    }
    r
}

/// Compares without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

async fn root() -> &'static str {
    "blipd is running (Ollama- and OpenAI-compatible API)"
}

async fn version() -> Response {
    value(serde_json::json!({"version": ollama::API_VERSION, "blipd": env!("CARGO_PKG_VERSION")}))
}

async fn tags(State(s): S) -> Response {
    value(s.model.tags(&s.camera_names()))
}

async fn models(State(s): S) -> Response {
    let mut names = vec![http::MODEL.to_string()];
    names.extend(http::camera_models(&s.camera_names()));
    value(openai::models(&names, http::unix_now()))
}

async fn not_found(State(s): S, req: Request) -> Response {
    let path = req.uri().path();
    let e = ApiError::bad(format!(
        "no endpoint {} {}",
        req.method(),
        crate::mqtt::wire::shorten(path)
    ))
    .status(404);
    error(&s, Api::of(path), &e)
}

async fn metrics(State(s): S) -> Response {
    let depth = s.queue.depth();
    let busy = s.liveness.stalled_for().is_some();
    let mut f = s.stats.lock().figures(depth, busy);
    f["cameras"] = serde_json::to_value(s.cameras.statuses()).unwrap_or_default();
    (
        [(header::CONTENT_TYPE, http::prometheus::CONTENT_TYPE)],
        http::prometheus::render(&f),
    )
        .into_response()
}

async fn healthz(State(s): S) -> Response {
    if s.queue.is_open() {
        value(serde_json::json!({"status": "ok"}))
    } else {
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            br#"{"status":"stopping"}"#.to_vec(),
        )
    }
}

/// Reads and parses a JSON body, or the error reply for it.
async fn body<T: serde::de::DeserializeOwned>(
    s: &ApiState,
    headers: &HeaderMap,
    b: Body,
) -> Result<T, ApiError> {
    let bytes = ask::read_body(s, headers, b).await?;
    http::parse(&bytes)
}

async fn show(State(s): S, headers: HeaderMap, b: Body) -> Response {
    let r: ollama::ShowRequest = match body(&s, &headers, b).await {
        Ok(r) => r,
        Err(e) => return error(&s, Api::Ollama, &e),
    };
    let name = r.model.or(r.name).unwrap_or_default();
    if let Err(e) = http::target(&name, None, &s.camera_names()) {
        return error(&s, Api::Ollama, &e);
    }
    value(s.model.show())
}

async fn generate(State(s): S, headers: HeaderMap, b: Body) -> Response {
    let r: ollama::GenerateRequest = match body(&s, &headers, b).await {
        Ok(r) => r,
        Err(e) => return error(&s, Api::Ollama, &e),
    };
    let model = r.common.model.clone();
    if ollama::is_load_only(&r) {
        return match http::target(&model, r.common.camera.as_deref(), &s.camera_names()) {
            Ok(_) => json(StatusCode::OK, ollama::load_line(&model)),
            Err(e) => error(&s, Api::Ollama, &e),
        };
    }
    match ollama::generate(r, &s.camera_names(), s.config().limits.max_tokens) {
        Ok(t) => ollama_answer(&s, t, Endpoint::Generate, model).await,
        Err(e) => error(&s, Api::Ollama, &e),
    }
}

async fn chat(State(s): S, headers: HeaderMap, b: Body) -> Response {
    let r: ollama::ChatRequest = match body(&s, &headers, b).await {
        Ok(r) => r,
        Err(e) => return error(&s, Api::Ollama, &e),
    };
    let model = r.common.model.clone();
    match ollama::chat(r, &s.camera_names(), s.config().limits.max_tokens) {
        Ok(t) => ollama_answer(&s, t, Endpoint::Chat, model).await,
        Err(e) => error(&s, Api::Ollama, &e),
    }
}

/// The result of a job that is not streamed (text events are skipped).
async fn result(q: &mut Queued) -> Result<AnswerReply, ApiError> {
    loop {
        match ask::next(&mut q.events).await {
            HttpEvent::Text(_) => continue,
            HttpEvent::Done(r) => return r.map_err(ApiError::from),
        }
    }
}

/// A streamed body: `render` turns each event into bytes; the stream ends
/// after the `Done` event's.
fn streamed(
    first: HttpEvent,
    q: Queued,
    content_type: &'static str,
    mut render: impl FnMut(HttpEvent) -> Vec<u8> + Send + 'static,
) -> Response {
    struct St {
        first: Option<HttpEvent>,
        q: Queued,
        done: bool,
    }
    let st = St {
        first: Some(first),
        q,
        done: false,
    };
    let stream = futures::stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        let ev = match st.first.take() {
            Some(e) => e,
            None => ask::next(&mut st.q.events).await,
        };
        st.done = matches!(ev, HttpEvent::Done(_));
        Some((ev, st))
    });
    let stream = futures::StreamExt::map(stream, move |ev| {
        Ok::<_, std::convert::Infallible>(render(ev))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn ollama_answer(
    s: &ApiState,
    t: ollama::Translated,
    ep: Endpoint,
    model: String,
) -> Response {
    let mut q = match ask::submit(s, t.request, None, t.stream) {
        Ok(q) => q,
        Err(e) => return error(s, Api::Ollama, &e),
    };
    if !t.stream {
        return match result(&mut q).await {
            Ok(a) => json(
                StatusCode::OK,
                ollama::final_line(ep, &model, &a.answer, &a),
            ),
            Err(e) => error(s, Api::Ollama, &e),
        };
    }
    // The status line waits for the first event, so a request that fails
    // before its first word (camera unavailable, bad picture) gets its status.
    let first = ask::next(&mut q.events).await;
    if let HttpEvent::Done(Err(e)) = first {
        return error(s, Api::Ollama, &e.into());
    }
    streamed(first, q, "application/x-ndjson", move |ev| match ev {
        HttpEvent::Text(t) => ollama::text_line(ep, &model, &t),
        HttpEvent::Done(Ok(a)) => ollama::final_line(ep, &model, "", &a),
        HttpEvent::Done(Err(e)) => ollama::error_body(&e.into()),
    })
}

async fn completions(State(s): S, headers: HeaderMap, b: Body) -> Response {
    let r: openai::ChatRequest = match body(&s, &headers, b).await {
        Ok(r) => r,
        Err(e) => return error(&s, Api::OpenAi, &e),
    };
    let model = r.model.clone();
    let t = match openai::chat(r, &s.camera_names(), s.config().limits.max_tokens) {
        Ok(t) => t,
        Err(e) => return error(&s, Api::OpenAi, &e),
    };
    let picture = match t.picture {
        Some(http::Picture::Url(url)) => match ask::fetch_picture(&s, url).await {
            Ok(p) => Some(p),
            Err(e) => {
                s.stats.lock().error(e.code);
                return error(&s, Api::OpenAi, &e);
            }
        },
        _ => None,
    };
    let mut q = match ask::submit(&s, t.request, picture, t.stream) {
        Ok(q) => q,
        Err(e) => return error(&s, Api::OpenAi, &e),
    };
    let id = format!("chatcmpl-{}", q.id);
    let created = http::unix_now();
    if !t.stream {
        return match result(&mut q).await {
            Ok(a) => value(openai::completion(&id, &model, created, &a)),
            Err(e) => error(&s, Api::OpenAi, &e),
        };
    }
    let first = ask::next(&mut q.events).await;
    if let HttpEvent::Done(Err(e)) = first {
        return error(&s, Api::OpenAi, &e.into());
    }
    let usage = t.include_usage;
    let mut started = false;
    streamed(first, q, "text/event-stream", move |ev| {
        let mut out = Vec::new();
        if !started {
            started = true;
            let role = serde_json::json!({"role": "assistant", "content": ""});
            out.extend(openai::chunk(&id, &model, created, role, None, None));
        }
        match ev {
            HttpEvent::Text(t) => {
                let d = serde_json::json!({"content": t});
                out.extend(openai::chunk(&id, &model, created, d, None, None));
            }
            HttpEvent::Done(Ok(a)) => {
                let end = serde_json::json!({});
                let why = Some(http::finish_reason(a.stop));
                out.extend(openai::chunk(&id, &model, created, end, why, None));
                if usage {
                    let u = Some(openai::Usage::of(&a));
                    out.extend(openai::chunk(
                        &id,
                        &model,
                        created,
                        serde_json::json!({}),
                        None,
                        u,
                    ));
                }
                out.extend(openai::DONE);
            }
            HttpEvent::Done(Err(e)) => {
                out.extend(openai::event(&openai::error_value(&e.into())));
                out.extend(openai::DONE);
            }
        }
        out
    })
}
