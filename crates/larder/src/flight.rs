//! Single-flight: concurrent misses for one key make one call to the service.
//!
//! The first miss becomes the leader and holds a [`FlightGuard`]; later misses for the same
//! key follow it and wait for its [`Landing`]. A leader that is dropped before landing (its
//! call failed, its client went away, its body broke) closes the channel, and each follower
//! goes back to the store and, if need be, leads a new flight: nobody waits on a dead leader.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use dashmap::DashMap;
use tokio::sync::watch;

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
}

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
    pub(crate) fn land(self, landing: Landing) {
        // The entry is already in the store; dropping `self` then takes the flight off the map.
        self.tx.send_replace(Some(landing));
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        self.flights
            .map
            .remove_if(&self.digest, |_, (id, _)| *id == self.id);
    }
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
        let waiter = tokio::spawn(wait(slot));
        guard.land(Landing::Uncacheable);
        assert!(matches!(waiter.await.unwrap(), Some(Landing::Uncacheable)));
        assert!(!flights.in_flight(&[1; 32]));

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
