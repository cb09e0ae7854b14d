//! The daemon survives its own failures and stops on time: a panicking job,
//! SIGTERM while the broker is away, SIGHUP while the model loads.

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
