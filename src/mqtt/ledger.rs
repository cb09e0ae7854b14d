//! The ack ledger: which of our QoS 1 publishes the broker has confirmed,
//! and what to do when it does. Plain data, driven by the event loop's
//! events, so every case (retransmission, reconnect, a broker that lost the
//! session) is unit-tested without a broker.
//!
//! rumqttc reports the packet id of each outgoing QoS 1 publish as an
//! `Outgoing::Publish(pkid)` event, in the order the publishes were handed
//! to it; publishes are handed over from one task only, so a FIFO of
//! "what to do once this one is acknowledged" lines up with those events.
//! Retransmissions after a reconnect reuse a pkid already tracked and are
//! recognised as such.
//!
//! Sessions: when a reconnect finds no session on the broker
//! (`session_present = false`), rumqttc drops every publish it had not
//! finished, and the broker forgets the requests it had delivered. The
//! ledger then hands back what was dropped (so replies can be published
//! again) and starts a new session number: deliveries of an older session
//! must never be acknowledged, since their packet ids now mean other
//! messages.

use std::collections::{HashMap, VecDeque};

/// What the broker said about one of our publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted (PUBACK success or "no matching subscribers", or QoS 0).
    Delivered,
    /// Refused (a PUBACK reason code >= 0x80: not authorised, quota ...).
    Refused,
}

#[derive(Debug)]
pub struct Ledger<T> {
    /// Handed to rumqttc, not yet given a packet id, in order.
    fifo: VecDeque<T>,
    /// How many entries at the front of `fifo` rumqttc moved to its pending
    /// list at the last connection loss (dropped if the session is gone).
    pending: usize,
    /// Sent with a packet id, waiting for the PUBACK.
    awaiting: HashMap<u16, T>,
    session: u64,
}

impl<T> Default for Ledger<T> {
    fn default() -> Self {
        Self {
            fifo: VecDeque::new(),
            pending: 0,
            awaiting: HashMap::new(),
            session: 0,
        }
    }
}

impl<T> Ledger<T> {
    /// The current broker session; a delivery received in an older one must
    /// not be acknowledged.
    pub fn session(&self) -> u64 {
        self.session
    }

    /// A publish was handed to rumqttc.
    pub fn handed(&mut self, on_ack: T) {
        self.fifo.push_back(on_ack);
    }

    /// `Outgoing::Publish(pkid)`. Returns the entry when it is already done
    /// (QoS 0: pkid 0).
    pub fn outgoing(&mut self, pkid: u16) -> Option<T> {
        if pkid != 0 && self.awaiting.contains_key(&pkid) {
            return None; // a retransmission of a publish we track
        }
        let on_ack = self.fifo.pop_front()?;
        self.pending = self.pending.saturating_sub(1);
        if pkid == 0 {
            return Some(on_ack);
        }
        self.awaiting.insert(pkid, on_ack);
        None
    }

    /// A PUBACK for `pkid`.
    pub fn puback(&mut self, pkid: u16) -> Option<T> {
        self.awaiting.remove(&pkid)
    }

    /// The connection failed: rumqttc keeps what it had (for a resumed
    /// session) in its pending list, ahead of what is handed later.
    pub fn connection_lost(&mut self) {
        self.pending = self.fifo.len();
    }

    /// A CONNACK. Without a session on the broker, returns every entry whose
    /// publish rumqttc dropped, and starts a new session.
    pub fn connected(&mut self, session_present: bool) -> Vec<T> {
        let pending = std::mem::take(&mut self.pending);
        if session_present && self.session > 0 {
            return Vec::new();
        }
        self.session += 1;
        let mut dropped: Vec<T> = self.awaiting.drain().map(|(_, v)| v).collect();
        dropped.extend(self.fifo.drain(..pending.min(self.fifo.len())));
        dropped
    }

    /// Publishes not yet confirmed by the broker.
    pub fn unconfirmed(&self) -> usize {
        self.fifo.len() + self.awaiting.len()
    }
}

/// Maps a v5 PUBACK reason to an [`Outcome`].
pub fn puback_outcome(reason: rumqttc::v5::mqttbytes::v5::PubAckReason) -> Outcome {
    use rumqttc::v5::mqttbytes::v5::PubAckReason;
    match reason {
        PubAckReason::Success | PubAckReason::NoMatchingSubscribers => Outcome::Delivered,
        _ => Outcome::Refused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_follow_packet_ids_and_retransmissions_are_ignored() {
        let mut l = Ledger::default();
        assert!(l.connected(false).is_empty());
        l.handed("a");
        l.handed("b");
        l.handed("q0");
        assert_eq!(l.outgoing(1), None);
        assert_eq!(l.outgoing(2), None);
        assert_eq!(l.outgoing(0), Some("q0"));
        assert_eq!(l.puback(2), Some("b"));
        // Reconnect with the session: "a" is retransmitted under pkid 1.
        l.connection_lost();
        assert!(l.connected(true).is_empty());
        l.handed("c");
        assert_eq!(l.outgoing(1), None, "retransmission");
        assert_eq!(l.outgoing(3), None);
        assert_eq!(l.puback(1), Some("a"));
        assert_eq!(l.puback(3), Some("c"));
        assert_eq!(l.unconfirmed(), 0);
    }

    #[test]
    fn a_lost_session_returns_what_rumqttc_dropped_and_keeps_later_handovers() {
        let mut l = Ledger::default();
        l.connected(false);
        let s1 = l.session();
        l.handed("sent");
        assert_eq!(l.outgoing(7), None);
        l.handed("queued before the loss");
        l.connection_lost();
        // Handed while the broker is away: still in rumqttc's channel, sent
        // after the reconnect in any case.
        l.handed("queued during the outage");
        let mut dropped = l.connected(false);
        dropped.sort();
        assert_eq!(dropped, vec!["queued before the loss", "sent"]);
        assert!(l.session() > s1, "a new session");
        assert_eq!(l.outgoing(1), None);
        assert_eq!(l.puback(1), Some("queued during the outage"));
        assert_eq!(l.puback(7), None, "old packet ids mean nothing now");
    }
}
