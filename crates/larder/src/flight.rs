//! Single-flight: concurrent misses for one key make one call to the service.
//!
//! The first miss becomes the leader and holds a [`FlightGuard`]; later misses for the same
//! key follow it and wait for its [`Landing`]. A leader that is dropped before landing (its
//! call failed, its client went away, its body broke) closes the channel, and each follower
//! goes back to the store and, if need be, leads a new flight: nobody waits on a dead leader.
//!
//! A leader that stores to a network store lands first (its followers are answered at once)
//! and keeps the flight until the write has reached the store. A request that joins the flight
//! in between waits for the write, then reads the store like any other request: it neither
//! calls the service again nor skips an invalidation made meanwhile. And since a lookup sent
//! before the write may come back after it, the time of each write is kept for a store
//! deadline: a request whose lookup started before it reads the store again before leading.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use dashmap::DashMap;
use tokio::{sync::watch, time::Instant};

use crate::Entry;

/// How a flight ended.
#[derive(Debug, Clone)]
pub(crate) enum Landing {
    /// The leader stored this entry; followers may serve it (after checking `Vary`).
    Stored(Arc<Entry>),
    /// The leader's response may not be shared; followers ask the service themselves.
    Uncacheable,
}

type Slot = watch::Receiver<Option<Landing>>;

/// The flights in progress, by key digest.
#[derive(Debug, Default)]
pub(crate) struct Flights {
    map: DashMap<[u8; 32], (u64, Slot)>,
    ids: AtomicU64,
    /// When a flight's entry last reached a network store, by key digest; swept of records
    /// older than the store deadline once it grows past `sweep_at`.
    written: DashMap<[u8; 32], Instant>,
    sweep_at: AtomicUsize,
}

/// The size of the write records below which they are never swept.
const MIN_SWEEP: usize = 1024;

pub(crate) enum Join {
    Leader(FlightGuard),
    Follower(Slot),
}

impl Flights {
    pub(crate) fn join(self: &Arc<Self>, digest: [u8; 32]) -> Join {
        use dashmap::mapref::entry::Entry as MapEntry;
        match self.map.entry(digest) {
            MapEntry::Occupied(o) => Join::Follower(o.get().1.clone()),
            MapEntry::Vacant(v) => {
                let id = self.ids.fetch_add(1, Ordering::Relaxed);
                let (tx, rx) = watch::channel(None);
                v.insert((id, rx));
                Join::Leader(FlightGuard {
                    flights: Arc::clone(self),
                    digest,
                    id,
                    tx,
                })
            }
        }
    }

    /// Whether an entry for `digest` reached the store at or after `since` (so a lookup that
    /// started at `since` may have missed it).
    pub(crate) fn written_since(&self, digest: &[u8; 32], since: Instant) -> bool {
        self.written.get(digest).is_some_and(|at| *at >= since)
    }

    fn record_write(&self, digest: [u8; 32], keep: Duration) {
        let now = Instant::now();
        self.written.insert(digest, now);
        let len = self.written.len();
        if len > self.sweep_at.load(Ordering::Relaxed).max(MIN_SWEEP) {
            // No lookup outlives the store deadline: older records can no longer matter.
            self.written.retain(|_, at| now.duration_since(*at) < keep);
            self.sweep_at
                .store(self.written.len().saturating_mul(2), Ordering::Relaxed);
        }
    }

    #[cfg(test)]
    fn in_flight(&self, digest: &[u8; 32]) -> bool {
        self.map.contains_key(digest)
    }
}

/// Held by the leader of a flight. Landing or dropping it ends the flight.
#[derive(Debug)]
pub(crate) struct FlightGuard {
    flights: Arc<Flights>,
    digest: [u8; 32],
    id: u64,
    tx: watch::Sender<Option<Landing>>,
}

impl FlightGuard {
    /// Answers the followers. The flight stays on the map until the guard is dropped, which
    /// a leader does once its entry is in the store.
    pub(crate) fn land(&self, landing: Landing) {
        self.tx.send_replace(Some(landing));
    }

    /// Ends a flight whose entry has reached a network store, and keeps the time of that for
    /// `keep` (the store deadline), for lookups that were under way meanwhile.
    pub(crate) fn written(self, keep: Duration) {
        self.flights.record_write(self.digest, keep);
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        self.flights
            .map
            .remove_if(&self.digest, |_, (id, _)| *id == self.id);
    }
}

/// Whether the flight has landed (its entry may still be on its way to the store).
pub(crate) fn landed(slot: &Slot) -> bool {
    slot.borrow().is_some()
}

/// Waits until the leader lets go of the flight: its write to the store is over.
pub(crate) async fn released(mut slot: Slot) {
    while slot.changed().await.is_ok() {}
}

/// Waits for the leader. `None` when the leader went away without landing.
pub(crate) async fn wait(mut slot: Slot) -> Option<Landing> {
    loop {
        if let Some(landing) = slot.borrow_and_update().clone() {
            return Some(landing);
        }
        if slot.changed().await.is_err() {
            return slot.borrow().clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn followers_see_the_landing_and_dead_leaders_release_them() {
        let flights = Arc::new(Flights::default());
        let Join::Leader(guard) = flights.join([1; 32]) else {
            panic!("first is leader")
        };
        let Join::Follower(slot) = flights.join([1; 32]) else {
            panic!("second follows")
        };
        let before = Instant::now();
        let waiter = tokio::spawn(wait(slot));
        guard.land(Landing::Uncacheable);
        assert!(matches!(waiter.await.unwrap(), Some(Landing::Uncacheable)));
        // Landed but held (its write is on its way): a late joiner sees the landing, and is
        // released when the guard goes.
        let Join::Follower(late) = flights.join([1; 32]) else {
            panic!("a held flight is joined")
        };
        assert!(landed(&late));
        let release = tokio::spawn(released(late));
        assert!(!flights.written_since(&[1; 32], before));
        guard.written(Duration::from_secs(1));
        release.await.unwrap();
        assert!(!flights.in_flight(&[1; 32]));
        assert!(flights.written_since(&[1; 32], before));
        assert!(!flights.written_since(&[1; 32], Instant::now() + Duration::from_millis(1)));

        let Join::Leader(guard) = flights.join([2; 32]) else {
            panic!("leader")
        };
        let Join::Follower(slot) = flights.join([2; 32]) else {
            panic!("follower")
        };
        drop(guard);
        assert!(wait(slot).await.is_none());
        assert!(matches!(flights.join([2; 32]), Join::Leader(_)));
    }
}
