//! The embedded MQTT broker of the zero-config setup (`rumqttd`).
//!
//! With no `mqtt.url` configured, `blipd serve` starts the rumqtt project's
//! broker in-process so that a fresh machine shows the whole loop with no
//! other software. It listens for MQTT 3.1.1 clients on `embedded_listen`
//! (default 127.0.0.1:1883) and for MQTT 5 clients on the next port; blipd
//! itself connects over MQTT 5. If the port is already taken (a mosquitto
//! service, say), that broker is used instead.

use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::Duration;

pub struct EmbeddedBroker {
    /// URL blipd connects to (the MQTT 5 listener, or the broker found on the port).
    pub url: String,
}

pub fn start_or_reuse(listen: &str) -> Result<EmbeddedBroker, String> {
    let addr: SocketAddr = listen
        .to_socket_addrs()
        .map_err(|e| format!("mqtt.embedded_listen {listen:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("mqtt.embedded_listen {listen:?} resolves to nothing"))?;
    if TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok() {
        tracing::info!(%addr, "a broker already listens there; using it instead of the embedded one");
        return Ok(EmbeddedBroker {
            url: format!("mqtt://{addr}"),
        });
    }
    let v5 = SocketAddr::new(addr.ip(), addr.port().wrapping_add(1));
    for a in [addr, v5] {
        TcpListener::bind(a).map_err(|e| format!("cannot listen on {a}: {e}"))?;
    }
    let config = format!(
        r#"
id = 0
[router]
max_connections = 1000
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "v4"
listen = "{addr}"
next_connection_delay_ms = 1
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = 1048576
max_inflight_count = 100
dynamic_filters = true

[v5.1]
name = "v5"
listen = "{v5}"
next_connection_delay_ms = 1
[v5.1.connections]
connection_timeout_ms = 60000
max_payload_size = 1048576
max_inflight_count = 100
dynamic_filters = true
"#
    );
    let config: rumqttd::Config =
        toml::from_str(&config).map_err(|e| format!("internal broker config: {e}"))?;
    std::thread::Builder::new()
        .name("broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })
        .map_err(|e| e.to_string())?;
    // Wait until the listeners accept connections.
    for _ in 0..50 {
        if TcpStream::connect_timeout(&v5, Duration::from_millis(100)).is_ok() {
            tracing::info!(v311 = %addr, v5 = %v5, "embedded MQTT broker started");
            return Ok(EmbeddedBroker {
                url: format!("mqtt://{v5}"),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!(
        "the embedded broker did not start listening on {v5}"
    ))
}
