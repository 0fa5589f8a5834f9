//! The in-process store: bounded by bytes, expiring entries, O(1) tag invalidation.
//!
//! Entries live in a [`quick_cache`] map (S3-FIFO eviction, weighted by bytes): its lookups
//! cost a fraction of moka's, and they are the hit path. An entry is kept until its freshness
//! and stale windows have passed (at most `max_ttl`); one past that is never served, and is
//! dropped when it is next read or when space is needed (an entry no longer read soon goes).
//! The map has few enough shards for each to hold 16 MiB, so an entry of up to about 15 MiB
//! (or about the whole store, if it is smaller) is kept whatever the number of cores. Tag
//! records live in a moka cache, which expires them and reports the ones it evicts for space.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use moka::notification::RemovalCause;
// Real time, like the stores outside the process: a paused test clock moves freshness, which
// the layer judges, not how long the store keeps an entry.
use std::time::Instant as Deadline;

use super::{Entries, Invalidation, Marks, Read, Store, StoreFuture, Usage};
use crate::{CacheKey, Entry};

const DEFAULT_CAPACITY: u64 = 256 * 1024 * 1024;
const DEFAULT_MAX_TTL: Duration = Duration::from_secs(24 * 60 * 60);
const DEFAULT_MAX_TAGS: u64 = 1_000_000;

/// An in-process store, the embedded default.
///
/// Entries are bounded by their total size in bytes and expire when their freshness and stale
/// windows have passed. Invalidating a tag writes one record (the tag's invalidation stamp);
/// reads compare it with the entry's birth stamp, so the cost does not depend on how many
/// entries carry the tag. A handle is a cheap `Clone`.
///
/// ```
/// use larder::MemoryStore;
///
/// let store = MemoryStore::builder()
///     .max_capacity(64 * 1024 * 1024)
///     .max_ttl(std::time::Duration::from_secs(3600))
///     .build();
/// # let _ = store;
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    shared: Arc<MemoryState>,
}

struct MemoryState {
    /// Keys are BLAKE3 digests already: a fast hash seeded per process spreads them (SipHash
    /// would cost more than the rest of the lookup).
    entries: quick_cache::sync::Cache<[u8; 32], Held, ByWeight, foldhash::fast::RandomState>,
    /// Tag -> stamp of its last invalidation. Records outlive every entry they could hide
    /// (`max_ttl` plus a margin); one evicted for space raises `floor` instead, so no entry
    /// it hid becomes visible again.
    tags: moka::sync::Cache<Arc<str>, u64>,
    max_ttl: Duration,
    /// The invalidation counter; stamps are its values.
    counter: AtomicU64,
    /// Entries born before this stamp are unreachable (purge, or a tag record lost to space).
    floor: Arc<AtomicU64>,
    /// The highest stamp any tag invalidation wrote: entries born at or after it need no tag checks.
    last_tagged: AtomicU64,
}

/// Builds a [`MemoryStore`].
#[derive(Debug, Clone)]
pub struct MemoryStoreBuilder {
    capacity: u64,
    max_ttl: Duration,
    max_tags: u64,
}

impl MemoryStore {
    /// A store holding at most `max_capacity` bytes of entries.
    pub fn new(max_capacity: u64) -> Self {
        Self::builder().max_capacity(max_capacity).build()
    }

    /// Starts a builder with the defaults: 256 MiB, entries kept at most a day, a million tag records.
    pub fn builder() -> MemoryStoreBuilder {
        MemoryStoreBuilder {
            capacity: DEFAULT_CAPACITY,
            max_ttl: DEFAULT_MAX_TTL,
            max_tags: DEFAULT_MAX_TAGS,
        }
    }

    /// Number of entries held (expired ones count until they are read or evicted).
    pub fn entry_count(&self) -> u64 {
        self.shared.entries.len() as u64
    }

    /// Total weight of the entries held, in bytes (approximate).
    pub fn weighted_size(&self) -> u64 {
        self.shared.entries.weight()
    }

    fn next_stamp(&self) -> u64 {
        self.shared.counter.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// What the invalidation records say about `entry`: the tags' stamps are looked up only
    /// when a tag was invalidated after the entry was born.
    fn marks(&self, entry: &Entry) -> Marks {
        let s = &self.shared;
        let floor = s.floor.load(Ordering::Acquire);
        let newest = s.last_tagged.load(Ordering::Acquire);
        if newest <= entry.born {
            return Marks::newest_tag_invalidation(floor, newest);
        }
        let stamps = entry.tags.iter().map(|t| s.tags.get(&**t).unwrap_or(0));
        Marks::tag_stamps(floor, stamps)
    }

    fn is_visible(&self, entry: &Entry) -> bool {
        self.marks(entry).allow(entry)
    }

    /// Records an invalidation stamped by another store's clock (the tiered store's L2), so
    /// entries born from that clock compare against it.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // used by the tiered store
    pub(crate) fn invalidate_at(&self, tags: &[String], stamp: u64) {
        for tag in tags {
            // Keep the highest stamp: two invalidations may arrive out of order.
            self.shared
                .tags
                .entry(Arc::from(tag.as_str()))
                .and_compute_with(|old| {
                    let keep = old.map_or(stamp, |o| (*o.value()).max(stamp));
                    moka::ops::compute::Op::Put(keep)
                });
        }
        self.shared.last_tagged.fetch_max(stamp, Ordering::AcqRel);
    }

    /// Hides every entry born before `stamp` (a purge stamped by another store's clock).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // used by the tiered store
    pub(crate) fn purge_at(&self, stamp: u64) {
        self.shared.floor.fetch_max(stamp, Ordering::AcqRel);
    }

    /// Stores an entry unless its tags were invalidated after it was born.
    pub(crate) fn insert(&self, key: &CacheKey, entry: Arc<Entry>) {
        if self.is_visible(&entry) {
            let keep = entry.time_to_keep(entry.stored_at).min(self.shared.max_ttl);
            if keep.is_zero() {
                return;
            }
            let until = Deadline::now() + keep;
            self.shared
                .entries
                .insert(*key.digest(), Held { entry, until });
        }
    }

    pub(crate) fn delete(&self, key: &CacheKey) {
        self.shared.entries.remove(key.digest());
    }

    /// Drops every entry (the tag records stay).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // used by the tiered store
    pub(crate) fn clear(&self) {
        self.shared.entries.clear();
    }

    /// Reads `key`: the entry and its marks. One kept past its time, or hidden by an
    /// invalidation, is removed and is a miss.
    pub(crate) fn read(&self, key: &CacheKey) -> Read {
        let Some(held) = self.shared.entries.get(key.digest()) else {
            return Read::miss();
        };
        if held.until > Deadline::now() {
            let marks = self.marks(&held.entry);
            if marks.allow(&held.entry) {
                return Read::new(Some(held.entry), marks);
            }
        }
        // Past its time or hidden by an invalidation: it will never be served again. Only the
        // entry read goes: a fresh one stored meanwhile stays.
        self.shared
            .entries
            .remove_if(key.digest(), |h| Arc::ptr_eq(&h.entry, &held.entry));
        Read::miss()
    }
}

impl MemoryStoreBuilder {
    /// The most bytes of entries kept; the least recently used go first.
    pub fn max_capacity(mut self, bytes: u64) -> Self {
        self.capacity = bytes;
        self
    }

    /// The longest any entry is kept, whatever its headers say.
    pub fn max_ttl(mut self, ttl: Duration) -> Self {
        self.max_ttl = ttl;
        self
    }

    /// The most tag invalidation records kept. When one is evicted for space, every entry
    /// older than it becomes unreachable, which is safe but costs hits.
    pub fn max_tags(mut self, n: u64) -> Self {
        self.max_tags = n;
        self
    }

    /// Builds the store.
    pub fn build(self) -> MemoryStore {
        let max_ttl = self.max_ttl;
        // About 2 KiB per entry; the table grows if entries are smaller.
        let estimated = usize::try_from(self.capacity / 2048)
            .unwrap_or(usize::MAX)
            .clamp(64, 1 << 20);
        let shards = shards_for(self.capacity);
        let options = quick_cache::OptionsBuilder::new()
            .shards(shards)
            .estimated_items_capacity(estimated)
            .weight_capacity(self.capacity)
            .build()
            .expect("valid quick_cache options");
        let entries = quick_cache::sync::Cache::with_options(
            options,
            ByWeight,
            foldhash::fast::RandomState::default(),
            Default::default(),
        );
        let floor = Arc::new(AtomicU64::new(0));
        let raise = Arc::clone(&floor);
        let tags = moka::sync::Cache::builder()
            .max_capacity(self.max_tags)
            // Longer than any entry lives, so a record never expires before what it hides.
            .time_to_live(max_ttl + Duration::from_secs(60))
            .eviction_listener(move |_tag, stamp: u64, cause| {
                if cause == RemovalCause::Size {
                    raise.fetch_max(stamp, Ordering::AcqRel);
                }
            })
            .build();
        MemoryStore {
            shared: Arc::new(MemoryState {
                entries,
                tags,
                max_ttl,
                counter: AtomicU64::new(0),
                floor,
                last_tagged: AtomicU64::new(0),
            }),
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::builder().build()
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.entry_count())
            .field("bytes", &self.weighted_size())
            .finish()
    }
}

/// The least capacity of a shard of the entries map. quick_cache splits the capacity evenly
/// over its shards and keeps no entry heavier than (almost) one shard, so the shards are made
/// few enough for each to hold 16 MiB (or the whole store, if smaller): an entry up to about
/// 15 MiB is kept whatever the number of cores.
const SHARD_BYTES: u64 = 16 * 1024 * 1024;

/// A power of two, at most four per core, such that each shard holds `SHARD_BYTES`.
fn shards_for(capacity: u64) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let wanted = usize::try_from(capacity / SHARD_BYTES)
        .unwrap_or(usize::MAX)
        .clamp(1, cores.saturating_mul(4));
    // The largest power of two not above `wanted`: shards never hold less than SHARD_BYTES.
    1 << wanted.ilog2()
}

/// An entry and the time it may be kept until.
#[derive(Clone)]
struct Held {
    entry: Arc<Entry>,
    until: Deadline,
}

/// Weighs entries by their size in bytes.
#[derive(Clone)]
struct ByWeight;

impl quick_cache::Weighter<[u8; 32], Held> for ByWeight {
    fn weight(&self, _key: &[u8; 32], held: &Held) -> u64 {
        u64::from(held.entry.weight())
    }
}

impl Entries for MemoryStore {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn get(&self, key: &CacheKey) -> StoreFuture<Read> {
        StoreFuture::ready(Ok(self.read(key)))
    }

    fn get_many(&self, keys: &[CacheKey]) -> StoreFuture<Vec<Read>> {
        StoreFuture::ready(Ok(keys.iter().map(|k| self.read(k)).collect()))
    }

    fn put(&self, key: CacheKey, entry: Arc<Entry>) -> StoreFuture<()> {
        // An entry whose tags were invalidated while its origin call ran is already stale.
        self.insert(&key, entry);
        StoreFuture::ready(Ok(()))
    }

    fn remove(&self, key: &CacheKey) -> StoreFuture<()> {
        self.delete(key);
        StoreFuture::ready(Ok(()))
    }
}

impl Invalidation for MemoryStore {
    fn stamp(&self) -> u64 {
        self.shared.counter.load(Ordering::Acquire)
    }

    fn invalidate_tags(&self, tags: Vec<String>) -> StoreFuture<()> {
        if !tags.is_empty() {
            let stamp = self.next_stamp();
            for tag in tags {
                self.shared.tags.insert(Arc::from(tag), stamp);
            }
            self.shared.last_tagged.fetch_max(stamp, Ordering::AcqRel);
        }
        StoreFuture::ready(Ok(()))
    }

    fn purge(&self) -> StoreFuture<()> {
        let stamp = self.next_stamp();
        self.shared.floor.fetch_max(stamp, Ordering::AcqRel);
        self.shared.entries.clear();
        StoreFuture::ready(Ok(()))
    }
}

/// One process's store: no fill lock.
impl Store for MemoryStore {
    fn usage(&self) -> Option<Usage> {
        let entries = &self.shared.entries;
        Some(Usage {
            entries: entries.len() as u64,
            bytes: entries.weight(),
            l1_reads: None,
            l2_reads: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_a_power_of_two_and_hold_16_mib_each() {
        for capacity in [
            0,
            1,
            1 << 20,
            16 << 20,
            17 << 20,
            64 << 20,
            256 << 20,
            1 << 40,
        ] {
            let shards = shards_for(capacity);
            assert!(shards.is_power_of_two(), "{capacity}: {shards}");
            assert!(
                shards == 1 || capacity / shards as u64 >= SHARD_BYTES,
                "{capacity}: {shards}"
            );
        }
        assert_eq!(shards_for(1 << 20), 1);
    }
}
