//! The embedded MQTT broker of the zero-config setup (`rumqttd`).
//!
//! With no `mqtt.url` configured, `blipd serve` starts the rumqtt project's
//! broker in-process so that a fresh machine shows the whole loop with no
//! other software. It is the demo default, not a broker for a house: no
//! authentication, so it listens on loopback only (`embedded_listen`,
//! default 127.0.0.1:1883), with small buffers.
//!
//! rumqttd serves MQTT 3.1.1 and MQTT 5 on separate listeners. Every broker
//! users know serves both on one port, so blipd owns `embedded_listen`
//! itself: it reads the first packet of each connection (a CONNECT, whose
//! protocol level says which MQTT it speaks) and hands the connection to the
//! matching internal listener on a private loopback port. If
//! `embedded_listen` is already taken (a mosquitto service, say), that
//! broker is used instead.

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct EmbeddedBroker {
    /// URL blipd connects to (the internal MQTT 5 listener, or the broker
    /// found on the port).
    pub url: String,
}

/// Connections the front port serves at once; more are closed at once.
const MAX_CONNECTIONS: usize = 64;
/// How long a new connection may take to send its CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What `blipd serve` does without `mqtt.url` (shared with `blipd doctor`).
#[derive(Debug)]
pub enum Plan {
    /// Something (a broker, presumably) already listens on the address.
    Reuse(SocketAddr),
    /// The address is free: the embedded broker takes it.
    Start(SocketAddr, TcpListener),
}

/// Resolves `embedded_listen` and tries to bind it.
pub fn plan(listen: &str) -> Result<Plan, String> {
    let addr: SocketAddr = listen
        .to_socket_addrs()
        .map_err(|e| format!("mqtt.embedded_listen {listen:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("mqtt.embedded_listen {listen:?} resolves to nothing"))?;
    match TcpListener::bind(addr) {
        Ok(l) => Ok(Plan::Start(addr, l)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Ok(Plan::Reuse(addr)),
        Err(e) => Err(format!("cannot listen on {addr}: {e}")),
    }
}

pub fn start_or_reuse(listen: &str) -> Result<EmbeddedBroker, String> {
    let (addr, front) = match plan(listen)? {
        Plan::Start(addr, l) => (addr, l),
        Plan::Reuse(addr) => {
            tracing::info!(%addr, "a broker already listens there; using it instead of the embedded one");
            return Ok(EmbeddedBroker {
                url: format!("mqtt://{addr}"),
            });
        }
    };
    let v4 = private_port()?;
    let v5 = private_port()?;
    let config: rumqttd::Config = toml::from_str(&rumqttd_config(v4, v5))
        .map_err(|e| format!("internal broker config: {e}"))?;
    std::thread::Builder::new()
        .name("broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })
        .map_err(|e| e.to_string())?;
    front
        .set_nonblocking(true)
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    std::thread::Builder::new()
        .name("broker-front".into())
        .spawn(move || front_loop(front, v4, v5))
        .map_err(|e| e.to_string())?;
    tracing::info!(%addr, "embedded MQTT broker started (MQTT 3.1.1 and 5, loopback demo broker)");
    // blipd connects through the front port too: until rumqttd listens,
    // the front holds the connection (see `route`), so there is no probe
    // (a bare TCP probe makes rumqttd log ERRORs).
    Ok(EmbeddedBroker {
        url: format!("mqtt://{addr}"),
    })
}

/// A free loopback port for an internal listener.
fn private_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free loopback port: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("no free loopback port: {e}"))
}

/// rumqttd's settings: loopback listeners, one-MiB packets, and buffers
/// small enough for a board (a few MiB per subscription, not rumqttd's
/// defaults of 100 MiB segments).
fn rumqttd_config(v4: u16, v5: u16) -> String {
    let listener = |name: &str, port: u16| {
        format!(
            r#"
[{name}.1]
name = "{name}"
listen = "127.0.0.1:{port}"
next_connection_delay_ms = 1
[{name}.1.connections]
connection_timeout_ms = 10000
max_payload_size = 1048576
max_inflight_count = 100
dynamic_filters = true
"#
        )
    };
    format!(
        r#"
id = 0
[router]
max_connections = {MAX_CONNECTIONS}
max_outgoing_packet_count = 200
max_segment_size = 4194304
max_segment_count = 4
{}{}"#,
        listener("v4", v4),
        listener("v5", v5)
    )
}

/// The front port: one small runtime of its own, so the daemon's runtime
/// and the broker never wait on each other.
fn front_loop(front: TcpListener, v4: u16, v5: u16) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "embedded broker: cannot start its front port");
            return;
        }
    };
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::from_std(front) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "embedded broker: cannot listen");
                return;
            }
        };
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        loop {
            let (conn, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "embedded broker: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "embedded broker: too many connections; closing a new one");
                continue;
            };
            tokio::spawn(async move {
                if let Err(e) = route(conn, v4, v5).await {
                    tracing::debug!(%peer, error = %e, "embedded broker: connection closed");
                }
                drop(permit);
            });
        }
    });
}

/// Reads the CONNECT's fixed header and protocol level, then splices the
/// connection to the internal listener for that MQTT version.
async fn route(mut conn: tokio::net::TcpStream, v4: u16, v5: u16) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(16);
    let level = tokio::time::timeout(CONNECT_TIMEOUT, read_level(&mut conn, &mut head))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no CONNECT in time"))??;
    let port = match level {
        5 => v5,
        3 | 4 => v4,
        other => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("unsupported MQTT protocol level {other}"),
            ))
        }
    };
    let mut inner = connect_inner(port).await?;
    inner.write_all(&head).await?;
    tokio::io::copy_bidirectional(&mut conn, &mut inner).await?;
    Ok(())
}

/// Connects to an internal listener, waiting up to 5 s for rumqttd to
/// start listening (it binds on its own thread, shortly after start).
async fn connect_inner(port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let mut tries = 0;
    loop {
        match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            Ok(s) => return Ok(s),
            Err(e) if tries >= 100 => return Err(e),
            Err(_) => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Reads a CONNECT up to its protocol level byte into `head`.
async fn read_level(conn: &mut tokio::net::TcpStream, head: &mut Vec<u8>) -> std::io::Result<u8> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let mut byte = [0u8; 1];
    conn.read_exact(&mut byte).await?;
    head.push(byte[0]);
    if byte[0] != 0x10 {
        return Err(bad("the first packet is not a CONNECT"));
    }
    // Remaining length: at most four varint bytes.
    for i in 0..4 {
        conn.read_exact(&mut byte).await?;
        head.push(byte[0]);
        if byte[0] & 0x80 == 0 {
            break;
        }
        if i == 3 {
            return Err(bad("malformed remaining length"));
        }
    }
    let mut len = [0u8; 2];
    conn.read_exact(&mut len).await?;
    head.extend_from_slice(&len);
    let n = u16::from_be_bytes(len) as usize;
    if n != 4 && n != 6 {
        return Err(bad("unknown protocol name"));
    }
    let mut name = vec![0u8; n + 1];
    conn.read_exact(&mut name).await?;
    head.extend_from_slice(&name);
    Ok(name[n])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_broker_config_parses() {
        let c = toml::from_str::<rumqttd::Config>(&rumqttd_config(1883, 1884)).unwrap();
        assert_eq!(c.router.max_connections, MAX_CONNECTIONS);
        assert_eq!(
            (c.router.max_segment_size, c.router.max_segment_count),
            (4 << 20, 4)
        );
        for (servers, port) in [(&c.v4, 1883), (&c.v5, 1884)] {
            let s = &servers.as_ref().expect("listener")["1"];
            assert_eq!(s.listen, ([127, 0, 0, 1], port).into(), "loopback only");
            assert!(s.tls.is_none());
            assert_eq!(s.connections.max_payload_size, 1 << 20);
            assert!(s.connections.auth.is_none() && s.connections.dynamic_filters);
        }
    }
}
