//! Binary picture requests: the payload on `<ask>/image` is the JPEG/PNG
//! itself (no base64, so a camera's or Frigate's snapshot can be forwarded
//! as is, and a picture may use the whole packet), and the question travels
//! beside it:
//!
//! - MQTT 5: user properties. `prompt`, `id`, `choices` (a JSON array or a
//!   comma-separated list), `format`, `max_tokens`, `stream`, `snapshot`,
//!   `temperature`, `top_p`, `top_k`, `seed`, `response_topic`, or `request`
//!   holding a whole JSON request (without `image`); other user properties
//!   are left alone (bridges and tools add their own).
//! - MQTT 3.1.1 (no properties): the topic, `<ask>/image/<id>/<prompt>`,
//!   each part %-escaped where needed (`%2B` for `+`, `%23` for `#`); the
//!   prompt is the rest of the topic, slashes included. An id of `-` means
//!   "choose one".
//!
//! Either way the result is the same [`Request`] as a JSON one, checked by
//! the same serde rules (unknown fields, wrong types), so every option a JSON
//! request has works here and is validated the same way.

use super::topic;
use super::wire::{ErrorCode, ParseError, Request};
use serde_json::{Map, Value};

/// User properties blipd reads, and how each value is typed.
const TEXT: &[&str] = &["prompt", "id", "format", "response_topic"];
const NUMBERS: &[&str] = &["max_tokens", "temperature", "top_p", "top_k", "seed"];
const FLAGS: &[&str] = &["stream", "snapshot"];

fn bad(message: String, id: Option<String>) -> ParseError {
    ParseError {
        code: ErrorCode::BadRequest,
        message,
        id,
    }
}

/// The request of a picture published on `<ask>/image` + `suffix` (`""` or
/// `/<id>/<prompt...>`), from its topic and user properties.
pub fn parse(suffix: &str, properties: &[(String, String)]) -> Result<Request, ParseError> {
    let mut fields = Map::new();
    let mut id_seen: Option<String> = None;
    if let Some((_, json)) = properties.iter().find(|(k, _)| k == "request") {
        match serde_json::from_str::<Value>(json) {
            Ok(Value::Object(m)) => fields = m,
            _ => {
                return Err(bad(
                    "the `request` user property must be a JSON object".into(),
                    None,
                ))
            }
        }
        id_seen = fields.get("id").and_then(Value::as_str).map(str::to_string);
    }
    let set = |fields: &mut Map<String, Value>, key: &str, v: Value, from: &str| {
        if fields.contains_key(key) {
            return Err(bad(format!("`{key}` is given twice ({from})"), None));
        }
        fields.insert(key.to_string(), v);
        Ok(())
    };
    for (k, v) in properties {
        let k = k.as_str();
        let value = if TEXT.contains(&k) {
            Value::String(v.clone())
        } else if NUMBERS.contains(&k) {
            match serde_json::from_str::<Value>(v.trim()) {
                Ok(n @ Value::Number(_)) => n,
                _ => {
                    return Err(bad(
                        format!("the user property `{k}` must be a number"),
                        id_seen,
                    ))
                }
            }
        } else if FLAGS.contains(&k) {
            match v.trim() {
                "true" | "1" | "yes" => Value::Bool(true),
                "false" | "0" | "no" => Value::Bool(false),
                _ => {
                    return Err(bad(
                        format!("the user property `{k}` must be true or false"),
                        id_seen,
                    ))
                }
            }
        } else if k == "choices" {
            choices(v).map_err(|m| bad(m, id_seen.clone()))?
        } else {
            continue;
        };
        if k == "id" {
            id_seen = Some(v.clone());
        }
        set(&mut fields, k, value, "user property")?;
    }
    if let Some(rest) = suffix.strip_prefix('/') {
        let (id, prompt) = rest.split_once('/').unwrap_or((rest, ""));
        let id = topic::unescape(id).map_err(|e| bad(format!("the topic's id: {e}"), None))?;
        if !id.is_empty() && id != "-" {
            id_seen = Some(id.clone());
            set(&mut fields, "id", Value::String(id), "topic")?;
        }
        let prompt = topic::unescape(prompt)
            .map_err(|e| bad(format!("the topic's prompt: {e}"), id_seen.clone()))?;
        if !prompt.is_empty() {
            set(&mut fields, "prompt", Value::String(prompt), "topic")?;
        }
    } else if !suffix.is_empty() {
        return Err(bad("not an image request topic".into(), None));
    }
    for (key, why) in [
        ("image", "the picture is the payload"),
        ("camera", "the request carries a picture"),
    ] {
        if fields.contains_key(key) {
            return Err(bad(format!("no `{key}` here: {why}"), id_seen));
        }
    }
    if !fields.contains_key("prompt") {
        return Err(ParseError {
            code: ErrorCode::EmptyPrompt,
            message: "no prompt: give it as the `prompt` user property (MQTT 5) or in the topic, \
                      <ask>/image/<id>/<prompt>"
                .into(),
            id: id_seen,
        });
    }
    serde_json::from_value::<Request>(Value::Object(fields))
        .map_err(|e| bad(format!("invalid request: {e}"), id_seen))
}

/// `["a", "b"]` or `a, b`.
fn choices(v: &str) -> Result<Value, String> {
    let t = v.trim();
    if t.starts_with('[') {
        return match serde_json::from_str::<Value>(t) {
            Ok(a @ Value::Array(_)) => Ok(a),
            _ => Err("the user property `choices` is not a JSON array".into()),
        };
    }
    Ok(Value::Array(
        t.split(',')
            .map(|c| Value::String(c.trim().to_string()))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn user_properties_become_a_request() {
        let r = parse(
            "",
            &props(&[
                ("prompt", "Is the door open?"),
                ("id", "q1"),
                ("choices", "yes, no"),
                ("max_tokens", "5"),
                ("stream", "true"),
                ("x-bridge", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(r.prompt, "Is the door open?");
        assert_eq!(r.id.as_deref(), Some("q1"));
        assert_eq!(r.choices, Some(vec!["yes".into(), "no".into()]));
        assert_eq!((r.max_tokens, r.stream), (Some(5), true));
        let r = parse(
            "",
            &props(&[("request", r#"{"prompt":"p","format":"number"}"#)]),
        )
        .unwrap();
        assert_eq!(r.format.as_deref(), Some("number"));
    }

    #[test]
    fn the_topic_carries_id_and_prompt_for_v311() {
        let r = parse("/q%2F1/What color is it%3F Or/and%2B", &[]).unwrap();
        assert_eq!(r.id.as_deref(), Some("q/1"));
        assert_eq!(r.prompt, "What color is it? Or/and+");
        let r = parse("/-/hello", &[]).unwrap();
        assert_eq!((r.id, r.prompt.as_str()), (None, "hello"));
    }

    #[test]
    fn bad_ones_get_specific_errors() {
        let code = |s: &str, p: &[(&str, &str)]| parse(s, &props(p)).unwrap_err();
        assert_eq!(code("", &[]).code, ErrorCode::EmptyPrompt);
        assert_eq!(code("/q1", &[]).id.as_deref(), Some("q1"));
        for (s, p) in [
            ("", vec![("prompt", "p"), ("max_tokens", "many")]),
            ("", vec![("prompt", "p"), ("stream", "maybe")]),
            ("", vec![("request", "[1]")]),
            ("", vec![("request", r#"{"prompt":"p","image":"x"}"#)]),
            ("", vec![("prompt", "p"), ("request", r#"{"camera":"c"}"#)]),
            ("/a/b", vec![("id", "b")]),
            ("/a/b", vec![("prompt", "c")]),
            ("/a/50%", vec![]),
            ("", vec![("request", r#"{"prompt":"p","bogus":1}"#)]),
            ("", vec![("prompt", "p"), ("choices", "[1,")]),
        ] {
            assert_eq!(code(s, &p).code, ErrorCode::BadRequest, "{s} {p:?}");
        }
        assert_eq!(parse("x", &[]).unwrap_err().code, ErrorCode::BadRequest);
    }
}
