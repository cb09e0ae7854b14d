//! Home Assistant MQTT discovery: every watch appears as a sensor whose
//! state is the answer, and (with `snapshot = true`) as an image entity.
//!
//! Config topics are `<prefix>/<component>/blipd_<device>/<object_id>/config`,
//! retained. Availability follows the daemon's status topic (its Last Will),
//! so the entities go "unavailable" when the board does. The daemon
//! re-announces when Home Assistant publishes `online` on `<prefix>/status`
//! (it restarted and forgot), and clears (empty retained payload) any config
//! under its node id that the current config no longer has: a watch removed
//! by a reload, or while the daemon was stopped, disappears from Home Assistant.

use crate::config::WatchConfig;
use crate::llm::Constraint;
use crate::mqtt::Topics;
use serde_json::{json, Value};

pub struct Discovery {
    prefix: String,
    node_id: String,
    device: Value,
    origin: Value,
}

/// One entity: its retained config topic and payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Entity {
    pub topic: String,
    pub payload: Value,
}

impl Discovery {
    pub fn new(prefix: &str, device_id: &str, model: &str) -> Self {
        let node_id = format!("blipd_{device_id}");
        Self {
            prefix: prefix.to_string(),
            device: json!({
                "identifiers": [node_id],
                "name": format!("blipd {device_id}"),
                "manufacturer": "blipd",
                "model": format!("InstructBLIP ({model})"),
                "sw_version": env!("CARGO_PKG_VERSION"),
            }),
            origin: json!({
                "name": "blipd",
                "sw_version": env!("CARGO_PKG_VERSION"),
            }),
            node_id,
        }
    }

    /// Where Home Assistant announces `online` after it (re)starts.
    pub fn birth_topic(&self) -> String {
        format!("{}/status", self.prefix)
    }

    /// Every config topic this daemon may own (retained ones arrive on subscribe).
    pub fn config_filter(&self) -> String {
        format!("{}/+/{}/+/config", self.prefix, self.node_id)
    }

    /// Is `topic` one of this daemon's config topics?
    pub fn owns(&self, topic: &str) -> bool {
        let Some(rest) = topic.strip_prefix(&self.prefix) else {
            return false;
        };
        let parts: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
        parts.len() == 4 && parts[1] == self.node_id && parts[3] == "config"
    }

    fn topic(&self, component: &str, object_id: &str) -> String {
        format!(
            "{}/{component}/{}/{object_id}/config",
            self.prefix, self.node_id
        )
    }

    fn common(
        &self,
        topics: &Topics,
        name: String,
        unique_id: String,
    ) -> serde_json::Map<String, Value> {
        let mut m = serde_json::Map::new();
        m.insert("name".into(), name.into());
        m.insert("unique_id".into(), unique_id.into());
        m.insert("availability_topic".into(), topics.status.clone().into());
        m.insert("payload_available".into(), "online".into());
        m.insert("payload_not_available".into(), "offline".into());
        m.insert("device".into(), self.device.clone());
        m.insert("origin".into(), self.origin.clone());
        m
    }

    /// The entities of one watch.
    pub fn entities(&self, w: &WatchConfig, topics: &Topics) -> Vec<Entity> {
        let state = topics.watch(&w.name);
        let mut sensor = self.common(
            topics,
            w.name.clone(),
            format!("{}_{}", self.node_id, w.name),
        );
        sensor.insert("state_topic".into(), state.clone().into());
        // What kind of entity the answer makes: constrained answers become
        // states Home Assistant can branch on.
        let constraint =
            Constraint::from_parts(w.choices.as_deref(), w.format.as_deref(), w.schema.as_ref())
                .unwrap_or(None);
        let plain = "{{ value_json.answer | default('') }}";
        let component = match &constraint {
            Some(Constraint::Choices(c)) if c.len() == 2 => {
                sensor.insert("value_template".into(), plain.into());
                sensor.insert("payload_on".into(), c[0].clone().into());
                sensor.insert("payload_off".into(), c[1].clone().into());
                if let Some(dc) = &w.device_class {
                    sensor.insert("device_class".into(), dc.clone().into());
                }
                "binary_sensor"
            }
            Some(Constraint::Choices(c)) => {
                sensor.insert("value_template".into(), plain.into());
                sensor.insert("device_class".into(), "enum".into());
                sensor.insert("options".into(), c.clone().into());
                "sensor"
            }
            Some(Constraint::Number) => {
                sensor.insert(
                    "value_template".into(),
                    "{{ value_json.answer | float(none) }}".into(),
                );
                sensor.insert("state_class".into(), "measurement".into());
                if let Some(dc) = &w.device_class {
                    sensor.insert("device_class".into(), dc.clone().into());
                }
                "sensor"
            }
            Some(Constraint::Json | Constraint::JsonSchema(_)) | None => {
                // Home Assistant refuses states over 255 characters.
                sensor.insert(
                    "value_template".into(),
                    "{{ (value_json.answer or '')[:255] }}".into(),
                );
                "sensor"
            }
        };
        // Every field of the state message (prompt, camera, frame_time,
        // timings, error ...) becomes an attribute.
        sensor.insert("json_attributes_topic".into(), state.into());
        if !sensor.contains_key("device_class") {
            sensor.insert("icon".into(), "mdi:eye-outline".into());
        }
        sensor.insert("qos".into(), 1.into());
        let run_id = format!("{}_run", w.name);
        let mut button = self.common(
            topics,
            format!("{} ask now", w.name),
            format!("{}_{run_id}", self.node_id),
        );
        button.insert("command_topic".into(), topics.watch_run(&w.name).into());
        button.insert("payload_press".into(), "run".into());
        button.insert("icon".into(), "mdi:eye-refresh-outline".into());
        let mut out = vec![
            Entity {
                topic: self.topic(component, &w.name),
                payload: Value::Object(sensor),
            },
            Entity {
                topic: self.topic("button", &run_id),
                payload: Value::Object(button),
            },
        ];
        if w.snapshot {
            let object_id = format!("{}_snapshot", w.name);
            let mut image = self.common(
                topics,
                format!("{} snapshot", w.name),
                format!("{}_{object_id}", self.node_id),
            );
            image.insert("image_topic".into(), topics.watch_snapshot(&w.name).into());
            image.insert("content_type".into(), "image/jpeg".into());
            out.push(Entity {
                topic: self.topic("image", &object_id),
                payload: Value::Object(image),
            });
        }
        out
    }

    /// Every entity of these watches.
    pub fn all<'a>(
        &self,
        watches: impl IntoIterator<Item = &'a WatchConfig>,
        topics: &Topics,
    ) -> Vec<Entity> {
        watches
            .into_iter()
            .flat_map(|w| self.entities(w, topics))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MqttConfig;

    #[test]
    fn sensor_and_image_configs() {
        let topics = Topics::new(&MqttConfig::default(), "garage");
        let d = Discovery::new("homeassistant", "garage", "tiny-a");
        let w: WatchConfig = toml::from_str(
            "name = \"door\"\nprompt = \"Is the door open?\"\nevery = \"30s\"\nsnapshot = true",
        )
        .unwrap();
        let e = d.entities(&w, &topics);
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].topic, "homeassistant/sensor/blipd_garage/door/config");
        assert_eq!(e[0].payload["state_topic"], "blipd/garage/watch/door");
        assert_eq!(e[0].payload["availability_topic"], "blipd/garage/status");
        assert_eq!(e[0].payload["device"]["identifiers"][0], "blipd_garage");
        assert_eq!(
            e[1].topic,
            "homeassistant/button/blipd_garage/door_run/config"
        );
        assert_eq!(e[1].payload["command_topic"], "blipd/garage/watch/door/run");
        assert_eq!(
            e[2].topic,
            "homeassistant/image/blipd_garage/door_snapshot/config"
        );
        assert_eq!(
            e[2].payload["image_topic"],
            "blipd/garage/watch/door/snapshot"
        );
        assert!(d.owns(&e[1].topic) && d.owns(&e[2].topic));
        assert!(!d.owns("homeassistant/sensor/blipd_other/door/config"));
        assert!(!d.owns("homeassistant/status"));
        assert_eq!(d.config_filter(), "homeassistant/+/blipd_garage/+/config");
    }

    #[test]
    fn constrained_watches_become_states_to_branch_on() {
        let topics = Topics::new(&MqttConfig::default(), "garage");
        let d = Discovery::new("homeassistant", "garage", "tiny-a");
        let watch = |extra: &str| -> WatchConfig {
            toml::from_str(&format!(
                "name = \"w\"\nprompt = \"?\"\nevery = \"30s\"\n{extra}"
            ))
            .unwrap()
        };
        let e = d.entities(
            &watch("choices = [\"open\", \"closed\"]\ndevice_class = \"garage_door\""),
            &topics,
        );
        assert_eq!(
            e[0].topic,
            "homeassistant/binary_sensor/blipd_garage/w/config"
        );
        assert_eq!(e[0].payload["payload_on"], "open");
        assert_eq!(e[0].payload["payload_off"], "closed");
        assert_eq!(e[0].payload["device_class"], "garage_door");
        let e = d.entities(&watch("choices = [\"red\", \"green\", \"blue\"]"), &topics);
        assert_eq!(e[0].topic, "homeassistant/sensor/blipd_garage/w/config");
        assert_eq!(e[0].payload["device_class"], "enum");
        assert_eq!(
            e[0].payload["options"],
            serde_json::json!(["red", "green", "blue"])
        );
        let e = d.entities(&watch("format = \"number\""), &topics);
        assert_eq!(e[0].payload["state_class"], "measurement");
        assert!(e[0].payload["value_template"]
            .as_str()
            .unwrap()
            .contains("float"));
    }
}
