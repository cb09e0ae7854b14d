//! Client mode: `blipd ask --mqtt URL` sends one request to a running daemon
//! and waits for its (streamed) answer, using MQTT 5 request/response
//! (response topic + correlation data).

use super::wire::{AnswerReply, ErrorReply, Request, StreamChunk};
use super::MqttConfig;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("{0}")]
    Url(String),
    #[error("MQTT: {0}")]
    Connection(String),
    #[error("no answer within {0:?} (is the daemon running and subscribed to {1}?)")]
    Timeout(Duration, String),
    #[error("the daemon answered with error {code}: {message}")]
    Refused { code: String, message: String },
}

/// What to ask.
#[derive(Debug, Clone)]
pub struct RemoteAsk {
    /// The broker: `url`, and for `mqtts://` `ca_file` (and a client
    /// certificate), `username` and `password`/`password_file`.
    pub broker: MqttConfig,
    pub topic_prefix: String,
    pub device_id: String,
    pub request: Request,
    pub timeout: Duration,
}

/// Sends the request and returns the final answer, and the snapshot JPEG
/// when the request asked for one; `on_chunk` sees streamed text.
pub async fn ask(
    r: RemoteAsk,
    mut on_chunk: impl FnMut(&str),
) -> Result<(AnswerReply, Option<Vec<u8>>), RemoteError> {
    let nonce = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    );
    let opts = super::connection(&r.broker, &format!("blipd-ask-{nonce}"))
        .map_err(|e| RemoteError::Url(e.to_string()))?;
    let (client, mut eventloop) = AsyncClient::new(opts, 16);
    let cfg = MqttConfig {
        topic_prefix: r.topic_prefix.clone(),
        ..Default::default()
    };
    let topics = super::Topics::new(&cfg, &r.device_id);
    let reply_topic = format!("{}/client/{nonce}", topics.answer_prefix);
    let correlation = nonce.clone().into_bytes();
    let mut request = r.request.clone();
    // A snapshot goes to a topic named after the request id: choose it.
    let snapshot_topic = request.snapshot.then(|| {
        let id = request
            .id
            .get_or_insert_with(|| format!("ask-{nonce}"))
            .clone();
        topics.snapshot(&id)
    });
    let payload = serde_json::to_vec(&request).map_err(|e| RemoteError::Url(e.to_string()))?;

    let conn = |e: rumqttc::v5::ClientError| RemoteError::Connection(e.to_string());
    client
        .subscribe(reply_topic.clone(), QoS::AtLeastOnce)
        .await
        .map_err(conn)?;
    if let Some(t) = &snapshot_topic {
        client
            .subscribe(t.clone(), QoS::AtLeastOnce)
            .await
            .map_err(conn)?;
    }
    let subscriptions = 1 + usize::from(snapshot_topic.is_some());
    let run = async {
        let mut sent = false;
        let mut subacks = 0;
        let mut jpeg: Option<Vec<u8>> = None;
        let mut answer: Option<AnswerReply> = None;
        // The snapshot is published before the answer; allow for reordering.
        let mut grace: Option<tokio::time::Instant> = None;
        loop {
            if let Some(a) = answer.take() {
                if jpeg.is_some()
                    || snapshot_topic.is_none()
                    || grace.is_some_and(|g| tokio::time::Instant::now() >= g)
                {
                    let _ = client.disconnect().await;
                    return Ok((a, jpeg));
                }
                grace.get_or_insert_with(|| tokio::time::Instant::now() + Duration::from_secs(3));
                answer = Some(a);
            }
            let ev = match tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await
            {
                Ok(ev) => ev.map_err(|e| RemoteError::Connection(e.to_string()))?,
                Err(_) => continue,
            };
            match ev {
                Event::Incoming(Packet::SubAck(_)) if !sent => {
                    subacks += 1;
                    if subacks < subscriptions {
                        continue;
                    }
                    sent = true;
                    let props = PublishProperties {
                        response_topic: Some(reply_topic.clone()),
                        correlation_data: Some(correlation.clone().into()),
                        content_type: Some("application/json".into()),
                        ..Default::default()
                    };
                    client
                        .publish_with_properties(
                            topics.ask.clone(),
                            QoS::AtLeastOnce,
                            false,
                            payload.clone(),
                            props,
                        )
                        .await
                        .map_err(conn)?;
                }
                Event::Incoming(Packet::Publish(p))
                    if snapshot_topic
                        .as_deref()
                        .is_some_and(|t| t.as_bytes() == &p.topic[..]) =>
                {
                    jpeg = Some(p.payload.to_vec());
                }
                Event::Incoming(Packet::Publish(p)) => {
                    let ours = p
                        .properties
                        .as_ref()
                        .and_then(|pr| pr.correlation_data.as_ref())
                        .is_some_and(|c| c.as_ref() == correlation.as_slice());
                    if !ours {
                        continue;
                    }
                    if let Ok(a) = serde_json::from_slice::<AnswerReply>(&p.payload) {
                        answer = Some(a);
                        continue;
                    }
                    if let Ok(e) = serde_json::from_slice::<ErrorReply>(&p.payload) {
                        let code = serde_json::to_value(e.error.code)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default();
                        return Err(RemoteError::Refused {
                            code,
                            message: e.error.message,
                        });
                    }
                    if let Ok(c) = serde_json::from_slice::<StreamChunk>(&p.payload) {
                        on_chunk(&c.text);
                    }
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(r.timeout, run)
        .await
        .map_err(|_| RemoteError::Timeout(r.timeout, topics.ask.clone()))?
}
