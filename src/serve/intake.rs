//! Intake rules: what a request publish is allowed to ask for, where its
//! reply may go, and how its redeliveries are recognised.
//!
//! Pure functions over the running config, so every rule is unit-tested
//! without a broker; the session applies them in order: size -> parse ->
//! reply target -> id -> dedupe -> validate -> queue.

use crate::config::Config;
use crate::llm::{Constraint, GenerateParams, SamplerParams};
use crate::mqtt::wire::{ErrorCode, Request};
use crate::mqtt::{topic, Topics};
use crate::serve::worker::ReplyTo;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;

/// A refusal: the error code and its message.
pub type Refusal = (ErrorCode, String);

/// Where the reply of a request goes: its MQTT 5 response topic, else its
/// JSON `response_topic`, else `<answer_prefix>/<id as one level>`. A named
/// topic that is malformed or not allowed is refused (the error then goes to
/// the default answer topic, so the client still hears of it).
pub fn reply_target(
    cfg: &Config,
    topics: &Topics,
    v5: Option<&str>,
    json: Option<&str>,
    correlation: Option<Vec<u8>>,
    id: &str,
) -> Result<ReplyTo, (ReplyTo, Refusal)> {
    let default = ReplyTo {
        topic: topics.answer(id),
        correlation,
    };
    let Some(named) = v5.or(json) else {
        return Ok(default);
    };
    match reply_allowed(cfg, topics, named) {
        Ok(()) => Ok(ReplyTo {
            topic: named.to_string(),
            correlation: default.correlation,
        }),
        Err(why) => {
            let msg = format!("response topic {:?} refused: {why}", shorten(named));
            Err((default, (ErrorCode::BadResponseTopic, msg)))
        }
    }
}

/// May a client direct replies to `t`? Never to blipd's own request or
/// state topics (a reply there would be read as a request, or overwrite
/// what Home Assistant and others rely on); by default not into blipd's or
/// Home Assistant's trees at all, except this device's answer tree.
pub fn reply_allowed(cfg: &Config, topics: &Topics, t: &str) -> Result<(), String> {
    topic::check_name(t).map_err(|e| e.to_string())?;
    let answers = topic::under(t, &topics.answer_prefix);
    if t == topics.ask
        || topic::under(t, &topics.ask_image)
        || (topic::under(t, &topics.base) && !answers)
    {
        return Err("it is one of this daemon's own topics".into());
    }
    match &cfg.mqtt.reply_topics {
        Some(roots) => {
            if roots
                .iter()
                .any(|r| topic::under(t, r.trim_end_matches('/')))
                || answers
            {
                Ok(())
            } else {
                Err("it is outside mqtt.reply_topics".into())
            }
        }
        None => {
            if topic::under(t, &cfg.mqtt.topic_prefix) && !answers {
                Err(format!(
                    "it is inside blipd's topic tree ({}/...)",
                    cfg.mqtt.topic_prefix
                ))
            } else if topic::under(t, &cfg.homeassistant.prefix) {
                Err(format!(
                    "it is inside Home Assistant's topic tree ({}/...)",
                    cfg.homeassistant.prefix
                ))
            } else {
                Ok(())
            }
        }
    }
}

/// The request id's own limit (it is echoed, remembered and part of a topic).
pub fn check_id(cfg: &Config, id: &str) -> Result<(), Refusal> {
    let max = cfg.limits.max_id_bytes;
    if id.len() > max {
        return Err((
            ErrorCode::BadRequest,
            format!("the id is {} bytes; limits.max_id_bytes is {max}", id.len()),
        ));
    }
    Ok(())
}

/// The dedupe key: the same request redelivered maps to the same key; two
/// clients (reply targets) using the same id do not collide.
pub fn dedupe_key(reply: &ReplyTo, id: Option<&str>, payload: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(reply.topic.as_bytes());
    h.update([0]);
    h.update(reply.correlation.as_deref().unwrap_or_default());
    h.update([0]);
    let tag = match id {
        Some(id) => {
            h.update(id.as_bytes());
            "id"
        }
        // Without an id, the payload itself identifies the redelivery.
        None => {
            h.update(payload);
            "h"
        }
    };
    let hex: String = h.finalize()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{tag}:{hex}")
}

/// The picture of a binary image request (the payload itself): not empty,
/// at most `limits.max_image_bytes`. Its pixels are checked by the worker,
/// as for any other picture.
pub fn raw_image(cfg: &Config, payload: &[u8]) -> Result<std::sync::Arc<[u8]>, Refusal> {
    let max = cfg.limits.max_image_bytes;
    if payload.is_empty() {
        return Err((
            ErrorCode::BadImage,
            "the payload (the picture) is empty".into(),
        ));
    }
    if payload.len() > max {
        return Err((
            ErrorCode::LimitExceeded,
            format!(
                "the picture is {} bytes; limits.max_image_bytes is {max}",
                payload.len()
            ),
        ));
    }
    Ok(payload.into())
}

/// Checks a parsed request against the limits and the cameras.
pub fn validate(
    cfg: &Config,
    cameras: &BTreeSet<String>,
    req: &Request,
    camera: Option<&str>,
) -> Result<(), Refusal> {
    let l = &cfg.limits;
    if req.prompt.trim().is_empty() {
        return Err((ErrorCode::EmptyPrompt, "the prompt is empty".into()));
    }
    let chars = req.prompt.chars().count();
    if chars > l.max_prompt_chars {
        return Err((
            ErrorCode::PromptTooLong,
            format!(
                "the prompt has {chars} characters; limits.max_prompt_chars is {}",
                l.max_prompt_chars
            ),
        ));
    }
    if let Some(n) = req.max_tokens {
        if n == 0 || n > l.max_tokens {
            return Err((
                ErrorCode::LimitExceeded,
                format!(
                    "max_tokens must be 1..={} (limits.max_tokens), got {n}",
                    l.max_tokens
                ),
            ));
        }
    }
    let sampling = SamplerParams {
        temperature: req.temperature.unwrap_or(1.0),
        top_k: req.top_k.unwrap_or(0),
        top_p: req.top_p.unwrap_or(1.0),
        repeat_penalty: 1.0,
        seed: 0,
    };
    sampling
        .validate()
        .map_err(|m| (ErrorCode::LimitExceeded, m))?;
    constraint(req)?;
    let Some(camera) = camera else {
        // The request carries its picture ([`image`]).
        return Ok(());
    };
    if !cameras.contains(camera) {
        let known: Vec<_> = cameras.iter().map(String::as_str).collect();
        return Err((
            ErrorCode::UnknownCamera,
            format!(
                "no camera named {:?} (cameras: {})",
                shorten(camera),
                known.join(", ")
            ),
        ));
    }
    Ok(())
}

/// The picture a request carries (`image`, base64, optionally as a `data:`
/// URL), decoded to its encoded bytes (JPEG, PNG, ...): the worker decodes
/// the pixels, after checking the header against `limits.max_image_pixels`.
/// The size is checked before decoding the base64.
pub fn image(cfg: &Config, req: &Request) -> Result<Option<std::sync::Arc<[u8]>>, Refusal> {
    use base64::Engine as _;
    let Some(text) = req.image.as_deref() else {
        return Ok(None);
    };
    if req.camera.is_some() {
        return Err((
            ErrorCode::BadRequest,
            "a request names a camera or carries an image, not both".into(),
        ));
    }
    let text = match text.strip_prefix("data:") {
        Some(url) => match url.split_once(";base64,") {
            Some((_, data)) => data,
            None => {
                return Err((
                    ErrorCode::BadImage,
                    "a data: URL image must be base64 (data:image/jpeg;base64,...)".into(),
                ))
            }
        },
        None => text,
    };
    let text = text.trim();
    let max = cfg.limits.max_image_bytes;
    if text.len() > crate::config::base64_len(max) {
        return Err((
            ErrorCode::LimitExceeded,
            format!(
                "the image is about {} bytes; limits.max_image_bytes is {max}",
                text.len() / 4 * 3
            ),
        ));
    }
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let bytes = engine
        .decode(text)
        .map_err(|e| (ErrorCode::BadImage, format!("the image is not base64: {e}")))?;
    if bytes.is_empty() {
        return Err((ErrorCode::BadImage, "the image is empty".into()));
    }
    if bytes.len() > max {
        return Err((
            ErrorCode::LimitExceeded,
            format!(
                "the image is {} bytes; limits.max_image_bytes is {max}",
                bytes.len()
            ),
        ));
    }
    Ok(Some(bytes.into()))
}

/// The answer constraint of a request (`choices` or `format`), checked.
pub fn constraint(req: &Request) -> Result<Option<Constraint>, Refusal> {
    Constraint::from_parts(
        req.choices.as_deref(),
        req.format.as_deref(),
        req.schema.as_ref(),
    )
    .map_err(|m| (ErrorCode::BadRequest, m))
}

/// The generation parameters of a valid request.
pub fn params(req: &Request, default: GenerateParams) -> GenerateParams {
    let mut params = default;
    // Validated by `validate` before.
    params.constraint = constraint(req).ok().flatten().map(std::sync::Arc::new);
    if let Some(n) = req.max_tokens {
        params.max_new_tokens = n;
    }
    if let Some(t) = req.temperature {
        params.sampling = Some(SamplerParams {
            temperature: t,
            top_k: req.top_k.unwrap_or(0),
            top_p: req.top_p.unwrap_or(1.0),
            repeat_penalty: 1.0,
            seed: req.seed.unwrap_or(0),
        });
    }
    params
}

pub use crate::mqtt::wire::shorten;

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> (Config, Topics) {
        let c = Config::default();
        let t = Topics::new(&c.mqtt, "dev");
        (c, t)
    }

    #[test]
    fn reply_targets() {
        let (c, t) = cfg();
        let ok = |topic: &str| reply_target(&c, &t, Some(topic), None, None, "q").map(|r| r.topic);
        assert_eq!(ok("home/reply").unwrap(), "home/reply");
        assert_eq!(
            ok("blipd/dev/answer/mine").unwrap(),
            "blipd/dev/answer/mine"
        );
        for bad in [
            "blipd/dev/status",
            "blipd/dev/ask",
            "blipd/dev/watch/door",
            "blipd/other/status",
            "homeassistant/sensor/x/config",
            "homeassistant",
            "a/+",
            "$SYS/x",
            "x\u{1}",
            "",
        ] {
            let (to, (code, _)) =
                reply_target(&c, &t, Some(bad), None, None, "q\u{1}").unwrap_err();
            assert_eq!(code, ErrorCode::BadResponseTopic, "{bad:?}");
            assert_eq!(to.topic, "blipd/dev/answer/q%01");
        }
        // The JSON field follows the same rules; the v5 property wins.
        assert!(reply_target(&c, &t, None, Some("blipd/dev/info"), None, "q").is_err());
        assert_eq!(
            reply_target(&c, &t, Some("a/b"), Some("c/d"), None, "q")
                .unwrap()
                .topic,
            "a/b"
        );
        assert_eq!(
            reply_target(&c, &t, None, None, None, "a/b").unwrap().topic,
            "blipd/dev/answer/a%2Fb"
        );
    }

    #[test]
    fn configured_reply_roots() {
        let (mut c, t) = cfg();
        c.mqtt.reply_topics = Some(vec!["replies/".into(), "nodered".into()]);
        assert!(reply_allowed(&c, &t, "replies/x").is_ok());
        assert!(reply_allowed(&c, &t, "nodered").is_ok());
        assert!(reply_allowed(&c, &t, "blipd/dev/answer/x").is_ok());
        assert!(reply_allowed(&c, &t, "other/x").is_err());
        assert!(reply_allowed(&c, &t, "repliesx").is_err());
        c.mqtt.reply_topics = Some(vec!["blipd".into()]);
        assert!(reply_allowed(&c, &t, "blipd/dev/status").is_err());
        assert!(reply_allowed(&c, &t, "blipd/other/answer/x").is_ok());
    }

    #[test]
    fn keys_are_scoped_by_reply_target() {
        let r = |t: &str, c: Option<&[u8]>| ReplyTo {
            topic: t.into(),
            correlation: c.map(<[u8]>::to_vec),
        };
        let a = dedupe_key(&r("x/a", None), Some("1"), b"p");
        assert_eq!(a, dedupe_key(&r("x/a", None), Some("1"), b"other payload"));
        assert_ne!(a, dedupe_key(&r("x/b", None), Some("1"), b"p"));
        assert_ne!(a, dedupe_key(&r("x/a", Some(b"c")), Some("1"), b"p"));
        assert_ne!(a, dedupe_key(&r("x/a", None), Some("2"), b"p"));
        assert_ne!(a, dedupe_key(&r("x/a", None), None, b"p"));
        assert!(a.starts_with("id:"));
    }

    #[test]
    fn ids_and_limits() {
        let (c, _) = cfg();
        assert!(check_id(&c, &"x".repeat(256)).is_ok());
        assert_eq!(
            check_id(&c, &"x".repeat(257)).unwrap_err().0,
            ErrorCode::BadRequest
        );
        let cams: BTreeSet<String> = ["test".to_string()].into();
        let req = |p: &str| Request {
            prompt: p.into(),
            ..Default::default()
        };
        assert!(validate(&c, &cams, &req("hi"), Some("test")).is_ok());
        assert_eq!(
            validate(&c, &cams, &req(" "), Some("test")).unwrap_err().0,
            ErrorCode::EmptyPrompt
        );
        assert_eq!(
            validate(&c, &cams, &req("hi"), Some("attic"))
                .unwrap_err()
                .0,
            ErrorCode::UnknownCamera
        );
        let mut r = req("hi");
        r.temperature = Some(f32::NAN);
        assert_eq!(
            validate(&c, &cams, &r, Some("test")).unwrap_err().0,
            ErrorCode::LimitExceeded
        );
        r.temperature = Some(0.5);
        r.top_p = Some(1.5);
        assert_eq!(
            validate(&c, &cams, &r, Some("test")).unwrap_err().0,
            ErrorCode::LimitExceeded
        );
        r.top_p = None;
        r.max_tokens = Some(0);
        assert_eq!(
            validate(&c, &cams, &r, Some("test")).unwrap_err().0,
            ErrorCode::LimitExceeded
        );
        assert_eq!(shorten(&"é".repeat(100)).chars().count(), 67);
    }

    #[test]
    fn answer_constraints() {
        let req = |choices: Option<&[&str]>, format: Option<&str>| Request {
            prompt: "hi".into(),
            choices: choices.map(|c| c.iter().map(|s| s.to_string()).collect()),
            format: format.map(str::to_string),
            ..Default::default()
        };
        assert_eq!(
            constraint(&req(Some(&["yes", "no"]), None)).unwrap(),
            Some(Constraint::Choices(vec!["yes".into(), "no".into()]))
        );
        assert_eq!(
            constraint(&req(None, Some("number"))).unwrap(),
            Some(Constraint::Number)
        );
        assert_eq!(
            constraint(&req(None, Some("json"))).unwrap(),
            Some(Constraint::Json)
        );
        assert_eq!(constraint(&req(None, None)).unwrap(), None);
        let long = "x".repeat(65);
        for (c, f) in [
            (Some(&[][..]), None),
            (Some(&["yes", "yes"][..]), None),
            (Some(&[" yes"][..]), None),
            (Some(&["a\u{1}"][..]), None),
            (Some(&[long.as_str()][..]), None),
            (Some(&["yes"][..]), Some("number")),
            (None, Some("xml")),
        ] {
            assert_eq!(
                constraint(&req(c, f)).unwrap_err().0,
                ErrorCode::BadRequest,
                "{c:?} {f:?}"
            );
        }
        let many: Vec<String> = (0..33).map(|i| i.to_string()).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(constraint(&req(Some(&many), None)).is_err());
        // A schema: with format json only, and refused with its keyword named.
        let schema = |f: Option<&str>, s: serde_json::Value| Request {
            schema: Some(s),
            ..req(None, f)
        };
        let ok = serde_json::json!({"type": "object", "properties": {"open": {"type": "boolean"}}});
        assert!(matches!(
            constraint(&schema(Some("json"), ok.clone())).unwrap(),
            Some(Constraint::JsonSchema(_))
        ));
        assert!(constraint(&schema(Some("number"), ok.clone())).is_err());
        assert!(constraint(&schema(None, ok)).is_err());
        let e = constraint(&schema(
            Some("json"),
            serde_json::json!({"type": "string", "pattern": "^a"}),
        ))
        .unwrap_err();
        assert_eq!(e.0, ErrorCode::BadRequest);
        assert!(e.1.contains("pattern"), "{}", e.1);
    }

    #[test]
    fn request_images_are_checked_before_decoding() {
        let mut c = Config::zero_config();
        c.limits.max_image_bytes = 6;
        let req = |image: &str| Request {
            prompt: "hi".into(),
            image: Some(image.into()),
            ..Default::default()
        };
        let code = |r: &Request| image(&c, r).unwrap_err().0;
        assert_eq!(&*image(&c, &req("AAEC")).unwrap().unwrap(), &[0u8, 1, 2]);
        // Unpadded, padded and as a data URL alike.
        assert_eq!(image(&c, &req("AAECAw")).unwrap().unwrap().len(), 4);
        assert_eq!(image(&c, &req("AAECAw==")).unwrap().unwrap().len(), 4);
        let url = req("data:image/png;base64,AAEC");
        assert_eq!(image(&c, &url).unwrap().unwrap().len(), 3);
        assert_eq!(code(&req("data:image/png,AAEC")), ErrorCode::BadImage);
        assert_eq!(code(&req("no b64!")), ErrorCode::BadImage);
        assert_eq!(code(&req("")), ErrorCode::BadImage);
        assert_eq!(code(&req("AAECAwQFBgc=")), ErrorCode::LimitExceeded);
        assert_eq!(code(&req(&"A".repeat(1000))), ErrorCode::LimitExceeded);
        let mut both = req("AAEC");
        both.camera = Some("test".into());
        assert_eq!(code(&both), ErrorCode::BadRequest);
        assert!(image(&c, &Request::default()).unwrap().is_none());
    }
}
