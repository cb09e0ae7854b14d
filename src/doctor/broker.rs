//! The broker check: one connection with the daemon's settings, or the
//! embedded broker's plan.

use super::*;

pub(super) fn broker_check(cfg: &Config) -> Check {
    match &cfg.mqtt.url {
        Some(url) => remote_broker_check(cfg, url),
        None => embedded_broker_check(&cfg.mqtt.embedded_listen),
    }
}

/// Connects once with the daemon's credentials and TLS settings.
///
/// The options come from [`crate::mqtt::connection`], as the daemon's do (so
/// URL, TLS and credentials are exactly the daemon's), but the session is the
/// doctor's own: its own
/// client id with a clean start, so it neither takes over nor discards the
/// daemon's persistent session, and no Last Will, so disconnecting does not
/// publish `offline` for a daemon that is running fine.
fn remote_broker_check(cfg: &Config, url: &str) -> Check {
    let client_id = format!("blipd-doctor-{}", std::process::id());
    let mut opts = match crate::mqtt::connection(&cfg.mqtt, &client_id) {
        Ok(o) => o,
        Err(e) => {
            let fix = match &e {
                MqttError::ReadFile { path, .. } => {
                    format!("make {path} exist and be readable by the user running blipd")
                }
                MqttError::Url(_) => {
                    "set mqtt.ca_file to the CA that signed the broker's certificate".into()
                }
            };
            return Check::fail("broker", format!("{url}: {e}"), fix);
        }
    };
    opts.set_clean_start(true);
    opts.set_connection_timeout(WAIT.as_secs());

    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return Check::fail(
                "broker",
                format!("cannot start an async runtime to test {url}: {e}"),
                "check the process limits of this user (threads, open files)",
            )
        }
    };
    let outcome = rt.block_on(async {
        let (client, mut eventloop) = rumqttc::v5::AsyncClient::new(opts, 10);
        let result = tokio::time::timeout(WAIT, async {
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::v5::Event::Incoming(
                        rumqttc::v5::mqttbytes::v5::Packet::ConnAck(_),
                    )) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
            }
        })
        .await;
        if let Ok(Ok(())) = result {
            // Leave politely; the broker would otherwise log a dropped client.
            let _ = client.try_disconnect();
            let _ = tokio::time::timeout(Duration::from_millis(500), async {
                while let Ok(ev) = eventloop.poll().await {
                    if matches!(
                        ev,
                        rumqttc::v5::Event::Outgoing(rumqttc::Outgoing::Disconnect)
                    ) {
                        break;
                    }
                }
            })
            .await;
        }
        result
    });
    let credentials = match &cfg.mqtt.username {
        Some(u) => format!(" as user {u:?}"),
        None => String::new(),
    };
    match outcome {
        Ok(Ok(())) => Check::ok(
            "broker",
            format!("{url}: connected{credentials} (MQTT 5, test client id {client_id})"),
        ),
        Ok(Err(e)) => broker_error(url, &e),
        Err(_) => Check::fail(
            "broker",
            format!("{url}: no CONNACK within {} s", WAIT.as_secs()),
            "the host accepts connections slowly or is not an MQTT broker: check host, port \
             (1883 plain, 8883 TLS), firewalls, and that mqtts:// is used for a TLS port",
        ),
    }
}

/// Sorts a connection error into refused / unreachable / TLS with a fix each.
fn broker_error(url: &str, e: &rumqttc::v5::ConnectionError) -> Check {
    use rumqttc::v5::mqttbytes::v5::ConnectReturnCode as Code;
    use rumqttc::v5::{ConnectionError as E, StateError};
    let refused = |code: &Code| {
        let fix = match code {
            Code::BadUserNamePassword | Code::NotAuthorized | Code::BadAuthenticationMethod => {
                "check mqtt.username and mqtt.password against the broker's users (and its ACL \
                 for this client)"
            }
            Code::ClientIdentifierNotValid | Code::BadClientId => {
                "the broker restricts client ids: allow `blipd-*` (and mqtt.client_id) in its \
                 configuration"
            }
            Code::UnsupportedProtocolVersion | Code::RefusedProtocolVersion => {
                "blipd speaks MQTT 5: enable MQTT 5 on the broker (mosquitto >= 1.6, EMQX, \
                 HiveMQ, ...)"
            }
            _ => "see the broker's log for why it refused the connection",
        };
        Check::fail(
            "broker",
            format!("{url}: broker refused the connection: {code:?}"),
            fix,
        )
    };
    match e {
        E::ConnectionRefused(code) => refused(code),
        E::MqttState(StateError::ConnFail { reason }) => refused(reason),
        E::Tls(t) => Check::fail(
            "broker",
            format!("{url}: TLS failed: {t}"),
            "check that the port speaks TLS (usually 8883; a plain MQTT port needs mqtt://), \
             that mqtt.ca_file is the CA that signed the broker's certificate, that the URL's \
             host name is in that certificate, and (mutual TLS) mqtt.cert_file/key_file",
        ),
        E::Io(io) | E::MqttState(StateError::Io(io)) => {
            use std::io::ErrorKind as K;
            let (what, fix) = match io.kind() {
                K::ConnectionRefused => (
                    "unreachable: connection refused (nothing listens on that port)",
                    "start the broker (e.g. `sudo systemctl start mosquitto`) or fix the port in \
                     mqtt.url",
                ),
                K::TimedOut => (
                    "unreachable: connection timed out",
                    "check the host in mqtt.url, the network and firewalls on the way",
                ),
                K::ConnectionReset | K::UnexpectedEof | K::ConnectionAborted => (
                    "the broker closed the connection during the handshake",
                    "a TLS port needs mqtts:// (and a plain port mqtt://); see the broker's log",
                ),
                _ if io.to_string().contains("lookup") || io.to_string().contains("resolve") => (
                    "unreachable: the host name does not resolve",
                    "check the host in mqtt.url (DNS, /etc/hosts)",
                ),
                _ => (
                    "unreachable",
                    "check the host and port in mqtt.url and the network",
                ),
            };
            Check::fail("broker", format!("{url}: {what} ({io})"), fix)
        }
        E::MqttState(StateError::Deserialization(_) | StateError::ConnectionAborted) => {
            Check::fail(
                "broker",
                format!("{url}: the broker closed the connection during the handshake ({e})"),
                "a TLS port needs mqtts:// and mqtt.ca_file (a plain port mqtt://); the broker's \
                 log says why it dropped the client",
            )
        }
        other => Check::fail(
            "broker",
            format!("{url}: connection failed: {other}"),
            "check mqtt.url, and that the broker speaks MQTT 5 on that port",
        ),
    }
}

/// Without `mqtt.url`, `blipd serve` either uses a broker already on
/// `embedded_listen` or starts its own there (MQTT 3.1.1 and 5 on the one
/// port): the same decision as `serve::broker::start_or_reuse`, without
/// starting one.
fn embedded_broker_check(listen: &str) -> Check {
    match crate::serve::broker::plan(listen) {
        Ok(crate::serve::broker::Plan::Reuse(addr)) => Check::ok(
            "broker",
            format!(
                "no mqtt.url: something already listens on {addr}; blipd serve will use it \
                 as the broker instead of starting the embedded one"
            ),
        ),
        Ok(crate::serve::broker::Plan::Start(addr, _)) => Check::ok(
            "broker",
            format!(
                "no mqtt.url: blipd serve will start its embedded demo broker on {addr} \
                 (MQTT 3.1.1 and 5, no authentication); the port is free"
            ),
        ),
        Err(e) => Check::fail(
            "broker",
            format!("no mqtt.url: the embedded broker: {e}"),
            "set mqtt.embedded_listen to a free address such as \"127.0.0.1:1883\", \
             or set mqtt.url to a broker",
        ),
    }
}
