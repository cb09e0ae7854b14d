//! The HTTP API check: the listen address can be taken (or a blipd is
//! already answering there), the API key file reads, and a listener on a
//! non-loopback address without a key is pointed out.

use super::*;

pub(super) fn http_check(cfg: &Config) -> Option<Check> {
    let addr = cfg.http.listen.as_deref()?;
    if let Err(e) = crate::serve::api::read_api_key(cfg) {
        return Some(Check::fail(
            "http",
            e.to_string(),
            "write the token on one line into http.api_key_file, readable by the user running blipd",
        ));
    }
    let keyed = cfg.http.api_key_file.is_some();
    let open = addr
        .parse::<std::net::SocketAddr>()
        .map(|a| !a.ip().is_loopback())
        .unwrap_or(false);
    let taken = match crate::serve::api::bind(addr) {
        Ok(listener) => {
            drop(listener);
            None
        }
        Err(e) => Some(e),
    };
    Some(match taken {
        None if open && !keyed => Check::warn(
            "http",
            format!("{addr} is free; the API will answer anyone who reaches it, without a key"),
            "set http.api_key_file, or listen on an address only trusted hosts reach",
        ),
        None => Check::ok(
            "http",
            format!(
                "{addr} is free for the Ollama/OpenAI API{}",
                if keyed { " (bearer-token auth)" } else { "" }
            ),
        ),
        Some(e) if blipd_answers(addr) => Check::ok(
            "http",
            format!("{addr} is in use by a running blipd (it answers /healthz); {e}"),
        ),
        Some(e) => Check::fail(
            "http",
            e.to_string(),
            "another program holds the port (an Ollama on 11434?): stop it or set http.listen to another port",
        ),
    })
}

/// Does a blipd answer `GET /healthz` on `addr`?
fn blipd_answers(addr: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(sock) = addr.parse::<std::net::SocketAddr>() else {
        return false;
    };
    let target = if sock.ip().is_unspecified() {
        std::net::SocketAddr::from(([127, 0, 0, 1], sock.port()))
    } else {
        sock
    };
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&target, WAIT) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(WAIT));
    if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: blipd\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = Vec::new();
    let _ = s.take(4096).read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    text.starts_with("HTTP/1.1 200") && text.contains("\"status\":\"ok\"")
}
