//! Topic registry: which subscribers listen to which topics. No I/O and no message handling:
//! the server asks for a topic's subscribers and hands each of them the shared frame.
//!
//! Topics exist only while they have subscribers; the last unsubscribe removes them, so a client
//! that subscribes to many throwaway names cannot grow the registry beyond the live subscriptions.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;

/// Opaque subscriber identity chosen by the caller (the server packs a slab key and a generation,
/// so ids are unique for the life of the process, unlike the seed's `time.Now().Unix()`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriberId(pub u64);

/// Subscriber ids are assigned by the server, never by the network, so a fast non-keyed hash is
/// safe for them. Topic names come from clients and keep the standard, randomly keyed hasher.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing spreads sequential keys over the table's top bits.
        self.0 = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type IdSet = HashSet<SubscriberId, BuildHasherDefault<IdHasher>>;
type IdMap<V> = HashMap<SubscriberId, V, BuildHasherDefault<IdHasher>>;

/// One subscriber's topics. Most clients hold one topic: keep it inline, without a `Vec`.
enum TopicList {
    One(Rc<str>),
    Many(Vec<Rc<str>>),
}

impl TopicList {
    fn len(&self) -> usize {
        match self {
            TopicList::One(_) => 1,
            TopicList::Many(v) => v.len(),
        }
    }

    fn push(&mut self, topic: Rc<str>) {
        match self {
            TopicList::One(first) => *self = TopicList::Many(vec![Rc::clone(first), topic]),
            TopicList::Many(v) => v.push(topic),
        }
    }

    /// Removes `topic`; returns it and whether the list is now empty.
    fn remove(&mut self, topic: &str) -> Option<(Rc<str>, bool)> {
        match self {
            TopicList::One(t) if &**t == topic => Some((Rc::clone(t), true)),
            TopicList::One(_) => None,
            TopicList::Many(v) => {
                let pos = v.iter().position(|t| &**t == topic)?;
                let removed = v.swap_remove(pos);
                Some((removed, v.is_empty()))
            }
        }
    }
}

#[derive(Default)]
pub struct Broker {
    topics: HashMap<Rc<str>, IdSet>,
    /// Each subscriber's topics, for cleanup when it leaves.
    subscriptions: IdMap<TopicList>,
    subscription_count: usize,
}

impl Broker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `topic` to `subscriber`. Returns false if it was already subscribed.
    pub fn subscribe(&mut self, subscriber: SubscriberId, topic: &str) -> bool {
        let name = match self.topics.get_key_value(topic) {
            Some((name, _)) => Rc::clone(name),
            None => Rc::from(topic),
        };
        let members = self.topics.entry(Rc::clone(&name)).or_default();
        if !members.insert(subscriber) {
            return false;
        }
        match self.subscriptions.get_mut(&subscriber) {
            Some(list) => list.push(name),
            None => {
                self.subscriptions.insert(subscriber, TopicList::One(name));
            }
        }
        self.subscription_count += 1;
        true
    }

    /// Removes `topic` from `subscriber`. Returns false if it was not subscribed.
    pub fn unsubscribe(&mut self, subscriber: SubscriberId, topic: &str) -> bool {
        let Some(list) = self.subscriptions.get_mut(&subscriber) else {
            return false;
        };
        let Some((name, now_empty)) = list.remove(topic) else {
            return false;
        };
        if now_empty {
            self.subscriptions.remove(&subscriber);
        }
        self.leave(subscriber, &name);
        true
    }

    /// Removes every subscription of `subscriber` (it disconnected).
    pub fn remove_subscriber(&mut self, subscriber: SubscriberId) {
        match self.subscriptions.remove(&subscriber) {
            Some(TopicList::One(name)) => self.leave(subscriber, &name),
            Some(TopicList::Many(names)) => {
                for name in names {
                    self.leave(subscriber, &name);
                }
            }
            None => {}
        }
    }

    fn leave(&mut self, subscriber: SubscriberId, topic: &str) {
        if let Some(members) = self.topics.get_mut(topic) {
            if members.remove(&subscriber) {
                self.subscription_count -= 1;
            }
            if members.is_empty() {
                self.topics.remove(topic);
            }
        }
    }

    /// The subscribers of `topic`, in no particular order.
    pub fn subscribers(&self, topic: &str) -> impl Iterator<Item = SubscriberId> + '_ {
        self.topics.get(topic).into_iter().flatten().copied()
    }

    pub fn subscriber_count(&self, topic: &str) -> usize {
        self.topics.get(topic).map_or(0, HashSet::len)
    }

    /// How many topics `subscriber` has.
    pub fn topics_of(&self, subscriber: SubscriberId) -> usize {
        self.subscriptions
            .get(&subscriber)
            .map_or(0, TopicList::len)
    }

    pub fn is_subscribed(&self, subscriber: SubscriberId, topic: &str) -> bool {
        self.topics
            .get(topic)
            .is_some_and(|m| m.contains(&subscriber))
    }

    pub fn topic_count(&self) -> usize {
        self.topics.len()
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

    fn sorted(b: &Broker, topic: &str) -> Vec<SubscriberId> {
        let mut v: Vec<_> = b.subscribers(topic).collect();
        v.sort();
        v
    }

    #[test]
    fn subscribe_publish_targets_only_members() {
        let mut b = Broker::new();
        assert!(b.subscribe(A, "x"));
        assert!(b.subscribe(B, "x"));
        assert!(b.subscribe(B, "y"));
        assert!(!b.subscribe(B, "y"), "double subscribe is a no-op");
        assert_eq!(sorted(&b, "x"), vec![A, B]);
        assert_eq!(sorted(&b, "y"), vec![B]);
        assert_eq!(sorted(&b, "z"), vec![]);
        assert_eq!(b.subscription_count(), 3);
        assert_eq!(b.topics_of(B), 2);
    }

    #[test]
    fn unsubscribe_and_empty_topics_are_removed() {
        let mut b = Broker::new();
        b.subscribe(A, "x");
        b.subscribe(A, "y");
        assert!(b.unsubscribe(A, "x"));
        assert!(!b.unsubscribe(A, "x"));
        assert!(!b.unsubscribe(B, "y"));
        assert_eq!(b.topic_count(), 1);
        b.remove_subscriber(A);
        assert_eq!(b.topic_count(), 0);
        assert_eq!(b.subscription_count(), 0);
        assert_eq!(b.topics_of(A), 0);
        assert!(b.subscriptions.is_empty());
    }

    #[test]
    fn many_subscribers_churn_leaves_nothing_behind() {
        let mut b = Broker::new();
        for i in 0..10_000u64 {
            b.subscribe(SubscriberId(i), "t");
            b.subscribe(SubscriberId(i), &format!("own-{i}"));
        }
        assert_eq!(b.subscriber_count("t"), 10_000);
        assert_eq!(b.topic_count(), 10_001);
        for i in 0..10_000u64 {
            b.remove_subscriber(SubscriberId(i));
        }
        assert_eq!((b.topic_count(), b.subscription_count()), (0, 0));
    }
}
