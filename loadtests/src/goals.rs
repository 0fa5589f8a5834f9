//! The targets, from the seeds (each set by a `--target-*` flag): with the cache, reads hit
//! at least 90% of the time, average at most 8 ms and 95% take at most 15 ms, a hit takes
//! under 20 ms, the database holds about 10 connections; against the baseline, 26x faster
//! on average with 95% fewer database queries; and no run has a failed request.

use serde::Serialize;

use crate::{
    cli::{Args, ScenarioName},
    report::{RunFigures, Speedups},
};

/// One target and how the run did.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Check {
    /// What is checked.
    pub(crate) name: String,
    /// The target, as text.
    pub(crate) target: String,
    /// What the run measured, as text.
    pub(crate) observed: String,
    /// Whether the target was met.
    pub(crate) passed: bool,
}

fn check(name: &str, target: String, observed: String, passed: bool) -> Check {
    Check {
        name: name.to_owned(),
        target,
        observed,
        passed,
    }
}

/// The checks of a benchmark: every run's errors; for the `dashboard` scenario the cached
/// run's hit rate, latency and connections, and, with a baseline, the speedup and the
/// database load reduction.
pub(crate) fn evaluate(
    args: &Args,
    baseline: Option<&RunFigures>,
    cached: &RunFigures,
) -> Vec<Check> {
    let mut checks = Vec::new();
    for run in baseline.into_iter().chain([cached]) {
        checks.push(check(
            &format!("{}: failed requests", run.label),
            format!("<= {:.2}%", args.target_error_rate * 100.0),
            format!(
                "{} of {} ({:.2}%)",
                run.errors,
                run.request_count,
                run.error_rate * 100.0
            ),
            run.error_rate <= args.target_error_rate && run.request_count > 0,
        ));
    }
    if args.scenario != ScenarioName::Dashboard {
        return checks;
    }
    let reads = &cached.reads;
    let hit_rate = reads.hit_rate.unwrap_or(0.0);
    checks.push(check(
        "cached: hit rate of reads",
        format!(">= {:.0}%", args.target_hit_rate * 100.0),
        format!("{:.1}%", hit_rate * 100.0),
        hit_rate >= args.target_hit_rate,
    ));
    checks.push(check(
        "cached: average read",
        format!("<= {} ms", args.target_avg_ms),
        format!("{:.2} ms", reads.latency.avg_ms),
        reads.latency.count > 0 && reads.latency.avg_ms <= args.target_avg_ms,
    ));
    checks.push(check(
        "cached: p95 read",
        format!("<= {} ms", args.target_p95_ms),
        format!("{:.2} ms", reads.latency.p95_ms),
        reads.latency.count > 0 && reads.latency.p95_ms <= args.target_p95_ms,
    ));
    checks.push(check(
        "cached: p99 of hits",
        format!("<= {} ms", args.target_hit_p99_ms),
        format!("{:.2} ms", cached.read_hits.p99_ms),
        cached.read_hits.count > 0 && cached.read_hits.p99_ms <= args.target_hit_p99_ms,
    ));
    checks.push(match cached.origin {
        Some(o) => check(
            "cached: most database connections held",
            format!("<= {}", args.target_max_connections),
            o.max_connections_in_use.to_string(),
            o.max_connections_in_use <= args.target_max_connections,
        ),
        None => check(
            "cached: most database connections held",
            format!("<= {}", args.target_max_connections),
            "unknown (no /_origin/stats)".into(),
            false,
        ),
    });
    if let Some(baseline) = baseline {
        let s = Speedups::of(baseline, cached);
        checks.push(check(
            "speedup of the average read",
            format!(">= {}x", args.target_speedup),
            format!("{:.1}x", s.avg),
            s.avg >= args.target_speedup,
        ));
        checks.push(check(
            "database queries saved",
            format!(">= {:.0}%", args.target_db_reduction * 100.0),
            s.db_reduction
                .map_or("unknown".into(), |r| format!("{:.1}%", r * 100.0)),
            s.db_reduction
                .is_some_and(|r| r >= args.target_db_reduction),
        ));
    }
    checks
}

/// The checks as lines, `PASS`/`FAIL` first.
pub(crate) fn render(checks: &[Check]) -> String {
    let mut out = String::from("targets:\n");
    for c in checks {
        out.push_str(&format!(
            "  {} {:<42} {:>14}  (target {})\n",
            if c.passed { "PASS" } else { "FAIL" },
            c.name,
            c.observed,
            c.target
        ));
    }
    out
}
