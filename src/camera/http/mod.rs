//! The `http` source: a camera or NVR over HTTP(S).
//!
//! - A snapshot URL (Frigate's `/api/<camera>/latest.jpg`, most IP cameras'
//!   snapshot CGI) is fetched `fps` times a second.
//! - An MJPEG stream (`multipart/x-mixed-replace`) is read continuously,
//!   as such a server expects, and a part is decoded only when a new frame
//!   is due (`fps`); the others are skipped without being kept.
//!
//! Which one a URL is comes from its response's `Content-Type`, so the
//! user gives a URL and nothing else. Basic and Digest authentication
//! ([`auth`]), HTTPS with the system's web roots or a private CA
//! (`ca_file`, as self-signed cameras need), connect and read timeouts,
//! and a size limit per frame: the server is untrusted and may hang, drip,
//! or send garbage, and the camera then reports why and retries.

mod auth;
pub mod multipart;

use std::io::{BufReader, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ureq::http::Response;
use ureq::Body;

use super::capture::{Shared, Source};
use auth::{Challenge, Credentials};

/// Largest frame (snapshot body or MJPEG part) accepted.
pub const MAX_FRAME_BYTES: usize = 16 << 20;

/// What the `[[camera]]` table says, resolved (password file read).
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub url: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub timeout: Duration,
}

pub(super) struct HttpSource {
    settings: HttpSettings,
    /// The URL without credentials, for messages.
    shown: String,
    agent: Option<ureq::Agent>,
    credentials: Option<Credentials>,
    challenge: Option<Challenge>,
    uses: u32,
}

impl HttpSource {
    pub(super) fn new(settings: HttpSettings) -> Self {
        HttpSource {
            shown: redact(&settings.url),
            settings,
            agent: None,
            credentials: None,
            challenge: None,
            uses: 0,
        }
    }

    /// The agent and credentials, built on first use (and after a failure,
    /// so a fixed CA or password file is picked up on retry).
    fn setup(&mut self) -> Result<(), String> {
        if self.agent.is_some() {
            return Ok(());
        }
        let s = &self.settings;
        let (url_user, url_pass) = userinfo(&s.url);
        let password = match (&s.password, &s.password_file) {
            (Some(p), _) => Some(p.clone()),
            // Like mqtt.password_file: a relative name is a systemd credential.
            (None, Some(f)) => {
                Some(crate::mqtt::read_secret(f).map_err(|e| format!("password_file: {e}"))?)
            }
            (None, None) => url_pass,
        };
        self.credentials = s.username.clone().or(url_user).map(|username| Credentials {
            username,
            password: password.unwrap_or_default(),
        });
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(ca) = &s.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| format!("cannot read ca_file {}: {e}", ca.display()))?;
            let certs: Vec<_> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                return Err(format!("ca_file {} holds no PEM certificate", ca.display()));
            }
            tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
        }
        self.agent = Some(agent(s.timeout, None, tls.build()));
        Ok(())
    }

    /// One GET, answering an authentication challenge once.
    fn get(&mut self) -> Result<Response<Body>, String> {
        self.setup()?;
        let Some(agent) = self.agent.clone() else {
            return Err("internal: no HTTP agent".into());
        };
        let url = strip_userinfo(&self.settings.url);
        let target = request_target(&url);
        for attempt in 0..2 {
            let mut req = agent.get(&url);
            if let (Some(c), Some(who)) = (&self.challenge, &self.credentials) {
                self.uses += 1;
                let cnonce = cnonce(self.uses);
                req = req.header(
                    "Authorization",
                    c.authorization(who, &target, self.uses, &cnonce),
                );
            }
            let resp = req.call().map_err(|e| self.describe(e))?;
            let status = resp.status().as_u16();
            if status == 401 {
                let offered: Vec<String> = resp
                    .headers()
                    .get_all("www-authenticate")
                    .iter()
                    .filter_map(|v| v.to_str().ok().map(str::to_string))
                    .collect();
                if self.credentials.is_none() {
                    return Err(format!(
                        "{} needs a username and password (HTTP 401); set `username` and \
                         `password` or `password_file`",
                        self.shown
                    ));
                }
                let stale = Challenge::is_stale(offered.iter().map(String::as_str));
                if attempt == 0 && (self.challenge.is_none() || stale) {
                    self.challenge = Some(Challenge::pick(offered.iter().map(String::as_str))?);
                    self.uses = 0;
                    continue;
                }
                self.challenge = None;
                return Err(format!(
                    "{} refused the username and password (HTTP 401)",
                    self.shown
                ));
            }
            if !(200..300).contains(&status) {
                return Err(format!("{} answered HTTP {status}", self.shown));
            }
            return Ok(resp);
        }
        Err(format!("{} kept asking for authentication", self.shown))
    }

    fn describe(&self, e: ureq::Error) -> String {
        match e {
            ureq::Error::Timeout(t) => format!(
                "{} did not answer within {:.1} s ({t})",
                self.shown,
                self.settings.timeout.as_secs_f32()
            ),
            ureq::Error::Io(io) => format!("cannot reach {}: {io}", self.shown),
            other => format!("{}: {other}", self.shown),
        }
    }

    /// A snapshot body: at most [`MAX_FRAME_BYTES`], within the timeout as a
    /// whole (a server dripping one byte per read cannot hold it longer).
    fn read_snapshot(&self, resp: Response<Body>) -> Result<Vec<u8>, String> {
        let deadline = Instant::now() + self.settings.timeout;
        let mut reader = resp.into_body().into_reader();
        let mut body = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let n = reader
                .read(&mut chunk)
                .map_err(|e| format!("reading {}: {e}", self.shown))?;
            if n == 0 {
                return Ok(body);
            }
            if body.len() + n > MAX_FRAME_BYTES {
                return Err(format!(
                    "{} sent a picture over {MAX_FRAME_BYTES} bytes",
                    self.shown
                ));
            }
            body.extend_from_slice(&chunk[..n]);
            if Instant::now() > deadline {
                return Err(format!(
                    "{} is sending its picture too slowly (more than {:.1} s)",
                    self.shown,
                    self.settings.timeout.as_secs_f32()
                ));
            }
        }
    }

    fn decode(&self, bytes: &[u8]) -> Result<Arc<image::RgbImage>, String> {
        crate::preprocess::decode_rgb(bytes)
            .map(Arc::new)
            .map_err(|e| {
                format!(
                    "{} sent {} bytes that are not a picture blipd can decode: {e}",
                    self.shown,
                    bytes.len()
                )
            })
    }

    /// Reads an MJPEG stream until it fails or the camera stops.
    fn stream(&self, shared: &Shared, resp: Response<Body>, boundary: &str) -> Result<(), String> {
        let period = shared.period();
        let reader = BufReader::with_capacity(64 * 1024, resp.into_body().into_reader());
        let mut parts = multipart::Parts::new(reader, boundary, MAX_FRAME_BYTES);
        let mut due = Instant::now();
        while !shared.stopped() {
            let keep = Instant::now() >= due;
            match parts.next_part(keep)? {
                None => return Err(format!("{} ended its MJPEG stream", self.shown)),
                Some(_) if !keep => {}
                Some(jpeg) => {
                    shared.publish(self.decode(&jpeg)?);
                    due += period;
                    due = due.max(Instant::now());
                }
            }
        }
        Ok(())
    }
}

impl Source for HttpSource {
    fn run(&mut self, shared: &Shared) -> Result<(), String> {
        let result = self.run_inner(shared);
        if result.is_err() {
            // Rebuild on retry: a fixed password file or CA is picked up.
            self.agent = None;
            self.challenge = None;
        }
        result
    }
}

impl HttpSource {
    fn run_inner(&mut self, shared: &Shared) -> Result<(), String> {
        let period = shared.period();
        let mut next = Instant::now();
        while !shared.stopped() {
            let resp = self.get()?;
            let content_type = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            if let Some(boundary) = multipart::boundary(&content_type) {
                return self.stream(shared, resp, &boundary);
            }
            let body = self.read_snapshot(resp)?;
            shared.publish(self.decode(&body)?);
            next += period;
            next = next.max(Instant::now());
            if !shared.sleep_until(next) {
                break;
            }
        }
        Ok(())
    }
}

/// A different client nonce per request, unpredictable enough for Digest
/// (it only has to be unique; RFC 7616 section 5.4).
fn cnonce(n: u32) -> String {
    use sha2::{Digest, Sha256};
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let d = Sha256::digest(format!("{t}:{n}:{}", std::process::id()));
    d[..12].iter().map(|b| format!("{b:02x}")).collect()
}

/// `user` and `password` of `scheme://user:password@host/...`, %-decoded.
pub(super) fn userinfo(url: &str) -> (Option<String>, Option<String>) {
    let Some((_, rest)) = url.split_once("://") else {
        return (None, None);
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let Some((info, _)) = authority.rsplit_once('@') else {
        return (None, None);
    };
    let dec = |s: &str| crate::mqtt::topic::unescape(s).unwrap_or_else(|_| s.to_string());
    match info.split_once(':') {
        Some((u, p)) => (Some(dec(u)), Some(dec(p))),
        None => (Some(dec(info)), None),
    }
}

pub(super) fn strip_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://{host}{}", &rest[end..]),
        None => url.to_string(),
    }
}

/// The URL as shown in logs and errors: no password.
pub fn redact(url: &str) -> String {
    strip_userinfo(url)
}

/// A ureq agent as blipd fetches pictures: HTTP errors as statuses, at most
/// 3 redirects, `timeout` for every step (and `total` in all, if given),
/// 64 KiB of response headers.
pub fn agent(
    timeout: std::time::Duration,
    total: Option<std::time::Duration>,
    tls: ureq::tls::TlsConfig,
) -> ureq::Agent {
    let t = Some(timeout);
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(3)
        .timeout_connect(t)
        .timeout_resolve(t)
        .timeout_recv_response(t)
        .timeout_per_read(t)
        .timeout_per_write(t)
        .timeout_global(total)
        .max_response_header_size(64 * 1024)
        .user_agent(concat!("blipd/", env!("CARGO_PKG_VERSION")))
        .tls_config(tls)
        .build();
    ureq::Agent::new_with_config(config)
}

/// Path and query of a URL (what Digest signs as `uri`).
fn request_target(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let rest = rest.split('#').next().unwrap_or_default();
    match rest.find(['/', '?']) {
        Some(i) if rest[i..].starts_with('?') => format!("/{}", &rest[i..]),
        Some(i) => rest[i..].to_string(),
        None => "/".into(),
    }
}

/// A URL is acceptable for a network camera: one of `schemes` (`http`,
/// `https`; `rtsp`) and a host.
pub fn check_url(url: &str, schemes: &[&str]) -> Result<(), String> {
    let rest = schemes
        .iter()
        .find_map(|s| url.strip_prefix(s).and_then(|r| r.strip_prefix("://")))
        .ok_or_else(|| format!("it must start with {}://", schemes.join(":// or ")))?;
    let host = strip_userinfo(url);
    let host = host
        .split_once("://")
        .map(|(_, r)| r.split(['/', '?', '#']).next().unwrap_or_default())
        .unwrap_or_default();
    if host.is_empty() || rest.is_empty() {
        return Err("it names no host".into());
    }
    if url.chars().any(|c| c.is_control() || c == ' ') {
        return Err("it contains spaces or control characters (%-encode them)".into());
    }
    url.parse::<ureq::http::Uri>()
        .map(|_| ())
        .map_err(|e| format!("it is not a valid URL: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_credentials_for_requests_and_messages() {
        let u = "http://admin:s%40cret@10.0.0.5:8080/cgi-bin/snap.cgi?ch=1";
        assert_eq!(userinfo(u), (Some("admin".into()), Some("s@cret".into())));
        assert_eq!(
            strip_userinfo(u),
            "http://10.0.0.5:8080/cgi-bin/snap.cgi?ch=1"
        );
        assert_eq!(request_target(u), "/cgi-bin/snap.cgi?ch=1");
        assert_eq!(request_target("http://h"), "/");
        assert_eq!(request_target("http://h?x=1"), "/?x=1");
        assert_eq!(userinfo("http://h/a@b"), (None, None));
        let web = ["http", "https"];
        assert!(check_url(u, &web).is_ok());
        assert!(check_url("rtsp://cam:554/stream1", &["rtsp"]).is_ok());
        for bad in [
            "ftp://h/x",
            "http://",
            "http:///x",
            "http://h/a b",
            "rtsp://h",
            "httpx://h",
        ] {
            assert!(check_url(bad, &web).is_err(), "{bad}");
        }
    }
}
