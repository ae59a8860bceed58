//! The dedup keys a consumer has handled successfully, bounded in entries and in age.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

/// Remembers handled keys, oldest first; past `max_entries` or `max_age` the oldest go.
pub struct Window {
    max_entries: usize,
    max_age: Duration,
    order: VecDeque<(Instant, String)>,
    keys: HashSet<String>,
}

impl Window {
    pub fn new(max_entries: usize, max_age: Duration) -> Self {
        Self {
            max_entries,
            max_age,
            order: VecDeque::new(),
            keys: HashSet::new(),
        }
    }

    /// Whether `key` was handled within the window.
    pub fn contains(&mut self, key: &str, now: Instant) -> bool {
        self.expire(now);
        self.keys.contains(key)
    }

    /// Records a key whose handler succeeded.
    pub fn remember(&mut self, key: &str, now: Instant) {
        if self.max_entries == 0 || !self.keys.insert(key.to_owned()) {
            return;
        }
        self.order.push_back((now, key.to_owned()));
        while self.order.len() > self.max_entries {
            self.forget_oldest();
        }
    }

    fn expire(&mut self, now: Instant) {
        while self
            .order
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > self.max_age)
        {
            self.forget_oldest();
        }
    }

    fn forget_oldest(&mut self) {
        if let Some((_, key)) = self.order.pop_front() {
            self.keys.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_keys_until_the_entry_bound_pushes_the_oldest_out() {
        let now = Instant::now();
        let mut window = Window::new(2, Duration::from_secs(60));
        window.remember("a", now);
        window.remember("b", now);
        assert!(window.contains("a", now));
        window.remember("c", now);
        assert!(!window.contains("a", now), "the oldest is forgotten");
        assert!(window.contains("b", now) && window.contains("c", now));
    }

    #[test]
    fn forgets_keys_older_than_the_age_bound() {
        let start = Instant::now();
        let mut window = Window::new(10, Duration::from_secs(60));
        window.remember("a", start);
        window.remember("b", start + Duration::from_secs(30));
        let later = start + Duration::from_secs(61);
        assert!(!window.contains("a", later));
        assert!(window.contains("b", later));
    }

    #[test]
    fn a_key_remembered_twice_takes_one_entry() {
        let now = Instant::now();
        let mut window = Window::new(2, Duration::from_secs(60));
        window.remember("a", now);
        window.remember("a", now);
        window.remember("b", now);
        assert!(window.contains("a", now) && window.contains("b", now));
    }
}
