//! The `rtsp` camera against a real RTSP server, GStreamer's
//! gst-rtsp-server (tests/rtsp/server.py, from Debian's packages), which
//! encodes the picture it is shown to H.264 live: over TCP interleaved (the
//! default; UDP is experimental, see docs/mqtt.md), the trained demo model answers about the demo scene on the
//! stream as transformers answered about the same scene (H.264 is lossy:
//! the scenes are chosen with wide logit margins in the goldens), the
//! newest scene only. A server that is not there and one that never
//! answers make their cameras unavailable with the reason; the server going
//! away is noticed, nothing stale is answered, and its return is reported.

use super::harness::*;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PROMPT: &str = "What do you see?";

/// Demo scenes whose golden answers have a wide margin (>= 6.8 logits).
const SCENES: [u64; 3] = [
    9_223_372_036_854_789_945,
    9_223_372_036_854_789_947,
    9_223_372_036_854_789_948,
];

/// What transformers answered about demo scene `seed`.
fn golden(seed: u64) -> String {
    super::demo_golden(seed, PROMPT)
}

struct RtspServer {
    port: u16,
    image: PathBuf,
    child: Option<Child>,
}

impl RtspServer {
    /// A server (not started yet: it needs a picture to show first).
    fn new(dir: &Path) -> Self {
        RtspServer {
            port: free_port(),
            image: dir.join("current.png"),
            child: None,
        }
    }

    fn spawn(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/rtsp/server.py");
        let mut child = Command::new("/usr/bin/python3")
            .arg(script)
            .args([
                "--port",
                &self.port.to_string(),
                "--fps",
                "5",
                "--path",
                "/cam",
            ])
            .arg("--image")
            .arg(&self.image)
            .arg("--exit-on-stdin-eof")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 with gi (scripts/deps.sh test installs the RTSP server packages)");
        let out = child.stdout.take().unwrap();
        let mut out = std::io::BufReader::new(out);
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert!(line.starts_with("READY rtsp://"), "server.py said {line:?}");
        // Keep reading what it prints, so it never writes into a closed pipe.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        self.child = Some(child);
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Shows demo scene `seed` (written, then renamed into place).
    fn show(&self, seed: u64) {
        let (w, h) = blipd::camera::TEST_PATTERN_SIZE;
        let img = blipd::camera::scene::Scene::sample(seed).render(w, h);
        let tmp = self.image.with_extension("tmp.png");
        img.save(&tmp).unwrap();
        std::fs::rename(&tmp, &self.image).unwrap();
    }
}

impl Drop for RtspServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn ask(c: &Client, camera: &str, id: &str) -> serde_json::Value {
    ask_camera(c, "rtspcam", camera, PROMPT, id, Duration::from_secs(30))
}

const GOOD: [&str; 2] = ["door", "door2"];

fn all_answer(c: &Client, round: &str, want: &str) {
    for cam in GOOD {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut n = 0;
        let last = loop {
            n += 1;
            let r = ask(c, cam, &format!("{round}-{cam}-{n}"));
            if r["answer"] == want || Instant::now() > deadline {
                break r;
            }
            std::thread::sleep(Duration::from_millis(300));
        };
        assert_eq!(last["answer"], want, "{cam} in {round}: {last}");
    }
}

#[test]
fn rtsp_cameras_answer_the_scene_on_the_stream() {
    let tmp = tempfile::tempdir().unwrap();
    let mut server = RtspServer::new(tmp.path());
    server.show(SCENES[0]);
    server.spawn();
    // Accepts and never answers (DESCRIBE times out).
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let nobody = free_port();
    let p = server.port;
    let broker = Mosquitto::start();
    let cfg = format!(
        r#"
device_id = "rtspcam"
threads = 1
model = "{model}"

[[camera]]
name = "door"
type = "rtsp"
url = "rtsp://127.0.0.1:{p}/cam"
fps = 2
timeout = 2

[[camera]]
# A second client of the same (shared) stream.
name = "door2"
type = "rtsp"
url = "rtsp://127.0.0.1:{p}/cam"
fps = 2
timeout = 2

[[camera]]
name = "nobody"
type = "rtsp"
url = "rtsp://127.0.0.1:{nobody}/cam"

[[camera]]
name = "silent"
type = "rtsp"
url = "rtsp://127.0.0.1:{silent_port}/cam"
timeout = 1

[mqtt]
url = "mqtt://127.0.0.1:{port}"
"#,
        model = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("models/demo")
            .display(),
        port = broker.port,
    );
    let daemon = Daemon::start(&cfg, broker.port, "rtspcam");
    let c = Client::connect(broker.port, "rtspcam-client", true);
    c.subscribe("blipd/rtspcam/answer/#");

    all_answer(&c, "first", &golden(SCENES[0]));
    for (cam, why) in [("nobody", "DESCRIBE"), ("silent", "no answer to DESCRIBE")] {
        // Until its first attempt has failed, it is "starting".
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut n = 0;
        let r = loop {
            n += 1;
            let r = ask(&c, cam, &format!("bad-{cam}-{n}"));
            let msg = r["error"]["message"].as_str().unwrap_or_default();
            if !msg.contains("not delivered a frame yet") || Instant::now() > deadline {
                break r;
            }
            std::thread::sleep(Duration::from_millis(300));
        };
        assert_eq!(r["error"]["code"], "camera_unavailable", "{cam}: {r}");
        let msg = r["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(why), "{cam}: {r}");
    }

    // Newest scene only.
    server.show(SCENES[1]);
    all_answer(&c, "second", &golden(SCENES[1]));

    // The server goes away: nothing is answered about its last picture.
    server.stop();
    let deadline = Instant::now() + Duration::from_secs(10);
    for cam in GOOD {
        let mut n = 0;
        let r = loop {
            n += 1;
            let r = ask(&c, cam, &format!("down-{cam}-{n}"));
            if r["error"]["code"] == "camera_unavailable" || Instant::now() > deadline {
                break r;
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        assert_eq!(r["error"]["code"], "camera_unavailable", "{cam}: {r}");
    }
    server.show(SCENES[2]);
    server.spawn();
    daemon.wait_log("camera recovered", GOOD.len(), Duration::from_secs(60));
    all_answer(&c, "back", &golden(SCENES[2]));
    let log = daemon.log_text();
    assert!(!log.contains("panicked"), "{log}");
    drop(silent);
}
