//! The replay cache of a webhook source: which verified messages were seen recently, and
//! whether each was accepted or is still being delivered.
//!
//! Entries are kept by age, never forgotten early: an entry lives until it is older than the
//! horizon (twice the tolerance window, after which its timestamp can no longer pass), and
//! while the cache is full of younger entries a new message is refused as
//! [`HmacError::CacheFull`] (503, retry later) instead of evicting one that a replay could
//! still use. Keys are SHA-256 digests, so an entry has a fixed size whatever the sender put
//! in its headers. Releasing an entry leaves a tombstone in the age queue, compacted when
//! tombstones outnumber live entries, so a release costs O(1) under the lock.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use sha2::{Digest as _, Sha256};

use super::HmacError;

/// A fixed-size digest of a replay key or a signature.
pub(super) type Key = [u8; 32];

/// The digest of the concatenated `parts`.
pub(super) fn digest(parts: &[&[u8]]) -> Key {
    let mut hasher = Sha256::new();
    parts.iter().for_each(|part| hasher.update(part));
    hasher.finalize().into()
}

/// Locks a cache; a panic elsewhere while it was held leaves it usable.
pub(super) fn lock(cache: &Mutex<ReplayCache>) -> MutexGuard<'_, ReplayCache> {
    cache.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Verified, being delivered.
    InFlight,
    /// Delivered and acknowledged.
    Accepted,
}

#[derive(Debug)]
struct Entry {
    /// When it was recorded (unix seconds).
    at: u64,
    /// Distinguishes this record from a released and re-recorded one under the same key.
    seq: u64,
    state: State,
    /// The signature that was verified, to tell a replay from a retry signed anew.
    signature: Key,
}

/// What a verified message is to the cache.
#[derive(Debug)]
pub(super) enum Admission {
    /// Not seen before: recorded as being delivered under these tickets.
    New(Vec<(Key, u64)>),
    /// A retry, signed anew, of a message that was accepted.
    Duplicate,
}

/// Recently verified messages, bounded by `capacity` entries.
#[derive(Debug)]
pub struct ReplayCache {
    capacity: usize,
    entries: HashMap<Key, Entry>,
    /// Keys by age, oldest first, with the `seq` they were recorded under; an item whose
    /// entry is gone or has another `seq` is a tombstone.
    order: VecDeque<(Key, u64)>,
    next_seq: u64,
}

impl ReplayCache {
    /// A cache of at most `capacity` entries (`0`: replay protection disabled).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: HashMap::new(),
            order: VecDeque::new(),
            next_seq: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity;
    }

    /// Live entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Checks a verified message's keys (each with the digest of its verified signature) and
    /// records them. Entries recorded before `horizon` are dropped first when
    /// `expire_by_age` (the scheme has a timestamp window), and otherwise only to make room.
    pub(super) fn admit(
        &mut self,
        keys: &[(Key, Key)],
        now: u64,
        horizon: u64,
        expire_by_age: bool,
    ) -> Result<Admission, HmacError> {
        if expire_by_age {
            while self.oldest().is_some_and(|at| at < horizon) {
                self.pop_oldest();
            }
        }
        let mut duplicate = false;
        for (key, signature) in keys {
            match self.entries.get(key) {
                None => {}
                Some(entry) if entry.state == State::InFlight => return Err(HmacError::InProgress),
                Some(entry) if entry.signature == *signature => return Err(HmacError::Replayed),
                Some(_) => duplicate = true,
            }
        }
        if duplicate {
            return Ok(Admission::Duplicate);
        }
        if self.capacity == 0 {
            return Ok(Admission::New(Vec::new()));
        }
        while self.entries.len() + keys.len() > self.capacity {
            match self.oldest() {
                Some(at) if at < horizon => self.pop_oldest(),
                _ => return Err(HmacError::CacheFull),
            }
        }
        let mut tickets = Vec::with_capacity(keys.len());
        for (key, signature) in keys {
            let seq = self.next_seq;
            self.next_seq += 1;
            self.entries.insert(
                *key,
                Entry {
                    at: now,
                    seq,
                    state: State::InFlight,
                    signature: *signature,
                },
            );
            self.order.push_back((*key, seq));
            tickets.push((*key, seq));
        }
        Ok(Admission::New(tickets))
    }

    /// Marks recorded messages as accepted.
    fn accept(&mut self, tickets: &[(Key, u64)]) {
        for (key, seq) in tickets {
            if let Some(entry) = self.entries.get_mut(key).filter(|e| e.seq == *seq) {
                entry.state = State::Accepted;
            }
        }
    }

    /// Forgets recorded messages that were not accepted; their items in the age queue become
    /// tombstones.
    fn release(&mut self, tickets: &[(Key, u64)]) {
        for (key, seq) in tickets {
            if self.entries.get(key).is_some_and(|e| e.seq == *seq) {
                self.entries.remove(key);
            }
        }
        if self.order.len() > 2 * self.entries.len() + 64 {
            let entries = &self.entries;
            self.order
                .retain(|(key, seq)| entries.get(key).is_some_and(|e| e.seq == *seq));
        }
    }

    /// When the oldest live entry was recorded, dropping tombstones in front of it.
    fn oldest(&mut self) -> Option<u64> {
        while let Some((key, seq)) = self.order.front() {
            match self.entries.get(key) {
                Some(entry) if entry.seq == *seq => return Some(entry.at),
                _ => {
                    self.order.pop_front();
                }
            }
        }
        None
    }

    fn pop_oldest(&mut self) {
        if let Some((key, _)) = self.order.pop_front() {
            self.entries.remove(&key);
        }
    }
}

/// What one verified message recorded; released when dropped unless accepted, so that an
/// abandoned request (an error, a cancelled future) never blocks the sender's retry.
#[derive(Debug)]
pub(super) struct Recorded {
    cache: Arc<Mutex<ReplayCache>>,
    tickets: Vec<(Key, u64)>,
    settled: std::sync::atomic::AtomicBool,
}

impl Recorded {
    pub(super) fn new(cache: Arc<Mutex<ReplayCache>>, tickets: Vec<(Key, u64)>) -> Self {
        Self {
            cache,
            tickets,
            settled: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Settles once: the first call wins.
    fn settle(&self) -> bool {
        !self.settled.swap(true, std::sync::atomic::Ordering::AcqRel)
    }

    pub(super) fn accept(&self) {
        if self.settle() {
            lock(&self.cache).accept(&self.tickets);
        }
    }

    pub(super) fn release(&self) {
        if self.settle() {
            lock(&self.cache).release(&self.tickets);
        }
    }
}

impl Drop for Recorded {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> (Key, Key) {
        (
            digest(&[name.as_bytes()]),
            digest(&[b"sig:", name.as_bytes()]),
        )
    }

    fn tickets(admission: Admission) -> Vec<(Key, u64)> {
        match admission {
            Admission::New(tickets) => tickets,
            Admission::Duplicate => panic!("duplicate"),
        }
    }

    /// S6: a full cache refuses new messages while its entries are inside the window; it
    /// never forgets one that a replay could still use.
    #[test]
    fn s6_a_full_cache_refuses_instead_of_evicting_entries_inside_the_window() {
        let mut cache = ReplayCache::new(1);
        let a = tickets(cache.admit(&[key("a")], 100, 0, true).unwrap());
        cache.accept(&a);
        assert!(matches!(
            cache.admit(&[key("b")], 101, 0, true),
            Err(HmacError::CacheFull)
        ));
        assert!(matches!(
            cache.admit(&[key("a")], 102, 0, true),
            Err(HmacError::Replayed)
        ));
        // Past the horizon the old entry goes, by age.
        assert!(cache.admit(&[key("b")], 800, 101, true).is_ok());
        assert_eq!(cache.len(), 1);
        // Without a timestamp window, entries go only to make room, oldest first and only
        // once past the horizon.
        let mut untimed = ReplayCache::new(1);
        let a = tickets(untimed.admit(&[key("a")], 100, 0, false).unwrap());
        untimed.accept(&a);
        assert!(untimed.admit(&[key("a")], 5000, 4000, false).is_err());
        assert!(untimed.admit(&[key("b")], 5000, 4000, false).is_ok());
    }

    /// M1: releasing is O(1) under the lock; tombstones are compacted in bulk.
    #[test]
    fn m1_release_leaves_tombstones_and_compacts_them() {
        let mut cache = ReplayCache::new(10_000);
        for i in 0..1000 {
            let t = tickets(cache.admit(&[key(&format!("k{i}"))], 1, 0, true).unwrap());
            cache.release(&t);
        }
        assert!(cache.is_empty());
        assert!(cache.order.len() <= 64 + 1, "{}", cache.order.len());
        // A released message can be recorded again, and a stale ticket does not remove the
        // new record.
        let old = tickets(cache.admit(&[key("x")], 1, 0, true).unwrap());
        cache.release(&old);
        let new = tickets(cache.admit(&[key("x")], 2, 0, true).unwrap());
        cache.release(&old);
        assert_eq!(cache.len(), 1);
        cache.accept(&new);
        assert!(matches!(
            cache.admit(&[key("x")], 3, 0, true),
            Err(HmacError::Replayed)
        ));
    }

    /// B1: the outcome is remembered: in flight, accepted (a retry signed anew is a
    /// duplicate), released (a retry passes).
    #[test]
    fn b1_outcomes_are_remembered() {
        let mut cache = ReplayCache::new(10);
        let (id, first_signature) = key("msg");
        let t = tickets(cache.admit(&[(id, first_signature)], 1, 0, true).unwrap());
        let resigned = (id, digest(&[b"another signature"]));
        assert!(matches!(
            cache.admit(&[resigned], 2, 0, true),
            Err(HmacError::InProgress)
        ));
        cache.accept(&t);
        assert!(matches!(
            cache.admit(&[resigned], 3, 0, true),
            Ok(Admission::Duplicate)
        ));
        assert!(matches!(
            cache.admit(&[(id, first_signature)], 3, 0, true),
            Err(HmacError::Replayed)
        ));

        let mut disabled = ReplayCache::new(0);
        assert!(disabled.admit(&[key("a")], 1, 0, true).is_ok());
        assert!(disabled.admit(&[key("a")], 1, 0, true).is_ok());
    }

    #[test]
    fn dropping_a_record_releases_it() {
        let cache = Arc::new(Mutex::new(ReplayCache::new(10)));
        let t = tickets(lock(&cache).admit(&[key("a")], 1, 0, true).unwrap());
        drop(Recorded::new(Arc::clone(&cache), t));
        assert!(lock(&cache).is_empty());
        let t = tickets(lock(&cache).admit(&[key("a")], 1, 0, true).unwrap());
        let recorded = Recorded::new(Arc::clone(&cache), t);
        recorded.accept();
        drop(recorded);
        assert_eq!(lock(&cache).len(), 1);
    }
}
