//! The command line: the workload, where to run it, and the targets to check.

use std::{path::PathBuf, time::Duration};

use crate::workload::Distribution;

/// The load test of the dashboard example: the seeds' "100 concurrent dashboard loads",
/// without the cache and with it, checked against the seeds' targets.
///
/// With no arguments: starts the dashboard in-process (embedded SQLite, 200 ms per query),
/// runs the `dashboard` scenario with 100 users once with no cache and once with the
/// in-process store, each after a warm-up that is not counted, prints the table, writes the
/// reports, and exits 1 when a target is missed.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "loadtests", version)]
pub(crate) struct Args {
    /// Concurrent users, each one account loading its dashboard on a fixed schedule
    /// (`--scenario consistency`: writer/reader pairs, 20 unless given; `--scenario fleet`:
    /// readers whose requests are spread over the instances).
    #[arg(long, default_value_t = 100)]
    pub(crate) users: usize,
    /// Length of each measured run (`45s`, `2m`, `1m30s`, or seconds; `--scenario
    /// consistency`: 30s unless given; `--scenario fleet`: 20s per fleet size unless given).
    #[arg(long, default_value = "45s", value_parser = parse_duration)]
    pub(crate) run_time: Duration,
    /// Warm-up before each run, not counted (its first loads are reported as the cold load;
    /// `--scenario fleet`: 4s per fleet size unless given).
    #[arg(long, default_value = "8s", value_parser = parse_duration)]
    pub(crate) warm_up: Duration,
    /// Time between two dashboard loads of one user, on a fixed schedule: a load starts when
    /// it is due, whether or not the previous one was slow. Users' schedules are spread
    /// evenly over the period (one load starts every `period / users`).
    #[arg(long, default_value = "4s", value_parser = parse_duration)]
    pub(crate) period: Duration,
    /// Start every user's loads at the same instants instead (`--users` loads at once, each
    /// period): the literal "100 concurrent dashboard loads", which on a 2-core machine
    /// that also runs the load generator measures mostly the generator's CPU queue.
    #[arg(long)]
    pub(crate) burst: bool,
    /// The scenario: `dashboard` (the benchmark), `pagination` (pages stay fresh after
    /// writes), `outage` (the dashboard while Redis is stopped and started again),
    /// `consistency` (a writer reads its writes through another instance; how long other
    /// clients wait to see them) or `fleet` (1, 2, 4 instances on the tiered store over one
    /// 3-master Redis Cluster: hit rate, stale reads, propagation to the last instance, how
    /// Redis operations spread over the masters).
    #[arg(long, value_enum, default_value_t = ScenarioName::Dashboard)]
    pub(crate) scenario: ScenarioName,
    /// The cached run's store; `redis` and `tiered` start a redis-server of their own
    /// unless `--redis-url` is given (`--scenario consistency` and `fleet`: tiered unless
    /// given; `fleet` runs `redis` or `tiered` on a Redis Cluster of its own).
    #[arg(long, value_enum, default_value_t = Store::Memory)]
    pub(crate) store: Store,
    /// Redis for `--store redis|tiered` (instead of starting one).
    #[arg(long)]
    pub(crate) redis_url: Option<String>,
    /// Latency added to every database round trip of the in-process dashboard.
    #[arg(long, default_value_t = 200)]
    pub(crate) db_latency_ms: u64,
    /// Database connections of the in-process dashboard, the same in both runs (the seed's
    /// baseline had 100).
    #[arg(long, default_value_t = 100)]
    pub(crate) db_pool: u32,
    /// Share of all requests that are writes (post a message, rename a session, connect a
    /// platform), each invalidating what it changed; at most 0.5.
    #[arg(long, default_value_t = 0.01)]
    pub(crate) write_share: f64,
    /// Accounts the users are drawn from (`demo-key-1` .. `demo-key-N`).
    #[arg(long, default_value_t = 1000)]
    pub(crate) accounts: u64,
    /// How users are spread over the accounts.
    #[arg(long, value_enum, default_value_t = Distribution::Uniform)]
    pub(crate) distribution: Distribution,
    /// Exponent of `--distribution zipf`.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) zipf_s: f64,
    /// Seed of the workload (accounts, writes and their timing): the same seed gives the
    /// same requests.
    #[arg(long, default_value_t = 42)]
    pub(crate) seed: u64,
    /// Where to write the reports (default `target/loadtests/<timestamp>/`).
    #[arg(long)]
    pub(crate) report_dir: Option<PathBuf>,
    /// Run against a deployed dashboard instead of an in-process one (`https://...`).
    #[arg(long)]
    pub(crate) host: Option<String>,
    /// With `--host`: a deployed dashboard without the cache, for the baseline run.
    #[arg(long, requires = "host")]
    pub(crate) baseline_host: Option<String>,
    /// With `--host` and `--scenario consistency`: a second instance of the same
    /// deployment (B), where the reads go while the writes go to `--host` (A); without it,
    /// A and B are the same.
    #[arg(long, requires = "host")]
    pub(crate) host_b: Option<String>,
    /// Bearer key of account `{n}`.
    #[arg(long, default_value = "demo-key-{n}")]
    pub(crate) key_pattern: String,
    /// With `--host`: the admin token, to reset `/_origin/stats` before each run.
    #[arg(long, env = "LARDER_ADMIN_TOKEN", hide_env_values = true)]
    pub(crate) admin_token: Option<String>,
    /// The cache's name in `Cache-Status`.
    #[arg(long, default_value = "larder")]
    pub(crate) cache_name: String,
    /// `--scenario fleet`: the fleet sizes to run, one after the other (instances of the
    /// dashboard sharing one database file and one Redis Cluster).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    pub(crate) instances: Vec<usize>,
    /// Skip the baseline run (in-process `dashboard` only; the other scenarios never have one).
    #[arg(long)]
    pub(crate) no_baseline: bool,
    /// Target: hit rate of the cached run's reads, at least.
    #[arg(long, default_value_t = 0.90)]
    pub(crate) target_hit_rate: f64,
    /// Target: average read latency of the cached run, in ms, at most.
    #[arg(long, default_value_t = 8.0)]
    pub(crate) target_avg_ms: f64,
    /// Target: 95th percentile read latency of the cached run, in ms, at most.
    #[arg(long, default_value_t = 15.0)]
    pub(crate) target_p95_ms: f64,
    /// Target: 99th percentile latency of hits, in ms, at most ("a hit under 20 ms").
    #[arg(long, default_value_t = 20.0)]
    pub(crate) target_hit_p99_ms: f64,
    /// Target: most database connections held at once in the cached run, at most.
    #[arg(long, default_value_t = 10)]
    pub(crate) target_max_connections: u64,
    /// Target: baseline average over cached average, at least.
    #[arg(long, default_value_t = 26.0)]
    pub(crate) target_speedup: f64,
    /// Target: fewer database queries than the baseline by this share, at least.
    #[arg(long, default_value_t = 0.95)]
    pub(crate) target_db_reduction: f64,
    /// Target: share of failed requests in any run, at most.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) target_error_rate: f64,
    /// Target of `--scenario fleet`: the busiest Redis Cluster master's share of the Redis
    /// operations, at most (printed PASS or FAIL; the run's exit status is set by stale reads
    /// and failed requests only).
    #[arg(long, default_value_t = 0.40)]
    pub(crate) target_busiest_master_share: f64,
}

/// The scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ScenarioName {
    /// Users load their dashboards (11 reads) with a share of writes.
    Dashboard,
    /// Users walk pages 1..3 of their sessions, create one, and check every page is fresh.
    Pagination,
    /// The dashboard workload while Redis is stopped and started again (local runs only).
    Outage,
    /// Writers rename a session through instance A and read it back through instance B
    /// with the consistency token; observers without it measure the propagation delay.
    Consistency,
    /// The dashboard workload over 1, 2 and 4 instances sharing one Redis Cluster.
    Fleet,
}

impl ScenarioName {
    /// The name goose reports.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ScenarioName::Dashboard => "dashboard",
            ScenarioName::Pagination => "pagination",
            ScenarioName::Outage => "outage",
            ScenarioName::Consistency => "consistency",
            ScenarioName::Fleet => "fleet",
        }
    }
}

impl Args {
    /// Parses the command line (exiting with clap's message when it is wrong), then gives
    /// `--scenario consistency` and `--scenario fleet` their own defaults for what was not
    /// given.
    pub(crate) fn from_command_line() -> Args {
        Args::from_matches(&<Args as clap::CommandFactory>::command().get_matches())
    }

    /// The arguments in `matches`, with the scenario's defaults: `--scenario consistency`
    /// runs 20 writer/reader pairs for 30 s on the tiered store, `--scenario fleet` each
    /// fleet size for a 4 s warm-up and 20 s on the tiered store, unless told otherwise.
    pub(crate) fn from_matches(matches: &clap::ArgMatches) -> Args {
        let mut args =
            <Args as clap::FromArgMatches>::from_arg_matches(matches).unwrap_or_else(|e| e.exit());
        let defaulted =
            |id: &str| matches.value_source(id) == Some(clap::parser::ValueSource::DefaultValue);
        if args.scenario == ScenarioName::Fleet {
            if defaulted("run_time") {
                args.run_time = Duration::from_secs(20);
            }
            if defaulted("warm_up") {
                args.warm_up = Duration::from_secs(4);
            }
            if defaulted("store") {
                args.store = Store::Tiered;
            }
        }
        if args.scenario == ScenarioName::Consistency {
            if defaulted("users") {
                args.users = 20;
            }
            if defaulted("run_time") {
                args.run_time = Duration::from_secs(30);
            }
            if defaulted("store") {
                args.store = Store::Tiered;
            }
        }
        args
    }
}

/// The cached run's store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Store {
    /// The in-process store.
    Memory,
    /// Redis.
    Redis,
    /// In-process L1 in front of Redis.
    Tiered,
}

/// Parses `45s`, `2m`, `1m30s`, `500ms` or a bare number of seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|e| e.to_string());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("{s:?}: a number needs a unit (ms, s, m, h)"))?;
        let (number, tail) = rest.split_at(digits);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let n: f64 = number
            .parse()
            .map_err(|_| format!("{s:?}: {number:?} is not a number"))?;
        let secs = match unit {
            "ms" => n / 1e3,
            "s" => n,
            "m" => n * 60.0,
            "h" => n * 3600.0,
            other => return Err(format!("{s:?}: unknown unit {other:?} (ms, s, m, h)")),
        };
        total += Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())?;
        rest = tail;
    }
    if total.is_zero() {
        return Err(format!("{s:?}: must be more than zero"));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn durations_read_like_goose_run_times() {
        assert_eq!(parse_duration("45s"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("0s").is_err());
    }

    #[test]
    fn no_arguments_is_the_seed_benchmark() {
        let args = Args::parse_from(["loadtests"]);
        assert_eq!(args.users, 100);
        assert_eq!(args.scenario, ScenarioName::Dashboard);
        assert_eq!(args.store, Store::Memory);
        assert_eq!(args.db_latency_ms, 200);
        assert!(args.host.is_none() && !args.no_baseline);
        // Warm-up and two runs fit the three minutes with room for the database seeding.
        assert!((args.warm_up + args.run_time) * 2 <= Duration::from_secs(120));
    }

    #[test]
    fn the_consistency_scenario_has_its_own_defaults_unless_given() {
        use clap::CommandFactory;
        let parse = |argv: &[&str]| {
            Args::from_matches(&Args::command().try_get_matches_from(argv).unwrap())
        };
        let args = parse(&["loadtests", "--scenario", "consistency"]);
        assert_eq!(args.users, 20);
        assert_eq!(args.run_time, Duration::from_secs(30));
        assert_eq!(args.store, Store::Tiered);
        let args = parse(&[
            "loadtests",
            "--scenario=consistency",
            "--users=3",
            "--run-time=5s",
            "--store=memory",
        ]);
        assert_eq!(args.users, 3);
        assert_eq!(args.run_time, Duration::from_secs(5));
        assert_eq!(args.store, Store::Memory);
        // Other scenarios keep the benchmark's.
        let args = parse(&["loadtests", "--scenario=outage"]);
        assert_eq!((args.users, args.store), (100, Store::Memory));
        assert!(
            Args::command()
                .try_get_matches_from(["loadtests", "--host-b", "http://b"])
                .is_err()
        );
    }

    #[test]
    fn the_fleet_scenario_runs_one_two_and_four_instances_unless_told() {
        use clap::CommandFactory;
        let parse = |argv: &[&str]| {
            Args::from_matches(&Args::command().try_get_matches_from(argv).unwrap())
        };
        let args = parse(&["loadtests", "--scenario", "fleet"]);
        assert_eq!(args.instances, [1, 2, 4]);
        assert_eq!(args.run_time, Duration::from_secs(20));
        assert_eq!(args.warm_up, Duration::from_secs(4));
        assert_eq!((args.store, args.users), (Store::Tiered, 100));
        assert!((args.target_busiest_master_share - 0.40).abs() < 1e-9);
        let args = parse(&[
            "loadtests",
            "--scenario=fleet",
            "--instances=2,3",
            "--run-time=5s",
            "--warm-up=1s",
            "--store=redis",
        ]);
        assert_eq!(args.instances, [2, 3]);
        assert_eq!(args.run_time, Duration::from_secs(5));
        assert_eq!(args.warm_up, Duration::from_secs(1));
        assert_eq!(args.store, Store::Redis);
        let args = parse(&["loadtests", "--scenario=fleet", "--instances", "4"]);
        assert_eq!(args.instances, [4]);
        // Other scenarios keep the benchmark's.
        let args = parse(&["loadtests"]);
        assert_eq!(args.warm_up, Duration::from_secs(8));
    }
}
