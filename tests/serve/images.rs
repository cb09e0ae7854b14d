//! Requests that carry their own picture (`"image": "<base64>"` in JSON, or
//! the picture as the payload on `<ask>/image`): answered exactly as
//! transformers answers about the same file, over MQTT 5 and 3.1.1, and bad
//! or oversized pictures get their own errors while the daemon serves on.

use super::harness::*;
use super::{golden_text as golden, serving};
use base64::Engine as _;
use std::time::Duration;

fn b64(path: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(std::fs::read(fixture(path)).unwrap())
}

const PROMPT: &str = "What is in the picture?";

#[test]
fn request_images_are_answered_as_the_reference_over_v5_and_v311() {
    let (broker, d, c) = serving("img", "");
    let images = ["garage.png", "porch.jpg", "sticker.png"];
    for (i, image) in images.iter().enumerate() {
        let data = b64(&format!("images/{image}"));
        let v5 = serde_json::json!({"id": format!("v5-{i}"), "image": data, "prompt": PROMPT});
        c.publish("blipd/img/ask", v5.to_string());
        let url = format!("data:image/x;base64,{data}");
        let v311 = serde_json::json!({"id": format!("v311-{i}"), "image": url, "prompt": PROMPT});
        mosquitto_pub_v311(broker.port, "blipd/img/ask", &v311.to_string());
    }
    let n = 2 * images.len();
    let msgs = c.collect_until(Duration::from_secs(60), |m| replies_by_id(m).len() >= n);
    let by_id = replies_by_id(&msgs);
    for (i, image) in images.iter().enumerate() {
        let want = golden(image, PROMPT);
        for id in [format!("v5-{i}"), format!("v311-{i}")] {
            let r = &by_id
                .get(&id)
                .unwrap_or_else(|| panic!("no reply for {id}: {by_id:?}"))[..];
            assert_eq!(r.len(), 1, "{id}: {r:?}");
            assert_eq!(r[0]["answer"], want.as_str(), "{id} ({image}): {r:?}");
            assert!(r[0].get("camera").is_none(), "{r:?}");
        }
    }
    // The same picture twice in a row (one client, so in order): the
    // second answer reuses the first one's image features.
    for id in ["again-1", "again-2"] {
        let v = serde_json::json!({"id": id, "image": b64("images/garage.png"), "prompt": PROMPT});
        c.publish("blipd/img/ask", v.to_string());
    }
    let msgs = c.collect_until(Duration::from_secs(30), |m| replies_by_id(m).len() >= 2);
    let by_id = replies_by_id(&msgs);
    assert_eq!(by_id["again-2"][0]["vision_cached"], true, "{by_id:?}");
    assert_eq!(by_id["again-1"][0]["answer"], by_id["again-2"][0]["answer"]);
    assert!(!d.log_text().contains("ERROR"), "{}", d.log_text());
}

#[test]
fn bad_and_oversized_request_images_get_their_errors_and_the_daemon_serves_on() {
    let (_broker, d, c) = serving("badimg", "[limits]\nmax_image_bytes = 6000\n");
    let big = base64::engine::general_purpose::STANDARD.encode(vec![0u8; 7000]);
    let cases = [
        ("not-b64", serde_json::json!("this is not base64!")),
        ("not-a-picture", serde_json::json!("aGVsbG8gd29ybGQ=")),
        (
            "truncated",
            serde_json::json!(&b64("images/porch.jpg")[..2000]),
        ),
        ("bomb-jpg", serde_json::json!(b64("images/bomb.jpg"))),
        ("bomb-png", serde_json::json!(b64("images/bomb.png"))),
        ("too-big", serde_json::json!(big)),
        ("wrong-type", serde_json::json!(12)),
    ];
    for (id, image) in &cases {
        let v = serde_json::json!({"id": id, "image": image, "prompt": PROMPT});
        c.publish("blipd/badimg/ask", v.to_string());
    }
    let both = serde_json::json!({"id": "both", "camera": "garage", "image": b64("images/garage.png"), "prompt": PROMPT});
    c.publish("blipd/badimg/ask", both.to_string());
    let good =
        serde_json::json!({"id": "good", "image": b64("images/garage.png"), "prompt": PROMPT});
    c.publish("blipd/badimg/ask", good.to_string());
    let n = cases.len() + 2;
    let msgs = c.collect_until(Duration::from_secs(60), |m| replies_by_id(m).len() >= n);
    let by_id = replies_by_id(&msgs);
    let code = |id: &str| {
        let r = by_id
            .get(id)
            .unwrap_or_else(|| panic!("no reply for {id}: {by_id:?}"));
        assert_eq!(r.len(), 1, "{id}: {r:?}");
        r[0]["error"]["code"]
            .as_str()
            .unwrap_or("answer")
            .to_string()
    };
    assert_eq!(code("not-b64"), "bad_image");
    assert_eq!(code("not-a-picture"), "bad_image");
    assert_eq!(code("truncated"), "bad_image");
    assert_eq!(code("bomb-jpg"), "limit_exceeded");
    assert_eq!(code("bomb-png"), "limit_exceeded");
    assert_eq!(code("too-big"), "limit_exceeded");
    assert_eq!(code("wrong-type"), "bad_request");
    assert_eq!(code("both"), "bad_request");
    assert_eq!(code("good"), "answer");
    assert_eq!(
        by_id["good"][0]["answer"],
        golden("garage.png", PROMPT).as_str()
    );
    let log = d.log_text();
    assert!(
        !log.contains("panicked") && !log.contains("MQTT reconnected"),
        "{log}"
    );
}

#[test]
fn ask_mqtt_image_sends_the_file_and_prints_what_ask_image_prints() {
    let (broker, _d, _c) = serving("askimg", "");
    let image = fixture("images/porch.jpg");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_blipd"))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let url = broker.url();
    let image = image.to_str().unwrap();
    let remote = run(&[
        "ask", "--mqtt", &url, "--device", "askimg", "--image", image, PROMPT,
    ]);
    let model = fixture("tiny-a");
    let local = run(&[
        "ask",
        "--model",
        model.to_str().unwrap(),
        "--image",
        image,
        PROMPT,
    ]);
    assert_eq!(remote, local);
    assert_eq!(remote.trim_end(), golden("porch.jpg", PROMPT));
}

#[test]
fn picture_payloads_on_the_image_topic_are_answered_as_the_reference() {
    let (broker, d, c) = serving("bin", "[limits]\nmax_image_bytes = 5000\n");
    let port = broker.port;
    let images = ["porch.jpg", "sticker.png"];
    for (i, image) in images.iter().enumerate() {
        let file = fixture(&format!("images/{image}"));
        let id = format!("v5-{i}");
        let props = [("prompt", PROMPT), ("id", id.as_str()), ("x-other", "1")];
        mosquitto_pub_file(port, "mqttv5", "blipd/bin/ask/image", &file, &props);
        // 3.1.1: id and prompt in the topic ('+' would have to be %2B).
        let topic = format!("blipd/bin/ask/image/v311-{i}/{PROMPT}");
        mosquitto_pub_file(port, "mqttv311", &topic, &file, &[]);
    }
    let porch = fixture("images/porch.jpg");
    let choices = [
        ("prompt", PROMPT),
        ("id", "choice"),
        ("choices", "door, car"),
    ];
    mosquitto_pub_file(port, "mqttv5", "blipd/bin/ask/image", &porch, &choices);
    // Bad ones, each with its own error; then a good one.
    let tmp = tempfile::tempdir().unwrap();
    let junk = tmp.path().join("junk.bin");
    std::fs::write(&junk, b"this is not a picture").unwrap();
    let empty = tmp.path().join("empty.bin");
    std::fs::write(&empty, b"").unwrap();
    let garage = fixture("images/garage.png"); // 5614 bytes: over the limit
    let bomb = fixture("images/bomb.png");
    let v5 = "mqttv5";
    let t = "blipd/bin/ask/image";
    mosquitto_pub_file(port, v5, t, &junk, &[("prompt", PROMPT), ("id", "junk")]);
    mosquitto_pub_file(port, v5, t, &empty, &[("prompt", PROMPT), ("id", "empty")]);
    mosquitto_pub_file(port, v5, t, &garage, &[("prompt", PROMPT), ("id", "big")]);
    mosquitto_pub_file(port, v5, t, &bomb, &[("prompt", PROMPT), ("id", "bomb")]);
    mosquitto_pub_file(port, v5, t, &porch, &[("id", "no-prompt")]);
    let bad_tokens = [("prompt", PROMPT), ("id", "bad-opt"), ("max_tokens", "x")];
    mosquitto_pub_file(port, v5, t, &porch, &bad_tokens);
    let cam = [
        ("prompt", PROMPT),
        ("id", "cam"),
        ("request", r#"{"camera":"garage"}"#),
    ];
    mosquitto_pub_file(port, v5, t, &porch, &cam);
    let escape = "blipd/bin/ask/image/esc/50%";
    mosquitto_pub_file(port, "mqttv311", escape, &porch, &[]);
    mosquitto_pub_file(port, v5, t, &porch, &[("prompt", PROMPT), ("id", "good")]);

    let n = 2 * images.len() + 10;
    let msgs = c.collect_until(Duration::from_secs(90), |m| replies_by_id(m).len() >= n);
    let by_id = replies_by_id(&msgs);
    let one = |id: &str| {
        let r = by_id
            .get(id)
            .unwrap_or_else(|| panic!("no reply for {id}: {by_id:?}"));
        assert_eq!(r.len(), 1, "{id}: {r:?}");
        r[0].clone()
    };
    for (i, image) in images.iter().enumerate() {
        let want = golden(image, PROMPT);
        for id in [format!("v5-{i}"), format!("v311-{i}")] {
            let r = one(&id);
            assert_eq!(r["answer"], want.as_str(), "{id} ({image}): {r:?}");
            assert!(r.get("camera").is_none(), "{r:?}");
        }
    }
    let choice = one("choice");
    assert!(
        ["door", "car"].contains(&choice["answer"].as_str().unwrap_or_default()),
        "{choice:?}"
    );
    for (id, code) in [
        ("junk", "bad_image"),
        ("empty", "bad_image"),
        ("big", "limit_exceeded"),
        ("bomb", "limit_exceeded"),
        ("no-prompt", "empty_prompt"),
        ("bad-opt", "bad_request"),
        ("cam", "bad_request"),
        ("esc", "bad_request"),
    ] {
        assert_eq!(one(id)["error"]["code"], code, "{id}: {:?}", one(id));
    }
    assert_eq!(one("good")["answer"], golden("porch.jpg", PROMPT).as_str());
    let log = d.log_text();
    assert!(
        !log.contains("ERROR") && !log.contains("MQTT reconnected"),
        "{log}"
    );
}
