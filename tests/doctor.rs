//! `blipd doctor` against real things: the tiny bundle (intact and with one
//! flipped byte), file cameras (present and missing) and a real mosquitto
//! broker (running, and a port where nothing listens).

#[path = "serve/harness.rs"]
mod harness;

use harness::{free_port, Mosquitto};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn config(dir: &Path, model: &Path, camera: &Path, url: &str, http_port: u16) -> PathBuf {
    let path = dir.join("blipd.toml");
    std::fs::write(
        &path,
        format!(
            r#"
device_id = "doctor-test"
model = "{model}"
state_dir = "{state}"

[[camera]]
name = "garage"
type = "file"
path = "{camera}"
fps = 10

[mqtt]
url = "{url}"

[http]
listen = "127.0.0.1:{http_port}"
"#,
            model = model.display(),
            state = dir.join("state").display(),
            camera = camera.display(),
        ),
    )
    .unwrap();
    path
}

fn doctor(config: &Path, json: bool) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_blipd"));
    cmd.arg("doctor").arg("--config").arg(config);
    if json {
        cmd.arg("--json");
    }
    cmd.env_remove("BLIPD_CONFIG").output().unwrap()
}

/// One check of the text report: status word, name, detail, fix line.
#[derive(Debug)]
struct Line {
    status: String,
    name: String,
    detail: String,
    fix: Option<String>,
}

fn parse_report(stdout: &str) -> Vec<Line> {
    let mut lines: Vec<Line> = Vec::new();
    for l in stdout.lines() {
        if let Some(fix) = l.strip_prefix("      fix: ") {
            let last = lines.last_mut().expect("a fix line follows a check");
            assert!(last.fix.is_none(), "two fix lines: {stdout}");
            last.fix = Some(fix.to_string());
            continue;
        }
        let (status, rest) = l.split_at(4);
        let rest = rest
            .strip_prefix("  ")
            .expect("two spaces after the status");
        let (name, detail) = rest.split_once(": ").expect("`check: detail`");
        lines.push(Line {
            status: status.trim().to_string(),
            name: name.to_string(),
            detail: detail.to_string(),
            fix: None,
        });
    }
    lines
}

fn find<'a>(lines: &'a [Line], name: &str) -> &'a Line {
    lines
        .iter()
        .find(|l| l.name == name)
        .unwrap_or_else(|| panic!("no {name} check in {lines:#?}"))
}

const CHECKS: [&str; 7] = [
    "config",
    "bundle",
    "memory",
    "camera garage",
    "broker",
    "http",
    "state_dir",
];

#[test]
fn healthy_board_passes_every_check() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let garage = fixtures().join("images/garage.png");
    let (w, h) = image::image_dimensions(&garage).unwrap();
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    let cfg = config(
        dir.path(),
        &fixtures().join("tiny-a"),
        &garage,
        &url,
        free_port(),
    );

    let out = doctor(&cfg, false);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let lines = parse_report(&stdout);
    let names: Vec<&str> = lines.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, CHECKS, "{stdout}");
    for l in &lines {
        assert!(l.status == "ok" || l.status == "warn", "{l:?}");
        assert_eq!(l.fix.is_some(), l.status == "warn", "{l:?}");
    }

    assert!(find(&lines, "config")
        .detail
        .contains("parses and validates"));
    let bundle = &find(&lines, "bundle").detail;
    assert!(
        bundle.contains("tiny-a") && bundle.contains("7 files"),
        "{bundle}"
    );
    assert!(bundle.contains("sha256 match"), "{bundle}");
    let memory = &find(&lines, "memory").detail;
    assert!(
        memory.contains("available") && memory.contains("KV cache"),
        "{memory}"
    );
    let camera = &find(&lines, "camera garage").detail;
    assert!(camera.starts_with("file "), "{camera}");
    assert!(camera.contains(&format!("{w}x{h} frame")), "{camera}");
    let b = &find(&lines, "broker").detail;
    assert!(b.contains(&url) && b.contains("connected"), "{b}");
    assert!(find(&lines, "state_dir").detail.contains("will create it"));
    let h = &find(&lines, "http").detail;
    assert!(h.contains("is free for the Ollama/OpenAI API"), "{h}");

    // Its own client id with a clean start, so the daemon's persistent
    // session is left alone.
    let log = broker.log();
    let connect = log
        .lines()
        .find(|l| l.contains("as blipd-doctor-"))
        .unwrap_or_else(|| panic!("the doctor's connection is not in the broker log:\n{log}"));
    assert!(
        connect.contains("p5") && connect.contains("c1"),
        "{connect}"
    );

    let out = doctor(&cfg, true);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let checks = v.as_array().expect("a JSON array");
    let names: Vec<&str> = checks.iter().filter_map(|c| c["check"].as_str()).collect();
    assert_eq!(names, CHECKS);
    for c in checks {
        let status = c["status"].as_str().unwrap();
        assert!(status == "ok" || status == "warn", "{c}");
        assert!(c["detail"].as_str().is_some_and(|d| !d.is_empty()), "{c}");
        assert_eq!(c["fix"].is_null(), status == "ok", "{c}");
    }
}

#[test]
fn broken_board_names_each_problem_with_a_fix() {
    let dir = tempfile::tempdir().unwrap();
    // The bundle with one byte of its last file (in manifest order) changed:
    // every file before it must verify, this one must not.
    let bundle = dir.path().join("bundle");
    std::fs::create_dir(&bundle).unwrap();
    for entry in std::fs::read_dir(fixtures().join("tiny-a")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), bundle.join(entry.file_name())).unwrap();
    }
    let damaged = bundle.join("vision.onnx.data");
    let mut bytes = std::fs::read(&damaged).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&damaged, bytes).unwrap();
    let missing = dir.path().join("no-such-picture.png");
    let port = free_port();
    let url = format!("mqtt://127.0.0.1:{port}");
    // Something else holds the HTTP API's port.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let http_port = squatter.local_addr().unwrap().port();
    let cfg = config(dir.path(), &bundle, &missing, &url, http_port);

    let started = Instant::now();
    let out = doctor(&cfg, false);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("4 checks failed"), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the doctor must not hang on a dead camera or broker"
    );
    let lines = parse_report(&stdout);
    let names: Vec<&str> = lines.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, CHECKS, "{stdout}");

    let b = find(&lines, "bundle");
    assert_eq!(b.status, "FAIL", "{b:?}");
    assert!(
        b.detail.contains("vision.onnx.data") && b.detail.contains("corrupt"),
        "{b:?}"
    );
    assert!(
        b.fix.as_deref().unwrap().contains("copy the bundle again"),
        "{b:?}"
    );

    let c = find(&lines, "camera garage");
    assert_eq!(c.status, "FAIL", "{c:?}");
    assert!(c.detail.contains("no-such-picture.png"), "{c:?}");
    let fix = c.fix.as_deref().unwrap();
    assert!(
        fix.contains("`path`") && fix.contains("\"garage\""),
        "{fix}"
    );

    let m = find(&lines, "broker");
    assert_eq!(m.status, "FAIL", "{m:?}");
    assert!(
        m.detail.contains(&url) && m.detail.contains("connection refused"),
        "{m:?}"
    );
    assert!(
        m.fix.as_deref().unwrap().contains("start the broker"),
        "{m:?}"
    );

    let h = find(&lines, "http");
    assert_eq!(h.status, "FAIL", "{h:?}");
    assert!(h.detail.contains("cannot listen"), "{h:?}");
    assert!(h.fix.as_deref().unwrap().contains("http.listen"), "{h:?}");

    // The rest still works and says so.
    assert_eq!(find(&lines, "config").status, "ok");
    assert_eq!(find(&lines, "state_dir").status, "ok");

    let out = doctor(&cfg, true);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let failed: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "fail")
        .map(|c| {
            assert!(c["fix"].as_str().is_some_and(|f| !f.is_empty()), "{c}");
            c["check"].as_str().unwrap()
        })
        .collect();
    assert_eq!(failed, ["bundle", "camera garage", "broker", "http"]);
}

#[test]
fn unreadable_config_stops_at_the_config_check() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("blipd.toml");
    std::fs::write(&bad, "[mqtt]\nurl = \"http://broker\"\n").unwrap();
    let out = doctor(&bad, false);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let lines = parse_report(&stdout);
    assert_eq!(lines.len(), 1, "{stdout}");
    assert_eq!(lines[0].status, "FAIL");
    assert_eq!(lines[0].name, "config");
    assert!(lines[0].detail.contains("mqtt.url"), "{stdout}");
    assert!(
        lines[0].fix.as_deref().unwrap().contains("check-config"),
        "{stdout}"
    );

    let out = doctor(&dir.path().join("missing.toml"), false);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout.starts_with("FAIL  config: cannot read config"),
        "{stdout}"
    );
    assert!(stdout.contains("systemd/blipd.toml"), "{stdout}");
}
