//! Test harness for `blipd serve`: a real mosquitto broker on a free loopback
//! port, the real daemon binary, and MQTT clients (rumqttc v5 and v3.1.1).
#![allow(dead_code)]

use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().unwrap().port()
}

pub fn wait_port(port: u16, up: bool, within: Duration) {
    let until = Instant::now() + within;
    while Instant::now() < until {
        let ok = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        if ok == up {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "port {port} did not become {}",
        if up { "open" } else { "closed" }
    );
}

fn current_user() -> String {
    let out = Command::new("id").arg("-un").output().expect("id -un");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A mosquitto broker with persistence in a temp dir.
pub struct Mosquitto {
    pub port: u16,
    /// With TLS: the mqtts:// port (the plain `port` then needs the password too).
    pub tls_port: Option<u16>,
    dir: tempfile::TempDir,
    child: Option<Child>,
    extra: String,
    persistence: bool,
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test CA (`ca.pem`) and a server certificate for localhost and
/// 127.0.0.1 (`server.pem`, `server.key`) in `d`, made with openssl.
pub fn make_certs(d: &Path) {
    let ssl = |args: &[&str]| run(Command::new("openssl").current_dir(d).args(args));
    ssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=blipd test CA",
    ]);
    ssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        d.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    ssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
}

impl Mosquitto {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Self {
            port: free_port(),
            tls_port: None,
            dir,
            child: None,
            extra: String::new(),
            persistence: true,
        };
        m.spawn();
        m
    }

    /// A broker with an ACL file for anonymous clients (mosquitto's
    /// `acl_file` syntax).
    pub fn start_with_acl(acl: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let acl_path = dir.path().join("acl");
        std::fs::write(&acl_path, acl).unwrap();
        let mut m = Self {
            port: free_port(),
            tls_port: None,
            extra: format!("allow_anonymous true\nacl_file {}\n", acl_path.display()),
            dir,
            child: None,
            persistence: true,
        };
        m.spawn();
        m
    }

    /// A broker that keeps nothing across a restart (no persistence): after
    /// [`Mosquitto::restart`] every session is gone.
    pub fn start_volatile() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Self {
            port: free_port(),
            tls_port: None,
            dir,
            child: None,
            extra: String::new(),
            persistence: false,
        };
        m.spawn();
        m
    }

    /// A broker with a TLS listener (certificates made with openssl, CA in
    /// `ca_file()`) and password authentication (`user` / `pass`).
    pub fn start_tls_with_password(user: &str, pass: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        make_certs(d);
        run(Command::new("mosquitto_passwd")
            .current_dir(d)
            .args(["-b", "-c", "passwd", user, pass]));
        let tls_port = free_port();
        let extra = format!(
            "password_file {p}/passwd\nallow_anonymous false\nlistener {tls_port} 127.0.0.1\ncafile {p}/ca.pem\ncertfile {p}/server.pem\nkeyfile {p}/server.key\n",
            p = d.display()
        );
        let mut m = Self {
            port: free_port(),
            tls_port: Some(tls_port),
            dir,
            child: None,
            extra,
            persistence: true,
        };
        m.spawn();
        m
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn spawn(&mut self) {
        let conf = self.dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "{}listener {} 127.0.0.1\npersistence {}\npersistence_location {}/\nautosave_interval 1\nmax_queued_messages 10000\nlog_dest file {}/log\nuser {}\n",
                if self.extra.is_empty() { "allow_anonymous true\n".to_string() } else { self.extra.clone() },
                self.port,
                self.persistence,
                self.dir.path().display(),
                self.dir.path().display(),
                // mosquitto started as root drops to user "mosquitto", which
                // cannot write the temp dir's persistence file: stay as is.
                current_user()
            ),
        )
        .unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto is installed (scripts/deps.sh)");
        self.child = Some(child);
        wait_port(self.port, true, Duration::from_secs(10));
        if let Some(p) = self.tls_port {
            wait_port(p, true, Duration::from_secs(10));
        }
    }

    /// Stops the broker (SIGTERM: it saves its persistence file) and waits.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
        wait_port(self.port, false, Duration::from_secs(10));
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// The broker's log (connections with their protocol level and flags).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The blipd daemon as a child process.
pub struct Daemon {
    pub child: Option<Child>,
    pub config: PathBuf,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts `blipd serve` with `config` (TOML) and waits until it is online.
    pub fn start(config: &str, status_port: u16, device: &str) -> Self {
        Self::start_as(config, status_port, device, None)
    }

    pub fn start_as(
        config: &str,
        status_port: u16,
        device: &str,
        credentials: Option<(&str, &str)>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blipd.toml");
        std::fs::write(&path, config).unwrap();
        let log = dir.path().join("blipd.log");
        let mut d = Self {
            child: None,
            config: path,
            log,
            _dir: dir,
        };
        d.spawn_as(status_port, device, credentials);
        d
    }

    pub fn spawn(&mut self, status_port: u16, device: &str) {
        self.spawn_as(status_port, device, None)
    }

    pub fn spawn_as(&mut self, status_port: u16, device: &str, credentials: Option<(&str, &str)>) {
        self.launch(&[]);
        wait_online(status_port, device, credentials, Duration::from_secs(30));
    }

    /// A daemon with extra environment (e.g. test-only fault injection),
    /// not yet waited for.
    pub fn launch_with(config: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blipd.toml");
        std::fs::write(&path, config).unwrap();
        let log = dir.path().join("blipd.log");
        let mut d = Self {
            child: None,
            config: path,
            log,
            _dir: dir,
        };
        d.launch(env);
        d
    }

    /// Starts the process without waiting for it to come online.
    pub fn launch(&mut self, env: &[(&str, &str)]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_blipd"))
            .args([
                "--log",
                "info,blipd::serve::session=debug,rumqttd=off",
                "serve",
                "--config",
            ])
            .arg(&self.config)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `signal` (e.g. "-TERM", "-HUP") to the daemon.
    pub fn signal(&self, signal: &str) {
        let st = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(st.success(), "kill {signal}");
    }

    /// SIGTERM, then waits for the exit (failing past `within`).
    pub fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        let t0 = Instant::now();
        self.signal("-TERM");
        let mut child = self.child.take().expect("daemon running");
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            assert!(
                t0.elapsed() < within,
                "no exit within {within:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the daemon's log holds `needle` at least `count` times
    /// (failing past `within`), for steps a test must not race past.
    pub fn wait_log(&self, needle: &str, count: usize, within: Duration) {
        let t0 = Instant::now();
        while self.log_text().matches(needle).count() < count {
            assert!(
                t0.elapsed() < within,
                "{needle:?} not logged {count} times in {within:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Waits for the retained `online` status of `device`.
pub fn wait_online(port: u16, device: &str, credentials: Option<(&str, &str)>, within: Duration) {
    let c = Client::connect_as(port, &format!("probe-{}", free_port()), true, credentials);
    c.subscribe(&format!("blipd/{device}/status"));
    let until = Instant::now() + within;
    while Instant::now() < until {
        if let Some(m) = c.next(Duration::from_millis(200)) {
            if m.payload == b"online" {
                return;
            }
        }
    }
    panic!("daemon {device} did not come online");
}

#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub payload: Vec<u8>,
    pub correlation: Option<Vec<u8>>,
    pub retain: bool,
}

impl Msg {
    pub fn json_opt(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.payload).ok()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or_else(|e| {
            panic!(
                "{}: {e}: {:?}",
                self.topic,
                String::from_utf8_lossy(&self.payload)
            )
        })
    }
}

/// An MQTT 5 test client (rumqttc), messages collected on a channel.
pub struct Client {
    client: rumqttc::v5::Client,
    rx: Receiver<Msg>,
}

impl Client {
    /// `clean`: false = persistent session (answers queued while away are delivered).
    pub fn connect(port: u16, id: &str, clean: bool) -> Self {
        Self::connect_as(port, id, clean, None)
    }

    pub fn connect_as(port: u16, id: &str, clean: bool, credentials: Option<(&str, &str)>) -> Self {
        let mut o = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", port);
        if let Some((u, p)) = credentials {
            o.set_credentials(u, p);
        }
        o.set_clean_start(clean);
        if !clean {
            o.set_session_expiry_interval(Some(3600));
        }
        o.set_max_packet_size(Some(1 << 20));
        o.set_keep_alive(Duration::from_secs(5));
        let (client, mut conn) = rumqttc::v5::Client::new(o, 1000);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for ev in conn.iter() {
                match ev {
                    Ok(rumqttc::v5::Event::Incoming(Packet::Publish(p))) => {
                        let msg = Msg {
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            payload: p.payload.to_vec(),
                            correlation: p
                                .properties
                                .and_then(|pr| pr.correlation_data)
                                .map(|b| b.to_vec()),
                            retain: p.retain,
                        };
                        if tx.send(msg).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        Self { client, rx }
    }

    pub fn subscribe(&self, filter: &str) {
        self.client.subscribe(filter, QoS::AtLeastOnce).unwrap();
        // Let the SUBACK happen before publishing requests.
        std::thread::sleep(Duration::from_millis(200));
    }

    pub fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .unwrap();
    }

    pub fn publish_v5(
        &self,
        topic: &str,
        payload: impl Into<Vec<u8>>,
        response: &str,
        correlation: &[u8],
    ) {
        let props = PublishProperties {
            response_topic: Some(response.into()),
            correlation_data: Some(correlation.to_vec().into()),
            ..Default::default()
        };
        self.client
            .publish_with_properties(topic, QoS::AtLeastOnce, false, payload.into(), props)
            .unwrap();
    }

    pub fn next(&self, within: Duration) -> Option<Msg> {
        match self.rx.recv_timeout(within) {
            Ok(m) => Some(m),
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => None,
        }
    }

    /// Collects messages until `done` says so or `within` passes.
    pub fn collect_until(
        &self,
        within: Duration,
        mut done: impl FnMut(&[Msg]) -> bool,
    ) -> Vec<Msg> {
        let until = Instant::now() + within;
        let mut out = Vec::new();
        while Instant::now() < until && !done(&out) {
            if let Some(m) = self.next(Duration::from_millis(100)) {
                out.push(m);
            }
        }
        out
    }
}

/// mosquitto_pub as an MQTT 3.1.1 client.
pub fn mosquitto_pub_v311(port: u16, topic: &str, payload: &str) {
    let st = Command::new("mosquitto_pub")
        .args(["-V", "mqttv311", "-q", "1", "-h", "127.0.0.1", "-p"])
        .arg(port.to_string())
        .args(["-t", topic, "-m", payload])
        .status()
        .unwrap();
    assert!(st.success());
}

/// mosquitto_pub sending a file as the payload, as MQTT `version` ("mqttv5"
/// or "mqttv311"), with MQTT 5 user properties.
pub fn mosquitto_pub_file(
    port: u16,
    version: &str,
    topic: &str,
    file: &Path,
    properties: &[(&str, &str)],
) {
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args(["-V", version, "-q", "1", "-h", "127.0.0.1", "-p"])
        .arg(port.to_string())
        .args(["-t", topic, "-f"])
        .arg(file);
    for (k, v) in properties {
        cmd.args(["-D", "publish", "user-property", k, v]);
    }
    let st = cmd.status().unwrap();
    assert!(st.success(), "mosquitto_pub {topic}");
}

/// mosquitto_sub as an MQTT 3.1.1 client: returns the first `count` messages.
pub fn mosquitto_sub_v311(port: u16, topic: &str, count: usize, secs: u32) -> std::process::Child {
    Command::new("mosquitto_sub")
        .args(["-V", "mqttv311", "-q", "1", "-h", "127.0.0.1", "-v", "-p"])
        .arg(port.to_string())
        .args(["-t", topic, "-C"])
        .arg(count.to_string())
        .args(["-W"])
        .arg(secs.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Asks daemon `device` about `camera` over MQTT and returns its one reply.
pub fn ask_camera(
    c: &Client,
    device: &str,
    camera: &str,
    prompt: &str,
    id: &str,
    within: Duration,
) -> serde_json::Value {
    let q = serde_json::json!({"id": id, "camera": camera, "prompt": prompt});
    c.publish(&format!("blipd/{device}/ask"), q.to_string());
    let msgs = c.collect_until(within, |m| replies_by_id(m).contains_key(id));
    let by_id = replies_by_id(&msgs);
    let r = by_id.get(id).unwrap_or_else(|| panic!("no reply for {id}"));
    assert_eq!(r.len(), 1, "{r:?}");
    r[0].clone()
}

pub fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(p)
}

/// The answers and errors of a set of messages, by request id.
pub fn replies_by_id(msgs: &[Msg]) -> std::collections::BTreeMap<String, Vec<serde_json::Value>> {
    let mut m: std::collections::BTreeMap<String, Vec<serde_json::Value>> = Default::default();
    for msg in msgs {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&msg.payload) else {
            continue;
        };
        if v.get("answer").is_some() || v.get("error").is_some() {
            if let Some(id) = v["id"].as_str() {
                m.entry(id.to_string()).or_default().push(v);
            }
        }
    }
    m
}
