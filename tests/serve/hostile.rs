//! Client-controlled text and identity: one message must never knock the
//! daemon off the broker, and two clients never get each other's replies.

use super::harness::*;
use super::{golden_garage, serving, GARAGE_PROMPT};
use std::time::Duration;

/// Reconnects the daemon logged (a healthy run has none).
fn reconnects(d: &Daemon) -> usize {
    let log = d.log_text();
    log.matches("MQTT reconnected").count() + log.matches("MQTT connection lost").count()
}

#[test]
fn ids_a_broker_would_refuse_in_a_topic_are_encoded_and_answered() {
    let (broker, d, c) = serving("ctl", "");
    // Sent by an MQTT 3.1.1 client without a response topic: the reply goes
    // to blipd/ctl/answer/<id as one level>.
    let ids = [
        "a\u{1}b",
        "tab\there",
        "del\u{7f}",
        "c1\u{85}",
        "nonchar\u{fffe}\u{10ffff}",
        "slash/plus+hash#",
        "100%",
        "",
    ];
    for id in &ids {
        let payload = serde_json::json!({"id": id, "prompt": GARAGE_PROMPT}).to_string();
        mosquitto_pub_v311(broker.port, "blipd/ctl/ask", &payload);
    }
    let long = "x".repeat(300);
    let payload = serde_json::json!({"id": long, "prompt": GARAGE_PROMPT}).to_string();
    mosquitto_pub_v311(broker.port, "blipd/ctl/ask", &payload);
    mosquitto_pub_v311(
        broker.port,
        "blipd/ctl/ask",
        &format!(r#"{{"id":"after","prompt":"{GARAGE_PROMPT}"}}"#),
    );
    let n = ids.len() + 2;
    let msgs = c.collect_until(Duration::from_secs(30), |m| replies_by_id(m).len() >= n);
    let by_id = replies_by_id(&msgs);
    let golden = golden_garage().0;
    for id in &ids {
        let r = by_id
            .get(*id)
            .unwrap_or_else(|| panic!("no reply for {id:?}: {by_id:?}"));
        assert_eq!(r.len(), 1, "{id:?}");
        assert_eq!(r[0]["answer"], golden.as_str(), "{id:?}");
    }
    let topic_of = |id: &str| {
        msgs.iter()
            .find(|m| m.json()["id"] == id)
            .map(|m| m.topic.clone())
            .unwrap()
    };
    assert_eq!(topic_of("a\u{1}b"), "blipd/ctl/answer/a%01b");
    assert_eq!(
        topic_of("slash/plus+hash#"),
        "blipd/ctl/answer/slash%2Fplus%2Bhash%23"
    );
    assert_eq!(by_id[&long][0]["error"]["code"], "bad_request");
    assert_eq!(by_id["after"][0]["answer"], golden.as_str());
    assert_eq!(reconnects(&d), 0, "{}", d.log_text());
}

#[test]
fn the_same_id_from_two_clients_gets_two_replies() {
    let (broker, _d, _c) = serving("twins", "");
    let a = Client::connect(broker.port, "twin-a", true);
    let b = Client::connect(broker.port, "twin-b", true);
    a.subscribe("twins/a");
    b.subscribe("twins/b");
    let req = format!(r#"{{"id":"same","prompt":"{GARAGE_PROMPT}"}}"#);
    a.publish_v5("blipd/twins/ask", req.clone(), "twins/a", b"ca");
    b.publish_v5("blipd/twins/ask", req, "twins/b", b"cb");
    let got_a = a.collect_until(Duration::from_secs(20), |m| !replies_by_id(m).is_empty());
    let got_b = b.collect_until(Duration::from_secs(20), |m| !replies_by_id(m).is_empty());
    let golden = golden_garage().0;
    for (got, corr) in [(&got_a, b"ca"), (&got_b, b"cb")] {
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].json()["answer"], golden.as_str());
        assert_eq!(got[0].correlation.as_deref(), Some(&corr[..]));
    }
}

#[test]
fn a_repeated_id_in_progress_is_acked_and_requests_keep_flowing() {
    let (_broker, d, c) = serving("rep", "");
    // Far more repeats than the broker's in-flight window (mosquitto: 20):
    // a repeat that is never acknowledged would block later requests.
    let slow = r#"{"id":"rep","camera":"pattern","prompt":"Please look very carefully at this camera picture and describe every object","max_tokens":40}"#;
    for _ in 0..40 {
        c.publish("blipd/rep/ask", slow);
    }
    c.publish(
        "blipd/rep/ask",
        format!(r#"{{"id":"next","prompt":"{GARAGE_PROMPT}"}}"#),
    );
    let msgs = c.collect_until(Duration::from_secs(30), |m| {
        replies_by_id(m).contains_key("next")
    });
    let by_id = replies_by_id(&msgs);
    assert_eq!(by_id["next"][0]["answer"], golden_garage().0.as_str());
    assert_eq!(
        by_id["rep"].len(),
        1,
        "one answer for one id and reply target"
    );
    assert!(
        d.log_text().contains("request already in progress"),
        "the repeats arrived while it ran"
    );
    assert_eq!(reconnects(&d), 0);
}

#[test]
fn reply_topics_into_blipd_or_home_assistant_are_refused() {
    let (broker, _d, c) = serving("rt", "");
    let status = Client::connect(broker.port, "rt-status", true);
    for (id, topic) in [
        ("status", "blipd/rt/status"),
        ("ask", "blipd/rt/ask"),
        ("ha", "homeassistant/sensor/blipd_rt/x/config"),
        ("other", "blipd/other/info"),
    ] {
        let payload =
            serde_json::json!({"id": id, "prompt": GARAGE_PROMPT, "response_topic": topic});
        c.publish("blipd/rt/ask", payload.to_string());
    }
    let msgs = c.collect_until(Duration::from_secs(20), |m| replies_by_id(m).len() >= 4);
    let by_id = replies_by_id(&msgs);
    for id in ["status", "ask", "ha", "other"] {
        assert_eq!(by_id[id].len(), 1);
        assert_eq!(by_id[id][0]["error"]["code"], "bad_response_topic", "{id}");
    }
    // The retained status is still "online".
    status.subscribe("blipd/rt/status");
    let m = status
        .next(Duration::from_secs(5))
        .expect("retained status");
    assert_eq!(m.payload, b"online");
}

#[test]
fn a_picture_declaring_a_huge_size_is_refused_and_the_daemon_serves_on() {
    let bomb = fixture("images/bomb.jpg");
    let extra = format!(
        "[[camera]]\nname = \"bomb\"\ntype = \"file\"\npath = \"{}\"\nfps = 10\n",
        bomb.display()
    );
    let (_broker, d, c) = serving("bomb", &extra);
    c.publish(
        "blipd/bomb/ask",
        format!(r#"{{"id":"b","camera":"bomb","prompt":"{GARAGE_PROMPT}"}}"#),
    );
    c.publish(
        "blipd/bomb/ask",
        format!(r#"{{"id":"g","camera":"garage","prompt":"{GARAGE_PROMPT}"}}"#),
    );
    let msgs = c.collect_until(Duration::from_secs(20), |m| replies_by_id(m).len() >= 2);
    let by_id = replies_by_id(&msgs);
    assert_eq!(by_id["b"][0]["error"]["code"], "camera_unavailable");
    let msg = by_id["b"][0]["error"]["message"].as_str().unwrap();
    assert!(msg.contains("max_image_pixels"), "{msg}");
    assert_eq!(by_id["g"][0]["answer"], golden_garage().0.as_str());
    assert_eq!(reconnects(&d), 0);
}
