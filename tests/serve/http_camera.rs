//! The `http` camera against a real web server, lighttpd (Debian's; it
//! speaks Basic and Digest SHA-256 authentication and TLS, and streams a
//! CGI's MJPEG output), started by the test: snapshot URLs plain, with
//! Basic, with Digest and over HTTPS with a private CA, and MJPEG streams
//! with and without part lengths; each answered as the reference answers
//! about the same picture, the newest picture only. A wrong password, a
//! server that never answers and one that sends garbage each make their
//! camera unavailable with the reason; the server going away and coming
//! back is reported, and no frame from before is answered meanwhile.

use super::harness::*;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const PROMPT: &str = "What is in the picture?";

struct Lighttpd {
    port: u16,
    tls_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// An MJPEG stream of `snap.png`, five parts a second; `?nolen` leaves out
/// the parts' Content-Length (as some cameras do).
const MJPEG_CGI: &str = r#"import os, sys, time
out = sys.stdout.buffer
out.write(b"Content-Type: multipart/x-mixed-replace; boundary=--frame\r\n\r\n")
here = os.path.dirname(os.environ["SCRIPT_FILENAME"])
nolen = "nolen" in os.environ.get("QUERY_STRING", "")
while True:
    data = open(os.path.join(here, "snap.png"), "rb").read()
    head = b"--frame\r\nContent-Type: image/jpeg\r\n"
    if not nolen:
        head += b"Content-Length: %d\r\n" % len(data)
    out.write(head + b"\r\n" + data + b"\r\n")
    out.flush()
    time.sleep(0.2)
"#;

impl Lighttpd {
    fn start(dir: &Path) -> Self {
        let www = dir.join("www");
        for sub in ["", "basic", "digest"] {
            std::fs::create_dir_all(www.join(sub)).unwrap();
        }
        std::fs::write(www.join("mjpeg.py"), MJPEG_CGI).unwrap();
        std::fs::write(dir.join("users"), "cam:s3cret\n").unwrap();
        make_certs(dir);
        let (port, tls_port) = (free_port(), free_port());
        let d = dir.display();
        let conf = format!(
            r#"server.document-root = "{d}/www"
server.bind = "127.0.0.1"
server.port = {port}
server.modules = ("mod_auth", "mod_authn_file", "mod_cgi", "mod_openssl")
server.errorlog = "{d}/error.log"
server.stream-response-body = 2
mimetype.assign = (".png" => "image/png")
auth.backend = "plain"
auth.backend.plain.userfile = "{d}/users"
auth.require = ("/basic/" => ("method" => "basic", "realm" => "cam", "require" => "valid-user"),
                "/digest/" => ("method" => "digest", "realm" => "cam", "algorithm" => "SHA-256", "require" => "valid-user"))
cgi.assign = (".py" => "/usr/bin/python3")
$SERVER["socket"] == "127.0.0.1:{tls_port}" {{
    ssl.engine = "enable"
    ssl.pemfile = "{d}/server.pem"
    ssl.privkey = "{d}/server.key"
}}
"#
        );
        std::fs::write(dir.join("lighttpd.conf"), conf).unwrap();
        let mut l = Lighttpd {
            port,
            tls_port,
            dir: dir.to_path_buf(),
            child: None,
        };
        l.spawn();
        l
    }

    fn spawn(&mut self) {
        let child = Command::new("lighttpd")
            .args(["-D", "-f"])
            .arg(self.dir.join("lighttpd.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("lighttpd is installed (scripts/deps.sh test)");
        self.child = Some(child);
        wait_port(self.port, true, Duration::from_secs(10));
        wait_port(self.tls_port, true, Duration::from_secs(10));
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        wait_port(self.port, false, Duration::from_secs(10));
    }

    /// Serves `image` as every camera's picture (written, then renamed into
    /// place, as a camera's web server replaces its snapshot).
    fn show(&self, image: &str) {
        let bytes = std::fs::read(fixture(&format!("images/{image}"))).unwrap();
        for sub in ["", "basic", "digest"] {
            let dir = self.dir.join("www").join(sub);
            std::fs::write(dir.join(".snap.tmp"), &bytes).unwrap();
            std::fs::rename(dir.join(".snap.tmp"), dir.join("snap.png")).unwrap();
        }
    }
}

impl Drop for Lighttpd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A server that accepts connections and answers each with `reply`
/// (never, when None), on a thread for the rest of the test.
fn bad_server(reply: Option<&'static [u8]>) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            match reply {
                Some(r) => {
                    let _ = conn.write_all(r);
                }
                None => held.push(conn),
            }
        }
    });
    port
}

fn ask(c: &Client, camera: &str, id: &str) -> serde_json::Value {
    ask_camera(c, "httpcam", camera, PROMPT, id, Duration::from_secs(30))
}

const GOOD: [&str; 6] = ["snap", "basic", "digest", "tls", "mjpeg", "mjpeg_nolen"];

/// Asks every good camera until each answers `want` (a camera may still
/// hold the picture from before the change for a moment, never later).
fn all_answer(c: &Client, round: &str, want: &str) {
    for cam in GOOD {
        let mut last = serde_json::Value::Null;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut n = 0;
        while std::time::Instant::now() < deadline {
            n += 1;
            last = ask(c, cam, &format!("{round}-{cam}-{n}"));
            if last["answer"] == want {
                break;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        assert_eq!(last["answer"], want, "{cam} in {round}: {last}");
        assert_eq!(last["camera"], cam);
    }
}

#[test]
fn http_cameras_snapshot_mjpeg_auth_tls_and_failures() {
    let tmp = tempfile::tempdir().unwrap();
    let mut web = Lighttpd::start(tmp.path());
    web.show("garage.png");
    let hang = bad_server(None);
    let garbage = bad_server(Some(
        b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 12\r\n\r\nnot a jpeg!!",
    ));
    std::fs::write(tmp.path().join("pw"), "s3cret\n").unwrap();
    let (p, t, d) = (web.port, web.tls_port, tmp.path().display());
    let cameras = format!(
        r#"
[[camera]]
name = "snap"
type = "http"
url = "http://127.0.0.1:{p}/snap.png"
fps = 5

[[camera]]
name = "basic"
type = "http"
url = "http://127.0.0.1:{p}/basic/snap.png"
fps = 5
username = "cam"
password = "s3cret"

[[camera]]
name = "digest"
type = "http"
url = "http://127.0.0.1:{p}/digest/snap.png"
fps = 5
username = "cam"
password_file = "{d}/pw"

[[camera]]
name = "wrongpw"
type = "http"
url = "http://cam:guess@127.0.0.1:{p}/digest/snap.png"

[[camera]]
name = "tls"
type = "http"
url = "https://localhost:{t}/snap.png"
fps = 5
ca_file = "{d}/ca.pem"

[[camera]]
name = "mjpeg"
type = "http"
url = "http://127.0.0.1:{p}/mjpeg.py"
fps = 5

[[camera]]
name = "mjpeg_nolen"
type = "http"
url = "http://127.0.0.1:{p}/mjpeg.py?nolen"
fps = 5

[[camera]]
name = "hang"
type = "http"
url = "http://127.0.0.1:{hang}/snapshot.jpg"
timeout = 1

[[camera]]
name = "garbage"
type = "http"
url = "http://127.0.0.1:{garbage}/snapshot.jpg"
"#
    );
    let broker = Mosquitto::start();
    let cfg = super::config(broker.port, "httpcam", &fixture("images/garage.png"), "")
        .replace("[mqtt]", &format!("{cameras}\n[mqtt]"));
    let daemon = Daemon::start(&cfg, broker.port, "httpcam");
    let c = Client::connect(broker.port, "httpcam-client", true);
    c.subscribe("blipd/httpcam/answer/#");
    std::thread::sleep(Duration::from_secs(2));

    all_answer(&c, "garage", &super::golden_text("garage.png", PROMPT));
    for (cam, why) in [
        ("wrongpw", "refused the username and password"),
        ("hang", "did not answer within"),
        ("garbage", "not a picture"),
    ] {
        let r = ask(&c, cam, &format!("bad-{cam}"));
        assert_eq!(r["error"]["code"], "camera_unavailable", "{cam}: {r}");
        let msg = r["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(why), "{cam}: {r}");
        assert!(!msg.contains("guess"), "a password in a message: {r}");
    }

    // Newest picture only.
    web.show("porch.jpg");
    all_answer(&c, "porch", &super::golden_text("porch.jpg", PROMPT));

    // The server goes away: no camera answers about its last picture.
    web.stop();
    std::thread::sleep(Duration::from_millis(800));
    for cam in GOOD {
        let r = ask(&c, cam, &format!("down-{cam}"));
        assert_eq!(r["error"]["code"], "camera_unavailable", "{cam}: {r}");
    }
    web.show("sticker.png");
    web.spawn();
    daemon.wait_log("camera recovered", GOOD.len(), Duration::from_secs(40));
    all_answer(&c, "back", &super::golden_text("sticker.png", PROMPT));
    let log = daemon.log_text();
    assert!(!log.contains("s3cret") && !log.contains("guess"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}
