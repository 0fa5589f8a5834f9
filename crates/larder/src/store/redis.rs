//! The Redis store: one shared multiplexed connection, single node or Cluster.
//!
//! Entries are [`codec`](crate::codec) envelopes under `{ns}:e:{label}:{digest}` (on a Cluster,
//! `{ns}:{<shard>}:e:...`, see `Shard`), written with `SET .. PX` so Redis reclaims them when
//! they have outlived their freshness and stale windows.
//!
//! Invalidation uses a logical clock kept in Redis, `{ns}:clock`: each invalidation takes its
//! next value, and each invalidated tag records it (`{ns}:t:{hash of the tag}`, raised with a
//! one-key script so it never goes backwards, expiring after the longest entry lifetime);
//! a purge records it in the purge floor, `{ns}:floor`. A lookup reads the entry, the floor and
//! the clock in one `MGET` (or, while Redis tracks the two for a single-node store, only the
//! entry: see `Tracking`), and the clock it saw becomes the birth stamp of whatever the origin
//! call that follows returns. An entry is hidden when it was born before the floor or before
//! the stamp of one of its tags; while the clock has not moved since an entry was born, its
//! tags need no lookup at all (otherwise one more `MGET`). No instance's wall clock is
//! involved, so clock skew between instances cannot resurrect or hide anything, and the clock
//! is seeded from the server's `TIME` so it keeps rising even after Redis restarts empty or
//! evicts it (a lookup that finds it missing seeds it again, above every stamp, so every
//! entry's tags are checked; a missing tag record or purge floor hides, see `ENSURE` and
//! `restore_floor`).
//!
//! On a Cluster, every lookup reading the same two keys would send every read to the masters
//! that hold them. So a Cluster namespace is split in `CLUSTER_SHARDS` shards spread evenly over
//! the slots, each with its entries, its floor and a copy of the clock under one hash tag: a
//! lookup is one `MGET` on the master of its entry's slot, and an invalidation raises every
//! shard's clock (one round trip per master).
//!
//! No `KEYS` or `SCAN`; every multi-key command is one the Cluster client splits by slot and
//! every script touches one slot, so it works on Cluster too (user input never reaches a
//! `{hash tag}`).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU8, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use redis::{
    Client, FromRedisValue, RedisError, Script, ScriptInvocation, aio::ConnectionManager,
    aio::ConnectionManagerConfig, cluster::ClusterClient, cluster_async::ClusterConnection,
};

use super::{
    Entries, FillLock, Invalidation, Marks, Read, Store, StoreError, StoreErrorKind, StoreFuture,
};
use bytes::Bytes;

use crate::{CacheKey, Entry, codec};

const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_millis(500);
const DEFAULT_CONNECTION_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_MAX_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// Tag timestamps outlive every entry they can hide, with room for a slow origin call.
const TAG_MARGIN: Duration = Duration::from_secs(60 * 60);

/// Advances the logical clock and returns its new value; when `ARGV[1]` names a channel,
/// publishes `{"stamp":<value>` followed by `ARGV[2]` on it in the same atomic step, so the
/// backplane carries invalidations in the order of their stamps. A missing clock (a new or
/// restarted Redis) starts from the server time in microseconds, above any value it had before.
const TICK: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then
  local t = redis.call('TIME')
  redis.call('SET', KEYS[1], tonumber(t[1]) * 1000000 + tonumber(t[2]))
end
local n = redis.call('INCR', KEYS[1])
if ARGV[1] and ARGV[1] ~= '' then
  redis.call('PUBLISH', ARGV[1], '{"stamp":' .. string.format('%d', n) .. ARGV[2])
end
return n
"#;

/// Publishes the current clock as a sync message (`{"stamp":<clock>` followed by `ARGV[2]`):
/// every invalidation stamped at or below it was published before it.
const SYNC: &str = r#"
local n = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
redis.call('PUBLISH', ARGV[1], '{"stamp":' .. string.format('%d', n) .. ARGV[2])
return n
"#;

/// Raises a stamp key to `ARGV[1]` if it is lower, and (when `ARGV[2]` > 0) sets its expiry.
const RAISE: &str = r"
local cur = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local new = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
if new > cur then
  if ttl > 0 then redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl) else redis.call('SET', KEYS[1], ARGV[1]) end
elseif ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return 1
";

/// Raises a shard's clock (`KEYS[1]`) and, when given, its purge floor (`KEYS[2]`, same slot)
/// to `ARGV[1]` where they are lower, and returns the clock.
const MARKS: &str = r"
local new = tonumber(ARGV[1])
local function raise(key)
  local cur = tonumber(redis.call('GET', key) or '0') or 0
  if new > cur then
    redis.call('SET', key, ARGV[1])
    return new
  end
  return cur
end
local clock = raise(KEYS[1])
if KEYS[2] then raise(KEYS[2]) end
return clock
";

/// Makes sure a tag's record exists (at stamp 0 if it did not) for at least `ARGV[1]` ms: an
/// entry is written only once every tag it carries has a record, so a record missing later
/// was evicted and hides the entry instead of reviving it.
const ENSURE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SET', KEYS[1], '0', 'PX', ARGV[1])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return 1
";

/// Deletes a lock only if it still holds the caller's token (a holder whose lock expired
/// must not delete the next holder's).
const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// A store in Redis, shared by every instance of a service.
///
/// ```no_run
/// # async fn demo() -> Result<(), larder::StoreError> {
/// use larder::{CacheHandle, store::RedisStore};
///
/// let store = RedisStore::builder("redis://cache:6379/").namespace("dashboard").build().await?;
/// let cache = CacheHandle::new(store);
/// # let _ = cache; Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    shared: Arc<RedisState>,
}

struct RedisState {
    conn: Conn,
    /// For the backplane's own connection (pub/sub needs a dedicated one).
    pubsub: Client,
    prefix: String,
    bus: String,
    /// The clock every invalidation ticks (`{ns}:clock`): its stamps order invalidations and
    /// are published on the backplane.
    clock_key: String,
    /// Where entries live and the marks that judge them: one shard (whose clock is
    /// `clock_key`) on a single node, `CLUSTER_SHARDS` on a Cluster.
    shards: Box<[Shard]>,
    /// The newest clock value any lookup saw: the birth stamp of the next origin call.
    observed: AtomicU64,
    /// Whether invalidations are published on the backplane (a tiered store listens).
    publishes: std::sync::atomic::AtomicBool,
    max_ttl: Duration,
    compress_over: usize,
    raise: Script,
    marks: Script,
    ensure: Script,
    tick: Script,
    sync: Script,
    unlock: Script,
    /// Makes lock tokens unique to this store instance.
    token_seed: String,
    tokens: AtomicU64,
    /// The floor and the clock as Redis last told them, kept current by its tracking pushes.
    tracking: Arc<Tracking>,
    /// The RESP3 client of the tracked connection (`None`: no tracking).
    tracked_client: Option<Client>,
    /// The tracked connection, once tracking is on (read on every hit: no lock).
    tracked: arc_swap::ArcSwapOption<redis::aio::MultiplexedConnection>,
    /// Connection and response timeouts for the tracked connection.
    timeouts: (Duration, Duration),
}

/// Shards of a Cluster namespace. Each shard's hash tag falls in the middle of its own
/// sixteenth of the 16,384 slots, so a Cluster whose masters hold equal ranges (as
/// `redis-cli --cluster create` makes them) holds equal numbers of shards: 5, 6 and 5 of them
/// on 3 masters, 4 each on 4.
const CLUSTER_SHARDS: usize = 16;
/// Slots in a Redis Cluster.
const SLOTS: u16 = 16_384;

/// One shard of a namespace: its entries, and the purge floor and clock that judge them, all in
/// one hash slot, so that a lookup reads the three from one node in one `MGET`. A single node
/// has one shard (`{ns}:e:`, `{ns}:floor`, and the invalidations' own clock `{ns}:clock`); a
/// Cluster has `CLUSTER_SHARDS`, `{ns}:{<tag>}:...`, and no key every lookup reads.
///
/// A shard's clock is raised to each invalidation's stamp after the invalidations' clock is
/// ticked, so it is never ahead of it: a birth stamp read from it is older than any
/// invalidation that had not ticked when it was read (the entry is hidden by it), and once an
/// invalidation has completed every shard's clock is at or past its stamp (an entry born
/// before it has its tags looked up).
struct Shard {
    entries: String,
    floor: String,
    clock: String,
}

impl Shard {
    fn single(prefix: &str) -> Shard {
        Shard {
            entries: format!("{prefix}e:"),
            floor: format!("{prefix}floor"),
            clock: format!("{prefix}clock"),
        }
    }

    /// The shards of a Cluster namespace.
    fn cluster(prefix: &str) -> Box<[Shard]> {
        (0..CLUSTER_SHARDS)
            .map(|i| {
                let tag = hash_tag_near(Self::slot_of_shard(i));
                Shard {
                    entries: format!("{prefix}{{{tag}}}:e:"),
                    floor: format!("{prefix}{{{tag}}}:floor"),
                    clock: format!("{prefix}{{{tag}}}:clock"),
                }
            })
            .collect()
    }

    /// The slot in the middle of shard `i`'s range.
    fn slot_of_shard(i: usize) -> u16 {
        let width = usize::from(SLOTS) / CLUSTER_SHARDS;
        u16::try_from(i * width + width / 2).unwrap_or(0)
    }
}

/// The first hash tag (`s0`, `s1`, ...) whose slot is within 32 of `slot` (about one candidate
/// in 256 is; the search is done once, when the store is built).
fn hash_tag_near(slot: u16) -> String {
    (0u32..)
        .map(|n| format!("s{n}"))
        .find(|tag| key_slot(tag.as_bytes()).abs_diff(slot) <= 32)
        .unwrap_or_default()
}

/// The Cluster slot of a key without a hash tag (CRC16/XMODEM modulo 16,384).
fn key_slot(key: &[u8]) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(key) % SLOTS
}

/// Server-assisted tracking of `{ns}:floor` and `{ns}:clock` (RESP3 `CLIENT TRACKING ON BCAST`):
/// Redis pushes an invalidation on this connection whenever either changes, queued before it
/// answers the command that changed it. redis-rs hands pushes to [`Tracking::push`] in its read
/// loop, before the replies that follow them, so once a `GET` has been answered every change
/// made before it was executed has bumped `generation`. A hit whose `generation` did not move
/// since the floor and clock were learned may use them: one `GET`, and no read of the two keys
/// every instance would otherwise read on every hit (the Cluster's hot slots).
#[derive(Default)]
struct Tracking {
    /// Bumped by every push about the two keys and by every disconnection.
    generation: AtomicU64,
    /// Bumped by every disconnection (tracking ends with its connection).
    disconnects: AtomicU64,
    state: AtomicU8,
    /// The generation the known floor and clock belong to; `u64::MAX` while none (or while
    /// they are being written).
    known_generation: AtomicU64,
    known_floor: AtomicU64,
    known_clock: AtomicU64,
}

/// `Tracking::state`: not enabled on this connection yet.
const TRACKING_OFF: u8 = 0;
const TRACKING_ENABLING: u8 = 1;
const TRACKING_ON: u8 = 2;
/// Not possible here (a Cluster, a RESP2 connection, an ACL without `CLIENT`, an old Redis).
const TRACKING_UNSUPPORTED: u8 = 3;

impl Tracking {
    fn new(state: u8) -> Self {
        Tracking {
            state: AtomicU8::new(state),
            known_generation: AtomicU64::new(u64::MAX),
            ..Tracking::default()
        }
    }

    /// What redis-rs's read loop hands over: an invalidation of one of the two keys (the only
    /// prefixes tracked), or the end of the connection.
    fn push(&self, info: &redis::PushInfo) {
        match info.kind {
            redis::PushKind::Invalidate => {
                self.generation.fetch_add(1, Ordering::AcqRel);
            }
            redis::PushKind::Disconnection => {
                self.disconnects.fetch_add(1, Ordering::AcqRel);
                self.generation.fetch_add(1, Ordering::AcqRel);
                let _ = self.state.compare_exchange(
                    TRACKING_ON,
                    TRACKING_OFF,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
            }
            _ => {}
        }
    }

    /// The floor and clock, if tracking is on and nothing moved since they were learned:
    /// `(generation, floor, clock)`.
    fn known(&self) -> Option<(u64, u64, u64)> {
        if self.state.load(Ordering::Acquire) != TRACKING_ON {
            return None;
        }
        let generation = self.known_generation.load(Ordering::Acquire);
        if generation != self.generation.load(Ordering::Acquire) {
            return None;
        }
        let (floor, clock) = (
            self.known_floor.load(Ordering::Acquire),
            self.known_clock.load(Ordering::Acquire),
        );
        (self.known_generation.load(Ordering::Acquire) == generation)
            .then_some((generation, floor, clock))
    }

    /// Whether no push came since `generation`.
    fn unchanged_since(&self, generation: u64) -> bool {
        self.generation.load(Ordering::Acquire) == generation
    }

    /// Records the floor and clock an `MGET` read, if no push came since `generation` was
    /// taken before it was sent.
    fn learn(&self, generation: u64, floor: u64, clock: u64) {
        if self.state.load(Ordering::Acquire) != TRACKING_ON || !self.unchanged_since(generation) {
            return;
        }
        self.known_generation.store(u64::MAX, Ordering::Release);
        self.known_floor.store(floor, Ordering::Release);
        self.known_clock.store(clock, Ordering::Release);
        self.known_generation.store(generation, Ordering::Release);
    }
}

/// The shared connection: cloning it shares the same multiplexed socket(s).
#[derive(Clone)]
enum Conn {
    Node(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, RedisError> {
        match self.clone() {
            Conn::Node(mut c) => cmd.query_async(&mut c).await,
            Conn::Cluster(mut c) => cmd.query_async(&mut c).await,
        }
    }

    async fn invoke<T: FromRedisValue>(&self, inv: &ScriptInvocation<'_>) -> Result<T, RedisError> {
        match self.clone() {
            Conn::Node(mut c) => inv.invoke_async(&mut c).await,
            Conn::Cluster(mut c) => inv.invoke_async(&mut c).await,
        }
    }

    /// Advances the clock at `key` and publishes `message` with the new stamp (see `TICK`).
    async fn tick(
        &self,
        script: &Script,
        key: &str,
        channel: &str,
        message: &BusMessage,
    ) -> Result<u64, RedisError> {
        let mut inv = script.key(key);
        inv.arg(channel);
        if !channel.is_empty() {
            inv.arg(message.suffix());
        }
        self.invoke(&inv).await
    }

    async fn raise(
        &self,
        script: &Script,
        key: &str,
        value: u64,
        ttl: Duration,
    ) -> Result<(), RedisError> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let mut inv = script.key(key);
        inv.arg(value).arg(ttl_ms);
        self.invoke(&inv).await
    }
}

/// Builds a [`RedisStore`].
#[derive(Clone)]
pub struct RedisStoreBuilder {
    urls: Vec<String>,
    cluster: bool,
    namespace: String,
    response_timeout: Duration,
    connection_timeout: Duration,
    max_ttl: Duration,
    compress_over: usize,
    client_tracking: bool,
    /// Publish invalidations on the backplane even without a tiered store of its own.
    publish: bool,
    /// PEM root certificates that replace the public roots for `rediss://`.
    #[cfg(feature = "redis-tls")]
    root_certificates: Option<Vec<u8>>,
}

impl std::fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("RedisStoreBuilder");
        d.field("urls", &self.urls)
            .field("cluster", &self.cluster)
            .field("namespace", &self.namespace)
            .field("response_timeout", &self.response_timeout)
            .field("connection_timeout", &self.connection_timeout)
            .field("max_ttl", &self.max_ttl);
        #[cfg(feature = "redis-tls")]
        d.field(
            "root_certificates",
            &self.root_certificates.as_ref().map(|_| "<pem>"),
        );
        d.finish()
    }
}

impl RedisStore {
    /// A builder for one Redis node at `url` (`redis://[user:password@]host:port/db`; with the
    /// `redis-tls` feature also `rediss://`, verified against the public roots unless
    /// `tls_root_certificate` names a private CA). AUTH and ACL users come from the URL.
    ///
    /// For `rediss://`, [`build`](RedisStoreBuilder::build) installs rustls's `ring` crypto
    /// provider as the process default unless the application has installed one before.
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder {
            urls: vec![url.into()],
            cluster: false,
            namespace: "larder".into(),
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            connection_timeout: DEFAULT_CONNECTION_TIMEOUT,
            max_ttl: DEFAULT_MAX_TTL,
            compress_over: codec::COMPRESS_OVER,
            client_tracking: true,
            publish: false,
            #[cfg(feature = "redis-tls")]
            root_certificates: None,
        }
    }

    /// A builder for a Redis Cluster reached through any of `urls`.
    pub fn cluster<I, T>(urls: I) -> RedisStoreBuilder
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        let mut b = Self::builder(String::new());
        b.urls = urls.into_iter().map(Into::into).collect();
        b.cluster = true;
        b
    }

    /// The shard `key` lives in (an index into `shards`).
    fn shard_of(&self, key: &CacheKey) -> usize {
        let shards = self.shared.shards.len();
        if shards == 1 {
            return 0;
        }
        let d = key.digest();
        usize::from(u16::from_le_bytes([d[0], d[1]])) % shards
    }

    fn entry_key(&self, key: &CacheKey) -> String {
        let shard = &self.shared.shards[self.shard_of(key)];
        let mut k = String::with_capacity(shard.entries.len() + key.label().len() + 66);
        k.push_str(&shard.entries);
        k.push_str(key.label());
        k.push(':');
        push_hex(&mut k, key.digest());
        k
    }

    fn tag_key(&self, tag: &str) -> String {
        // Hashed: tags are user input and must not choose a Cluster slot with `{...}`.
        let hash = blake3::hash(tag.as_bytes());
        format!("{}t:{}", self.shared.prefix, &hash.to_hex()[..32])
    }

    pub(crate) fn now_ms() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    /// Reads entries and the marks that judge them, in at most two round trips: the entries
    /// with their shards' purge floor and clock in one `MGET` (on a Cluster, one command per
    /// slot involved), then (only when a clock has moved since an entry was born) the stamps
    /// of their tags. With no keys, reads every shard's marks (the store's first read).
    async fn read(&self, keys: Vec<CacheKey>) -> Result<Vec<Read>, StoreError> {
        let s = &self.shared;
        // The floor and the clock as tracked: the entries alone.
        let known = s
            .tracking
            .known()
            .filter(|_| !keys.is_empty())
            .and_then(|known| {
                let conn = (*s.tracked.load()).as_deref()?.clone();
                Some((known, conn))
            });
        if let Some(((generation, floor, clock), mut conn)) = known {
            // On the tracked connection: its pushes come before this answer. (One key is
            // read by `read_tracked_one`.)
            let mut mget = redis::cmd("MGET");
            for k in &keys {
                mget.arg(self.entry_key(k));
            }
            let values: Vec<Option<Vec<u8>>> =
                mget.query_async(&mut conn).await.map_err(backend)?;
            // A push that came before the answer says the two keys moved: read them too.
            if s.tracking.unchanged_since(generation) && values.len() == keys.len() {
                s.observed.fetch_max(clock, Ordering::AcqRel);
                return self.judge(&keys, values, |_| (floor, clock)).await;
            }
        }
        self.enable_tracking();
        let generation = s.tracking.generation.load(Ordering::Acquire);
        // The shards involved, in order (one on a single node).
        let mut shards: Vec<usize> = if keys.is_empty() {
            (0..s.shards.len()).collect()
        } else {
            keys.iter().map(|k| self.shard_of(k)).collect()
        };
        shards.sort_unstable();
        shards.dedup();
        let mut mget = redis::cmd("MGET");
        for k in &keys {
            mget.arg(self.entry_key(k));
        }
        for &i in &shards {
            mget.arg(&s.shards[i].floor).arg(&s.shards[i].clock);
        }
        let mut values: Vec<Option<Vec<u8>>> = s.conn.query(&mget).await.map_err(backend)?;
        if values.len() != keys.len() + 2 * shards.len() {
            return Err(StoreError::new(
                StoreErrorKind::Backend,
                "MGET answered the wrong number of values",
            ));
        }
        let marks = values.split_off(keys.len());
        // (floor, clock) of each shard in `shards`.
        let mut frames = Vec::with_capacity(shards.len());
        for (&i, pair) in shards.iter().zip(marks.chunks_exact(2)) {
            let clock = match &pair[1] {
                Some(clock) => parse_u64(Some(clock)),
                // Evicted: read as 0 it would say that nothing was invalidated since any entry
                // was born. Seeded again above every stamp, every entry's tags are looked up
                // (and a missing record hides).
                None => self.reseed_clock(i).await?,
            };
            let floor = match &pair[0] {
                Some(floor) => parse_u64(Some(floor)),
                // Evicted (or never written): every entry born before now may have been purged.
                None => self.restore_floor(i, clock).await?,
            };
            frames.push((floor, clock));
        }
        // The clocks only rise (they are seeded from TIME after a restart), so keep the newest.
        let newest = frames.iter().map(|&(_, clock)| clock).max().unwrap_or(0);
        s.observed.fetch_max(newest, Ordering::AcqRel);
        if let [(floor, clock)] = frames[..] {
            s.tracking.learn(generation, floor, clock);
        }
        let frame_of = |key: &CacheKey| {
            shards
                .binary_search(&self.shard_of(key))
                .map_or((u64::MAX, u64::MAX), |j| frames[j])
        };
        self.judge(&keys, values, frame_of).await
    }

    /// The common hit, without the batch's vectors: one key, while Redis tracks the floor and
    /// the clock, of an entry born since the clock last moved (or absent). `None` when it is
    /// not that case: [`read`](Self::read) then answers.
    async fn read_tracked_one(&self, key: &CacheKey) -> Result<Option<Read>, StoreError> {
        let s = &self.shared;
        let Some((generation, floor, clock)) = s.tracking.known() else {
            return Ok(None);
        };
        let Some(mut conn) = (*s.tracked.load()).as_deref().cloned() else {
            return Ok(None);
        };
        let mut get = redis::cmd("GET");
        get.arg(self.entry_key(key));
        let value: Option<Vec<u8>> = get.query_async(&mut conn).await.map_err(backend)?;
        // A push that came before the answer says the two keys moved.
        if !s.tracking.unchanged_since(generation) {
            return Ok(None);
        }
        s.observed.fetch_max(clock, Ordering::AcqRel);
        let Some(bytes) = value else {
            return Ok(Some(Read::miss()));
        };
        let entry = Arc::new(codec::decode_bytes(key, Bytes::from(bytes))?);
        if clock > entry.born && entry.born >= floor {
            // Born before the clock last moved: its tags' stamps are read too.
            let keys = std::slice::from_ref(key);
            let reads = self.judge_entries(keys, vec![Some(entry)], |_| (floor, clock));
            return Ok(reads.await?.pop());
        }
        let marks = Marks::newest_tag_invalidation(floor, clock);
        Ok(Some(Read::new(Some(entry), marks)))
    }

    /// Decodes the entries read for `keys` and judges each by its shard's floor and clock,
    /// `frame(key)` (and, for entries born before their clock's last move, by their tags'
    /// stamps: one more `MGET`).
    async fn judge(
        &self,
        keys: &[CacheKey],
        values: Vec<Option<Vec<u8>>>,
        frame: impl Fn(&CacheKey) -> (u64, u64),
    ) -> Result<Vec<Read>, StoreError> {
        let mut entries = Vec::with_capacity(keys.len());
        let mut corrupt = None;
        for (key, value) in keys.iter().zip(values) {
            entries.push(match value {
                None => None,
                Some(bytes) => match codec::decode_bytes(key, Bytes::from(bytes)) {
                    Ok(e) => Some(Arc::new(e)),
                    Err(e) => {
                        corrupt = Some(e);
                        None
                    }
                },
            });
        }
        // A single read of a value that is not ours reports it (counted as an error, served as a miss).
        if keys.len() == 1 && entries[0].is_none() {
            if let Some(e) = corrupt {
                return Err(e);
            }
        }
        self.judge_entries(keys, entries, frame).await
    }

    /// Judges decoded entries (see [`judge`](Self::judge)).
    async fn judge_entries(
        &self,
        keys: &[CacheKey],
        entries: Vec<Option<Arc<Entry>>>,
        frame: impl Fn(&CacheKey) -> (u64, u64),
    ) -> Result<Vec<Read>, StoreError> {
        let s = &self.shared;
        // While the clock has not moved since an entry was born, no tag of it was invalidated.
        let needs_tags = |key: &CacheKey, e: &Entry| {
            let (floor, clock) = frame(key);
            clock > e.born && e.born >= floor
        };
        let mut tags: Vec<&str> = keys
            .iter()
            .zip(&entries)
            .filter_map(|(k, e)| e.as_deref().filter(|e| needs_tags(k, e)))
            .flat_map(|e| e.tags.iter().map(|t| &**t))
            .collect();
        let mut stamps = Vec::new();
        if !tags.is_empty() {
            tags.sort_unstable();
            tags.dedup();
            let mut mget = redis::cmd("MGET");
            for tag in &tags {
                mget.arg(self.tag_key(tag));
            }
            let values: Vec<Option<Vec<u8>>> = s.conn.query(&mget).await.map_err(backend)?;
            // Every tag of a written entry had a record: a missing one was evicted, and
            // hides the entries that carry the tag rather than reviving them.
            stamps = values
                .iter()
                .map(|v| v.as_deref().map_or(u64::MAX, |b| parse_u64(Some(b))))
                .collect();
        }
        // A tag whose stamp is missing from the answer counts as invalidated now: hidden.
        let stamp_of = |tag: &str| {
            tags.binary_search(&tag)
                .ok()
                .and_then(|i| stamps.get(i).copied())
                .unwrap_or(u64::MAX)
        };
        let marks: Vec<Marks> = keys
            .iter()
            .zip(&entries)
            .map(|(k, entry)| {
                let (floor, clock) = frame(k);
                match entry {
                    Some(e) if needs_tags(k, e) => {
                        Marks::tag_stamps(floor, e.tags.iter().map(|t| stamp_of(t)))
                    }
                    _ => Marks::newest_tag_invalidation(floor, clock),
                }
            })
            .collect();
        drop(tags);
        Ok(entries
            .into_iter()
            .zip(marks)
            .map(|(e, m)| Read::new(e, m))
            .collect())
    }
}

impl RedisStore {
    /// Invalidates `tags` and returns the clock value they were stamped with. The clock's
    /// tick publishes the invalidation on the backplane in the same atomic step (every L1
    /// learns of invalidations in stamp order), then the tags' records are raised.
    pub(crate) async fn invalidate_stamped(&self, tags: Vec<String>) -> Result<u64, StoreError> {
        let s = &self.shared;
        let message = BusMessage::tags(tags);
        let stamp = s
            .conn
            .tick(&s.tick, &s.clock_key, self.bus(), &message)
            .await
            .map_err(backend)?;
        // This instance's next requests start after it: they must see it.
        s.observed.fetch_max(stamp, Ordering::AcqRel);
        // All at once: the multiplexed connection pipelines them (one round trip per node,
        // not one per tag). On a Cluster, every shard's clock too: an entry born before
        // this stamp then has its tags looked up.
        let ttl = s.max_ttl + TAG_MARGIN;
        let raises = message.tags.iter().map(|tag| {
            let key = self.tag_key(tag);
            async move { s.conn.raise(&s.raise, &key, stamp, ttl).await }
        });
        futures_util::future::try_join(
            futures_util::future::try_join_all(raises),
            self.raise_shards(stamp, false),
        )
        .await
        .map_err(backend)?;
        Ok(stamp)
    }

    /// Raises the clock (and, for a purge, the floor) of every shard to `stamp`, on a Cluster
    /// (a single node's one shard has the invalidations' clock, ticked already, and its
    /// floor is raised by the purge itself).
    async fn raise_shards(&self, stamp: u64, floor: bool) -> Result<(), RedisError> {
        let s = &self.shared;
        if s.shards.len() == 1 {
            return Ok(());
        }
        let raises = s.shards.iter().map(|shard| {
            let mut inv = s.marks.key(&shard.clock);
            if floor {
                inv.key(&shard.floor);
            }
            inv.arg(stamp);
            async move { s.conn.invoke::<u64>(&inv).await }
        });
        futures_util::future::try_join_all(raises).await.map(drop)
    }

    /// Purges the namespace and returns the clock value of the purge.
    pub(crate) async fn purge_stamped(&self) -> Result<u64, StoreError> {
        let s = &self.shared;
        let message = BusMessage::purge();
        let stamp = s
            .conn
            .tick(&s.tick, &s.clock_key, self.bus(), &message)
            .await
            .map_err(backend)?;
        s.observed.fetch_max(stamp, Ordering::AcqRel);
        if s.shards.len() == 1 {
            s.conn
                .raise(&s.raise, &s.shards[0].floor, stamp, Duration::ZERO)
                .await
                .map_err(backend)?;
        } else {
            self.raise_shards(stamp, true).await.map_err(backend)?;
        }
        Ok(stamp)
    }

    /// Publishes a sync message with the current clock on the backplane (see `SYNC`) and
    /// returns that clock.
    pub(crate) async fn publish_sync(&self) -> Result<u64, StoreError> {
        let s = &self.shared;
        let mut inv = s.sync.key(&s.clock_key);
        inv.arg(&s.bus).arg(BusMessage::sync().suffix());
        s.conn.invoke(&inv).await.map_err(backend)
    }

    /// Makes sure each of `tags` has a record that outlives any entry carrying it.
    async fn ensure_tag_records(&self, tags: &[Box<str>]) -> Result<(), StoreError> {
        let s = &self.shared;
        let ttl = u64::try_from((s.max_ttl + TAG_MARGIN).as_millis()).unwrap_or(u64::MAX);
        let ensures = tags.iter().map(|tag| {
            let mut inv = s.ensure.key(self.tag_key(tag));
            inv.arg(ttl);
            async move { s.conn.invoke::<i64>(&inv).await }
        });
        futures_util::future::try_join_all(ensures)
            .await
            .map(drop)
            .map_err(backend)
    }

    /// Opens the tracked connection and turns tracking of the floor and the clock on, in the
    /// background (once, and again after the connection is lost). A refusal (an ACL without
    /// `CLIENT`, a Redis before 6) turns it off for good: every lookup then reads the two keys
    /// with its entries, as before.
    fn enable_tracking(&self) {
        let s = &self.shared;
        let t = &s.tracking;
        if t.state.load(Ordering::Acquire) != TRACKING_OFF
            || t.state
                .compare_exchange(
                    TRACKING_OFF,
                    TRACKING_ENABLING,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_err()
        {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            t.state.store(TRACKING_OFF, Ordering::Release);
            return;
        };
        let this = self.clone();
        runtime.spawn(async move {
            let t = &this.shared.tracking;
            let disconnects = t.disconnects.load(Ordering::Acquire);
            let state = this.connect_tracked().await;
            t.state.store(state, Ordering::Release);
            // A disconnection while this ran found the state not yet on: take it back.
            if t.disconnects.load(Ordering::Acquire) != disconnects {
                let _ = t.state.compare_exchange(
                    TRACKING_ON,
                    TRACKING_OFF,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
            }
        });
    }

    /// Connects the tracked connection and turns tracking on; the state to take.
    async fn connect_tracked(&self) -> u8 {
        let s = &self.shared;
        let t = &s.tracking;
        let Some(client) = &s.tracked_client else {
            return TRACKING_UNSUPPORTED;
        };
        let pushes = Arc::clone(t);
        let (connect, respond) = s.timeouts;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect))
            .set_response_timeout(Some(respond))
            .set_push_sender(move |info: redis::PushInfo| {
                pushes.push(&info);
                Ok::<(), std::convert::Infallible>(())
            });
        let mut conn = match client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(conn) => conn,
            // Down, or not RESP3-capable: try again with a later lookup.
            Err(e) => {
                tracing::debug!(error = %e, "could not open the tracked Redis connection");
                return if e.kind()
                    == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError)
                {
                    TRACKING_UNSUPPORTED
                } else {
                    TRACKING_OFF
                };
            }
        };
        let mut cmd = redis::cmd("CLIENT");
        cmd.arg("TRACKING")
            .arg("ON")
            .arg("BCAST")
            .arg("PREFIX")
            .arg(&s.shards[0].floor)
            .arg("PREFIX")
            .arg(&s.shards[0].clock);
        match cmd.query_async::<()>(&mut conn).await {
            // Its pushes will come (`enable_tracking` takes this back if it was lost meanwhile).
            Ok(()) => {
                s.tracked.store(Some(Arc::new(conn)));
                TRACKING_ON
            }
            Err(e) if e.is_connection_dropped() || e.is_io_error() || e.is_timeout() => {
                TRACKING_OFF
            }
            Err(e) => {
                tracing::info!(error = %e, "Redis refused CLIENT TRACKING: every lookup reads the purge floor and the clock");
                TRACKING_UNSUPPORTED
            }
        }
    }

    /// Creates shard `i`'s clock again after it went missing, and returns it: above every stamp
    /// it held, as the invalidations' clock ticked (on a single node that is the shard's
    /// clock, created again from the server time if it is missing too, see `TICK`).
    async fn reseed_clock(&self, i: usize) -> Result<u64, StoreError> {
        let s = &self.shared;
        let ticked = s
            .conn
            .tick(&s.tick, &s.clock_key, "", &BusMessage::default())
            .await
            .map_err(backend)?;
        if s.shards.len() == 1 {
            return Ok(ticked);
        }
        let mut inv = s.marks.key(&s.shards[i].clock);
        inv.arg(ticked);
        s.conn.invoke(&inv).await.map_err(backend)
    }

    /// Writes shard `i`'s purge floor again after it went missing, as its current clock: what
    /// was born before may have been purged, so it is hidden. Another instance's floor wins.
    async fn restore_floor(&self, i: usize, clock: u64) -> Result<u64, StoreError> {
        let s = &self.shared;
        let mut cmd = redis::cmd("SET");
        cmd.arg(&s.shards[i].floor).arg(clock).arg("NX");
        s.conn.query::<()>(&cmd).await.map_err(backend)?;
        Ok(clock)
    }

    /// Whether Redis tracks the purge floor and the clock for this store now (see
    /// [`RedisStoreBuilder::client_tracking`]): while it does and neither moves, a hit is one
    /// `GET`.
    pub fn tracks_floor_and_clock(&self) -> bool {
        self.shared.tracking.state.load(Ordering::Acquire) == TRACKING_ON
    }

    /// Asks Redis (`CONFIG GET`) which eviction policy it runs under which memory limit, and
    /// whether the store supports it ([`EvictionPolicy::supported`]). Fails when the user's
    /// ACL does not allow `CONFIG` (then nothing can be said).
    pub async fn eviction_policy(&self) -> Result<EvictionPolicy, StoreError> {
        let s = &self.shared;
        let mut cmd = redis::cmd("CONFIG");
        cmd.arg("GET").arg("maxmemory*");
        // A flat list of pairs in RESP2, a map in RESP3: both read as a map.
        let pairs: std::collections::HashMap<String, String> =
            s.conn.query(&cmd).await.map_err(backend)?;
        let value = |name: &str| pairs.get(name).cloned();
        Ok(EvictionPolicy {
            policy: value("maxmemory-policy").unwrap_or_default(),
            maxmemory: value("maxmemory").and_then(|v| v.parse().ok()).unwrap_or(0),
        })
    }

    /// Logs a warning when Redis runs an eviction policy the store does not support.
    async fn warn_about_eviction_policy(self) {
        match self.eviction_policy().await {
            Ok(p) if !p.supported() => tracing::warn!(
                policy = %p.policy,
                maxmemory = p.maxmemory,
                "Redis runs `noeviction` under a memory limit: when it is full, entries stop being stored and invalidations fail (the cache then bypasses Redis until it can purge); use an allkeys-* or volatile-* policy"
            ),
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "could not read Redis's eviction policy"),
        }
    }

    /// The client and channel of the invalidation backplane.
    pub(crate) fn backplane(&self) -> (Client, String) {
        self.shared.publishes.store(true, Ordering::Release);
        (self.shared.pubsub.clone(), self.shared.bus.clone())
    }

    /// The channel the clock's tick publishes on: none unless a tiered store listens (so a
    /// plain Redis store needs no pub/sub permission in the user's ACL).
    fn bus(&self) -> &str {
        if self.shared.publishes.load(Ordering::Acquire) {
            &self.shared.bus
        } else {
            ""
        }
    }
}

/// The eviction policy Redis runs, from [`RedisStore::eviction_policy`].
///
/// Every policy that evicts is supported: `allkeys-lru`, `allkeys-lfu`, `allkeys-random` and the
/// `volatile-*` ones. An evicted entry is a miss, and an evicted invalidation record or purge
/// floor hides the entries it could have hidden (it never revives them). `noeviction` under a
/// memory limit is not: once Redis is full it refuses writes, so entries stop being stored and
/// invalidations fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvictionPolicy {
    /// `maxmemory-policy`, e.g. `allkeys-lru`.
    pub policy: String,
    /// `maxmemory` in bytes; 0 is no limit.
    pub maxmemory: u64,
}

impl EvictionPolicy {
    /// Whether the store keeps its contract under this policy.
    pub fn supported(&self) -> bool {
        self.maxmemory == 0 || self.policy != "noeviction"
    }
}

/// A message of the backplane: an invalidation (tags, or a purge) or a sync.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct BusMessage {
    /// The clock value: of the invalidation, or (a sync) the clock when it was published.
    #[serde(default, skip_serializing)]
    pub(crate) stamp: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) tags: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) purge: bool,
    /// A sync message (no invalidation: only its stamp counts).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) sync: bool,
    /// The publisher's wall clock (ms since the Unix epoch), to measure propagation.
    #[serde(default)]
    pub(crate) sent_ms: u64,
}

impl BusMessage {
    fn tags(tags: Vec<String>) -> Self {
        BusMessage {
            tags,
            sent_ms: RedisStore::now_ms(),
            ..BusMessage::default()
        }
    }

    fn purge() -> Self {
        BusMessage {
            purge: true,
            sent_ms: RedisStore::now_ms(),
            ..BusMessage::default()
        }
    }

    fn sync() -> Self {
        BusMessage {
            sync: true,
            sent_ms: RedisStore::now_ms(),
            ..BusMessage::default()
        }
    }

    /// The message after its stamp: `,"tags":[..],...}`, which the scripts append to
    /// `{"stamp":<value>`.
    fn suffix(&self) -> Vec<u8> {
        let mut json = serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec());
        if json.len() > 2 {
            json[0] = b',';
        } else {
            json.remove(0);
        }
        json
    }
}

impl RedisStoreBuilder {
    /// The prefix of every key and channel (default `larder`); it may not contain `{` or `}`.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// How long the client waits for an answer before failing the call (default 500 ms). The
    /// cache handle also puts its own deadline on every call.
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// How long one connection attempt may take (default 1 s).
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout = timeout;
        self
    }

    /// The longest an entry is kept in Redis, whatever its headers say (default one day).
    pub fn max_ttl(mut self, ttl: Duration) -> Self {
        self.max_ttl = ttl;
        self
    }

    /// Whether a single-node store reads the purge floor and the clock through Redis's
    /// server-assisted client-side caching (RESP3 `CLIENT TRACKING`, Redis 6 or newer): on
    /// (the default), a hit is one `GET` while neither has moved. Turn it off for a Redis
    /// older than 6 (which cannot speak RESP3); an ACL that refuses `CLIENT` turns it off by
    /// itself. A Cluster reads them with every lookup.
    pub fn client_tracking(mut self, on: bool) -> Self {
        self.client_tracking = on;
        self
    }

    /// Publishes this store's invalidations on the namespace's backplane, as the Redis half
    /// of a [`TieredStore`](crate::store::TieredStore) does. Turn it on for a process that
    /// invalidates for a fleet whose instances run the tiered store but has no tiered store
    /// itself (a worker, a cron job, an admin tool): without it, the instances' L1s would not
    /// hear of its invalidations and serve what they hid until their L1 lifetime ends. The
    /// Redis user then needs `PUBLISH` on the `{namespace}:bus` channel (see the README's
    /// ACL section).
    pub fn publish_invalidations(mut self) -> Self {
        self.publish = true;
        self
    }

    /// Compresses (LZ4) the entries whose encoded size is over `bytes` (default
    /// [`codec::COMPRESS_OVER`], 16 KiB; `usize::MAX` never compresses). Lower it to save
    /// Redis memory and network bytes at the cost of CPU on every hit of a large entry.
    pub fn compress_over(mut self, bytes: usize) -> Self {
        self.compress_over = bytes;
        self
    }

    /// Trusts the CA certificate(s) in `pem` (PEM, one or more certificates) for `rediss://`
    /// connections, **instead of** the public roots (webpki roots) used without it: for a
    /// Redis whose certificate comes from a private CA. It applies to the store's connection,
    /// the tiered store's backplane and every Cluster node.
    ///
    /// [`build`](Self::build) fails if `pem` holds no PEM certificate, if one cannot be parsed,
    /// or if a URL is not `rediss://`.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), larder::StoreError> {
    /// use larder::store::RedisStore;
    ///
    /// let ca = std::fs::read("/etc/redis/ca.crt").expect("the CA certificate");
    /// let store = RedisStore::builder("rediss://:secret@redis.internal:6380/")
    ///     .tls_root_certificate(ca)
    ///     .build()
    ///     .await?;
    /// # let _ = store; Ok(()) }
    /// ```
    #[cfg(feature = "redis-tls")]
    pub fn tls_root_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.root_certificates = Some(pem.into());
        self
    }

    /// A client for one node at `url`, trusting the configured root certificates if any.
    fn client(&self, url: &str) -> Result<Client, StoreError> {
        self.client_with(url, redis::ProtocolVersion::RESP2)
    }

    fn client_with(
        &self,
        url: &str,
        protocol: redis::ProtocolVersion,
    ) -> Result<Client, StoreError> {
        use redis::IntoConnectionInfo;
        let info = url.into_connection_info().map_err(backend)?;
        let settings = info.redis_settings().clone().set_protocol(protocol);
        let info = info.set_redis_settings(settings);
        #[cfg(feature = "redis-tls")]
        if let Some(pem) = &self.root_certificates {
            return Client::build_with_tls(info, certificates(pem)).map_err(backend);
        }
        Client::open(info).map_err(backend)
    }

    /// Connects. A single node is connected lazily (a service starts even while Redis is down,
    /// and the connection is re-established in the background); a Cluster needs one node up to
    /// learn the slot map.
    pub async fn build(self) -> Result<RedisStore, StoreError> {
        if self.namespace.contains(['{', '}']) {
            return Err(StoreError::new(
                StoreErrorKind::Backend,
                "the namespace may not contain `{` or `}`",
            ));
        }
        #[cfg(feature = "redis-tls")]
        {
            if let Some(pem) = &self.root_certificates {
                // The redis crate would accept a PEM without certificates as an empty root
                // store, and every connection would then fail.
                const BEGIN: &[u8] = b"-----BEGIN CERTIFICATE-----";
                if !pem.windows(BEGIN.len()).any(|w| w == BEGIN) {
                    return Err(StoreError::new(
                        StoreErrorKind::Backend,
                        "the TLS root certificate holds no PEM certificate",
                    ));
                }
                if !self.urls.iter().all(|u| is_tls_url(u)) {
                    return Err(StoreError::new(
                        StoreErrorKind::Backend,
                        "a TLS root certificate was given for a URL that is not `rediss://`",
                    ));
                }
            }
            if self.urls.iter().any(|u| is_tls_url(u)) {
                ensure_crypto_provider();
            }
        }
        let first = self.urls.first().cloned().unwrap_or_default();
        let tracking = Arc::new(Tracking::new(if self.cluster || !self.client_tracking {
            TRACKING_UNSUPPORTED
        } else {
            TRACKING_OFF
        }));
        let (conn, pubsub_url) = if self.cluster {
            let builder = ClusterClient::builder(self.urls.clone())
                .connection_timeout(self.connection_timeout)
                .response_timeout(self.response_timeout)
                .retries(1);
            #[cfg(feature = "redis-tls")]
            let builder = match &self.root_certificates {
                Some(pem) => builder.certs(certificates(pem)),
                None => builder,
            };
            let client = builder.build().map_err(backend)?;
            (
                Conn::Cluster(client.get_async_connection().await.map_err(backend)?),
                first.clone(),
            )
        } else {
            let url = first.clone();
            let config = ConnectionManagerConfig::new()
                .set_response_timeout(Some(self.response_timeout))
                .set_connection_timeout(Some(self.connection_timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_secs(1));
            let client = self.client(&url)?;
            (
                Conn::Node(
                    ConnectionManager::new_lazy_with_config(client, config).map_err(backend)?,
                ),
                url,
            )
        };
        let pubsub = self.client(&pubsub_url)?;
        // The connection whose pushes are tracked: a plain multiplexed connection (RESP3),
        // which hands pushes over in its read loop. A `ConnectionManager` forwards them through
        // a task of its own, after the replies that followed them may have been delivered.
        let tracked_client = if self.cluster || !self.client_tracking {
            None
        } else {
            Some(self.client_with(&first, redis::ProtocolVersion::RESP3)?)
        };
        let prefix = format!("{}:", self.namespace);
        let store = RedisStore {
            shared: Arc::new(RedisState {
                conn,
                pubsub,
                bus: format!("{prefix}bus"),
                clock_key: format!("{prefix}clock"),
                shards: if self.cluster {
                    Shard::cluster(&prefix)
                } else {
                    Box::new([Shard::single(&prefix)])
                },
                prefix,
                observed: AtomicU64::new(0),
                publishes: std::sync::atomic::AtomicBool::new(self.publish),
                max_ttl: self.max_ttl,
                compress_over: self.compress_over,
                raise: Script::new(RAISE),
                marks: Script::new(MARKS),
                ensure: Script::new(ENSURE),
                tick: Script::new(TICK),
                sync: Script::new(SYNC),
                unlock: Script::new(UNLOCK),
                token_seed: format!(
                    "{}-{}",
                    std::process::id(),
                    SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos())
                ),
                tokens: AtomicU64::new(0),
                tracking,
                tracked_client,
                tracked: arc_swap::ArcSwapOption::empty(),
                timeouts: (self.connection_timeout, self.response_timeout),
            }),
        };
        // Read the clock and the floor once (creating them on a new Redis), so that stamps
        // taken before the first lookup are the store's and not 0, which a clock created
        // later would hide. Bounded: a Redis that is down must not hold up the start.
        let first_read = store.read(Vec::new());
        if tokio::time::timeout(self.connection_timeout, first_read)
            .await
            .is_err()
        {
            tracing::debug!("Redis did not answer at start; the clock is read on first use");
        }
        // In the background: a Redis that is down must not hold up the start.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(store.clone().warn_about_eviction_policy());
        }
        Ok(store)
    }
}

/// Root certificates for the redis crate's TLS clients (no client certificate).
#[cfg(feature = "redis-tls")]
fn certificates(pem: &[u8]) -> redis::TlsCertificates {
    redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(pem.to_vec()),
    }
}

/// Whether `url` asks for TLS (`rediss://`).
#[cfg(feature = "redis-tls")]
fn is_tls_url(url: &str) -> bool {
    url.get(..9)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("rediss://"))
}

/// Makes sure rustls has a process-level crypto provider before the redis crate builds a TLS
/// configuration: it calls `rustls::ClientConfig::builder()`, which panics (inside the
/// connection task) when no provider is installed and the enabled rustls features do not name
/// exactly one. This crate enables `ring`; an application whose other dependencies also
/// enable `aws-lc-rs` would hit that panic, so `ring` is installed here unless the
/// application installed a provider first (which it can, to choose another).
#[cfg(feature = "redis-tls")]
fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race to another installer is fine: a provider is installed either way.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

fn backend(e: RedisError) -> StoreError {
    let kind = if e.is_timeout() {
        StoreErrorKind::Timeout
    } else {
        StoreErrorKind::Backend
    };
    StoreError::new(kind, e.to_string())
}

fn parse_u64(v: Option<&[u8]>) -> u64 {
    v.and_then(|b| std::str::from_utf8(b).ok()?.parse().ok())
        .unwrap_or(0)
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.shared.conn {
            Conn::Node(_) => "node",
            Conn::Cluster(_) => "cluster",
        };
        f.debug_struct("RedisStore")
            .field("kind", &kind)
            .field("prefix", &self.shared.prefix)
            .finish()
    }
}

impl Entries for RedisStore {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn get(&self, key: &CacheKey) -> StoreFuture<Read> {
        let this = self.clone();
        let key = key.clone();
        StoreFuture::pending(async move {
            if let Some(read) = this.read_tracked_one(&key).await? {
                return Ok(read);
            }
            let mut reads = this.read(vec![key]).await?;
            Ok(reads.pop().unwrap_or_else(Read::miss))
        })
    }

    fn get_many(&self, keys: &[CacheKey]) -> StoreFuture<Vec<Read>> {
        if keys.is_empty() {
            return StoreFuture::ready(Ok(Vec::new()));
        }
        let this = self.clone();
        let keys = keys.to_vec();
        StoreFuture::pending(async move { this.read(keys).await })
    }

    fn put(&self, key: CacheKey, entry: Arc<Entry>) -> StoreFuture<()> {
        let ttl = entry.time_to_keep(Self::now_ms()).min(self.shared.max_ttl);
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        if ttl_ms == 0 {
            return StoreFuture::ready(Ok(()));
        }
        let this = self.clone();
        StoreFuture::pending(async move {
            this.ensure_tag_records(&entry.tags).await?;
            let value = codec::encode_with(&key, &entry, this.shared.compress_over);
            let mut cmd = redis::cmd("SET");
            cmd.arg(this.entry_key(&key))
                .arg(value.as_ref())
                .arg("PX")
                .arg(ttl_ms);
            this.shared.conn.query::<()>(&cmd).await.map_err(backend)
        })
    }

    fn remove(&self, key: &CacheKey) -> StoreFuture<()> {
        let this = self.clone();
        let k = self.entry_key(key);
        StoreFuture::pending(async move {
            this.shared
                .conn
                .query::<()>(redis::cmd("DEL").arg(k))
                .await
                .map_err(backend)
        })
    }
}

impl Invalidation for RedisStore {
    fn stamp(&self) -> u64 {
        self.shared.observed.load(Ordering::Acquire)
    }

    fn invalidate_tags(&self, tags: Vec<String>) -> StoreFuture<()> {
        if tags.is_empty() {
            return StoreFuture::ready(Ok(()));
        }
        let this = self.clone();
        StoreFuture::pending(async move { this.invalidate_stamped(tags).await.map(drop) })
    }

    fn purge(&self) -> StoreFuture<()> {
        let this = self.clone();
        StoreFuture::pending(async move { this.purge_stamped().await.map(drop) })
    }
}

impl FillLock for RedisStore {
    fn try_lock(&self, key: &CacheKey, ttl: Duration) -> StoreFuture<Option<String>> {
        let this = self.clone();
        let lock_key = format!("{}l:{}", self.shared.prefix, key.hex());
        let n = self.shared.tokens.fetch_add(1, Ordering::Relaxed);
        let token = format!("{}-{n}", self.shared.token_seed);
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        StoreFuture::pending(async move {
            let mut cmd = redis::cmd("SET");
            cmd.arg(&lock_key)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms);
            let taken: Option<String> = this.shared.conn.query(&cmd).await.map_err(backend)?;
            Ok(taken.map(|_| token))
        })
    }

    fn unlock(&self, key: &CacheKey, token: String) -> StoreFuture<()> {
        let this = self.clone();
        let lock_key = format!("{}l:{}", self.shared.prefix, key.hex());
        StoreFuture::pending(async move {
            let s = &this.shared;
            let mut inv = s.unlock.key(&lock_key);
            inv.arg(&token);
            s.conn.invoke::<i64>(&inv).await.map(drop).map_err(backend)
        })
    }
}

/// RedisState by every instance: offers the fill lock.
impl Store for RedisStore {
    fn fill_lock(&self) -> Option<&dyn FillLock> {
        Some(self)
    }
}

/// Appends `digest` as 64 lower-case hex digits, without an intermediate `String`.
fn push_hex(out: &mut String, digest: &[u8; 32]) {
    let mut buf = [0u8; 64];
    // 64 bytes of room for 32 bytes of input: encoding cannot fail, and hex is ASCII.
    if hex::encode_to_slice(digest, &mut buf).is_ok() {
        if let Ok(hex) = std::str::from_utf8(&buf) {
            out.push_str(hex);
        }
    }
}
