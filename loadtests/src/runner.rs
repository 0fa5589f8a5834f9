//! The benchmark: the baseline run and the cached run, each a warm-up then a measured
//! goose attack over the same workload; then the table, the checks and the files.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use example_dashboard::StoreKind;
use goose::{GooseAttack, config::GooseConfiguration, goose::Scenario};
use serde_json::json;

use crate::{
    chart::{self, Series},
    cli::{Args, ScenarioName, Store},
    endpoint::{LocalSetup, Target},
    goals,
    record::{Kind, Recorder},
    report::{self, GooseFigures, RunFigures, RunOutput, Speedups},
    scenarios::{self, Phase, consistency, fleet, outage},
    timeline::Timeline,
    workload::{DASHBOARD_READS, Workload},
};

/// Builds a fresh goose scenario (goose takes it by value, once per attack).
pub(crate) type ScenarioFactory = fn(ScenarioName) -> Scenario;

/// Salts of the two phases' random numbers.
const WARM_UP: u64 = 1;
const MEASURED: u64 = 2;

/// Time between starting goose and the first load being due: users are all launched by then.
const LAUNCH: Duration = Duration::from_millis(1500);

/// Runs the benchmark `args` describes. Returns whether every target was met.
pub(crate) async fn run(args: Args, scenario: ScenarioFactory) -> anyhow::Result<bool> {
    anyhow::ensure!(args.users > 0, "--users must be at least 1");
    anyhow::ensure!(
        (0.0..=0.5).contains(&args.write_share),
        "--write-share must be between 0 and 0.5"
    );
    let started = Instant::now();
    if args.host_b.is_some() && args.scenario != ScenarioName::Consistency {
        bail!("--host-b is for --scenario consistency only");
    }
    let dir = report_dir(&args)?;
    if args.scenario == ScenarioName::Consistency {
        // Not a goose attack: writers and observers on plain tasks, with its own report.
        return consistency::run(&args, &dir, started).await;
    }
    if args.scenario == ScenarioName::Fleet {
        // Nor this: users, writers and observers on plain tasks over several instances.
        return fleet::run(&args, &dir, started).await;
    }
    let workload = Arc::new(Workload::new(&args));
    println!("{}", describe(&args, &workload));
    println!("reports: {}\n", dir.display());

    if args.host.is_some() && args.scenario == ScenarioName::Outage {
        bail!(
            "--scenario outage stops a redis-server this runner starts: it runs locally only, not with --host"
        );
    }
    let mut runs = Vec::new();
    match &args.host {
        Some(host) => {
            if let Some(baseline) = &args.baseline_host {
                let target = Target::remote(baseline, args.admin_token.clone())?;
                runs.push(
                    run_one(&args, &workload, scenario, "baseline", target, &dir, false).await?,
                );
            }
            let target = Target::remote(host, args.admin_token.clone())?;
            runs.push(run_one(&args, &workload, scenario, "cached", target, &dir, false).await?);
        }
        None => {
            let with_baseline = args.scenario == ScenarioName::Dashboard && !args.no_baseline;
            let namespace = format!("loadtests-{}-{}", std::process::id(), fastrand::u32(..));
            let local = |store| LocalSetup {
                store,
                db_latency_ms: args.db_latency_ms,
                db_pool: args.db_pool,
                redis_url: args.redis_url.clone(),
                redis_cluster: false,
                namespace: namespace.clone(),
                database_url: None,
            };
            if with_baseline {
                let target = Target::start(&local(StoreKind::None)).await?;
                runs.push(
                    run_one(&args, &workload, scenario, "baseline", target, &dir, false).await?,
                );
            }
            let store = match (args.scenario, args.store) {
                // An outage needs a Redis to lose.
                (ScenarioName::Outage, Store::Memory | Store::Redis) => StoreKind::Redis,
                (ScenarioName::Outage, Store::Tiered) => StoreKind::Tiered,
                (_, Store::Memory) => StoreKind::Memory,
                (_, Store::Redis) => StoreKind::Redis,
                (_, Store::Tiered) => StoreKind::Tiered,
            };
            if args.scenario == ScenarioName::Outage && args.redis_url.is_some() {
                bail!(
                    "--scenario outage stops and starts a redis-server of its own: leave out --redis-url"
                );
            }
            let target = Target::start(&local(store)).await?;
            let outage = args.scenario == ScenarioName::Outage;
            runs.push(run_one(&args, &workload, scenario, "cached", target, &dir, outage).await?);
        }
    }

    let figures: Vec<RunFigures> = runs.iter().map(RunFigures::of).collect();
    let (baseline, cached) = match figures.as_slice() {
        [b, c] => (Some(b), c),
        [c] => (None, c),
        _ => bail!("no run was made"),
    };
    let checks = goals::evaluate(&args, baseline, cached);
    let passed = checks.iter().all(|c| c.passed);
    let table = report::table(baseline, cached);
    println!("{table}");
    // The outage's reads second by second, around the fault.
    let timeline = runs
        .last()
        .filter(|run| !run.marks.is_empty())
        .map(|run| Timeline::of(&run.samples, run.epoch, &run.marks));
    let mut written = vec!["summary.json", "latency.svg"];
    if let Some(timeline) = &timeline {
        println!("{}", timeline.render());
        let path = dir.join("timeline.svg");
        let title = format!(
            "{} users, scenario {}: reads per second, Redis stopped and started again",
            args.users,
            args.scenario.as_str()
        );
        match chart::draw_timeline(&path, &title, timeline) {
            Ok(()) => written.push("timeline.svg"),
            Err(e) => eprintln!("could not draw {}: {e}", path.display()),
        }
    }
    println!("{}", goals::render(&checks));

    let chart_path = dir.join("latency.svg");
    let mut series = Vec::new();
    // The baseline red, the cached run blue, in both panels.
    let color = |run: &RunOutput| usize::from(run.label != "baseline");
    for run in &runs {
        series.push(Series::of(
            format!("{}: all reads", run.label),
            color(run),
            &run.samples,
            Kind::Read,
            |_| true,
        ));
    }
    if let Some(cached) = runs.last()
        && cached.samples.iter().any(|s| s.cache.is_hit())
    {
        series.push(Series::of(
            "cached: hits",
            2,
            &cached.samples,
            Kind::Read,
            |s| s.cache.is_hit(),
        ));
        series.push(Series::of(
            "cached: misses",
            3,
            &cached.samples,
            Kind::Read,
            |s| !s.cache.is_hit(),
        ));
    }
    for run in &runs {
        series.push(Series::of(
            format!("{}: loads", run.label),
            color(run),
            &run.samples,
            Kind::Load,
            |_| true,
        ));
    }
    let title = format!(
        "{} users, scenario {}: latency distributions",
        args.users,
        args.scenario.as_str()
    );
    if let Err(e) = chart::draw(&chart_path, &title, &series) {
        eprintln!("could not draw {}: {e}", chart_path.display());
    }

    let summary = json!({
        "passed": passed,
        "scenario": args.scenario,
        "workload": workload_json(&args, &workload),
        "latency": "client side, from sending the request to the last byte of the body; whole loads from when they were due (fixed schedule), so coordinated omission is accounted for; goose's --co-mitigation is off and goose's own reports time to the first byte",
        "runs": figures,
        "speedups": baseline.map(|b| Speedups::of(b, cached)),
        "targets": checks,
        "table": table,
        "timeline": timeline,
        "chart": chart_path,
        "elapsed_s": started.elapsed().as_secs_f64(),
    });
    let summary_path = dir.join("summary.json");
    std::fs::write(&summary_path, serde_json::to_vec_pretty(&summary)?)
        .with_context(|| format!("write {}", summary_path.display()))?;
    println!(
        "{} in {:.0}s; written to {}: {}",
        if passed {
            "all targets met"
        } else {
            "TARGETS MISSED"
        },
        started.elapsed().as_secs_f64(),
        dir.display(),
        written
            .into_iter()
            .map(str::to_owned)
            .chain(runs.iter().flat_map(|r| r.reports.iter()).map(|p| {
                Path::new(p)
                    .file_name()
                    .map_or_else(String::new, |f| f.to_string_lossy().into_owned())
            }))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(passed)
}

/// A warm-up then the measured run against `target`, which is stopped afterwards.
async fn run_one(
    args: &Args,
    workload: &Arc<Workload>,
    scenario: ScenarioFactory,
    label: &'static str,
    mut target: Target,
    dir: &Path,
    outage: bool,
) -> anyhow::Result<RunOutput> {
    println!("{label}: {} at {}", target.description, target.url);
    let iterations = |d: Duration| {
        (d.as_secs_f64() / args.period.as_secs_f64())
            .ceil()
            .max(1.0) as usize
    };

    let warm = iterations(args.warm_up);
    let t = Instant::now();
    let (warm_up, _, _) = phase(
        args,
        workload,
        scenario,
        &target,
        (WARM_UP, Instant::now() + LAUNCH),
        warm,
        &[],
    )
    .await?;
    println!(
        "  warm-up: {warm} loads per user in {:.1}s (not counted)",
        t.elapsed().as_secs_f64()
    );

    let origin_reset = target.reset_origin_stats().await;
    let before = target.origin_stats().await;
    let reports: Vec<String> = ["html", "json"]
        .iter()
        .map(|ext| {
            dir.join(format!("goose-{label}.{ext}"))
                .display()
                .to_string()
        })
        .collect();
    let measured = iterations(args.run_time);
    // When the first load is due: the origin of the run's schedule, its fault and its
    // timeline, all on this one clock.
    let epoch = Instant::now() + LAUNCH;
    let fault = match (outage, target.redis.take()) {
        (true, Some(redis)) => Some(outage::inject(redis, epoch, args.period * measured as u32)),
        (true, None) => bail!("--scenario outage needs the redis-server this runner starts"),
        (false, redis) => {
            target.redis = redis;
            None
        }
    };
    let (samples, metrics, elapsed) = phase(
        args,
        workload,
        scenario,
        &target,
        (MEASURED, epoch),
        measured,
        &reports,
    )
    .await?;
    let mut marks = Vec::new();
    if let Some(fault) = fault {
        let (redis, happened) = fault.await??;
        target.redis = Some(redis);
        marks = happened;
    }
    let from_epoch = |at: Instant| at.saturating_duration_since(epoch).as_secs_f64();
    let events = marks
        .iter()
        .map(|m| {
            format!(
                "{} at {:.2}s (began at {:.2}s; from when the first load was due)",
                m.label,
                from_epoch(m.at),
                from_epoch(m.began)
            )
        })
        .collect();
    println!(
        "  measured: {measured} loads per user in {:.1}s",
        elapsed.as_secs_f64()
    );
    let after = target.origin_stats().await;
    let origin = match (origin_reset, before, after) {
        (true, _, after) => after,
        (false, Some(b), Some(a)) => Some(crate::endpoint::OriginStats {
            queries: a.queries.saturating_sub(b.queries),
            ..a
        }),
        _ => None,
    };
    let cache_stats = target.cache_stats().await;
    let output = RunOutput {
        label,
        target: target.description.clone(),
        url: target.url.clone(),
        samples,
        warm_up,
        origin,
        origin_reset,
        cache_stats,
        goose: goose_figures(&metrics),
        elapsed,
        reports,
        events,
        epoch,
        marks,
    };
    target.stop().await;
    Ok(output)
}

/// One goose attack: `users` users, `iterations` loads each, on the schedule; `salt`
/// picks the phase's random numbers, `epoch` is when its first load is due.
async fn phase(
    args: &Args,
    workload: &Arc<Workload>,
    scenario: ScenarioFactory,
    target: &Target,
    (salt, epoch): (u64, Instant),
    iterations: usize,
    reports: &[String],
) -> anyhow::Result<(
    Vec<crate::record::Sample>,
    goose::metrics::GooseMetrics,
    Duration,
)> {
    let phase = Arc::new(Phase {
        workload: Arc::clone(workload),
        recorder: Recorder::default(),
        epoch,
        salt,
        cache_name: args.cache_name.clone(),
        check_user_ids: args.host.is_none(),
    });
    scenarios::set_phase(Arc::clone(&phase));
    let mut argv: Vec<String> = [
        "--host",
        &target.url,
        "--users",
        &args.users.to_string(),
        "--increase-rate",
        &(args.users * 4).to_string(),
        "--iterations",
        &iterations.to_string(),
        "--co-mitigation",
        "disabled",
        "--no-telnet",
        "--no-print-metrics",
        "--quiet",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    for report in reports {
        argv.push("--report-file".into());
        argv.push(report.clone());
    }
    if !reports.is_empty() {
        // Labels goose's reports: which run, against what, and the workload's seed.
        argv.push("--notes".into());
        argv.push(format!(
            "{} users, scenario {}, seed {}: {}",
            args.users,
            args.scenario.as_str(),
            args.seed,
            target.description
        ));
    }
    let config = GooseConfiguration::parse_args_default(&argv)
        .map_err(|e| anyhow::anyhow!("goose options {argv:?}: {e}"))?;
    let started = Instant::now();
    let metrics = GooseAttack::initialize_with_config(config)
        .map_err(|e| anyhow::anyhow!("goose: {e}"))?
        .register_scenario(scenario(args.scenario))
        .execute()
        .await
        .map_err(|e| anyhow::anyhow!("goose: {e}"))?;
    let elapsed = started.elapsed().saturating_sub(LAUNCH);
    if goose::is_killswitch_triggered() {
        bail!("interrupted");
    }
    Ok((phase.recorder.take(), metrics, elapsed))
}

fn goose_figures(metrics: &goose::metrics::GooseMetrics) -> GooseFigures {
    GooseFigures {
        requests: metrics
            .requests
            .values()
            .map(|r| r.success_count + r.fail_count)
            .sum(),
        failures: metrics.requests.values().map(|r| r.fail_count).sum(),
        errors: metrics
            .errors
            .values()
            .map(|e| format!("{}: {}", e.error, e.occurrences))
            .collect(),
    }
}

/// `--report-dir`, or `target/loadtests/<timestamp>/`; created.
fn report_dir(args: &Args) -> anyhow::Result<PathBuf> {
    let dir = match &args.report_dir {
        Some(dir) => dir.clone(),
        None => {
            let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
                || {
                    Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("..")
                        .join("target")
                },
                PathBuf::from,
            );
            target
                .join("loadtests")
                .join(chrono::Local::now().format("%Y%m%d-%H%M%S").to_string())
        }
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(std::fs::canonicalize(&dir).unwrap_or(dir))
}

/// What the numbers mean: the workload, stated, since a hit rate means nothing without it.
fn describe(args: &Args, workload: &Workload) -> String {
    let distribution = match args.distribution {
        crate::workload::Distribution::Uniform => "uniform".to_owned(),
        crate::workload::Distribution::Zipf => format!("zipf s={}", args.zipf_s),
    };
    let reads = match args.scenario {
        ScenarioName::Pagination => {
            "walks sessions pages 1..3, creates a session, walks them again".to_owned()
        }
        _ => format!(
            "loads its dashboard ({DASHBOARD_READS} reads one after the other: profile, connectors, 5 metric categories, chat stats, sessions pages 1..3), then writes {:.3} times on average ({}% of requests: message, rename, connect)",
            workload.writes_per_load,
            args.write_share * 100.0
        ),
    };
    let mut text = format!(
        "scenario {}: {} users over {} accounts ({distribution}, {} distinct, seed {}); every {:.1}s each user {reads}.\n{}\n",
        args.scenario.as_str(),
        args.users,
        args.accounts,
        workload.distinct_accounts(),
        args.seed,
        args.period.as_secs_f64(),
        if args.burst {
            format!(
                "--burst: all {} users start their loads at the same instants.",
                args.users
            )
        } else {
            format!(
                "users' schedules are spread evenly: a load starts every {:.0} ms.",
                args.period.as_secs_f64() * 1e3 / args.users as f64
            )
        },
    );
    text.push_str(&format!(
        "warm-up {:.0}s then {:.0}s measured, per run. TTLs: profile, connectors, sessions pages 5 min; chat stats 10 min; metrics 15 min (no entry expires within a run).\n",
        args.warm_up.as_secs_f64(),
        args.run_time.as_secs_f64()
    ));
    if args.host.is_none() {
        text.push_str(&format!(
            "in-process dashboard: SQLite, {} ms per database round trip, a pool of {} connections in both runs.\n",
            args.db_latency_ms, args.db_pool
        ));
    }
    text.push_str("latency: client side, request sent to last body byte; whole loads from when they were due on the fixed schedule (coordinated omission accounted for; goose's --co-mitigation off).");
    text
}

fn workload_json(args: &Args, workload: &Workload) -> serde_json::Value {
    json!({
        "users": args.users,
        "accounts": args.accounts,
        "distribution": args.distribution,
        "zipf_s": args.zipf_s,
        "distinct_accounts": workload.distinct_accounts(),
        "seed": args.seed,
        "period_s": args.period.as_secs_f64(),
        "burst": args.burst,
        "reads_per_load": DASHBOARD_READS,
        "write_share": args.write_share,
        "writes_per_load": workload.writes_per_load,
        "warm_up_s": args.warm_up.as_secs_f64(),
        "run_time_s": args.run_time.as_secs_f64(),
        "db_latency_ms": args.db_latency_ms,
        "db_pool": args.db_pool,
        "store": args.store,
        "host": args.host,
        "baseline_host": args.baseline_host,
        "key_pattern": args.key_pattern,
        "ttls_s": {"profile": 300, "connector status": 300, "sessions pages": 300, "chat stats": 600, "metrics": 900},
    })
}
