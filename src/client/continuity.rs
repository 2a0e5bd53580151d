//! Where the client is in each topic's stream, and what to do with a push or an acknowledgement
//! (sans-IO: the worker writes the requests and sends the events this decides on).
//!
//! The rule that holds everything together: per topic, the caller never gets an offset at or
//! below the last one it got in the same epoch, and a gap is either filled from the server's
//! history or reported as [`Event::ContinuityLost`].

use std::collections::{HashMap, HashSet};

use serde::Deserialize;
use serde_json::{Map, Value};

use super::{ContinuityReason, Event};

/// A place in a topic's stream: the last offset handed to the caller (or, before the first
/// push, the one the server said its pushes continue after).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Position {
    pub epoch: String,
    pub offset: u64,
}

/// One entry of a subscribe acknowledgement's `streams`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub(super) struct StreamAck {
    pub epoch: String,
    pub offset: u64,
    #[serde(default)]
    pub recovered: Option<bool>,
    #[serde(default)]
    pub from: Option<u64>,
}

/// What to do with a push.
#[derive(Debug, PartialEq)]
pub(super) enum Verdict {
    Deliver,
    /// Already handed out (a replay overlapping what arrived live), or sent by a subscription
    /// that is being replaced.
    Skip,
    /// Report the loss, then deliver.
    DeliverAfter(Event),
    /// Report the loss, then unsubscribe and subscribe again resuming after the position: the
    /// server only honours `since` on a fresh subscription.
    Resubscribe(Event, Position),
}

#[derive(Debug, Default)]
pub(super) struct Continuity {
    last: HashMap<String, Position>,
    /// Sent as `since` in a subscribe whose acknowledgement has not arrived yet.
    resuming: HashMap<String, Position>,
    /// An unsubscribe is out to replace these topics' subscriptions: whatever arrives for them
    /// before its acknowledgement belongs to the old subscription, past the gap, and is dropped
    /// (the replay brings it again, in order).
    replacing: HashSet<String>,
}

impl Continuity {
    /// A new connection: nothing is in flight any more.
    pub fn new_connection(&mut self) {
        self.resuming.clear();
        self.replacing.clear();
    }

    /// The `since` object for the topics with a known position (`None` when there are none),
    /// recording them as awaiting a resume answer.
    pub fn since<'t>(&mut self, topics: impl IntoIterator<Item = &'t String>) -> Option<Value> {
        let mut since = Map::new();
        for topic in topics {
            if let Some(position) = self.last.get(topic) {
                since.insert(
                    topic.clone(),
                    serde_json::json!({ "offset": position.offset, "epoch": position.epoch }),
                );
                self.resuming.insert(topic.clone(), position.clone());
            }
        }
        (!since.is_empty()).then_some(Value::Object(since))
    }

    /// The topic is no longer wanted (the caller unsubscribed, or the server ended or refused
    /// it): a later subscribe starts afresh rather than replaying what was missed meanwhile.
    pub fn forget(&mut self, topic: &str) {
        self.last.remove(topic);
        self.resuming.remove(topic);
        self.replacing.remove(topic);
    }

    /// Whether `topic` has a position (tests and logs).
    #[cfg(test)]
    pub fn position(&self, topic: &str) -> Option<&Position> {
        self.last.get(topic)
    }

    pub fn on_push(&mut self, topic: &str, offset: Option<u64>, epoch: Option<&str>) -> Verdict {
        if self.replacing.contains(topic) {
            return Verdict::Skip;
        }
        // History off, or a server without positions: every push is delivered, as before.
        let (Some(offset), Some(epoch)) = (offset, epoch) else {
            return Verdict::Deliver;
        };
        let Some(last) = self.last.get_mut(topic) else {
            self.last.insert(topic.to_owned(), position(epoch, offset));
            return Verdict::Deliver;
        };
        if last.epoch != epoch {
            // Not expected within one subscription (a stream with a subscriber lives on), but
            // a new epoch is a new stream: take it from here.
            *last = position(epoch, offset);
            return Verdict::DeliverAfter(lost(
                topic,
                epoch,
                offset,
                ContinuityReason::EpochChanged,
            ));
        }
        if offset <= last.offset {
            return Verdict::Skip;
        }
        if offset == last.offset + 1 {
            last.offset = offset;
            return Verdict::Deliver;
        }
        // Pushes were dropped on the way (e.g. `--slow-consumer drop`): fetch them from history.
        let resume_at = last.clone();
        let event = lost(
            topic,
            epoch,
            resume_at.offset + 1,
            ContinuityReason::OffsetJump { received: offset },
        );
        self.replacing.insert(topic.to_owned());
        self.resuming.insert(topic.to_owned(), resume_at.clone());
        Verdict::Resubscribe(event, resume_at)
    }

    /// An acknowledgement of the client's own unsubscribe.
    pub fn on_unsubscribed(&mut self, topics: &[String]) {
        for topic in topics {
            self.replacing.remove(topic);
        }
    }

    /// A subscribe acknowledgement: positions for new topics, and the answers to `since`.
    pub fn on_subscribed(
        &mut self,
        topics: &[String],
        streams: Option<&HashMap<String, StreamAck>>,
    ) -> Vec<Event> {
        let mut events = Vec::new();
        for topic in topics {
            if self.replacing.contains(topic) {
                continue; // acknowledges a subscribe sent before the replacing unsubscribe
            }
            let since = self.resuming.remove(topic);
            // An old server, or history off: no positions.
            let Some(ack) = streams.and_then(|s| s.get(topic)) else {
                continue;
            };
            if ack.epoch.is_empty() {
                continue;
            }
            match (since, ack.recovered) {
                // Everything after `since` follows in order: the position stays where it is.
                (Some(_), Some(true)) => {}
                (Some(since), Some(false)) => {
                    let (reason, from) = if ack.epoch == since.epoch {
                        let from = ack.from.unwrap_or(since.offset + 1);
                        (
                            ContinuityReason::HistoryTooShort,
                            from.max(since.offset + 1),
                        )
                    } else {
                        (
                            ContinuityReason::EpochChanged,
                            ack.from.unwrap_or(ack.offset + 1),
                        )
                    };
                    self.last
                        .insert(topic.clone(), position(&ack.epoch, from.saturating_sub(1)));
                    events.push(lost(topic, &ack.epoch, from, reason));
                }
                // No `recovered`: the server ignored the `since` (the topic was subscribed
                // already) and the position stands; or there was no `since` and a topic
                // without a position starts at the acknowledged one (`from`: with `recent`).
                (Some(_), None) => {}
                (None, _) => {
                    if !self.last.contains_key(topic) {
                        let after = ack.from.map_or(ack.offset, |f| f.saturating_sub(1));
                        self.last.insert(topic.clone(), position(&ack.epoch, after));
                    }
                }
            }
        }
        events
    }

    /// The server's `continuity_lost`: the next push of `topic` is at `from`.
    pub fn on_continuity_lost(&mut self, topic: &str, epoch: &str, from: u64) -> Option<Event> {
        if self.replacing.contains(topic) {
            return None; // about the old subscription; the new one has its own answer
        }
        let after = from.saturating_sub(1);
        let after = match self.last.get(topic) {
            Some(last) if last.epoch == epoch => after.max(last.offset),
            _ => after,
        };
        self.last.insert(topic.to_owned(), position(epoch, after));
        Some(lost(topic, epoch, from, ContinuityReason::ServerReported))
    }
}

fn position(epoch: &str, offset: u64) -> Position {
    Position {
        epoch: epoch.to_owned(),
        offset,
    }
}

fn lost(topic: &str, epoch: &str, from: u64, reason: ContinuityReason) -> Event {
    Event::ContinuityLost {
        topic: topic.to_owned(),
        epoch: epoch.to_owned(),
        from,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(epoch: &str, offset: u64, recovered: Option<bool>, from: Option<u64>) -> StreamAck {
        StreamAck {
            epoch: epoch.into(),
            offset,
            recovered,
            from,
        }
    }

    fn streams(entries: &[(&str, StreamAck)]) -> HashMap<String, StreamAck> {
        entries
            .iter()
            .map(|(t, a)| (t.to_string(), a.clone()))
            .collect()
    }

    #[test]
    fn duplicates_are_skipped_and_positions_follow_pushes() {
        let mut c = Continuity::default();
        let topics = ["a".to_string()];
        assert!(c.since(&topics).is_none(), "a fresh client resumes nothing");
        let s = streams(&[("a", ack("E", 5, None, None))]);
        assert!(c.on_subscribed(&topics, Some(&s)).is_empty());
        assert_eq!(c.on_push("a", Some(5), Some("E")), Verdict::Skip);
        assert_eq!(c.on_push("a", Some(6), Some("E")), Verdict::Deliver);
        assert_eq!(c.on_push("a", Some(6), Some("E")), Verdict::Skip);
        assert_eq!(c.on_push("a", None, None), Verdict::Deliver);
        assert_eq!(
            c.since(&topics),
            Some(serde_json::json!({"a": {"offset": 6, "epoch": "E"}}))
        );
    }

    #[test]
    fn a_jump_replaces_the_subscription_and_drops_the_old_ones_pushes() {
        let mut c = Continuity::default();
        let topics = ["a".to_string()];
        assert_eq!(c.on_push("a", Some(3), Some("E")), Verdict::Deliver);
        let Verdict::Resubscribe(event, at) = c.on_push("a", Some(6), Some("E")) else {
            panic!("no resubscribe")
        };
        assert_eq!(at, position("E", 3));
        assert_eq!(
            event,
            lost("a", "E", 4, ContinuityReason::OffsetJump { received: 6 })
        );
        assert_eq!(c.on_push("a", Some(7), Some("E")), Verdict::Skip);
        // An acknowledgement of an earlier subscribe changes nothing.
        let s = streams(&[("a", ack("E", 7, None, None))]);
        assert!(c.on_subscribed(&topics, Some(&s)).is_empty());
        c.on_unsubscribed(&topics);
        let s = streams(&[("a", ack("E", 7, Some(true), None))]);
        assert!(c.on_subscribed(&topics, Some(&s)).is_empty());
        for (offset, verdict) in [
            (4, Verdict::Deliver),
            (3, Verdict::Skip),
            (5, Verdict::Deliver),
        ] {
            assert_eq!(c.on_push("a", Some(offset), Some("E")), verdict, "{offset}");
        }
    }

    #[test]
    fn an_unrecovered_resume_names_its_reason_and_where_it_continues() {
        let mut c = Continuity::default();
        let topics = ["a".to_string(), "b".to_string(), "c".to_string()];
        for t in &topics {
            c.on_push(t, Some(10), Some("E"));
        }
        assert!(c.since(&topics).is_some());
        let s = streams(&[
            ("a", ack("F", 2, Some(false), Some(3))),
            ("b", ack("E", 30, Some(false), Some(21))),
            ("c", ack("E", 12, Some(true), None)),
        ]);
        assert_eq!(
            c.on_subscribed(&topics, Some(&s)),
            vec![
                lost("a", "F", 3, ContinuityReason::EpochChanged),
                lost("b", "E", 21, ContinuityReason::HistoryTooShort),
            ]
        );
        assert_eq!(c.position("a"), Some(&position("F", 2)));
        assert_eq!(c.position("b"), Some(&position("E", 20)));
        assert_eq!(c.position("c"), Some(&position("E", 10)));
        let event = c.on_continuity_lost("c", "E", 15);
        assert_eq!(
            event,
            Some(lost("c", "E", 15, ContinuityReason::ServerReported))
        );
        assert_eq!(c.on_push("c", Some(15), Some("E")), Verdict::Deliver);
        c.forget("c");
        assert_eq!(c.position("c"), None);
    }

    #[test]
    fn recent_starts_before_the_acknowledged_offset() {
        let mut c = Continuity::default();
        let topics = ["a".to_string()];
        let s = streams(&[("a", ack("E", 10, None, Some(8)))]);
        c.on_subscribed(&topics, Some(&s));
        assert_eq!(c.on_push("a", Some(8), Some("E")), Verdict::Deliver);
    }
}
