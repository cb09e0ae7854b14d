//! Constrained answers over MQTT: `choices`, `format` and `schema` in a request.

use super::harness::*;
use super::{serving, GARAGE_PROMPT};
use std::time::Duration;

#[test]
fn choices_and_formats_constrain_the_answer_and_bad_ones_are_refused() {
    let (_broker, d, c) = serving("choice", "");
    let ask = |id: &str, extra: serde_json::Value| {
        let mut q = serde_json::json!({"id": id, "camera": "garage", "prompt": GARAGE_PROMPT});
        q.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        c.publish("blipd/choice/ask", q.to_string());
    };
    ask("yn", serde_json::json!({"choices": ["open", "closed"]}));
    ask("num", serde_json::json!({"format": "number"}));
    ask(
        "json",
        serde_json::json!({"format": "json", "max_tokens": 40}),
    );
    ask(
        "both",
        serde_json::json!({"choices": ["a"], "format": "number"}),
    );
    ask("dup", serde_json::json!({"choices": ["a", "a"]}));
    ask("fmt", serde_json::json!({"format": "xml"}));
    ask("type", serde_json::json!({"choices": "yes"}));
    let door = serde_json::json!({"type": "object", "required": ["door"],
        "properties": {"door": {"enum": ["open", "closed"]}}});
    ask(
        "schema",
        serde_json::json!({"format": "json", "schema": door}),
    );
    ask(
        "bad-schema",
        serde_json::json!({"format": "json", "schema": {"type": "string", "pattern": "^a"}}),
    );
    let msgs = c.collect_until(Duration::from_secs(60), |m| replies_by_id(m).len() >= 9);
    let by_id = replies_by_id(&msgs);
    let one = |id: &str| {
        let r = by_id
            .get(id)
            .unwrap_or_else(|| panic!("no reply for {id}: {by_id:?}"));
        assert_eq!(r.len(), 1, "{r:?}");
        r[0].clone()
    };
    let yn = one("yn")["answer"].as_str().unwrap().to_string();
    assert!(yn == "open" || yn == "closed", "{yn:?}");
    let num = one("num")["answer"].as_str().unwrap().to_string();
    assert!(num.parse::<f64>().is_ok(), "{num:?}");
    // The tiny random model rarely finishes an object within 40 tokens;
    // what it wrote is JSON so far: it starts an object.
    let json = one("json")["answer"].as_str().unwrap().to_string();
    assert!(json.starts_with('{'), "{json:?}");
    for id in ["both", "dup", "fmt", "type", "bad-schema"] {
        assert_eq!(one(id)["error"]["code"], "bad_request", "{id}");
    }
    assert!(
        one("bad-schema")["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`pattern`"),
        "{:?}",
        one("bad-schema")
    );
    // Even the tiny random model's answer is the object the schema asks for.
    let text = one("schema")["answer"].as_str().unwrap().to_string();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let validator = jsonschema::validator_for(&door).unwrap();
    assert!(validator.is_valid(&v), "{v} against {door}");
    assert!(!d.log_text().contains("ERROR"), "{}", d.log_text());
}
