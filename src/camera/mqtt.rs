//! The `mqtt` source: frames published to the broker (a Frigate snapshot
//! topic, an ESP32-CAM). The daemon's MQTT session receives the payloads
//! and hands them to [`super::Camera::push`]; this source decodes the newest
//! on the camera's thread, so a large picture never holds up the session,
//! and a burst of frames costs one decode. The payload is untrusted: it is
//! decoded with the process-wide pixel limit, checked from the header.

use std::sync::Arc;

use super::capture::{Shared, Source};

pub(super) struct MqttSource;

impl Source for MqttSource {
    fn run(&mut self, shared: &Shared) -> Result<(), String> {
        while let Some(encoded) = shared.wait_pushed() {
            let image = crate::preprocess::decode_rgb(&encoded).map_err(|e| {
                format!(
                    "the last frame published on the camera's topic ({} bytes) is not a \
                     picture blipd can decode: {e}",
                    encoded.len()
                )
            })?;
            shared.publish(Arc::new(image));
        }
        Ok(())
    }
}
