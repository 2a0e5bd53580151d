// TEMPORARY test stand-in (BTreeMap), not the real wheel.
use std::collections::BTreeMap;
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimerHandle {
    key: u64,
    deadline: u64,
}
pub struct TimerWheel<T> {
    map: BTreeMap<(u64, u64), T>,
    next: u64,
}
impl<T> TimerWheel<T> {
    pub fn new() -> Self {
        TimerWheel {
            map: BTreeMap::new(),
            next: 0,
        }
    }
    pub fn with_capacity(_n: usize) -> Self {
        Self::new()
    }
    pub fn insert(&mut self, deadline_ms: u64, value: T) -> TimerHandle {
        self.next += 1;
        self.map.insert((deadline_ms, self.next), value);
        TimerHandle {
            key: self.next,
            deadline: deadline_ms,
        }
    }
    pub fn cancel(&mut self, h: TimerHandle) -> Option<T> {
        self.map.remove(&(h.deadline, h.key))
    }
    pub fn poll(&mut self, now_ms: u64) -> Option<(TimerHandle, T)> {
        let (&(d, k), _) = self.map.iter().next()?;
        if d > now_ms {
            return None;
        }
        let v = self.map.remove(&(d, k))?;
        Some((
            TimerHandle {
                key: k,
                deadline: d,
            },
            v,
        ))
    }
    pub fn next_deadline(&self) -> Option<u64> {
        self.map.keys().next().map(|k| k.0)
    }
}
