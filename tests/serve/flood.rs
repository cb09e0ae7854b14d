//! The hostile-input harness: 10,000 payloads from MQTT 5 and MQTT 3.1.1
//! clients, with and without reply topics (random bytes, truncated and
//! deeply nested JSON, wrong types, ids and prompts with control characters
//! and characters of every Unicode plane, ids over the limit, reply topics
//! into blipd's own tree, payloads just under and over the size limit and
//! over the daemon's packet limit, the same ids from two clients), mixed
//! with good requests. Every request that can carry an id is answered
//! exactly once, the good ones correctly, and the daemon never reconnects.

use super::harness::*;
use super::serving;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A small seeded generator (xorshift64*): the same payloads every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// A character of Unicode plane `plane` (surrogates skipped), or a
    /// control character / non-character / topic metacharacter.
    fn nasty_char(&mut self) -> char {
        const SPECIAL: &[char] = &[
            '\u{0}',
            '\u{1}',
            '\u{1f}',
            '\u{7f}',
            '\u{85}',
            '\u{9f}',
            '\u{fdd0}',
            '\u{fffe}',
            '\u{ffff}',
            '\u{1fffe}',
            '\u{10ffff}',
            '/',
            '+',
            '#',
            '%',
            '$',
            '"',
            '\\',
        ];
        if self.below(3) == 0 {
            return SPECIAL[self.below(SPECIAL.len() as u64) as usize];
        }
        let plane = self.below(17) as u32;
        loop {
            if let Some(c) = char::from_u32(plane * 0x10000 + self.below(0x10000) as u32) {
                return c;
            }
        }
    }
    fn nasty(&mut self, n: usize) -> String {
        (0..n).map(|_| self.nasty_char()).collect()
    }
}

/// How one payload is sent and what it must get back.
struct Sent {
    payload: Vec<u8>,
    /// None: the ask topic.
    topic: Option<String>,
    v5_reply: Option<String>,
    /// The id its reply must carry; None: a generated `auto-...` id.
    id: Option<String>,
    good: bool,
}

fn payload(rng: &mut Rng, n: usize) -> (&'static str, Sent) {
    let k = 1 + rng.below(6) as usize;
    let id = format!("h{n}-{}", rng.nasty(k));
    let json = |v: serde_json::Value| v.to_string().into_bytes();
    let sent = |payload, id: Option<String>| Sent {
        payload,
        topic: None,
        v5_reply: None,
        id,
        good: false,
    };
    match rng.below(13) {
        0 => {
            let good = format!("good-{n}");
            let p = json(serde_json::json!({"id": good, "prompt": "What is in the picture?"}));
            (
                "good",
                Sent {
                    good: true,
                    ..sent(p, Some(good))
                },
            )
        }
        1 => {
            // Random bytes: not UTF-8, or text that is taken as a prompt.
            let len = 1 + rng.below(300) as usize;
            let mut b: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if b[0] == b'{' || b[0] == b'[' || b[0] == b'"' {
                b[0] = b'x';
            }
            ("random_bytes", sent(b, None))
        }
        2 => {
            let full = json(serde_json::json!({"id": id, "prompt": "hi"}));
            let cut = 1 + rng.below(full.len() as u64 - 1) as usize;
            ("truncated_json", sent(full[..cut].to_vec(), None))
        }
        3 => {
            let depth = 1000 + rng.below(5000) as usize;
            let p = format!(
                "{{\"id\":\"{n}-deep\",\"prompt\":{}{}}}",
                "[".repeat(depth),
                "]".repeat(depth)
            );
            // Past serde_json's nesting limit: the id is not readable either.
            ("deep_json", sent(p.into_bytes(), None))
        }
        4 => {
            let v = match rng.below(5) {
                0 => serde_json::json!({"id": id, "prompt": 42}),
                1 => serde_json::json!({"id": id, "prompt": "hi", "max_tokens": -1}),
                2 => serde_json::json!({"id": id, "prompt": "hi", "max_tokens": 1e300}),
                3 => serde_json::json!({"id": id, "prompt": "hi", "temperature": "NaN"}),
                _ => serde_json::json!({"id": id, "prompt": "hi", "colour": "red"}),
            };
            ("wrong_types", sent(json(v), Some(id)))
        }
        5 => {
            let k = 1 + rng.below(40) as usize;
            let v = serde_json::json!({"id": id, "prompt": rng.nasty(k),
                                       "camera": rng.nasty(3), "max_tokens": 2});
            ("nasty_text", sent(json(v), Some(id)))
        }
        6 => {
            let long = format!("long{n}-{}", "x".repeat(250 + rng.below(100) as usize));
            let v = serde_json::json!({"id": long, "prompt": "hi"});
            ("long_id", sent(json(v), Some(long)))
        }
        7 => {
            let topic = match rng.below(4) {
                0 => "blipd/flood/status".to_string(),
                1 => "blipd/flood/ask".to_string(),
                2 => "homeassistant/sensor/x/config".to_string(),
                _ => format!("flood/r/{}", rng.nasty(3)),
            };
            let v = serde_json::json!({"id": id, "prompt": "hi", "max_tokens": 2, "response_topic": topic});
            ("json_response_topic", sent(json(v), Some(id)))
        }
        8 => {
            // Just under or over limits.max_payload_bytes (16384).
            let size = if rng.below(2) == 0 {
                16_300
            } else {
                16_500 + rng.below(10_000) as usize
            };
            let p =
                serde_json::json!({"id": id, "prompt": "hi", "pad": "p".repeat(size)}).to_string();
            let id = (p.len() <= 16_384).then_some(id);
            ("size_limit", sent(p.into_bytes(), id))
        }
        9 => {
            let p = json(serde_json::json!({"id": id, "prompt": "hi", "max_tokens": 2}));
            let reply = format!("flood/r/{n}");
            (
                "v5_response_topic",
                Sent {
                    v5_reply: Some(reply),
                    ..sent(p, Some(id))
                },
            )
        }
        10 => {
            let p = json(serde_json::json!({"id": id, "prompt": "hi", "max_tokens": 2}));
            (
                "v5_bad_response_topic",
                Sent {
                    v5_reply: Some("blipd/flood/status".into()),
                    ..sent(p, Some(id))
                },
            )
        }
        11 => {
            // A "picture" on the image topic: random bytes (bad_image), or
            // more than limits.max_image_bytes of them (limit_exceeded).
            let id = format!("img{n}");
            let len = if rng.below(4) == 0 {
                800 * 1024
            } else {
                1 + rng.below(3000) as usize
            };
            let b: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            // Prompts a broker accepts in a topic, some with (bad) %-escapes.
            let prompts = ["hi", "a/b/c", "%zz", "caf%C3%A9?", "%00%FF", "", "x%"];
            let prompt = prompts[rng.below(prompts.len() as u64) as usize];
            let topic = format!("blipd/flood/ask/image/{id}/{prompt}");
            (
                "image_topic",
                Sent {
                    topic: Some(topic),
                    ..sent(b, Some(id))
                },
            )
        }
        _ => (
            "empty_prompt",
            sent(
                json(serde_json::json!({"id": id, "prompt": "  "})),
                Some(id),
            ),
        ),
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

#[test]
fn ten_thousand_hostile_payloads_over_mqtt_5_and_3_1_1() {
    let total: usize = std::env::var("BLIPD_FLOOD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let (broker, mut d, c) = serving("flood", "[limits]\nqueue = 2000");
    c.subscribe("flood/r/#");
    let v5 = Client::connect(broker.port, "flood-v5", true);
    let mut o = rumqttc::MqttOptions::new("flood-v311", "127.0.0.1", broker.port);
    o.set_max_packet_size(4 << 20, 4 << 20);
    let (v311, mut conn) = rumqttc::Client::new(o, 1000);
    std::thread::spawn(move || for _ in conn.iter() {});
    let rss_before = rss_kib(d.pid());
    let mut rng = Rng(0x5eed_b11d);
    let mut expect: BTreeMap<String, usize> = BTreeMap::new();
    let mut anonymous = 0usize;
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    let mut good = Vec::new();
    let t0 = Instant::now();
    for n in 0..total {
        let (kind, s) = payload(&mut rng, n);
        *kinds.entry(kind).or_default() += 1;
        // Even payloads over MQTT 5, odd over 3.1.1 (v5-only kinds stay v5).
        let on_v5 = s.v5_reply.is_some() || n % 2 == 0;
        let topic = s.topic.as_deref().unwrap_or("blipd/flood/ask");
        match (&s.v5_reply, on_v5) {
            (Some(r), _) => v5.publish_v5(topic, s.payload, r, n.to_string().as_bytes()),
            (None, true) => v5.publish(topic, s.payload),
            (None, false) => v311
                .publish(topic, rumqttc::QoS::AtLeastOnce, false, s.payload)
                .unwrap(),
        }
        match s.id {
            Some(id) => *expect.entry(id.clone()).or_default() += 1,
            None => anonymous += 1,
        }
        if s.good {
            good.push(format!("good-{n}"));
        }
        // The same id from a second client with its own reply topic: a
        // second request, answered on its own.
        if n % 500 == 1 {
            let id = format!("twin-{n}");
            let p = serde_json::json!({"id": id, "prompt": "hi", "max_tokens": 2}).to_string();
            v5.publish_v5("blipd/flood/ask", p.clone(), "flood/r/twin-a", b"a");
            c.publish_v5("blipd/flood/ask", p, "flood/r/twin-b", b"b");
            *expect.entry(id).or_default() += 2;
        }
        if n % 200 == 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // Over the daemon's 1 MiB packet limit (the broker may not forward it
    // to blipd at all): it must not cost the connection.
    let big = format!(r#"{{"id":"huge","prompt":"{}"}}"#, "x".repeat(3 << 20));
    v311.publish("blipd/flood/ask", rumqttc::QoS::AtLeastOnce, false, big)
        .unwrap();
    let expected_replies = expect.values().sum::<usize>() + anonymous;
    let msgs = c.collect_until(Duration::from_secs(240), |m| {
        m.iter()
            .filter(|m| {
                m.json_opt()
                    .is_some_and(|v| v.get("answer").is_some() || v.get("error").is_some())
            })
            .count()
            >= expected_replies
    });
    let took = t0.elapsed();
    let by_id = replies_by_id(&msgs);
    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    let (mut answered, mut dups, mut lost, mut auto) = (0, 0, 0, 0);
    for (id, replies) in &by_id {
        for r in replies {
            match r["error"]["code"].as_str() {
                Some(code) => *codes.entry(code.to_string()).or_default() += 1,
                None => answered += 1,
            }
        }
        if id.starts_with("auto-") {
            auto += replies.len();
            dups += replies.len().saturating_sub(1);
        } else if let Some(&want) = expect.get(id) {
            dups += replies.len().saturating_sub(want);
            lost += want.saturating_sub(replies.len());
        }
    }
    lost += expect
        .keys()
        .filter(|id| !by_id.contains_key(*id))
        .map(|id| expect[id])
        .sum::<usize>();
    let huge_replied = by_id.contains_key("huge");
    let missing: Vec<_> = expect
        .keys()
        .filter(|id| by_id.get(*id).map_or(0, Vec::len) < expect[*id])
        .take(5)
        .collect();
    eprintln!("flood: first lost ids: {missing:?}");
    let good_ok = good
        .iter()
        .filter(|g| by_id.get(*g).is_some_and(|r| r[0].get("answer").is_some()))
        .count();
    let log = d.log_text();
    let reconnects =
        log.matches("MQTT reconnected").count() + log.matches("MQTT connection lost").count();
    let alive = d
        .child
        .as_mut()
        .is_some_and(|c| c.try_wait().ok().flatten().is_none());
    let rss_after = rss_kib(d.pid());
    eprintln!(
        "flood: sent {} (+{} twins, +1 over 1 MiB) in {took:.1?}: {kinds:?}\n\
         flood: replies {} (answers {answered}, errors {codes:?}); anonymous {auto}/{anonymous}; \
         duplicates {dups}; lost {lost}; good answered {good_ok}/{}; over-1-MiB replied {huge_replied}; \
         reconnects {reconnects}; alive {alive}; RSS {rss_before} -> {rss_after} KiB",
        total,
        2 * (total / 500),
        msgs.len(),
        good.len(),
    );
    assert!(alive, "the daemon died:\n{log}");
    assert_eq!(reconnects, 0, "{log}");
    assert_eq!(dups, 0);
    assert_eq!(lost, 0);
    assert_eq!(
        auto, anonymous,
        "one reply per payload without a readable id"
    );
    assert_eq!(good_ok, good.len());
    assert!(!log.contains("panicked"), "{log}");
}
