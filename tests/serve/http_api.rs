//! The Ollama- and OpenAI-compatible HTTP API, driven by the official
//! `ollama` and `openai` Python clients (tests/http/clients.py, from PyPI
//! in .venv-http): the same answers as the transformers goldens and
//! `blipd ask --image`, streamed and not, by picture and by camera name;
//! bad requests get each API's own error shape; and hostile connections
//! (slow headers, slow bodies, huge bodies, a thousand at once) are cut off
//! in bounded time while MQTT keeps answering.

use super::harness::*;
use super::{config, demo_golden, golden_case, golden_text as golden, GARAGE_PROMPT as PROMPT};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// One raw HTTP/1.1 exchange (`Connection: close`): status and body.
fn http(port: u16, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    parse_response(&out)
}

fn parse_response(raw: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn get(port: u16, path: &str, key: Option<&str>) -> (u16, String) {
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    http(
        port,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"),
    )
}

fn post(port: u16, path: &str, body: &str) -> (u16, String) {
    http(
        port,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

fn python_for_clients() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(root.join("tests/http/setup.sh"))
        .output()
        .expect("tests/http/setup.sh");
    assert!(
        out.status.success(),
        "tests/http/setup.sh (installs ollama and openai from PyPI): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Runs tests/http/clients.py against the API on `port`; its JSON report.
fn run_clients(
    port: u16,
    camera: &str,
    prompt: &str,
    image: &Path,
    answers_only: bool,
) -> serde_json::Value {
    let python = python_for_clients();
    let mut cmd = std::process::Command::new(&python);
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/http/clients.py"))
        .args(["--base", &format!("http://127.0.0.1:{port}")])
        .args(["--key", KEY, "--camera", camera, "--prompt", prompt])
        .arg("--image")
        .arg(image);
    if answers_only {
        cmd.arg("--answers-only");
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "clients.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

const KEY: &str = "s3cret-token";

/// `[http]` on a free port with `http_extra`, and an API key file in `dir`.
fn http_section(dir: &Path, http_extra: &str) -> (String, u16) {
    let port = free_port();
    let key_file = dir.join("api.key");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    let section = format!(
        "[http]\nlisten = \"127.0.0.1:{port}\"\napi_key_file = \"{}\"\n{http_extra}\n",
        key_file.display()
    );
    (section, port)
}

fn serving_http(
    device: &str,
    http_extra: &str,
) -> (Mosquitto, Daemon, Client, u16, tempfile::TempDir) {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let (extra, port) = http_section(dir.path(), http_extra);
    let cfg = config(broker.port, device, &fixture("images/garage.png"), &extra);
    let d = Daemon::start(&cfg, broker.port, device);
    wait_port(port, true, Duration::from_secs(10));
    let c = Client::connect(broker.port, &format!("{device}-client"), true);
    c.subscribe(&format!("blipd/{device}/answer/#"));
    (broker, d, c, port, dir)
}

#[test]
fn ollama_and_openai_clients_get_the_reference_answers() {
    let (_broker, d, c, port, _dir) = serving_http("api", "");
    let image = fixture("images/porch.jpg");

    // MQTT requests go on while the HTTP clients ask: each is answered once.
    let mqtt = std::thread::spawn({
        let c = c;
        move || {
            for i in 0..6 {
                let q = serde_json::json!({"id": format!("m{i}"), "camera": "garage", "prompt": PROMPT});
                c.publish("blipd/api/ask", q.to_string());
                std::thread::sleep(Duration::from_millis(300));
            }
            let msgs = c.collect_until(Duration::from_secs(120), |m| replies_by_id(m).len() >= 6);
            replies_by_id(&msgs)
        }
    });
    let r = run_clients(port, "garage", PROMPT, &image, false);
    eprintln!("clients: {}", r["versions"]);
    eprintln!("a streamed Ollama exchange: {}", r["transcript"]);

    let want = golden("porch.jpg", PROMPT);
    let local = std::process::Command::new(env!("CARGO_BIN_EXE_blipd"))
        .args(["ask", "--model"])
        .arg(fixture("tiny-a"))
        .arg("--image")
        .arg(&image)
        .arg(PROMPT)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&local.stdout).trim_end(), want);
    for (what, got) in [
        ("generate", &r["generate"]["text"]),
        ("generate stream", &r["generate_stream"]["text"]),
        ("chat", &r["chat"]["text"]),
        ("chat stream", &r["chat_stream"]["text"]),
        ("openai", &r["openai"]["text"]),
        ("openai stream", &r["openai_stream"]["text"]),
    ] {
        assert_eq!(got, want.as_str(), "{what}: {r}");
    }
    let garage = golden("garage.png", PROMPT);
    assert_eq!(r["generate_camera"], garage.as_str(), "{r}");
    assert_eq!(r["openai_camera"], garage.as_str(), "{r}");

    // The tiny fixture model runs to its token limit: "length", as Ollama says it.
    let tokens = golden_case("porch.jpg", PROMPT)["tokens"]
        .as_array()
        .unwrap()
        .len();
    let g = &r["generate"];
    assert_eq!(g["done"], true, "{r}");
    assert_eq!(g["eval_count"], tokens, "{r}");
    let reason = g["done_reason"].as_str().unwrap();
    assert!(reason == "stop" || reason == "length", "{r}");
    assert!(g["prompt_eval_count"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(g["prompt_eval_count"], r["openai"]["prompt_tokens"], "{r}");
    assert!(
        g["total_duration"].as_u64().unwrap() >= g["eval_duration"].as_u64().unwrap(),
        "{r}"
    );
    let s = &r["generate_stream"];
    assert!(
        s["chunks"].as_u64().unwrap() >= 2,
        "streamed in pieces: {r}"
    );
    assert_eq!(
        (s["last_done"].as_bool(), s["done_before_last"].as_bool()),
        (Some(true), Some(false)),
        "{r}"
    );
    assert_eq!(s["eval_count"], g["eval_count"], "{r}");
    assert_eq!(r["chat"]["role"], "assistant");
    let json_answer = r["generate_json"].as_str().unwrap();
    assert!(
        serde_json::from_str::<serde_json::Value>(json_answer).is_ok(),
        "format json: {json_answer:?}"
    );
    assert_eq!(
        r["tags"],
        serde_json::json!(["blipd:latest", "blipd:garage", "blipd:pattern"])
    );
    assert_eq!(
        r["models"],
        serde_json::json!(["blipd", "blipd:garage", "blipd:pattern"])
    );
    assert!(
        r["show_capabilities"]
            .as_array()
            .unwrap()
            .contains(&"vision".into()),
        "{r}"
    );
    assert_eq!(r["openai"]["finish_reason"], reason);
    assert_eq!(r["openai"]["object"], "chat.completion");
    assert_eq!(r["openai_stream"]["finish_reason"], reason);
    assert_eq!(
        r["openai_stream"]["usage_completion_tokens"],
        r["openai"]["completion_tokens"]
    );
    assert_eq!(
        r["openai_short"],
        serde_json::json!({"finish_reason": "length", "tokens": 2})
    );

    let oe = &r["ollama_errors"];
    for (case, status) in [
        ("no_image", 400),
        ("unknown_model", 404),
        ("unknown_camera", 404),
        ("bad_base64", 400),
        ("not_a_picture", 400),
        ("wrong_types", 400),
        ("empty_prompt", 400),
        ("no_key", 401),
    ] {
        assert_eq!(oe[case]["status"], status, "ollama {case}: {oe}");
        assert!(
            oe[case]["error"].as_str().is_some_and(|e| !e.is_empty()),
            "ollama {case}: {oe}"
        );
    }
    assert!(
        oe["no_image"]["error"]
            .as_str()
            .unwrap()
            .contains("no image"),
        "{oe}"
    );
    let pe = &r["openai_errors"];
    for (case, status, ty, code) in [
        ("no_image", 400, "BadRequestError", "bad_request"),
        ("unknown_model", 404, "NotFoundError", "model_not_found"),
        ("bad_base64", 400, "BadRequestError", "bad_image"),
        ("url_not_allowed", 400, "BadRequestError", "bad_request"),
        ("two_answers", 400, "BadRequestError", "bad_request"),
        ("wrong_key", 401, "AuthenticationError", "invalid_api_key"),
    ] {
        assert_eq!(
            (
                &pe[case]["status"],
                pe[case]["type"].as_str(),
                pe[case]["code"].as_str()
            ),
            (&status.into(), Some(ty), Some(code)),
            "openai {case}: {pe}"
        );
    }

    let by_id = mqtt.join().unwrap();
    for i in 0..6 {
        let r = &by_id[&format!("m{i}")];
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0]["answer"], garage.as_str());
    }
    // The same counters as the stats topic, in Prometheus' format.
    let (status, metrics) = get(port, "/metrics", Some(KEY));
    assert_eq!(status, 200, "{metrics}");
    let counter = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name} not in\n{metrics}"))
    };
    assert!(counter("blipd_answered_total") >= 15.0, "{metrics}");
    assert!(
        counter("blipd_errors_total{code=\"bad_image\"}") >= 3.0,
        "{metrics}"
    );
    assert_eq!(counter("blipd_camera_up{camera=\"garage\"}"), 1.0);
    assert_eq!(get(port, "/metrics", None).0, 401);
    assert_eq!(get(port, "/healthz", None).0, 200, "healthz needs no key");
    assert!(!d.log_text().contains("ERROR"), "{}", d.log_text());
}

#[test]
fn hostile_http_clients_are_cut_off_and_mqtt_keeps_answering() {
    let (_broker, d, c, port, _dir) = serving_http(
        "apihostile",
        "header_timeout = \"1s\"\nbody_timeout = \"1s\"\nmax_connections = 32\nmax_body_bytes = 20000",
    );
    assert_eq!(get(port, "/api/version", Some(KEY)).0, 200);
    let ask_mqtt = |id: &str| {
        let q = serde_json::json!({"id": id, "camera": "garage", "prompt": PROMPT});
        c.publish("blipd/apihostile/ask", q.to_string());
        let t = Instant::now();
        let msgs = c.collect_until(Duration::from_secs(30), |m| {
            replies_by_id(m).contains_key(id)
        });
        assert!(
            replies_by_id(&msgs).contains_key(id),
            "MQTT answer for {id}"
        );
        t.elapsed()
    };
    let calm = ask_mqtt("calm");

    // Slow headers (slowloris): more connections than the cap, each sending
    // half a request and then nothing. All are closed within a few header
    // timeouts, and the API answers again afterwards.
    let t = Instant::now();
    let slow: Vec<TcpStream> = (0..48)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(b"POST /api/generate HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
            s
        })
        .collect();
    let during = ask_mqtt("during-slowloris");
    for mut s in slow {
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
    }
    let closed_in = t.elapsed();
    assert!(
        closed_in < Duration::from_secs(8),
        "slow headers closed in {closed_in:?}"
    );
    assert_eq!(get(port, "/api/version", Some(KEY)).0, 200);

    // A slow body: headers complete, then a trickle.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("POST /api/generate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Length: 1000\r\n\r\n{{\"mo").as_bytes()).unwrap();
    let t = Instant::now();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let (status, body) = parse_response(&buf);
    assert_eq!(status, 408, "{body}");
    assert!(
        body.contains("http.body_timeout") && t.elapsed() < Duration::from_secs(4),
        "{body}"
    );

    // Too big, declared and chunked; not JSON; the wrong JSON; not HTTP.
    let big = "x".repeat(30_000);
    let (status, body) = post(port, "/api/generate", &big);
    assert_eq!(status, 413, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        v["error"].as_str().unwrap().contains("http.max_body_bytes"),
        "Ollama's shape: {v}"
    );
    let chunk = "y".repeat(8000);
    let chunked: String = (0..4)
        .map(|_| format!("{:x}\r\n{chunk}\r\n", chunk.len()))
        .collect();
    let (status, body) = http(
        port,
        &format!("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{chunked}0\r\n\r\n"),
    );
    assert_eq!(status, 413, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["error"]["code"], "request_too_large",
        "OpenAI's shape: {v}"
    );
    let (status, body) = post(port, "/api/chat", "{not json");
    assert_eq!(status, 400, "{body}");
    let (status, body) = post(
        port,
        "/v1/chat/completions",
        r#"{"model":"blipd","messages":"hi"}"#,
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"]["type"],
        "invalid_request_error"
    );
    let (status, _) = http(port, "\x16\x03\x01 not http at all\r\n\r\n");
    assert!(status == 400 || status == 0, "{status}");
    assert_eq!(get(port, "/nowhere", Some(KEY)).0, 404);
    assert_eq!(get(port, "/nowhere", None).0, 401);

    // A thousand connections at once, each a full request: all answered
    // (32 at a time), in bounded time, and MQTT answers meanwhile.
    let t = Instant::now();
    let flood: Vec<_> = (0..20)
        .map(|_| {
            std::thread::spawn(move || {
                let conns: Vec<TcpStream> = (0..50)
                    .map(|_| {
                        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                        let req = format!("GET /api/version HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nConnection: close\r\n\r\n");
                        s.write_all(req.as_bytes()).unwrap();
                        s
                    })
                    .collect();
                conns
                    .into_iter()
                    .filter(|s| {
                        let mut buf = Vec::new();
                        let mut s = s;
                        let _ = s.read_to_end(&mut buf);
                        parse_response(&buf).0 == 200
                    })
                    .count()
            })
        })
        .collect();
    let during_flood = ask_mqtt("during-flood");
    let ok: usize = flood.into_iter().map(|h| h.join().unwrap()).sum();
    let flood_took = t.elapsed();
    eprintln!(
        "MQTT answer: calm {calm:?}, during slowloris {during:?}, during 1000 connections {during_flood:?}; \
         1000 connections served in {flood_took:?}; 48 slow-header connections closed in {closed_in:?}"
    );
    assert_eq!(ok, 1000, "every connection answered");
    assert!(flood_took < Duration::from_secs(30), "{flood_took:?}");
    assert!(
        during_flood < calm + Duration::from_secs(10),
        "{during_flood:?} vs {calm:?}"
    );

    // Nothing left open: the daemon's descriptors are back to a handful.
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", d.pid()))
            .map(|e| e.count())
            .unwrap_or(0)
    };
    let until = Instant::now() + Duration::from_secs(5);
    while fds() > 64 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(fds() <= 64, "{} descriptors open", fds());
    assert_eq!(get(port, "/healthz", None).0, 200);

    // SIGHUP: the API applies the new limits at once.
    let ask = r#"{"model":"blipd:garage","prompt":"What is in the picture?","stream":false}"#;
    assert_eq!(post(port, "/api/generate", ask).0, 200);
    let mut cfg = std::fs::read_to_string(&d.config).unwrap();
    cfg.push_str("\n[limits]\nmax_prompt_chars = 5\n");
    std::fs::write(&d.config, cfg).unwrap();
    d.signal("-HUP");
    d.wait_log("config reloaded", 1, Duration::from_secs(10));
    let (status, body) = post(port, "/api/generate", ask);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("max_prompt_chars"), "{body}");
    assert!(!d.log_text().contains("ERROR"), "{}", d.log_text());
    assert!(!d.log_text().contains("reconnect"), "{}", d.log_text());
}

#[test]
fn the_demo_model_answers_ollama_and_openai_clients_about_its_scenes() {
    const DEMO_PROMPT: &str = "What do you see?";
    // Scenes whose golden answers have a wide margin (as the RTSP test's), so the
    // JPEG sent (a PNG of the scene is over limits.max_image_bytes) answers as the PNG.
    let (sent, shown) = (9_223_372_036_854_789_945u64, 9_223_372_036_854_789_947u64);
    let dir = tempfile::tempdir().unwrap();
    let (w, h) = blipd::camera::TEST_PATTERN_SIZE;
    let scene = |seed: u64, name: &str| {
        let p = dir.path().join(name);
        blipd::camera::scene::Scene::sample(seed)
            .render(w, h)
            .save(&p)
            .unwrap();
        p
    };
    let (sent_jpg, shown_png) = (scene(sent, "sent.jpg"), scene(shown, "shown.png"));
    let broker = Mosquitto::start();
    let (http, port) = http_section(dir.path(), "allow_image_urls = true");
    let cfg = format!(
        r#"
device_id = "apidemo"
threads = 2
model = "{model}"
{http}
[[camera]]
name = "porch"
type = "file"
path = "{shown}"
fps = 5

[mqtt]
url = "mqtt://127.0.0.1:{broker}"
"#,
        model = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("models/demo")
            .display(),
        shown = shown_png.display(),
        broker = broker.port,
    );
    let d = Daemon::start(&cfg, broker.port, "apidemo");
    wait_port(port, true, Duration::from_secs(10));
    let r = run_clients(port, "porch", DEMO_PROMPT, &sent_jpg, true);
    eprintln!(
        "a streamed Ollama exchange with the demo model: {}",
        r["transcript"]
    );
    let (want_sent, want_shown) = (
        demo_golden(sent, DEMO_PROMPT),
        demo_golden(shown, DEMO_PROMPT),
    );
    assert_ne!(want_sent, want_shown, "two scenes, two answers");
    for key in [
        "ollama_image",
        "ollama_image_stream",
        "openai_image",
        "openai_image_url",
    ] {
        assert_eq!(r[key], want_sent.as_str(), "{key}: {r}");
    }
    for key in ["ollama_camera", "openai_camera"] {
        assert_eq!(r[key], want_shown.as_str(), "{key}: {r}");
    }
    assert!(!d.log_text().contains("ERROR"), "{}", d.log_text());
}
