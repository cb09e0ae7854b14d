//! The appliance features against a real mosquitto: standing questions
//! (schedule, change, events), Home Assistant discovery, snapshots, the
//! stats message, SIGHUP reload and SIGTERM in the middle of work.

use crate::harness::*;
use std::path::Path;
use std::time::{Duration, Instant};

const PROMPT: &str = "What is in the picture?";

/// The reference (transformers) answer for an image with [`PROMPT`].
fn golden(image: &str) -> String {
    crate::golden_text(image, PROMPT).trim().to_string()
}

fn config(port: u16, device: &str, camera_file: &Path, extra: &str) -> String {
    format!(
        r#"
device_id = "{device}"
threads = 1
model = "{model}"

[[camera]]
name = "cam"
type = "file"
path = "{file}"
fps = 10

[mqtt]
url = "mqtt://127.0.0.1:{port}"

{extra}
"#,
        model = fixture("tiny-a").display(),
        file = camera_file.display(),
    )
}

/// A camera file in a temp dir that tests can replace (write and rename,
/// like an NVR exporting a snapshot).
struct CamFile {
    dir: tempfile::TempDir,
}

impl CamFile {
    fn new(image: &str) -> Self {
        let c = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        c.show(image);
        c
    }
    fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("cam.img")
    }
    fn show(&self, image: &str) {
        let tmp = self.dir.path().join("next.img");
        std::fs::copy(fixture(&format!("images/{image}")), &tmp).unwrap();
        std::fs::rename(tmp, self.path()).unwrap();
    }
}

fn find<'a>(msgs: &'a [Msg], topic: &str) -> Vec<&'a Msg> {
    msgs.iter().filter(|m| m.topic == topic).collect()
}

fn states(msgs: &[Msg], topic: &str) -> Vec<serde_json::Value> {
    find(msgs, topic)
        .into_iter()
        .filter(|m| !m.payload.is_empty())
        .map(Msg::json)
        .collect()
}

fn hup(d: &Daemon) {
    d.signal("-HUP");
}

#[test]
fn watch_runs_at_start_on_schedule_and_on_change_with_events() {
    let broker = Mosquitto::start();
    let cam = CamFile::new("garage.png");
    let watch = format!(
        "[[watch]]\nname = \"scene\"\nprompt = \"{PROMPT}\"\nevery = \"2s\"\non_change = 0.02\ncheck_every = \"200ms\"\nmin_interval = \"0s\"\n"
    );
    let c = Client::connect(broker.port, "w-client", true);
    c.subscribe("blipd/w/watch/#");
    let _d = Daemon::start(
        &config(broker.port, "w", &cam.path(), &watch),
        broker.port,
        "w",
    );
    let topic = "blipd/w/watch/scene";

    // Start run, then a scheduled one: both the reference answer.
    let msgs = c.collect_until(Duration::from_secs(15), |m| {
        states(m, topic).iter().any(|s| s["trigger"] == "schedule")
    });
    let s = states(&msgs, topic);
    assert_eq!(s[0]["trigger"], "start", "{s:?}");
    let sched = s
        .iter()
        .find(|s| s["trigger"] == "schedule")
        .expect("a scheduled run");
    for st in [&s[0], sched] {
        assert_eq!(st["answer"], golden("garage.png"));
        assert_eq!(st["camera"], "cam");
        assert_eq!(st["prompt"], PROMPT);
        assert!(st["timings"]["total_ms"].as_f64().unwrap() > 0.0);
        assert!(st["error"].is_null());
    }
    // Retained: a late subscriber sees the state at once.
    let late = Client::connect(broker.port, "w-late", true);
    late.subscribe(topic);
    let m = late.next(Duration::from_secs(5)).expect("retained state");
    assert!(m.retain);
    // The first answer is an event (nothing known before); the same answer again is not.
    let events = states(&msgs, "blipd/w/watch/scene/event");
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(events[0]["previous"].is_null());

    // The picture changes: a change-triggered run well before the next schedule would matter.
    cam.show("porch.jpg");
    let t0 = Instant::now();
    let msgs = c.collect_until(Duration::from_secs(10), |m| {
        !states(m, "blipd/w/watch/scene/event").is_empty()
    });
    let changed = states(&msgs, topic);
    let last = changed.last().expect("a run after the change");
    assert_eq!(last["answer"], golden("porch.jpg"), "{changed:?}");
    assert!(
        changed.iter().any(|s| s["trigger"] == "change"),
        "a run triggered by the change: {changed:?}"
    );
    let ev = &states(&msgs, "blipd/w/watch/scene/event")[0];
    assert_eq!(ev["answer"], golden("porch.jpg"));
    assert_eq!(ev["previous"], golden("garage.png"));
    assert!(t0.elapsed() < Duration::from_secs(5));
}

#[test]
fn only_if_filters_events_but_not_the_state() {
    let broker = Mosquitto::start();
    let cam = CamFile::new("garage.png");
    // The tiny model's answers never start with "yes".
    let watch = format!(
        "[[watch]]\nname = \"door\"\nprompt = \"{PROMPT}\"\nevery = \"1s\"\nonly_if = \"^yes\"\n"
    );
    let c = Client::connect(broker.port, "o-client", true);
    c.subscribe("blipd/o/watch/#");
    let _d = Daemon::start(
        &config(broker.port, "o", &cam.path(), &watch),
        broker.port,
        "o",
    );
    let msgs = c.collect_until(Duration::from_secs(10), |m| {
        states(m, "blipd/o/watch/door").len() >= 2
    });
    let s = states(&msgs, "blipd/o/watch/door");
    assert!(s.len() >= 2, "{s:?}");
    assert_eq!(s[0]["matched"], false);
    assert_eq!(s[0]["answer"], golden("garage.png"));
    assert!(find(&msgs, "blipd/o/watch/door/event").is_empty());
}

fn check_common(cfg: &serde_json::Value, device: &str) {
    for key in [
        "name",
        "unique_id",
        "availability_topic",
        "payload_available",
        "payload_not_available",
    ] {
        assert!(cfg[key].is_string(), "{key} in {cfg}");
    }
    assert_eq!(cfg["availability_topic"], format!("blipd/{device}/status"));
    assert_eq!(cfg["payload_available"], "online");
    assert_eq!(cfg["payload_not_available"], "offline");
    assert_eq!(cfg["device"]["identifiers"][0], format!("blipd_{device}"));
    assert!(cfg["device"]["name"].is_string());
    assert_eq!(cfg["origin"]["name"], "blipd");
}

#[test]
fn home_assistant_discovery_snapshots_and_stats() {
    let broker = Mosquitto::start();
    let cam = CamFile::new("garage.png");
    let extra = format!(
        "[homeassistant]\ndiscovery = true\n\n[stats]\ninterval = \"1s\"\n\n[[watch]]\nname = \"door\"\nprompt = \"{PROMPT}\"\nevery = \"1h\"\nsnapshot = true\n"
    );
    let c = Client::connect(broker.port, "ha-client", true);
    c.subscribe("homeassistant/#");
    c.subscribe("blipd/ha/#");
    let d = Daemon::start(
        &config(broker.port, "ha", &cam.path(), &extra),
        broker.port,
        "ha",
    );
    let sensor_t = "homeassistant/sensor/blipd_ha/door/config";
    let image_t = "homeassistant/image/blipd_ha/door_snapshot/config";
    let msgs = c.collect_until(Duration::from_secs(15), |m| {
        !find(m, sensor_t).is_empty()
            && !find(m, image_t).is_empty()
            && !states(m, "blipd/ha/watch/door").is_empty()
            && !find(m, "blipd/ha/watch/door/snapshot").is_empty()
    });

    // Discovery: the documented fields of the MQTT sensor and image platforms.
    let sensor = find(&msgs, sensor_t)[0];
    assert!(sensor.retain || !sensor.payload.is_empty());
    let sensor = sensor.json();
    check_common(&sensor, "ha");
    assert_eq!(sensor["unique_id"], "blipd_ha_door");
    assert_eq!(sensor["state_topic"], "blipd/ha/watch/door");
    assert_eq!(sensor["json_attributes_topic"], "blipd/ha/watch/door");
    assert!(sensor["value_template"]
        .as_str()
        .unwrap()
        .contains("value_json.answer"));
    let image = find(&msgs, image_t)[0].json();
    check_common(&image, "ha");
    assert_eq!(image["image_topic"], "blipd/ha/watch/door/snapshot");
    assert_eq!(image["content_type"], "image/jpeg");

    // The state topic carries what the value template reads.
    let state = &states(&msgs, "blipd/ha/watch/door")[0];
    assert_eq!(state["answer"], golden("garage.png"));
    // The snapshot is a JPEG of the answered frame, at its size.
    let jpeg = &find(&msgs, "blipd/ha/watch/door/snapshot")[0].payload;
    assert!(jpeg.starts_with(&[0xFF, 0xD8, 0xFF]));
    let img = image::load_from_memory(jpeg).unwrap();
    let frame = image::open(fixture("images/garage.png")).unwrap();
    assert_eq!((img.width(), img.height()), (frame.width(), frame.height()));
    assert_eq!(state["snapshot"]["width"], frame.width());
    assert_eq!(state["snapshot"]["bytes"], jpeg.len());

    // Home Assistant restarts and announces itself: the configs come again.
    c.publish("homeassistant/status", "online");
    let again = c.collect_until(Duration::from_secs(5), |m| {
        !find(m, sensor_t).is_empty() && !find(m, image_t).is_empty()
    });
    assert_eq!(find(&again, sensor_t)[0].json(), sensor);

    // A request with a snapshot: the JPEG on the topic the answer names.
    c.publish(
        "blipd/ha/ask",
        format!(r#"{{"id": "s1", "prompt": "{PROMPT}", "snapshot": true}}"#),
    );
    let msgs = c.collect_until(Duration::from_secs(10), |m| {
        !find(m, "blipd/ha/answer/s1").is_empty() && !find(m, "blipd/ha/snapshot/s1").is_empty()
    });
    let answer = find(&msgs, "blipd/ha/answer/s1")[0].json();
    assert_eq!(
        answer["answer"].as_str().unwrap().trim(),
        golden("garage.png")
    );
    assert_eq!(answer["snapshot"]["topic"], "blipd/ha/snapshot/s1");
    let jpeg = &find(&msgs, "blipd/ha/snapshot/s1")[0].payload;
    let img = image::load_from_memory(jpeg).unwrap();
    assert_eq!((img.width(), img.height()), (frame.width(), frame.height()));

    // Stats: counters, latencies and memory, retained.
    let msgs = c.collect_until(Duration::from_secs(5), |m| {
        states(m, "blipd/ha/stats")
            .iter()
            .any(|s| s["answered"].as_u64() >= Some(1))
    });
    let stats = states(&msgs, "blipd/ha/stats").pop().expect("stats");
    assert_eq!(stats["requests"], 1, "{stats}");
    assert!(stats["watch_runs"].as_u64().unwrap() >= 1, "{stats}");
    assert!(
        stats["latency"]["total_ms"]["p95"].as_f64().unwrap() > 0.0,
        "{stats}"
    );
    assert!(
        stats["memory"]["rss_mib"].as_f64().unwrap() > 1.0,
        "{stats}"
    );
    assert_eq!(stats["cameras"][0]["name"], "cam");
    drop(d);
}

#[test]
fn sighup_adds_and_removes_watches_without_reloading_the_model() {
    let broker = Mosquitto::start();
    let cam = CamFile::new("garage.png");
    let watch = |name: &str| {
        format!("[[watch]]\nname = \"{name}\"\nprompt = \"{PROMPT}\"\nevery = \"1h\"\n")
    };
    let ha = "[homeassistant]\ndiscovery = true\n";
    let c = Client::connect(broker.port, "r-client", true);
    c.subscribe("blipd/r/watch/#");
    c.subscribe("homeassistant/sensor/blipd_r/#");
    let d = Daemon::start(
        &config(
            broker.port,
            "r",
            &cam.path(),
            &format!("{ha}{}", watch("a")),
        ),
        broker.port,
        "r",
    );
    let msgs = c.collect_until(Duration::from_secs(10), |m| {
        !states(m, "blipd/r/watch/a").is_empty()
    });
    assert!(!states(&msgs, "blipd/r/watch/a").is_empty());

    // Replace watch a by watch b, and break nothing else.
    std::fs::write(
        &d.config,
        config(
            broker.port,
            "r",
            &cam.path(),
            &format!("{ha}{}", watch("b")),
        ),
    )
    .unwrap();
    let t0 = Instant::now();
    hup(&d);
    let msgs = c.collect_until(Duration::from_secs(10), |m| {
        !states(m, "blipd/r/watch/b").is_empty()
            && find(m, "blipd/r/watch/a")
                .iter()
                .any(|m| m.payload.is_empty())
            && find(m, "homeassistant/sensor/blipd_r/a/config")
                .iter()
                .any(|m| m.payload.is_empty())
    });
    let b = states(&msgs, "blipd/r/watch/b");
    assert_eq!(b[0]["answer"], golden("garage.png"), "{msgs:?}");
    assert!(
        find(&msgs, "blipd/r/watch/a")
            .iter()
            .any(|m| m.payload.is_empty()),
        "the removed watch's retained state is cleared"
    );
    assert!(
        find(&msgs, "homeassistant/sensor/blipd_r/a/config")
            .iter()
            .any(|m| m.payload.is_empty()),
        "the removed watch's entity is removed from Home Assistant"
    );
    assert!(!find(&msgs, "homeassistant/sensor/blipd_r/b/config").is_empty());
    assert!(t0.elapsed() < Duration::from_secs(5));
    let log = d.log_text();
    assert_eq!(log.matches("loading model").count(), 1, "{log}");
    assert!(log.contains("config reloaded (model kept)"), "{log}");

    // A broken file changes nothing: the daemon keeps serving with the old config.
    std::fs::write(&d.config, "this is = not toml [").unwrap();
    hup(&d);
    c.publish("blipd/r/ask", PROMPT);
    c.subscribe("blipd/r/answer/#");
    let msgs = c.collect_until(Duration::from_secs(10), |m| {
        m.iter().any(|m| m.topic.starts_with("blipd/r/answer/"))
    });
    assert!(msgs.iter().any(|m| m.topic.starts_with("blipd/r/answer/")));
    assert!(d.log_text().contains("config reload failed"));
}

#[test]
fn a_watch_removed_while_stopped_is_cleaned_up_at_start() {
    let broker = Mosquitto::start();
    let cam = CamFile::new("garage.png");
    let ha = "[homeassistant]\ndiscovery = true\n";
    let watch = format!("[[watch]]\nname = \"old\"\nprompt = \"{PROMPT}\"\nevery = \"1h\"\n");
    let mut d = Daemon::start(
        &config(broker.port, "g", &cam.path(), &format!("{ha}{watch}")),
        broker.port,
        "g",
    );
    let c = Client::connect(broker.port, "g-client", true);
    c.subscribe("blipd/g/watch/old");
    assert!(c.next(Duration::from_secs(10)).is_some());
    d.kill9();
    std::fs::write(&d.config, config(broker.port, "g", &cam.path(), ha)).unwrap();
    c.subscribe("homeassistant/sensor/blipd_g/old/config");
    d.spawn(broker.port, "g");
    let msgs = c.collect_until(Duration::from_secs(10), |m| {
        find(m, "blipd/g/watch/old")
            .iter()
            .any(|m| m.payload.is_empty())
            && find(m, "homeassistant/sensor/blipd_g/old/config")
                .iter()
                .any(|m| m.payload.is_empty())
    });
    assert!(find(&msgs, "blipd/g/watch/old")
        .iter()
        .any(|m| m.payload.is_empty()));
    assert!(find(&msgs, "homeassistant/sensor/blipd_g/old/config")
        .iter()
        .any(|m| m.payload.is_empty()));
}

#[test]
fn sigterm_while_answering_finishes_the_queue_then_goes_offline() {
    // Enough requests that some are still queued when SIGTERM lands: the
    // tiny model answers one in a few milliseconds.
    const N: usize = 40;
    let broker = Mosquitto::start();
    let cam = CamFile::new("garage.png");
    let limits = format!("[limits]\nqueue = {N}\n");
    let mut d = Daemon::start(
        &config(broker.port, "t", &cam.path(), &limits),
        broker.port,
        "t",
    );
    let c = Client::connect(broker.port, "t-client", true);
    c.subscribe("blipd/t/#");
    for i in 0..N {
        c.publish(
            "blipd/t/ask",
            format!(r#"{{"id": "q{i}", "prompt": "{PROMPT}", "max_tokens": 24}}"#),
        );
    }
    // All are accepted before SIGTERM (a request still on its way then is
    // left to the broker, which is right but not what this test is about).
    d.wait_log("request queued", N, Duration::from_secs(10));
    // The 30 s grace bounds the exit.
    let status = d.terminate(Duration::from_secs(35));
    assert!(status.success(), "{status:?}");
    let all = c.collect_until(Duration::from_secs(10), |m| {
        m.iter().any(|m| m.payload == b"offline")
    });
    assert!(all.iter().any(|m| m.payload == b"offline"));
    let log = d.log_text();
    let after_stop = log
        .split_once("stopping: no new requests")
        .map_or(0, |(_, rest)| rest.matches(" answered id=").count());
    eprintln!("{after_stop} of {N} answered after SIGTERM");
    // Everything accepted before SIGTERM was answered, once, before `offline`.
    let replies = replies_by_id(&all);
    for i in 0..N {
        let r = &replies[&format!("q{i}")];
        assert_eq!(r.len(), 1, "q{i}: {r:?}");
        assert_eq!(
            r[0]["answer"].as_str().unwrap().trim(),
            golden("garage.png")
        );
    }
}

#[test]
fn a_two_choice_watch_is_a_binary_sensor_and_its_button_asks_now() {
    let broker = Mosquitto::start();
    let cam = CamFile::new("garage.png");
    let extra = format!(
        "[homeassistant]\ndiscovery = true\n\n[[watch]]\nname = \"door\"\nprompt = \"{PROMPT}\"\nevery = \"1h\"\nchoices = [\"open\", \"closed\"]\ndevice_class = \"garage_door\"\n"
    );
    let c = Client::connect(broker.port, "bs-client", true);
    c.subscribe("homeassistant/#");
    c.subscribe("blipd/bs/watch/#");
    let _d = Daemon::start(
        &config(broker.port, "bs", &cam.path(), &extra),
        broker.port,
        "bs",
    );
    let sensor_t = "homeassistant/binary_sensor/blipd_bs/door/config";
    let button_t = "homeassistant/button/blipd_bs/door_run/config";
    let msgs = c.collect_until(Duration::from_secs(15), |m| {
        !find(m, sensor_t).is_empty()
            && !find(m, button_t).is_empty()
            && !states(m, "blipd/bs/watch/door").is_empty()
    });
    let sensor = find(&msgs, sensor_t)[0].json();
    check_common(&sensor, "bs");
    assert_eq!(sensor["payload_on"], "open");
    assert_eq!(sensor["payload_off"], "closed");
    assert_eq!(sensor["device_class"], "garage_door");
    let button = find(&msgs, button_t)[0].json();
    check_common(&button, "bs");
    assert_eq!(button["command_topic"], "blipd/bs/watch/door/run");
    let first = &states(&msgs, "blipd/bs/watch/door")[0];
    assert_eq!(first["trigger"], "start");
    let answer = first["answer"].as_str().unwrap().to_string();
    assert!(answer == "open" || answer == "closed", "{answer:?}");

    // Pressing the button (what Home Assistant publishes) runs it now.
    c.publish("blipd/bs/watch/door/run", "run");
    let msgs = c.collect_until(Duration::from_secs(15), |m| {
        states(m, "blipd/bs/watch/door")
            .iter()
            .any(|s| s["trigger"] == "manual")
    });
    let manual = states(&msgs, "blipd/bs/watch/door")
        .into_iter()
        .find(|s| s["trigger"] == "manual")
        .expect("a manual run");
    assert_eq!(manual["answer"], answer.as_str());
}

/// Runs Home Assistant's own discovery validation (tests/ha/validate.py in
/// the `homeassistant` package's venv, made by tests/ha/setup.sh) on JSON
/// lines; its exit status and output.
fn home_assistant_validate(lines: &str, strict: bool) -> (bool, String) {
    use std::io::Write as _;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let setup = std::process::Command::new(root.join("tests/ha/setup.sh"))
        .output()
        .unwrap();
    assert!(
        setup.status.success(),
        "tests/ha/setup.sh (installs homeassistant from PyPI): {}",
        String::from_utf8_lossy(&setup.stderr)
    );
    let python = String::from_utf8(setup.stdout).unwrap();
    let mut cmd = std::process::Command::new(python.trim());
    cmd.arg(root.join("tests/ha/validate.py"));
    if strict {
        cmd.arg("--strict");
    }
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn discovery_payloads_pass_home_assistants_own_schemas() {
    // The validator itself rejects what Home Assistant rejects.
    let bad = std::fs::read_to_string(fixture("../ha/samples/bad.jsonl")).unwrap();
    let (ok, out) = home_assistant_validate(&bad, true);
    let n_bad = bad.lines().filter(|l| !l.trim().is_empty()).count();
    assert!(
        !ok && out.contains(&format!("FAILED {n_bad} of {n_bad}")),
        "{out}"
    );

    let broker = Mosquitto::start();
    let cam = CamFile::new("garage.png");
    let watch = |name: &str, more: &str| {
        format!("[[watch]]\nname = \"{name}\"\nprompt = \"{PROMPT}\"\nevery = \"1h\"\n{more}\n")
    };
    let extra = [
        "[homeassistant]\ndiscovery = true\n".to_string(),
        watch("plain", "snapshot = true"),
        watch(
            "door",
            "choices = [\"open\", \"closed\"]\ndevice_class = \"garage_door\"",
        ),
        watch("yesno", "choices = [\"yes\", \"no\"]"),
        watch("colour", "choices = [\"red\", \"green\", \"blue\"]"),
        watch("count", "format = \"number\""),
        watch(
            "heat",
            "format = \"number\"\ndevice_class = \"temperature\"",
        ),
        watch("blob", "format = \"json\""),
    ]
    .concat();
    let c = Client::connect(broker.port, "haschema-client", true);
    c.subscribe("homeassistant/#");
    let d = Daemon::start(
        &config(broker.port, "haschema", &cam.path(), &extra),
        broker.port,
        "haschema",
    );
    // 7 state entities, 7 buttons, 1 image.
    let configs = |m: &[Msg]| {
        let mut t: Vec<&Msg> = m
            .iter()
            .filter(|m| m.topic.ends_with("/config") && !m.payload.is_empty())
            .collect();
        t.sort_by(|a, b| a.topic.cmp(&b.topic));
        t.dedup_by(|a, b| a.topic == b.topic);
        t.len()
    };
    let msgs = c.collect_until(Duration::from_secs(20), |m| configs(m) >= 15);
    let mut lines = String::new();
    let mut seen = std::collections::BTreeSet::new();
    for m in &msgs {
        if m.topic.ends_with("/config") && !m.payload.is_empty() && seen.insert(m.topic.clone()) {
            let line = serde_json::json!({"topic": m.topic, "payload": m.json()});
            lines.push_str(&format!("{line}\n"));
        }
    }
    assert_eq!(seen.len(), 15, "{seen:?}");
    for kind in ["sensor", "binary_sensor", "button", "image"] {
        assert!(
            seen.iter()
                .any(|t| t.starts_with(&format!("homeassistant/{kind}/"))),
            "no {kind}: {seen:?}"
        );
    }
    let (ok, out) = home_assistant_validate(&lines, false);
    assert!(ok && out.contains("OK 15 payloads"), "{out}\n{lines}");
    drop(d);
}
