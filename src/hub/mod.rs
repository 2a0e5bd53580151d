//! The pub/sub domain, sans-IO: which subscribers listen to which topics, and what a publish
//! delivers. It knows [`crate::wire`] (to frame a push once) and nothing of sockets, sessions or
//! time; the server moves each [`Delivery`] into the subscribers' queues.
//!
//! A topic is in the index while it has subscribers or, with history on, holds history; the
//! last subscriber leaving a topic without history removes it, so a client that subscribes to
//! many throwaway names cannot grow the index beyond the live subscriptions and the bounded
//! history. Joining and leaving report the topic's lifecycle ([`Joined::FirstMember`],
//! [`Left::LastMember`]) to whoever will mirror topics elsewhere (metrics, a link between nodes).
//!
//! With history on ([`history`]), every topic published to or subscribed has a stream: each
//! publish gets a position (epoch, offset) carried in its push frame, and the frame is held for
//! replays. The stream lives in the topic's index entry (one lookup per publish finds both the
//! subscribers and the stream); a topic's history outlives its last subscriber until it
//! expires, and a topic that is subscribed but never published to costs nothing beyond its
//! 24-byte entry.
//!
//! A topic's members are kept sorted by id. The server hands out ids in connection order, so a
//! fan-out visits sockets in the order they were created, and memory in the order it was
//! allocated (kernel socket structures included). A subscriber's own list of topics is held by
//! its connection ([`Subscriptions`]), not in a second map here: a connection that subscribes to
//! one topic costs the hub one entry in that topic's member list and nothing else.

pub mod history;

use std::collections::HashMap;
use std::rc::Rc;

use crate::wire::frame::Shared;
use crate::wire::message;
use history::HeldId;
pub use history::{Epoch, History, HistoryLimits, Position, Stream};

/// Opaque subscriber identity chosen by the caller, unique for the life of the process. Ids
/// should grow in connection order (see the module doc); the top bit is reserved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriberId(pub u64);

impl SubscriberId {
    /// The id of a connection: its sequence number in the high half (so ids grow with it, in
    /// connection order) and the caller's slot for it in the low half.
    pub fn new(sequence: u32, slot: u32) -> Self {
        SubscriberId(u64::from(sequence) << 32 | u64::from(slot))
    }

    pub fn sequence(self) -> u32 {
        (self.0 >> 32) as u32
    }

    pub fn slot(self) -> u32 {
        self.0 as u32
    }
}

/// `#sequence`, as logs name a connection.
impl std::fmt::Display for SubscriberId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{}", self.sequence())
    }
}

/// Marks a member that left; it is skipped until the list is compacted.
const LEFT: u64 = 1 << 63;

/// What joining a topic changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Joined {
    Already,
    Member,
    /// The subscriber is the topic's first: the topic was created.
    FirstMember,
}

/// What leaving a topic changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Left {
    NotMember,
    Member,
    /// The subscriber was the topic's last: the topic is gone.
    LastMember,
}

/// One subscriber's topics, kept by its connection and changed only through the [`Hub`].
/// Most clients hold one topic: it is stored inline, without a `Vec`.
#[derive(Debug, Default)]
pub struct Subscriptions(TopicList);

#[derive(Debug, Default)]
enum TopicList {
    #[default]
    None,
    One(Rc<str>),
    Many(Vec<Rc<str>>),
}

impl Subscriptions {
    pub fn len(&self) -> usize {
        match &self.0 {
            TopicList::None => 0,
            TopicList::One(_) => 1,
            TopicList::Many(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains(&self, topic: &str) -> bool {
        match &self.0 {
            TopicList::None => false,
            TopicList::One(t) => &**t == topic,
            TopicList::Many(v) => v.iter().any(|t| &**t == topic),
        }
    }

    fn push(&mut self, topic: Rc<str>) {
        self.0 = match std::mem::take(&mut self.0) {
            TopicList::None => TopicList::One(topic),
            TopicList::One(first) => TopicList::Many(vec![first, topic]),
            TopicList::Many(mut v) => {
                v.push(topic);
                TopicList::Many(v)
            }
        };
    }

    fn remove(&mut self, topic: &str) -> Option<Rc<str>> {
        match &mut self.0 {
            TopicList::One(t) if &**t == topic => match std::mem::take(&mut self.0) {
                TopicList::One(t) => Some(t),
                _ => None,
            },
            TopicList::Many(v) => {
                let pos = v.iter().position(|t| &**t == topic)?;
                let removed = v.swap_remove(pos);
                if v.is_empty() {
                    self.0 = TopicList::None;
                }
                Some(removed)
            }
            _ => None,
        }
    }

    /// Empties the list, handing each topic to `each` (no allocation for a single topic).
    fn drain(&mut self, mut each: impl FnMut(Rc<str>)) {
        match std::mem::take(&mut self.0) {
            TopicList::None => {}
            TopicList::One(t) => each(t),
            TopicList::Many(v) => v.into_iter().for_each(each),
        }
    }
}

/// A topic's members, sorted by id (marked ones have left), and the number of its stream
/// (history on; it names the epoch). A topic with one subscriber (a topic per user, the common
/// notification case) holds it inline; the stream number fits beside the variant's tag, so
/// this is 16 bytes.
#[derive(Debug)]
enum Members {
    /// No subscribers: the topic lives on for its history.
    None {
        stream: u32,
    },
    One {
        stream: u32,
        id: SubscriberId,
    },
    Many {
        stream: u32,
        list: Box<Many>,
    },
}

#[derive(Debug)]
struct Many {
    ids: Vec<u64>,
    left: usize,
}

impl Members {
    fn stream(&self) -> u32 {
        match *self {
            Members::None { stream }
            | Members::One { stream, .. }
            | Members::Many { stream, .. } => stream,
        }
    }

    fn live(&self) -> usize {
        match self {
            Members::None { .. } => 0,
            Members::One { .. } => 1,
            Members::Many { list, .. } => list.ids.len() - list.left,
        }
    }

    fn ids(&self) -> &[u64] {
        match self {
            Members::None { .. } => &[],
            Members::One { id, .. } => std::slice::from_ref(&id.0),
            Members::Many { list, .. } => &list.ids,
        }
    }

    /// Position of `id` (marked or not) in the sorted list.
    fn search(ids: &[u64], id: u64) -> Result<usize, usize> {
        ids.binary_search_by(|probe| (probe & !LEFT).cmp(&id))
    }

    fn insert(&mut self, id: SubscriberId) -> bool {
        let stream = self.stream();
        match self {
            Members::None { .. } => {
                *self = Members::One { stream, id };
                true
            }
            Members::One { id: only, .. } if *only == id => false,
            Members::One { id: only, .. } => {
                let mut ids = vec![only.0, id.0];
                ids.sort_unstable();
                let list = Box::new(Many { ids, left: 0 });
                *self = Members::Many { stream, list };
                true
            }
            Members::Many { list, .. } => match Self::search(&list.ids, id.0) {
                Ok(at) if list.ids[at] & LEFT != 0 => {
                    list.ids[at] = id.0;
                    list.left -= 1;
                    true
                }
                Ok(_) => false,
                Err(at) => {
                    // New connections have the largest ids: this is nearly always a push.
                    list.ids.insert(at, id.0);
                    true
                }
            },
        }
    }

    /// Removes `id`; the last one leaving makes the list [`Members::None`].
    fn remove(&mut self, id: SubscriberId) -> bool {
        let stream = self.stream();
        match self {
            Members::None { .. } => false,
            Members::One { id: only, .. } => {
                let removed = *only == id;
                if removed {
                    *self = Members::None { stream };
                }
                removed
            }
            Members::Many { list, .. } => match Self::search(&list.ids, id.0) {
                Ok(at) if list.ids[at] & LEFT == 0 => {
                    // Marked, not shifted: a wave of departures from a big topic stays linear.
                    list.ids[at] |= LEFT;
                    list.left += 1;
                    if list.left * 2 > list.ids.len() {
                        list.ids.retain(|id| id & LEFT == 0);
                        list.left = 0;
                        match list.ids[..] {
                            [] => *self = Members::None { stream },
                            [only] => {
                                *self = Members::One {
                                    stream,
                                    id: SubscriberId(only),
                                }
                            }
                            _ if list.ids.capacity() > 2 * list.ids.len() => {
                                let len = list.ids.len();
                                list.ids.shrink_to(len * 3 / 2);
                            }
                            _ => {}
                        }
                    }
                    true
                }
                _ => false,
            },
        }
    }
}

/// One entry of the index: who listens, and (history on) what the topic's stream holds.
/// 24 bytes; a topic that is only subscribed allocates nothing beyond its name.
#[derive(Debug)]
struct Topic {
    members: Members,
    /// The key of what the stream holds, from the topic's first publish with history on.
    held: Option<HeldId>,
}

impl Topic {
    fn is_unsubscribed(&self) -> bool {
        matches!(self.members, Members::None { .. })
    }
}

/// Removes `topic`'s entry if it has no subscribers; whether it did. The caller knows that
/// its stream holds nothing (or frees what it holds).
fn end_if_unsubscribed(
    topics: &mut HashMap<Rc<str>, Topic>,
    ended: &mut Ended,
    topic: &str,
) -> bool {
    if !topics.get(topic).is_some_and(Topic::is_unsubscribed) {
        return false;
    }
    topics.remove(topic);
    ended.topics += 1;
    if topics.capacity() > 64 && topics.len() * 4 < topics.capacity() {
        // Mostly empty after a wave of departures: give the memory back.
        topics.shrink_to(topics.len() * 2);
    }
    true
}

/// A publish resolved against the index: the frame, encoded once, and who gets it.
pub struct Delivery<'a> {
    pub frame: Shared,
    /// The publish's place in its topic's stream (history on).
    pub position: Option<Position>,
    members: &'a [u64],
}

impl Delivery<'_> {
    /// The subscribers, in id order.
    pub fn subscribers(&self) -> impl Iterator<Item = SubscriberId> + '_ {
        live(self.members)
    }
}

/// Consecutive publishes to one topic resolved against the index: their frames and positions,
/// in order, and who gets them.
pub struct RunDelivery<'a> {
    pub frames: Vec<Shared>,
    pub positions: Vec<Option<Position>>,
    members: &'a [u64],
}

impl RunDelivery<'_> {
    /// The subscribers, in id order.
    pub fn subscribers(&self) -> impl Iterator<Item = SubscriberId> + '_ {
        live(self.members)
    }
}

fn live(members: &[u64]) -> impl Iterator<Item = SubscriberId> + '_ {
    members
        .iter()
        .filter(|&&id| id & LEFT == 0)
        .map(|&id| SubscriberId(id))
}

#[derive(Debug, Default)]
pub struct Hub {
    topics: HashMap<Rc<str>, Topic>,
    /// Topics with at least one subscriber (the index also holds topics kept for history).
    subscribed_topics: usize,
    subscription_count: usize,
    /// Topics and subscriptions that have ended since the start: how much the index has
    /// released, for the server's decision to hand memory back to the OS.
    ended: Ended,
    /// The history's bounds, age queue and accounting; `None` with history off.
    history: Option<History>,
}

/// Counts of what has left the index since the start.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    pub topics: u64,
    pub subscriptions: u64,
}

impl Hub {
    /// A hub without history: pushes carry no positions.
    pub fn new() -> Self {
        Self::default()
    }

    /// A hub with history within `limits` (off when `limits.size` is 0); `epoch_seed`: a
    /// random value drawn at start, so epochs differ between runs of the server.
    pub fn with_history(limits: HistoryLimits, epoch_seed: u64) -> Self {
        Hub {
            history: (limits.size > 0).then(|| History::new(limits, epoch_seed)),
            ..Self::default()
        }
    }

    pub fn history(&self) -> Option<&History> {
        self.history.as_ref()
    }

    /// The stream of `topic`, with history on and while it lives.
    pub fn stream(&self, topic: &str) -> Option<Stream<'_>> {
        let history = self.history.as_ref()?;
        let (name, entry) = self.topics.get_key_value(topic)?;
        let held = entry.held.and_then(|id| history.held(id));
        let epoch = match held {
            Some(held) => held.epoch(),
            None => history.epoch(entry.members.stream()),
        };
        Some(Stream::view(name, epoch, held))
    }

    /// Evicts the messages whose time to live passed at `now_ms`.
    pub fn expire_history(&mut self, now_ms: u64) {
        let Some(history) = &mut self.history else {
            return;
        };
        let (topics, ended) = (&mut self.topics, &mut self.ended);
        history.expire(now_ms, |name| end_if_unsubscribed(topics, ended, name));
    }

    /// When [`Hub::expire_history`] next has something to do.
    pub fn next_history_expiry(&self) -> Option<u64> {
        self.history.as_ref()?.next_expiry()
    }

    /// Adds `topic` to the subscriber `id` whose list is `subscriptions`.
    pub fn subscribe(
        &mut self,
        subscriptions: &mut Subscriptions,
        id: SubscriberId,
        topic: &str,
    ) -> Joined {
        debug_assert_eq!(id.0 & LEFT, 0, "the top bit of an id is reserved");
        if subscriptions.contains(topic) {
            return Joined::Already;
        }
        let joined = match self.topics.get_key_value(topic) {
            Some((name, _)) => {
                let name = Rc::clone(name);
                let mut first = false;
                if let Some(entry) = self.topics.get_mut(topic) {
                    first = entry.members.live() == 0;
                    entry.members.insert(id);
                }
                subscriptions.push(name);
                if first {
                    self.subscribed_topics += 1;
                    Joined::FirstMember
                } else {
                    Joined::Member
                }
            }
            None => {
                let name: Rc<str> = Rc::from(topic);
                // With history on, the stream opens now, so the acknowledgement names a real
                // epoch.
                let stream = self.history.as_mut().map_or(0, History::open);
                let entry = Topic {
                    members: Members::One { stream, id },
                    held: None,
                };
                self.topics.insert(Rc::clone(&name), entry);
                subscriptions.push(name);
                self.subscribed_topics += 1;
                Joined::FirstMember
            }
        };
        self.subscription_count += 1;
        joined
    }

    /// Removes `topic` from the subscriber `id`.
    pub fn unsubscribe(
        &mut self,
        subscriptions: &mut Subscriptions,
        id: SubscriberId,
        topic: &str,
    ) -> Left {
        match subscriptions.remove(topic) {
            Some(name) => self.leave(id, &name),
            None => Left::NotMember,
        }
    }

    /// Removes every subscription of `id` (it disconnected); calls `gone` with each topic that
    /// lost its last subscriber.
    pub fn remove_subscriber(
        &mut self,
        subscriptions: &mut Subscriptions,
        id: SubscriberId,
        mut gone: impl FnMut(&str),
    ) {
        subscriptions.drain(|name| {
            if self.leave(id, &name) == Left::LastMember {
                gone(&name);
            }
        });
    }

    fn leave(&mut self, id: SubscriberId, topic: &str) -> Left {
        let Some(entry) = self.topics.get_mut(topic) else {
            return Left::NotMember;
        };
        if !entry.members.remove(id) {
            return Left::NotMember;
        }
        self.subscription_count -= 1;
        self.ended.subscriptions += 1;
        if entry.members.live() > 0 {
            return Left::Member;
        }
        self.subscribed_topics -= 1;
        // The stream lives on while it holds history.
        let held = entry.held;
        let history = self.history.as_mut();
        let spent = match (held, &history) {
            (Some(id), Some(history)) => history.held(id).is_none_or(|h| h.is_spent()),
            _ => true,
        };
        if spent
            && end_if_unsubscribed(&mut self.topics, &mut self.ended, topic)
            && let (Some(id), Some(history)) = (held, history)
        {
            history.release(id);
        }
        Left::LastMember
    }

    /// Encodes a push of `data_json` (valid JSON) to `topic` once, for all its subscribers;
    /// with history on, at the stream's next position, and holds it (`now_ms`: for its TTL).
    pub fn publish(&mut self, topic: &str, data_json: &str, now_ms: u64) -> Delivery<'_> {
        let (frame, position) = self.frame(topic, data_json, now_ms);
        Delivery {
            frame,
            position,
            members: self.members(topic),
        }
    }

    /// Publishes consecutive messages to one topic: each is framed and placed in the stream as
    /// by [`Hub::publish`], and the subscribers are resolved once for all of them.
    pub fn publish_run<'d>(
        &mut self,
        topic: &str,
        messages: impl Iterator<Item = &'d str>,
        now_ms: u64,
    ) -> RunDelivery<'_> {
        let (frames, positions) = messages
            .map(|data_json| self.frame(topic, data_json, now_ms))
            .unzip();
        RunDelivery {
            frames,
            positions,
            members: self.members(topic),
        }
    }

    /// Frames one publish; with history on, gives it the stream's next position and holds it.
    fn frame(&mut self, topic: &str, data_json: &str, now_ms: u64) -> (Shared, Option<Position>) {
        let Some(history) = &mut self.history else {
            return (message::encode_push(topic, data_json), None);
        };
        let id = match self.topics.get_key_value(topic) {
            Some((_, Topic { held: Some(id), .. })) => Some(*id),
            Some((name, entry)) => {
                // Only subscribed so far: its stream's epoch was fixed at the subscribe.
                let epoch = history.epoch(entry.members.stream());
                let id = history.hold(Rc::clone(name), epoch);
                if let Some(entry) = self.topics.get_mut(topic) {
                    entry.held = id;
                }
                id
            }
            None => {
                // Published to before any subscribe: a stream without subscribers.
                let stream = history.open();
                let name: Rc<str> = Rc::from(topic);
                let id = history.hold(Rc::clone(&name), history.epoch(stream));
                if let Some(id) = id {
                    let entry = Topic {
                        members: Members::None { stream },
                        held: Some(id),
                    };
                    self.topics.insert(name, entry);
                }
                id
            }
        };
        let Some((id, position)) = id.and_then(|id| Some((id, history.held(id)?.next_position())))
        else {
            // No room for another held part: this topic goes without history.
            return (message::encode_push(topic, data_json), None);
        };
        let frame =
            message::encode_push_at(topic, data_json, position.offset, position.epoch.as_str());
        // The same allocation for the history and every queue.
        let (topics, ended) = (&mut self.topics, &mut self.ended);
        history.append(id, Shared::clone(&frame), now_ms, |name| {
            end_if_unsubscribed(topics, ended, name)
        });
        (frame, Some(position))
    }

    fn members(&self, topic: &str) -> &[u64] {
        self.topics.get(topic).map_or(&[][..], |e| e.members.ids())
    }

    pub fn subscriber_count(&self, topic: &str) -> usize {
        self.topics.get(topic).map_or(0, |e| e.members.live())
    }

    pub fn ended(&self) -> Ended {
        self.ended
    }

    /// Every subscribed topic with its live subscriber count (for reports; walks all topics).
    pub fn topic_subscribers(&self) -> impl Iterator<Item = (&str, usize)> + '_ {
        self.topics
            .iter()
            .map(|(topic, entry)| (&**topic, entry.members.live()))
            .filter(|&(_, live)| live > 0)
    }

    /// Topics with at least one subscriber.
    pub fn topic_count(&self) -> usize {
        self.subscribed_topics
    }

    /// Topics with a stream (history on): subscribed ones and those kept for their history.
    pub fn stream_count(&self) -> usize {
        if self.history.is_some() {
            self.topics.len()
        } else {
            0
        }
    }

    pub fn subscription_count(&self) -> usize {
        self.subscription_count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: SubscriberId = SubscriberId(1);
    const B: SubscriberId = SubscriberId(2);

    fn members(hub: &mut Hub, topic: &str) -> Vec<SubscriberId> {
        hub.publish(topic, "1", 0).subscribers().collect()
    }

    #[test]
    fn publish_targets_only_members_in_id_order() {
        let mut hub = Hub::new();
        let (mut a, mut b) = (Subscriptions::default(), Subscriptions::default());
        assert_eq!(hub.subscribe(&mut b, B, "x"), Joined::FirstMember);
        assert_eq!(hub.subscribe(&mut a, A, "x"), Joined::Member);
        assert_eq!(hub.subscribe(&mut b, B, "y"), Joined::FirstMember);
        assert_eq!(hub.subscribe(&mut b, B, "y"), Joined::Already);
        assert_eq!(members(&mut hub, "x"), vec![A, B]);
        assert_eq!(members(&mut hub, "y"), vec![B]);
        assert_eq!(members(&mut hub, "z"), vec![]);
        assert_eq!(hub.subscription_count(), 3);
        assert_eq!((a.len(), b.len()), (1, 2));
        let delivery = hub.publish("x", r#""hi""#, 0);
        assert_eq!(
            &delivery.frame[2..],
            br#"{"cmd":"push","topic":"x","data":"hi"}"#
        );
    }

    #[test]
    fn streams_follow_subscribers_and_history() {
        let limits = HistoryLimits {
            size: 10,
            ttl_ms: 1_000,
            memory: 1 << 20,
        };
        let mut hub = Hub::with_history(limits, 0);
        let mut a = Subscriptions::default();
        hub.subscribe(&mut a, A, "x");
        let opened = hub.stream("x").map(|s| (s.epoch(), s.last()));
        assert_eq!(opened.map(|(_, last)| last), Some(0), "opened at subscribe");
        let delivery = hub.publish("x", "1", 0);
        let (frame, position) = (delivery.frame, delivery.position.expect("history on"));
        assert_eq!(Some(position.epoch), opened.map(|(epoch, _)| epoch));
        assert_eq!(position.offset, 1);
        assert!(frame.ends_with(br#","offset":1,"epoch":"00000000"}"#));
        let held = hub.stream("x").and_then(|s| s.frame(1).cloned());
        assert!(
            held.is_some_and(|f| Rc::ptr_eq(&f, &frame)),
            "one allocation"
        );
        // The history outlives the last subscriber until its TTL.
        hub.unsubscribe(&mut a, A, "x");
        assert_eq!(hub.topic_count(), 0);
        assert!(hub.stream("x").is_some());
        assert_eq!(hub.next_history_expiry(), Some(1_000));
        hub.expire_history(1_000);
        assert!(hub.stream("x").is_none());
        // Subscribed and left with nothing held: the stream ends at once.
        hub.subscribe(&mut a, A, "y");
        hub.unsubscribe(&mut a, A, "y");
        assert!(hub.stream("y").is_none());
        // History off: no positions.
        let mut plain = Hub::with_history(HistoryLimits { size: 0, ..limits }, 0);
        assert!(plain.publish("x", "1", 0).position.is_none());
        assert!(plain.stream("x").is_none());
    }

    #[test]
    fn an_index_entry_is_24_bytes() {
        assert_eq!(size_of::<Members>(), 16);
        assert_eq!(size_of::<Topic>(), 24);
    }

    #[test]
    fn leaving_reports_the_topic_lifecycle() {
        let mut hub = Hub::new();
        let (mut a, mut b) = (Subscriptions::default(), Subscriptions::default());
        hub.subscribe(&mut a, A, "x");
        hub.subscribe(&mut a, A, "y");
        hub.subscribe(&mut b, B, "y");
        assert_eq!(hub.unsubscribe(&mut a, A, "x"), Left::LastMember);
        assert_eq!(hub.unsubscribe(&mut a, A, "x"), Left::NotMember);
        assert_eq!(hub.unsubscribe(&mut b, B, "x"), Left::NotMember);
        assert_eq!(hub.topic_count(), 1);
        let mut gone = Vec::new();
        hub.remove_subscriber(&mut a, A, |t| gone.push(t.to_owned()));
        assert!(gone.is_empty(), "B still holds y");
        hub.remove_subscriber(&mut b, B, |t| gone.push(t.to_owned()));
        assert_eq!(gone, ["y"]);
        assert_eq!((hub.topic_count(), hub.subscription_count()), (0, 0));
        assert!(a.is_empty() && b.is_empty());
    }

    #[test]
    fn big_topic_churn_keeps_order_and_leaves_nothing_behind() {
        let mut hub = Hub::new();
        let mut subs: Vec<Subscriptions> = (0..10_000).map(|_| Subscriptions::default()).collect();
        for (i, s) in subs.iter_mut().enumerate() {
            hub.subscribe(s, SubscriberId(i as u64), "t");
            hub.subscribe(s, SubscriberId(i as u64), &format!("own-{i}"));
        }
        assert_eq!(hub.subscriber_count("t"), 10_000);
        assert_eq!(hub.topic_count(), 10_001);
        // Every other one leaves, then rejoins: still sorted, no duplicates.
        for (i, s) in subs.iter_mut().enumerate().step_by(2) {
            assert_eq!(
                hub.unsubscribe(s, SubscriberId(i as u64), "t"),
                Left::Member
            );
        }
        assert_eq!(hub.subscriber_count("t"), 5_000);
        for (i, s) in subs.iter_mut().enumerate().step_by(2) {
            assert_eq!(
                hub.subscribe(s, SubscriberId(i as u64), "t"),
                Joined::Member
            );
        }
        let order = members(&mut hub, "t");
        assert_eq!(order, (0..10_000).map(SubscriberId).collect::<Vec<_>>());
        for (i, s) in subs.iter_mut().enumerate() {
            hub.remove_subscriber(s, SubscriberId(i as u64), |_| {});
        }
        assert_eq!((hub.topic_count(), hub.subscription_count()), (0, 0));
        assert!(
            hub.topics.capacity() < 1_000,
            "the index shrinks when it empties"
        );
    }
}
