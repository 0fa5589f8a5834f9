//! The coalescer: concurrent misses for one key make one call, for every entry point (the
//! HTTP layer, background refreshes, and the typed API).
//!
//! The first miss for a key leads a flight and holds its [`Lead`]; later misses follow it and
//! wait for its [`FlightState`] to leave `Running` (moka's `ValueInitializer` keeps its waiters'
//! states the same way). A leader that is dropped before it lands (its call failed, its client
//! went away, its body broke) leaves the flight `Abandoned`, and each follower goes back to the
//! store and, if need be, leads a new flight: nobody waits on a dead leader.
//!
//! # What a follower may be answered with
//!
//! The visibility rule of the store holds for followers too: a request may be answered with a
//! leader's entry only if that entry's origin call started after every invalidation that
//! completed before the request started. Each request carries the store's stamp from when it
//! started ([`Ticket::since`]); a landed entry born at or after it passes at once, since no
//! invalidation can have come between. One born before it goes the way pingora's readers do
//! after a lock wait: the follower waits for the leader's write, then reads the store, which
//! applies the full rule (an invalidation of other tags does not hide it).
//!
//! A leader that stores to a network store lands first (its followers are answered at once)
//! and keeps the flight until the write has reached the store. A request that joins the flight
//! in between waits for the write, then reads the store like any other request (it neither
//! calls the service again nor skips an invalidation made meanwhile). And since a
//! lookup sent before the write may come back after it, the time of each write is kept for a
//! store deadline: a request whose lookup started before it reads the store again before leading.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use dashmap::DashMap;
use tokio::{sync::watch, time::Instant};

use crate::{Entry, reason::Alone};

/// How many times a request follows a flight that did not answer it before it asks the
/// service itself.
const MAX_FOLLOWS: usize = 3;

/// The size of the write records below which they are never swept.
const MIN_SWEEP: usize = 1024;

/// Where a flight is, as its followers see it.
#[derive(Debug, Clone)]
pub(crate) enum FlightState {
    /// The leader is asking the origin.
    Running,
    /// The leader has this entry; it is on its way to the store.
    Landed(Arc<Entry>),
    /// The leader's response may not be shared: followers ask for themselves.
    Uncacheable,
    /// The leader let go after landing this entry: it is in the store, or its write failed.
    Written(Arc<Entry>),
    /// The leader went away without an answer.
    Abandoned,
}

/// One flight in progress.
#[derive(Debug)]
struct Flight {
    id: u64,
    state: watch::Receiver<FlightState>,
}

/// The flights in progress, by key digest.
#[derive(Debug, Default)]
pub(crate) struct Coalescer {
    flights: DashMap<[u8; 32], Flight>,
    ids: AtomicU64,
    /// When a flight's entry last reached a network store, by key digest; swept of records
    /// older than the store deadline once it grows past `sweep_at`.
    written: DashMap<[u8; 32], Instant>,
    sweep_at: AtomicUsize,
}

/// What one request brings to the coalescer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket {
    /// The store's stamp when the request started (after its lookup): entries born before it
    /// may have been invalidated before the request started.
    pub(crate) since: u64,
    /// The longest a request waits for the flights it follows, all together (the collapse
    /// timeout).
    pub(crate) wait: Duration,
    /// Whether a new leader reads the store again before calling the service.
    pub(crate) recheck: Recheck,
}

/// Whether an entry may have reached the store since the request's lookup judged it a miss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recheck {
    /// Nothing can have crossed the lookup (or the request wants the origin anyway).
    Never,
    /// The lookup was not timed (an in-process store): read again.
    Always,
    /// A network lookup started then: read again if a write of this key completed since.
    IfWrittenSince(Instant),
}

/// What a request does about the flight for its key.
#[derive(Debug)]
pub(crate) enum Turn<V> {
    /// No flight was in progress: this request leads one.
    Lead(Lead),
    /// The leader's entry, which passed the visibility check for this request.
    Shared(Arc<Entry>),
    /// What the store held when the request read it again: as a new leader, or after a
    /// flight. `waited`: the request joined the flight while its call to the service ran, so
    /// its answer came from another request's call (through the store); not for a new leader,
    /// nor for a request that joined a flight already answered (it waited for the store's
    /// write only).
    Found { value: V, waited: bool },
    /// The request asks the service itself, for this reason.
    Alone(Alone),
}

/// Held by the leader of a flight. Landing and dropping it ends the flight.
#[derive(Debug)]
pub(crate) struct Lead {
    coalescer: Arc<Coalescer>,
    digest: [u8; 32],
    id: u64,
    state: watch::Sender<FlightState>,
}

enum Joined {
    Lead(Lead),
    Follow(watch::Receiver<FlightState>),
}

impl Coalescer {
    fn join(self: &Arc<Self>, digest: [u8; 32]) -> Joined {
        use dashmap::mapref::entry::Entry as MapEntry;
        match self.flights.entry(digest) {
            MapEntry::Occupied(o) => Joined::Follow(o.get().state.clone()),
            MapEntry::Vacant(v) => {
                let id = self.ids.fetch_add(1, Ordering::Relaxed);
                let (tx, rx) = watch::channel(FlightState::Running);
                v.insert(Flight { id, state: rx });
                Joined::Lead(Lead {
                    coalescer: Arc::clone(self),
                    digest,
                    id,
                    state: tx,
                })
            }
        }
    }

    /// Leads a flight for `digest` if none is in progress (a background refresh, which never
    /// waits for another).
    pub(crate) fn try_lead(self: &Arc<Self>, digest: [u8; 32]) -> Option<Lead> {
        match self.join(digest) {
            Joined::Lead(lead) => Some(lead),
            Joined::Follow(_) => None,
        }
    }

    /// Leads a flight for `digest`, or takes what a flight in progress already has, without
    /// waiting (a batch: waiting for flights while leading others could deadlock two batches).
    /// `None`: a flight is running and its entry is not known yet.
    pub(crate) fn lead_or_peek(
        self: &Arc<Self>,
        digest: [u8; 32],
        since: u64,
    ) -> Option<Result<Lead, Arc<Entry>>> {
        match self.join(digest) {
            Joined::Lead(lead) => Some(Ok(lead)),
            Joined::Follow(state) => match &*state.borrow() {
                FlightState::Landed(entry) if entry.born >= since => Some(Err(Arc::clone(entry))),
                _ => None,
            },
        }
    }

    /// Takes a request's turn for `digest`: leads a flight, or follows the one in progress
    /// and is answered with what it shares, or with what the store then holds. `reread` reads
    /// the store as a lookup would and returns the entry and its value if one may be served.
    pub(crate) async fn take_turn<V, R, Fut>(
        self: &Arc<Self>,
        digest: [u8; 32],
        ticket: Ticket,
        mut reread: R,
    ) -> Turn<V>
    where
        R: FnMut() -> Fut,
        Fut: Future<Output = Option<(Arc<Entry>, V)>>,
    {
        // One deadline for the whole turn, however many flights it follows.
        let deadline = Instant::now() + ticket.wait;
        let mut follows = 0;
        loop {
            let state = match self.join(digest) {
                Joined::Lead(lead) => {
                    // An entry may have reached the store after this request's lookup: read
                    // again, holding the flight so that no other starts meanwhile, and land
                    // what is there for any follower.
                    if self.crossed(&digest, ticket.recheck) {
                        if let Some((entry, value)) = reread().await {
                            lead.land(entry);
                            return Turn::Found {
                                value,
                                waited: false,
                            };
                        }
                    }
                    return Turn::Lead(lead);
                }
                Joined::Follow(state) => state,
            };
            match follow(state, ticket.since, deadline, &mut reread).await {
                Ok(turn) => return turn,
                Err(why) if follows == MAX_FOLLOWS => return Turn::Alone(why),
                Err(_) => follows += 1,
            }
        }
    }

    /// Whether an entry for `digest` may have reached the store after the lookup `recheck`
    /// describes.
    fn crossed(&self, digest: &[u8; 32], recheck: Recheck) -> bool {
        match recheck {
            Recheck::Never => false,
            Recheck::Always => true,
            Recheck::IfWrittenSince(since) => {
                self.written.get(digest).is_some_and(|at| *at >= since)
            }
        }
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
        self.flights.contains_key(digest)
    }
}

impl Lead {
    /// Answers the followers with the leader's entry. The flight stays on the map until the
    /// lead is dropped, which a leader does once its entry is in the store.
    pub(crate) fn land(&self, entry: Arc<Entry>) {
        self.state.send_replace(FlightState::Landed(entry));
    }

    /// Tells the followers at once that the response cannot be shared.
    pub(crate) fn uncacheable(&self) {
        self.state.send_replace(FlightState::Uncacheable);
    }

    /// Ends a flight whose entry has reached a network store, and keeps the time of that for
    /// `keep` (the store deadline), for lookups that were under way meanwhile.
    pub(crate) fn written(self, keep: Duration) {
        self.coalescer.record_write(self.digest, keep);
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        self.coalescer
            .flights
            .remove_if(&self.digest, |_, flight| flight.id == self.id);
        self.state.send_modify(|state| {
            *state = match std::mem::replace(state, FlightState::Abandoned) {
                FlightState::Running => FlightState::Abandoned,
                FlightState::Landed(entry) => FlightState::Written(entry),
                other => other,
            }
        });
    }
}

/// Follows a flight: `Ok` with the request's answer, or `Err` when the flight gave none and
/// the request may take its turn again (the reason is its answer once it may not).
async fn follow<V, R, Fut>(
    state: watch::Receiver<FlightState>,
    since: u64,
    deadline: Instant,
    reread: &mut R,
) -> Result<Turn<V>, Alone>
where
    R: FnMut() -> Fut,
    Fut: Future<Output = Option<(Arc<Entry>, V)>>,
{
    // A flight that had landed before this request joined: its entry is on its way to the
    // store, which is then the truth for this request like for any other.
    let late = !matches!(*state.borrow(), FlightState::Running);
    let Ok((settled, state)) = tokio::time::timeout_at(deadline, settle(state)).await else {
        return Ok(Turn::Alone(Alone::CollapseTimeout));
    };
    match settled {
        FlightState::Landed(entry) | FlightState::Written(entry)
            if !late && entry.born >= since =>
        {
            Ok(Turn::Shared(entry))
        }
        // Joined late, or born before an invalidation this request must see: wait for the
        // write, then read the store like any lookup.
        FlightState::Landed(_) | FlightState::Written(_) => {
            let _ = tokio::time::timeout_at(deadline, released(state)).await;
            match reread().await {
                // Joined while the call ran: it waited for the service (a late joiner only
                // waited for the store's write).
                Some((_, value)) => Ok(Turn::Found {
                    value,
                    waited: !late,
                }),
                None => Err(Alone::WritePending),
            }
        }
        FlightState::Uncacheable => Ok(Turn::Alone(Alone::Uncollapsible)),
        // The leader went away without an answer: try to lead.
        FlightState::Abandoned | FlightState::Running => Err(Alone::LeaderLost),
    }
}

/// Waits until the flight has left `Running`; returns where it is and the receiver.
async fn settle(
    mut state: watch::Receiver<FlightState>,
) -> (FlightState, watch::Receiver<FlightState>) {
    loop {
        let now = state.borrow_and_update().clone();
        if !matches!(now, FlightState::Running) {
            return (now, state);
        }
        if state.changed().await.is_err() {
            // The sender is gone: its drop wrote the final state.
            let last = state.borrow().clone();
            let last = match last {
                FlightState::Running => FlightState::Abandoned,
                other => other,
            };
            return (last, state);
        }
    }
}

/// Waits until the leader lets go of the flight: its write to the store is over.
async fn released(mut state: watch::Receiver<FlightState>) {
    loop {
        if matches!(
            *state.borrow_and_update(),
            FlightState::Written(_) | FlightState::Abandoned
        ) {
            return;
        }
        if state.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(born: u64) -> Arc<Entry> {
        let mut e = Entry::for_tests();
        e.born = born;
        Arc::new(e)
    }

    fn ticket(since: u64) -> Ticket {
        Ticket {
            since,
            wait: Duration::from_secs(5),
            recheck: Recheck::Never,
        }
    }

    async fn nothing() -> Option<(Arc<Entry>, ())> {
        None
    }

    #[tokio::test]
    async fn followers_share_the_landing_and_dead_leaders_release_them() {
        let co = Arc::new(Coalescer::default());
        let Turn::Lead(lead) = co.take_turn([1; 32], ticket(0), nothing).await else {
            panic!("first leads")
        };
        let follower = tokio::spawn({
            let co = Arc::clone(&co);
            async move { co.take_turn([1; 32], ticket(0), nothing).await }
        });
        tokio::task::yield_now().await;
        lead.land(entry(0));
        assert!(matches!(follower.await.unwrap(), Turn::Shared(_)));
        let before = Instant::now();
        assert!(!co.crossed(&[1; 32], Recheck::IfWrittenSince(before)));
        lead.written(Duration::from_secs(1));
        assert!(!co.in_flight(&[1; 32]));
        assert!(co.crossed(&[1; 32], Recheck::IfWrittenSince(before)));
        assert!(!co.crossed(
            &[1; 32],
            Recheck::IfWrittenSince(Instant::now() + Duration::from_millis(1))
        ));

        // A leader dropped without landing: its follower leads the next flight.
        let Turn::Lead(lead) = co.take_turn([2; 32], ticket(0), nothing).await else {
            panic!("leader")
        };
        let follower = tokio::spawn({
            let co = Arc::clone(&co);
            async move { co.take_turn([2; 32], ticket(0), nothing).await }
        });
        tokio::task::yield_now().await;
        drop(lead);
        assert!(matches!(follower.await.unwrap(), Turn::Lead(_)));
    }

    #[tokio::test]
    async fn a_landing_born_before_the_followers_stamp_is_read_from_the_store() {
        let co = Arc::new(Coalescer::default());
        let Turn::Lead(lead) = co.take_turn([3; 32], ticket(4), nothing).await else {
            panic!("leader")
        };
        // This follower started after an invalidation stamped 5: the leader's entry, born
        // at 4, is not shared; the store says what may be served.
        let follower = tokio::spawn({
            let co = Arc::clone(&co);
            async move {
                co.take_turn([3; 32], ticket(5), || async { Some((entry(6), 6u64)) })
                    .await
            }
        });
        tokio::task::yield_now().await;
        lead.land(entry(4));
        drop(lead);
        assert!(matches!(
            follower.await.unwrap(),
            Turn::Found {
                value: 6,
                waited: true
            }
        ));
    }

    #[tokio::test]
    async fn an_uncacheable_landing_releases_followers_at_once() {
        let co = Arc::new(Coalescer::default());
        let Turn::Lead(lead) = co.take_turn([4; 32], ticket(0), nothing).await else {
            panic!("leader")
        };
        let follower = tokio::spawn({
            let co = Arc::clone(&co);
            async move { co.take_turn([4; 32], ticket(0), nothing).await }
        });
        tokio::task::yield_now().await;
        lead.uncacheable();
        assert!(matches!(
            follower.await.unwrap(),
            Turn::Alone(Alone::Uncollapsible)
        ));
        drop(lead);
    }
}
