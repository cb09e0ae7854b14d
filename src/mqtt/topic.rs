//! Topic names: the one place where text becomes (part of) an MQTT topic.
//!
//! Anything a client controls (request ids, reply topics) and anything a
//! config controls (device id, prefixes, watch names) reaches a topic only
//! through this module. Why it matters: a PUBLISH whose topic a broker finds
//! malformed (a control character, a non-character, a wildcard) is a protocol
//! error, and mosquitto answers it by closing the connection. Because blipd
//! retransmits unacknowledged publishes after reconnecting, and the broker
//! redelivers the request that caused it, one such message used to put the
//! daemon into a reconnect loop for ever.
//!
//! - [`level`] encodes any text as one safe topic level: reversible
//!   percent-encoding of every character a broker may refuse or that would
//!   change the topic's shape, and a hash in place of the tail of very long
//!   text, so two different ids never share a level.
//! - [`check_name`] accepts a full topic name (a client's reply topic) only
//!   if every broker will take it as a PUBLISH topic.
//! - [`check_level`] is the config-time form: the text must already be a
//!   safe level, unchanged by [`level`].

use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::fmt::Write;

/// Longest topic in bytes (MQTT's two-byte length prefix).
pub const MAX_TOPIC_BYTES: usize = 65_535;

/// Longest level [`level`] produces; longer text keeps a prefix and a hash.
pub const MAX_LEVEL_BYTES: usize = 128;

/// Why a text is not acceptable as a topic (or topic level).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("the topic is empty")]
    Empty,
    #[error("the topic is {0} bytes long; MQTT allows at most 65535")]
    TooLong(usize),
    #[error("the topic contains the wildcard {0:?}")]
    Wildcard(char),
    #[error("the topic starts with '$' (reserved for the broker)")]
    System,
    #[error("the topic contains {0:?} (U+{1:04X}), which brokers refuse")]
    Refused(char, u32),
    #[error("{0:?} contains '/' (it must be a single topic level)")]
    Separator(String),
}

/// Characters a broker refuses in a topic: MQTT forbids U+0000 and advises
/// against the C0/C1 controls and the Unicode non-characters; mosquitto
/// rejects all of them as malformed UTF-8 (`mosquitto_validate_utf8`).
pub fn refused(c: char) -> bool {
    let u = c as u32;
    u <= 0x1f
        || (0x7f..=0x9f).contains(&u)
        || (0xfdd0..=0xfdef).contains(&u)
        || u & 0xfffe == 0xfffe
}

/// Characters [`level`] percent-encodes: the refused ones, the separator
/// and wildcards, and '%' itself (so the encoding stays reversible).
fn escaped(c: char) -> bool {
    refused(c) || matches!(c, '/' | '+' | '#' | '%')
}

/// Encodes `text` as one topic level every broker accepts. Text that is
/// already safe (and short) is returned as is; the empty text becomes "%".
pub fn level(text: &str) -> Cow<'_, str> {
    if text.is_empty() {
        return Cow::Borrowed("%");
    }
    if text.len() <= MAX_LEVEL_BYTES && !text.chars().any(escaped) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len().min(MAX_LEVEL_BYTES) + 24);
    // Room for the suffix "~" + 16 hex digits when the text is cut.
    let budget = MAX_LEVEL_BYTES - 17;
    let mut cut = false;
    for c in text.chars() {
        let before = out.len();
        if escaped(c) {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(out, "%{b:02X}");
            }
        } else {
            out.push(c);
        }
        if out.len() > budget {
            out.truncate(before);
            cut = true;
            break;
        }
    }
    if cut {
        let digest = Sha256::digest(text.as_bytes());
        out.push('~');
        for b in &digest[..8] {
            let _ = write!(out, "{b:02x}");
        }
    }
    Cow::Owned(out)
}

/// The text of a level a client wrote: `%XX` (hex) sequences become their
/// bytes, which must form UTF-8; the inverse of [`level`] for text it did
/// not shorten. A 3.1.1 client cannot publish `+` or `#` in a topic, so it
/// writes `%2B` and `%23`.
pub fn unescape(text: &str) -> Result<String, String> {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                .and_then(|h| std::str::from_utf8(h).ok());
            match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                Some(v) => out.push(v),
                None => return Err(format!("bad %-escape at byte {i} (write %25 for '%')")),
            }
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the %-escapes do not form UTF-8 text".to_string())
}

/// A full topic name blipd may publish to: not empty, at most 65535 bytes,
/// no wildcards, not a `$` system topic, no character a broker refuses.
pub fn check_name(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.len() > MAX_TOPIC_BYTES {
        return Err(TopicError::TooLong(topic.len()));
    }
    if topic.starts_with('$') {
        return Err(TopicError::System);
    }
    for c in topic.chars() {
        if matches!(c, '+' | '#') {
            return Err(TopicError::Wildcard(c));
        }
        if refused(c) {
            return Err(TopicError::Refused(c, c as u32));
        }
    }
    Ok(())
}

/// A configured topic level (device id, prefix, share group): a valid topic
/// name without '/'.
pub fn check_level(text: &str) -> Result<(), TopicError> {
    check_name(text)?;
    if text.contains('/') {
        return Err(TopicError::Separator(text.to_string()));
    }
    Ok(())
}

/// A configured subscription filter (an `mqtt` camera's topic): a valid
/// topic apart from wildcards, which must be whole levels (`+` one level,
/// `#` only last), as MQTT requires.
pub fn check_filter(filter: &str) -> Result<(), TopicError> {
    let plain = filter.replace(['+', '#'], "x");
    check_name(&plain)?;
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, l) in levels.iter().enumerate() {
        let wild = l.contains('+') || l.contains('#');
        let whole = *l == "+" || (*l == "#" && i == levels.len() - 1);
        if wild && !whole {
            let c = if l.contains('#') { '#' } else { '+' };
            return Err(TopicError::Wildcard(c));
        }
    }
    Ok(())
}

/// Does `topic` match the subscription `filter` (MQTT's rules: `+` one
/// level, `#` the rest, wildcards never match a leading `$`)?
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Is `topic` equal to `root` or inside its tree (`root/...`)?
pub fn under(topic: &str, root: &str) -> bool {
    topic
        .strip_prefix(root)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescape_inverts_level() {
        for t in ["a/b+c#d%e", "caf\u{e9} ?", "plain"] {
            assert_eq!(unescape(&level(t)).unwrap(), t);
        }
        assert_eq!(unescape("What%3F%2B").unwrap(), "What?+");
        assert!(unescape("50%").is_err());
        assert!(unescape("%zz").is_err() && unescape("%+1").is_err());
        assert!(unescape("%FF").is_err());
    }

    #[test]
    fn filters_match_as_mqtt_says() {
        assert!(matches(
            "frigate/+/person/snapshot",
            "frigate/door/person/snapshot"
        ));
        assert!(!matches(
            "frigate/+/person/snapshot",
            "frigate/door/car/snapshot"
        ));
        assert!(matches("cam/#", "cam"));
        assert!(matches("cam/#", "cam/a/b"));
        assert!(!matches("cam/+", "cam/a/b"));
        assert!(!matches("#", "$SYS/x"));
        assert!(matches("a/b", "a/b") && !matches("a/b", "a/b/c") && !matches("a/b/c", "a/b"));
        assert!(check_filter("frigate/+/+/snapshot").is_ok());
        assert!(check_filter("cam/#").is_ok());
        assert!(check_filter("cam/#/x").is_err());
        assert!(check_filter("cam/a+").is_err());
        assert!(check_filter("").is_err());
        assert!(check_filter("a\u{1}").is_err());
    }

    /// Decodes [`level`]'s percent-encoding (for the round-trip test).
    fn decode(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' && i + 3 <= b.len() {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn safe_text_is_unchanged() {
        assert_eq!(level("q1"), "q1");
        assert_eq!(level("garage door ✓ 🚪"), "garage door ✓ 🚪");
        assert!(matches!(level("q1"), Cow::Borrowed(_)));
    }

    #[test]
    fn unsafe_characters_are_encoded_reversibly() {
        assert_eq!(level("a/b"), "a%2Fb");
        assert_eq!(level("a+b#"), "a%2Bb%23");
        assert_eq!(level("100%"), "100%25");
        assert_eq!(level("\u{1}x"), "%01x");
        assert_eq!(level("\u{85}"), "%C2%85");
        assert_eq!(level("\u{fffe}"), "%EF%BF%BE");
        assert_eq!(level("\u{10ffff}"), "%F4%8F%BF%BF");
        assert_eq!(level(""), "%");
        for id in ["a/b", "a_b", "a%2Fb", "\u{1}", "x\u{7f}y", "\u{fdd0}", "#"] {
            let l = level(id);
            check_level(&l).unwrap();
            assert_eq!(decode(&l), id);
        }
        assert_ne!(level("a/b"), level("a_b"));
        assert_ne!(level("a/b"), level("a%2Fb"));
    }

    #[test]
    fn every_character_gives_a_valid_level() {
        for u in (0..=0x10ffffu32).step_by(7).chain(0..0x200) {
            let Some(c) = char::from_u32(u) else { continue };
            let s = format!("id{c}");
            check_level(&level(&s)).unwrap_or_else(|e| panic!("U+{u:04X}: {e}"));
        }
    }

    #[test]
    fn long_text_is_cut_with_a_hash() {
        let a = "x".repeat(65_536);
        let mut b = a.clone();
        b.push('y');
        let (la, lb) = (level(&a), level(&b));
        assert!(la.len() <= MAX_LEVEL_BYTES, "{}", la.len());
        assert_ne!(la, lb);
        check_level(&la).unwrap();
        // Cut on a character boundary, never inside an escape.
        let c = "\u{1}".repeat(500);
        let lc = level(&c);
        assert!(lc.len() <= MAX_LEVEL_BYTES);
        check_level(&lc).unwrap();
        let head = lc.split('~').next().unwrap();
        assert_eq!(head.len() % 3, 0);
    }

    #[test]
    fn names() {
        check_name("replies/client-1").unwrap();
        check_name("a//b").unwrap();
        assert_eq!(check_name(""), Err(TopicError::Empty));
        assert_eq!(check_name("a/+"), Err(TopicError::Wildcard('+')));
        assert_eq!(check_name("$SYS/x"), Err(TopicError::System));
        assert!(matches!(check_name("a\u{1}"), Err(TopicError::Refused(..))));
        assert!(matches!(check_name("a\u{0}"), Err(TopicError::Refused(..))));
        assert!(matches!(
            check_name(&"a".repeat(65_536)),
            Err(TopicError::TooLong(_))
        ));
        assert!(matches!(check_level("a/b"), Err(TopicError::Separator(_))));
        assert!(under("blipd/dev/status", "blipd"));
        assert!(under("blipd", "blipd"));
        assert!(!under("blipdx/y", "blipd"));
    }
}
