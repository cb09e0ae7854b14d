//! The daemon survives its own failures and stops on time: a panicking job,
//! SIGTERM while the broker is away, SIGHUP while the model loads, a broker
//! that loses the session or refuses a reply.

use super::harness::*;
use super::{config, golden_garage, GARAGE_PROMPT};
use std::time::{Duration, Instant};

#[test]
fn a_panicking_job_is_answered_internal_and_the_daemon_serves_on() {
    let broker = Mosquitto::start();
    let cfg = config(broker.port, "panic", &fixture("images/garage.png"), "");
    let d = Daemon::launch_with(&cfg, &[("BLIPD_TEST_PANIC_ON_PROMPT", "panic now")]);
    wait_online(broker.port, "panic", None, Duration::from_secs(30));
    let c = Client::connect(broker.port, "panic-client", true);
    c.subscribe("blipd/panic/answer/#");
    c.publish("blipd/panic/ask", r#"{"id":"boom","prompt":"panic now"}"#);
    c.publish("blipd/panic/ask", r#"{"id":"boom2","prompt":"panic now"}"#);
    c.publish(
        "blipd/panic/ask",
        format!(r#"{{"id":"after","prompt":"{GARAGE_PROMPT}"}}"#),
    );
    let msgs = c.collect_until(Duration::from_secs(20), |m| replies_by_id(m).len() >= 3);
    let by_id = replies_by_id(&msgs);
    for id in ["boom", "boom2"] {
        assert_eq!(by_id[id].len(), 1);
        assert_eq!(by_id[id][0]["error"]["code"], "internal", "{:?}", by_id[id]);
    }
    assert_eq!(by_id["after"][0]["answer"], golden_garage().0.as_str());
    assert!(
        d.log_text().contains("the job panicked"),
        "{}",
        d.log_text()
    );
}

#[test]
fn sigterm_during_a_broker_outage_exits_promptly() {
    let mut broker = Mosquitto::start();
    let cfg = config(broker.port, "outage", &fixture("images/garage.png"), "");
    let mut d = Daemon::start(&cfg, broker.port, "outage");
    broker.stop();
    d.wait_log("MQTT connection lost", 1, Duration::from_secs(20));
    // Let the reconnect backoff grow to several seconds.
    std::thread::sleep(Duration::from_secs(9));
    let t0 = Instant::now();
    let status = d.terminate(Duration::from_secs(10));
    let took = t0.elapsed();
    eprintln!("SIGTERM during the outage: exit {status:?} after {took:?}");
    assert!(status.success(), "{status:?}\n{}", d.log_text());
    assert!(took < Duration::from_secs(4), "{took:?}");
}

#[test]
fn sighup_while_the_model_loads_does_not_kill_the_daemon() {
    let broker = Mosquitto::start();
    let cfg = config(broker.port, "hup", &fixture("images/garage.png"), "");
    let mut d = Daemon::launch_with(&cfg, &[]);
    d.wait_log("loading model", 1, Duration::from_secs(20));
    d.signal("-HUP");
    wait_online(broker.port, "hup", None, Duration::from_secs(30));
    let status = d.terminate(Duration::from_secs(35));
    assert!(status.success(), "{status:?}\n{}", d.log_text());
}

#[test]
fn a_broker_that_loses_the_session_mid_answer_still_gets_the_answer_once() {
    let mut broker = Mosquitto::start_volatile();
    let cfg = config(broker.port, "vol", &fixture("images/garage.png"), "");
    let d = Daemon::launch_with(&cfg, &[("BLIPD_TEST_SLOW_PROMPT", GARAGE_PROMPT)]);
    wait_online(broker.port, "vol", None, Duration::from_secs(30));
    let c = Client::connect(broker.port, "vol-client", true);
    c.subscribe("vol/reply");
    c.publish_v5(
        "blipd/vol/ask",
        format!(r#"{{"id":"v1","prompt":"{GARAGE_PROMPT}"}}"#),
        "vol/reply",
        b"v1",
    );
    d.wait_log("request queued", 1, Duration::from_secs(10));
    // The broker restarts, forgetting every session, while the answer is
    // being computed (3 s).
    broker.restart();
    let c = Client::connect(broker.port, "vol-client-2", true);
    c.subscribe("vol/reply");
    let msgs = c.collect_until(Duration::from_secs(30), |m| !replies_by_id(m).is_empty());
    let by_id = replies_by_id(&msgs);
    assert_eq!(
        by_id["v1"][0]["answer"],
        golden_garage().0.as_str(),
        "{msgs:?}"
    );
    d.wait_log("kept no session", 1, Duration::from_secs(10));
    // And the daemon serves on in the new session.
    c.publish_v5(
        "blipd/vol/ask",
        r#"{"id":"v2","prompt":"What is in the picture? "}"#,
        "vol/reply",
        b"v2",
    );
    let more = c.collect_until(Duration::from_secs(20), |m| {
        replies_by_id(m).contains_key("v2")
    });
    let all: Vec<_> = msgs.into_iter().chain(more).collect();
    let by_id = replies_by_id(&all);
    assert_eq!(by_id["v1"].len(), 1, "answered once");
    assert!(by_id["v2"][0].get("answer").is_some(), "{by_id:?}");
}

#[test]
fn a_reply_topic_the_broker_refuses_gets_an_error_on_the_answer_topic() {
    let broker = Mosquitto::start_with_acl("topic readwrite blipd/#\ntopic readwrite open/#\n");
    let cfg = config(broker.port, "acl", &fixture("images/garage.png"), "");
    let _d = Daemon::start(&cfg, broker.port, "acl");
    let c = Client::connect(broker.port, "acl-client", true);
    c.subscribe("blipd/acl/answer/#");
    c.subscribe("open/#");
    c.publish_v5(
        "blipd/acl/ask",
        format!(r#"{{"id":"shut","prompt":"{GARAGE_PROMPT}"}}"#),
        "closed/reply",
        b"c1",
    );
    c.publish_v5(
        "blipd/acl/ask",
        format!(r#"{{"id":"open","prompt":"{GARAGE_PROMPT}"}}"#),
        "open/reply",
        b"c2",
    );
    let msgs = c.collect_until(Duration::from_secs(20), |m| replies_by_id(m).len() >= 2);
    let by_id = replies_by_id(&msgs);
    assert_eq!(by_id["shut"].len(), 1);
    assert_eq!(
        by_id["shut"][0]["error"]["code"], "bad_response_topic",
        "{by_id:?}"
    );
    let m = msgs.iter().find(|m| m.json()["id"] == "shut").unwrap();
    assert_eq!(m.topic, "blipd/acl/answer/shut");
    assert_eq!(m.correlation.as_deref(), Some(&b"c1"[..]));
    assert_eq!(by_id["open"][0]["answer"], golden_garage().0.as_str());
}
