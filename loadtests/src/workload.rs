//! The workload, fixed before a run so that the baseline and the cached run send the same
//! requests: which account each user is, on what schedule it loads its dashboard, and
//! which writes it makes. Everything random comes from one seed.

use std::time::Duration;

use crate::cli::Args;

/// How users are spread over accounts.
#[derive(Debug, Clone, Copy, PartialEq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Distribution {
    /// Every account equally likely; while there are at least as many accounts as users,
    /// no two users share one (the worst case for a cache keyed per user).
    Uniform,
    /// Zipf over the accounts with exponent `--zipf-s`: a few hot accounts shared by several
    /// users (several tabs or devices), a long tail of single ones.
    Zipf,
}

/// The writes a user makes between two dashboard loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum WriteKind {
    /// `POST /api/chat/sessions/{sid}/messages`: invalidates profile (credits), chat stats
    /// and search.
    Message,
    /// `PUT /api/chat/sessions/{sid}`: invalidates the session pages and search.
    Rename,
    /// `POST /api/connectors/{provider}`: invalidates the connector status.
    Connect,
}

impl WriteKind {
    /// Every kind, drawn with equal odds.
    pub(crate) const ALL: [WriteKind; 3] =
        [WriteKind::Message, WriteKind::Rename, WriteKind::Connect];

    /// The request's name in the reports.
    pub(crate) fn name(self) -> &'static str {
        match self {
            WriteKind::Message => "write: post message",
            WriteKind::Rename => "write: rename session",
            WriteKind::Connect => "write: connect platform",
        }
    }
}

/// One planned write: what, and when within the time left before the next load (a
/// fraction, 0 = right after the load, 1 = just before the next one).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct PlannedWrite {
    /// What to write.
    pub(crate) kind: WriteKind,
    /// When, as a fraction of the idle time before the next load.
    pub(crate) at: f64,
    /// A number for picking the session or the platform.
    pub(crate) pick: u64,
}

/// The fixed workload of a run.
#[derive(Debug, Clone)]
pub(crate) struct Workload {
    /// The account (`N` in the bearer key) of each user.
    pub(crate) accounts: Vec<u64>,
    /// How many users share each user's account (1 = only this one).
    pub(crate) sharing: Vec<usize>,
    /// The bearer key pattern, `{n}` standing for the account.
    pub(crate) key_pattern: String,
    /// Time between two loads of one user.
    pub(crate) period: Duration,
    /// Whether every user's loads are due at the same instants (else spread evenly).
    pub(crate) burst: bool,
    /// Writes per dashboard load, on average (from the write share).
    pub(crate) writes_per_load: f64,
    /// The seed of everything random.
    pub(crate) seed: u64,
}

/// The reads of one dashboard load, the way the seeds' front ends make them: profile,
/// connector status, the five metric categories, chat statistics and three pages of sessions.
pub(crate) const DASHBOARD_READS: usize = 11;

impl Workload {
    /// Assigns accounts `1..=accounts` to `users` users with `distribution`, and turns the
    /// share of requests that are writes into writes per dashboard load.
    pub(crate) fn new(args: &Args) -> Workload {
        let (users, accounts, seed) = (args.users, args.accounts.max(1), args.seed);
        let mut rng = fastrand::Rng::with_seed(mix(seed, 0x6163_636f_756e_7473, 0));
        let accounts_of: Vec<u64> = match args.distribution {
            Distribution::Uniform if users as u64 <= accounts => {
                // A partial Fisher-Yates shuffle: distinct accounts, uniformly chosen.
                let mut pool: Vec<u64> = (1..=accounts).collect();
                (0..users)
                    .map(|i| {
                        let j = rng.usize(i..pool.len());
                        pool.swap(i, j);
                        pool[i]
                    })
                    .collect()
            }
            Distribution::Uniform => (0..users).map(|_| rng.u64(1..=accounts)).collect(),
            Distribution::Zipf => {
                let zipf = Zipf::new(accounts, args.zipf_s);
                (0..users).map(|_| zipf.sample(&mut rng)).collect()
            }
        };
        let sharing = accounts_of
            .iter()
            .map(|a| accounts_of.iter().filter(|b| *b == a).count())
            .collect();
        let share = args.write_share.clamp(0.0, 0.5);
        Workload {
            accounts: accounts_of,
            sharing,
            key_pattern: args.key_pattern.clone(),
            period: args.period,
            burst: args.burst,
            writes_per_load: DASHBOARD_READS as f64 * share / (1.0 - share),
            seed,
        }
    }

    /// The bearer key of `user`.
    pub(crate) fn key(&self, user: usize) -> String {
        self.key_pattern
            .replace("{n}", &self.accounts[user].to_string())
    }

    /// When `user`'s first load is due, after the phase's start: all at once with
    /// `--burst`, else spread evenly over one period (one load starts every
    /// `period / users`, a constant arrival rate).
    pub(crate) fn offset(&self, user: usize) -> Duration {
        if self.burst || self.accounts.is_empty() {
            return Duration::ZERO;
        }
        self.period
            .mul_f64(user as f64 / self.accounts.len() as f64)
    }

    /// How many distinct accounts the users are.
    pub(crate) fn distinct_accounts(&self) -> usize {
        let mut seen = self.accounts.clone();
        seen.sort_unstable();
        seen.dedup();
        seen.len()
    }

    /// The random numbers of `user` in phase `salt` (the same in both runs).
    pub(crate) fn rng(&self, user: usize, salt: u64) -> fastrand::Rng {
        fastrand::Rng::with_seed(mix(self.seed, salt, user as u64))
    }

    /// The writes to make after one load, drawn from `rng`: `writes_per_load` on average.
    pub(crate) fn plan_writes(&self, rng: &mut fastrand::Rng) -> Vec<PlannedWrite> {
        let whole = self.writes_per_load.floor();
        let n = whole as usize + usize::from(rng.f64() < self.writes_per_load - whole);
        let mut writes: Vec<PlannedWrite> = (0..n)
            .map(|_| PlannedWrite {
                kind: WriteKind::ALL[rng.usize(..WriteKind::ALL.len())],
                at: rng.f64(),
                pick: rng.u64(..),
            })
            .collect();
        writes.sort_by(|a, b| a.at.total_cmp(&b.at));
        writes
    }
}

/// Zipf over `1..=n` with exponent `s`, by inverting the cumulative distribution.
#[derive(Debug, Clone)]
pub(crate) struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    /// The distribution over `1..=n` (n ≥ 1) where rank `k` has weight `1 / k^s`.
    pub(crate) fn new(n: u64, s: f64) -> Zipf {
        let mut cdf = Vec::with_capacity(n as usize);
        let mut total = 0.0;
        for k in 1..=n.max(1) {
            total += 1.0 / (k as f64).powf(s);
            cdf.push(total);
        }
        for c in &mut cdf {
            *c /= total;
        }
        Zipf { cdf }
    }

    /// One draw.
    pub(crate) fn sample(&self, rng: &mut fastrand::Rng) -> u64 {
        let u = rng.f64();
        self.cdf.partition_point(|c| *c < u) as u64 + 1
    }
}

/// A 64-bit mix of three numbers (splitmix64 finaliser), for independent seeds.
fn mix(a: u64, b: u64, c: u64) -> u64 {
    let mut z = a
        .wrapping_add(b.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(c.wrapping_mul(0xBF58_476D_1CE4_E5B9));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    use clap::Parser;

    fn workload(users: usize, accounts: u64, d: Distribution, share: f64) -> Workload {
        let d = match d {
            Distribution::Uniform => "uniform",
            Distribution::Zipf => "zipf",
        };
        Workload::new(&Args::parse_from([
            "loadtests".to_owned(),
            format!("--users={users}"),
            format!("--accounts={accounts}"),
            format!("--distribution={d}"),
            format!("--write-share={share}"),
        ]))
    }

    #[test]
    fn uniform_users_get_distinct_accounts_the_same_each_time() {
        let a = workload(100, 1000, Distribution::Uniform, 0.01);
        let b = workload(100, 1000, Distribution::Uniform, 0.01);
        assert_eq!(a.accounts, b.accounts);
        assert_eq!(a.distinct_accounts(), 100);
        assert!(a.accounts.iter().all(|n| (1..=1000).contains(n)));
        assert!(a.sharing.iter().all(|s| *s == 1));
        assert_eq!(a.key(0), format!("demo-key-{}", a.accounts[0]));
    }

    #[test]
    fn loads_are_spread_over_the_period_unless_in_bursts() {
        let w = workload(100, 1000, Distribution::Uniform, 0.01);
        assert_eq!(w.offset(0), Duration::ZERO);
        assert_eq!(w.offset(50), w.period / 2);
        assert!(w.offset(99) < w.period);
        let burst = Workload {
            burst: true,
            ..w.clone()
        };
        assert_eq!(burst.offset(99), Duration::ZERO);
    }

    #[test]
    fn zipf_puts_several_users_on_the_hot_accounts() {
        let w = workload(1000, 1000, Distribution::Zipf, 0.01);
        let on_first = w.accounts.iter().filter(|a| **a == 1).count();
        // Rank 1 has 1/H(1000) ≈ 13% of the mass.
        assert!((80..=190).contains(&on_first), "{on_first}");
        assert!(w.distinct_accounts() < 700);
    }

    #[test]
    fn write_share_is_the_share_of_all_requests() {
        let w = workload(10, 1000, Distribution::Uniform, 0.01);
        let mut rng = w.rng(0, 1);
        let loads = 20_000;
        let writes: usize = (0..loads).map(|_| w.plan_writes(&mut rng).len()).sum();
        let share = writes as f64 / (writes + loads * DASHBOARD_READS) as f64;
        assert!((share - 0.01).abs() < 0.001, "{share}");
        let none = workload(10, 1000, Distribution::Uniform, 0.0);
        assert!(none.plan_writes(&mut rng).is_empty());
    }

    #[test]
    fn the_same_user_and_phase_draw_the_same_writes() {
        let w = workload(10, 1000, Distribution::Uniform, 0.2);
        let draws = |salt| {
            let mut rng = w.rng(3, salt);
            (0..50).map(|_| w.plan_writes(&mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(draws(1), draws(1));
        assert_ne!(draws(1), draws(2));
    }
}
