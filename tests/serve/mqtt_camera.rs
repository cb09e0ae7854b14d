//! The `mqtt` camera: frames published on a Frigate-style snapshot topic
//! (by `mosquitto_pub -f`, as a Frigate or an ESP32-CAM would), answered
//! as the reference answers about the same picture; a frame older than
//! `max_age` is never answered, a bad one makes the camera unavailable
//! until the next good one, and retained (old) frames are not used.

use super::harness::*;
use std::time::Duration;

const PROMPT: &str = "What is in the picture?";

fn golden(image: &str) -> String {
    super::golden_text(image, PROMPT)
}

fn publish_file(port: u16, topic: &str, file: &std::path::Path, retain: bool) {
    let mut cmd = std::process::Command::new("mosquitto_pub");
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-t",
        topic,
        "-f",
    ])
    .arg(file);
    if retain {
        cmd.arg("-r");
    }
    assert!(cmd.status().unwrap().success());
}

/// Asks the `door` camera; the reply (answer or error).
fn ask(c: &Client, id: &str) -> serde_json::Value {
    ask_camera(c, "mqttcam", "door", PROMPT, id, Duration::from_secs(20))
}

#[test]
fn frames_from_a_snapshot_topic_are_answered_and_never_when_stale() {
    // Frames are meant to be fresh for 3 s.
    let extra = "[[camera]]\nname = \"door\"\ntype = \"mqtt\"\ntopic = \"frigate/door/+/snapshot\"\nmax_age = 3\n";
    let broker = Mosquitto::start();
    // A retained picture from before the start: of unknown age, not used.
    publish_file(
        broker.port,
        "frigate/door/person/snapshot",
        &fixture("images/sticker.png"),
        true,
    );
    let (broker, d, c) = {
        let cfg = super::config(broker.port, "mqttcam", &fixture("images/garage.png"), extra);
        let d = Daemon::start(&cfg, broker.port, "mqttcam");
        let c = Client::connect(broker.port, "mqttcam-client", true);
        c.subscribe("blipd/mqttcam/answer/#");
        (broker, d, c)
    };
    let r = ask(&c, "before");
    assert_eq!(r["error"]["code"], "camera_unavailable", "{r}");

    publish_file(
        broker.port,
        "frigate/door/person/snapshot",
        &fixture("images/garage.png"),
        false,
    );
    std::thread::sleep(Duration::from_millis(500));
    let r = ask(&c, "garage");
    assert_eq!(r["answer"], golden("garage.png").as_str(), "{r}");
    assert_eq!(r["camera"], "door");

    // Newest frame only: the car snapshot replaces the person one.
    publish_file(
        broker.port,
        "frigate/door/car/snapshot",
        &fixture("images/porch.jpg"),
        false,
    );
    std::thread::sleep(Duration::from_millis(500));
    let r = ask(&c, "porch");
    assert_eq!(r["answer"], golden("porch.jpg").as_str(), "{r}");

    // Older than max_age: never answered about.
    std::thread::sleep(Duration::from_millis(3200));
    let r = ask(&c, "stale");
    assert_eq!(r["error"]["code"], "camera_unavailable", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no new frame"),
        "{r}"
    );

    // Garbage, then a good frame: unavailable, then recovered.
    let junk = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(junk.path(), b"\xff\xd8\xff not really a jpeg").unwrap();
    publish_file(
        broker.port,
        "frigate/door/person/snapshot",
        junk.path(),
        false,
    );
    std::thread::sleep(Duration::from_millis(300));
    let r = ask(&c, "junk");
    assert_eq!(r["error"]["code"], "camera_unavailable", "{r}");
    // The bomb declares 65000x65000 pixels: refused from its header.
    publish_file(
        broker.port,
        "frigate/door/person/snapshot",
        &fixture("images/bomb.jpg"),
        false,
    );
    std::thread::sleep(Duration::from_millis(1200));
    publish_file(
        broker.port,
        "frigate/door/person/snapshot",
        &fixture("images/garage.png"),
        false,
    );
    std::thread::sleep(Duration::from_millis(1500));
    let r = ask(&c, "again");
    assert_eq!(r["answer"], golden("garage.png").as_str(), "{r}");

    // Other cameras and requests were never disturbed.
    let log = d.log_text();
    assert!(log.contains("camera recovered"), "{log}");
    assert!(
        !log.contains("panicked") && !log.contains("MQTT reconnected"),
        "{log}"
    );
    drop(c);
    drop(d);
    drop(broker);
}
