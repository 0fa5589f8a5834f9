//! From records to figures: per request name, for all reads, hits and misses apart, whole
//! loads, writes; the side-by-side table; `summary.json`.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{
    endpoint::OriginStats,
    record::{CacheOutcome, Kind, Latency, Sample},
    scenarios::{dashboard, pagination},
    workload::WriteKind,
};

/// A load that started later than this after it was due counts as late.
const LATE: Duration = Duration::from_millis(10);

/// Everything a run produced, before it is turned into figures.
#[derive(Debug)]
pub(crate) struct RunOutput {
    /// `baseline` or `cached`.
    pub(crate) label: &'static str,
    /// What was loaded.
    pub(crate) target: String,
    /// Its URL.
    pub(crate) url: String,
    /// The measured run's records.
    pub(crate) samples: Vec<Sample>,
    /// The warm-up's records.
    pub(crate) warm_up: Vec<Sample>,
    /// The database's work during the measured run.
    pub(crate) origin: Option<OriginStats>,
    /// Whether `/_origin/stats` was reset before the run (else the most connections held
    /// counts since the server started).
    pub(crate) origin_reset: bool,
    /// `/_cache/stats` after the run.
    pub(crate) cache_stats: Option<serde_json::Value>,
    /// goose's own count of requests and failures (time to first byte).
    pub(crate) goose: GooseFigures,
    /// How long the measured run took.
    pub(crate) elapsed: Duration,
    /// goose's report files.
    pub(crate) reports: Vec<String>,
    /// Faults injected and the like.
    pub(crate) events: Vec<String>,
    /// When the measured run's first load was due: the origin of its timeline.
    pub(crate) epoch: Instant,
    /// The faults injected, timed on the same clock as the samples.
    pub(crate) marks: Vec<crate::timeline::Mark>,
}

/// goose's own figures of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct GooseFigures {
    /// Requests goose counted.
    pub(crate) requests: usize,
    /// Requests goose counted as failed.
    pub(crate) failures: usize,
    /// goose's error summary (`error: count`).
    pub(crate) errors: Vec<String>,
}

/// The figures of one named request (or a group of them).
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Row {
    /// The name.
    pub(crate) name: String,
    /// Latency to the last byte of the body.
    pub(crate) latency: Latency,
    /// Average time to the response headers (goose's measure), in ms.
    pub(crate) first_byte_avg_ms: f64,
    /// Served fresh from the cache.
    pub(crate) hits: usize,
    /// Served stale from the cache.
    pub(crate) stale: usize,
    /// Forwarded and stored.
    pub(crate) misses: usize,
    /// Served by another request's fill.
    pub(crate) collapsed: usize,
    /// Forwarded without caching.
    pub(crate) bypasses: usize,
    /// No `Cache-Status` from the cache.
    pub(crate) uncached: usize,
    /// Hits (fresh or stale) over all responses, when the cache said anything.
    pub(crate) hit_rate: Option<f64>,
    /// Failed requests.
    pub(crate) errors: usize,
}

impl Row {
    fn of<'a>(name: &str, samples: impl IntoIterator<Item = &'a Sample> + Clone) -> Row {
        let mut row = Row {
            name: name.to_owned(),
            latency: Latency::of(samples.clone().into_iter().map(|s| s.latency)),
            ..Row::default()
        };
        let mut first_byte = Duration::ZERO;
        for s in samples {
            first_byte += s.first_byte;
            match s.cache {
                CacheOutcome::Hit => row.hits += 1,
                CacheOutcome::Stale => row.stale += 1,
                CacheOutcome::Miss => row.misses += 1,
                CacheOutcome::Collapsed => row.collapsed += 1,
                CacheOutcome::Bypass => row.bypasses += 1,
                CacheOutcome::None => row.uncached += 1,
            }
            row.errors += usize::from(!s.ok);
        }
        if row.latency.count > 0 {
            row.first_byte_avg_ms = first_byte.as_secs_f64() * 1e3 / row.latency.count as f64;
        }
        if row.latency.count > row.uncached && row.latency.count > row.bypasses {
            row.hit_rate = Some((row.hits + row.stale) as f64 / row.latency.count as f64);
        }
        row
    }
}

/// The figures of one run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RunFigures {
    /// `baseline` or `cached`.
    pub(crate) label: String,
    /// What was loaded.
    pub(crate) target: String,
    /// Its URL.
    pub(crate) url: String,
    /// Per named request, reads first in the order a load makes them, then writes.
    pub(crate) requests: Vec<Row>,
    /// All reads together.
    pub(crate) reads: Row,
    /// Reads served from the cache (fresh or stale).
    pub(crate) read_hits: Latency,
    /// Reads that went to the database (misses, bypasses, no cache).
    pub(crate) read_misses: Latency,
    /// All writes together.
    pub(crate) writes: Row,
    /// Whole loads (every read of one iteration), from when each was due to its last byte.
    pub(crate) load: Latency,
    /// Whole loads, from when each actually started.
    pub(crate) load_service: Latency,
    /// Loads that started more than 10 ms after they were due.
    pub(crate) late_loads: usize,
    /// The first load of each user in the warm-up: what users see on a cold cache.
    pub(crate) cold_load: Latency,
    /// Requests made (reads and writes).
    pub(crate) request_count: usize,
    /// Failed requests (wrong status, transport error, wrong user's data, stale after a write).
    pub(crate) errors: usize,
    /// `errors / request_count`.
    pub(crate) error_rate: f64,
    /// Up to ten distinct error messages with their counts.
    pub(crate) error_examples: Vec<String>,
    /// Requests per second over the measured run.
    pub(crate) requests_per_second: f64,
    /// How long the measured run took, in seconds.
    pub(crate) elapsed_s: f64,
    /// The database's work.
    pub(crate) origin: Option<OriginStats>,
    /// Whether the origin counters were reset before the run.
    pub(crate) origin_reset: bool,
    /// goose's own figures.
    pub(crate) goose: GooseFigures,
    /// goose's report files.
    pub(crate) reports: Vec<String>,
    /// Faults injected and the like.
    pub(crate) events: Vec<String>,
    /// `/_cache/stats` after the run.
    pub(crate) cache_stats: Option<serde_json::Value>,
}

/// Where `name` goes in the table.
fn order(name: &str) -> usize {
    let writes = WriteKind::ALL.map(WriteKind::name);
    dashboard::READS
        .iter()
        .map(|(_, n)| *n)
        .chain(writes)
        .chain([pagination::CREATE])
        .position(|n| n == name)
        .unwrap_or(usize::MAX)
}

impl RunFigures {
    /// The figures of `run`.
    pub(crate) fn of(run: &RunOutput) -> RunFigures {
        let mut by_name: BTreeMap<(usize, &str), Vec<&Sample>> = BTreeMap::new();
        for s in run.samples.iter().filter(|s| s.kind != Kind::Load) {
            by_name.entry((order(s.name), s.name)).or_default().push(s);
        }
        let requests = by_name
            .iter()
            .map(|((_, name), samples)| Row::of(name, samples.iter().copied()))
            .collect();
        let of_kind = |kind| run.samples.iter().filter(move |s| s.kind == kind);
        let reads = Row::of("all reads", of_kind(Kind::Read));
        let writes = Row::of("all writes", of_kind(Kind::Write));
        let read_hits = Latency::of(
            of_kind(Kind::Read)
                .filter(|s| s.cache.is_hit())
                .map(|s| s.latency),
        );
        let read_misses = Latency::of(
            of_kind(Kind::Read)
                .filter(|s| !s.cache.is_hit())
                .map(|s| s.latency),
        );
        let load = Latency::of(of_kind(Kind::Load).map(|s| s.latency));
        let load_service =
            Latency::of(of_kind(Kind::Load).map(|s| s.latency.saturating_sub(s.first_byte)));
        let late_loads = of_kind(Kind::Load).filter(|s| s.first_byte > LATE).count();
        let cold_load = Latency::of(
            run.warm_up
                .iter()
                .filter(|s| s.kind == Kind::Load && s.iteration == 0)
                .map(|s| s.latency),
        );
        let request_count = reads.latency.count + writes.latency.count;
        let errors = reads.errors + writes.errors;
        let mut messages: BTreeMap<&str, usize> = BTreeMap::new();
        for s in &run.samples {
            if let Some(e) = &s.error {
                *messages.entry(e.as_str()).or_default() += 1;
            }
        }
        let mut messages: Vec<_> = messages.into_iter().collect();
        messages.sort_by_key(|m| std::cmp::Reverse(m.1));
        let elapsed_s = run.elapsed.as_secs_f64();
        RunFigures {
            label: run.label.to_owned(),
            target: run.target.clone(),
            url: run.url.clone(),
            requests,
            reads,
            read_hits,
            read_misses,
            writes,
            load,
            load_service,
            late_loads,
            cold_load,
            request_count,
            errors,
            error_rate: if request_count == 0 {
                0.0
            } else {
                errors as f64 / request_count as f64
            },
            error_examples: messages
                .into_iter()
                .take(10)
                .map(|(m, n)| format!("{n}x {m}"))
                .collect(),
            requests_per_second: if elapsed_s > 0.0 {
                request_count as f64 / elapsed_s
            } else {
                0.0
            },
            elapsed_s,
            origin: run.origin,
            origin_reset: run.origin_reset,
            goose: run.goose.clone(),
            reports: run.reports.clone(),
            events: run.events.clone(),
            cache_stats: run.cache_stats.clone(),
        }
    }
}

/// Baseline over cached, the way the seed counts "26x faster".
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Speedups {
    /// Average read latency, baseline over cached.
    pub(crate) avg: f64,
    /// 95th percentile read latency, baseline over cached.
    pub(crate) p95: f64,
    /// Average dashboard load, baseline over cached.
    pub(crate) load_avg: f64,
    /// Database queries saved, as a share of the baseline's.
    pub(crate) db_reduction: Option<f64>,
}

impl Speedups {
    /// Compares `cached` with `baseline`.
    pub(crate) fn of(baseline: &RunFigures, cached: &RunFigures) -> Speedups {
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        Speedups {
            avg: ratio(baseline.reads.latency.avg_ms, cached.reads.latency.avg_ms),
            p95: ratio(baseline.reads.latency.p95_ms, cached.reads.latency.p95_ms),
            load_avg: ratio(baseline.load.avg_ms, cached.load.avg_ms),
            db_reduction: match (baseline.origin, cached.origin) {
                (Some(b), Some(c)) if b.queries > 0 => {
                    Some(1.0 - c.queries as f64 / b.queries as f64)
                }
                _ => None,
            },
        }
    }
}

fn ms(v: f64) -> String {
    if v >= 1000.0 {
        format!("{v:.0}")
    } else if v >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{:.1}%", v * 100.0))
}

fn times(v: f64) -> String {
    if v <= 0.0 {
        "-".to_owned()
    } else if v >= 10.0 {
        format!("{v:.0}x")
    } else {
        format!("{v:.1}x")
    }
}

/// Latency columns: `n avg p50 p95 p99`.
fn lat_cells(l: Option<&Latency>) -> String {
    match l {
        Some(l) if l.count > 0 => format!(
            "{:>6} {:>7} {:>7} {:>7} {:>7}",
            l.count,
            ms(l.avg_ms),
            ms(l.p50_ms),
            ms(l.p95_ms),
            ms(l.p99_ms)
        ),
        _ => format!("{:>6} {:>7} {:>7} {:>7} {:>7}", "-", "-", "-", "-", "-"),
    }
}

/// The side-by-side table: one line per request name and per aggregate, baseline on the
/// left (when there is one), then the cached run with its hit rate, then the speedups.
pub(crate) fn table(baseline: Option<&RunFigures>, cached: &RunFigures) -> String {
    let mut out = String::new();
    let w = 28;
    let head = format!(
        "{:>6} {:>7} {:>7} {:>7} {:>7}",
        "n", "avg", "p50", "p95", "p99"
    );
    let _ = writeln!(
        out,
        "{:<w$} | {:<38} | {:<38} {:>7} | {:>7} {:>7}",
        "latency in ms (to last byte)",
        baseline.map_or("(no baseline run)".to_owned(), |b| format!(
            "{}: {}",
            b.label,
            short(&b.target)
        )),
        format!("{}: {}", cached.label, short(&cached.target)),
        "",
        "speedup",
        ""
    );
    let _ = writeln!(
        out,
        "{:<w$} | {head} | {head} {:>7} | {:>7} {:>7}",
        "request", "hits", "avg", "p95"
    );
    let _ = writeln!(out, "{}", "-".repeat(w + 3 + 38 + 3 + 38 + 8 + 3 + 15));
    let line = |out: &mut String,
                name: &str,
                b: Option<&Latency>,
                c: Option<&Latency>,
                hit: Option<f64>| {
        let (sa, sp) = match (b, c) {
            (Some(b), Some(c)) if b.count > 0 && c.count > 0 => (
                times(if c.avg_ms > 0.0 {
                    b.avg_ms / c.avg_ms
                } else {
                    0.0
                }),
                times(if c.p95_ms > 0.0 {
                    b.p95_ms / c.p95_ms
                } else {
                    0.0
                }),
            ),
            _ => ("-".to_owned(), "-".to_owned()),
        };
        let _ = writeln!(
            out,
            "{:<w$} | {} | {} {:>7} | {:>7} {:>7}",
            name,
            lat_cells(b),
            lat_cells(c),
            pct(hit),
            sa,
            sp
        );
    };
    let find = |run: Option<&RunFigures>, name: &str| -> Option<Row> {
        run?.requests.iter().find(|r| r.name == name).cloned()
    };
    for row in &cached.requests {
        let b = find(baseline, &row.name);
        line(
            &mut out,
            &row.name,
            b.as_ref().map(|r| &r.latency),
            Some(&row.latency),
            row.hit_rate,
        );
    }
    let _ = writeln!(out, "{}", "-".repeat(w + 3 + 38 + 3 + 38 + 8 + 3 + 15));
    line(
        &mut out,
        "all reads",
        baseline.map(|b| &b.reads.latency),
        Some(&cached.reads.latency),
        cached.reads.hit_rate,
    );
    line(
        &mut out,
        "  reads served from cache",
        None,
        Some(&cached.read_hits),
        None,
    );
    line(
        &mut out,
        "  reads not from the cache",
        baseline.map(|b| &b.read_misses),
        Some(&cached.read_misses),
        None,
    );
    if cached.writes.latency.count > 0 {
        line(
            &mut out,
            "all writes",
            baseline.map(|b| &b.writes.latency),
            Some(&cached.writes.latency),
            None,
        );
    }
    line(
        &mut out,
        "whole load, from when due",
        baseline.map(|b| &b.load),
        Some(&cached.load),
        None,
    );
    line(
        &mut out,
        "whole load, from its start",
        baseline.map(|b| &b.load_service),
        Some(&cached.load_service),
        None,
    );
    line(
        &mut out,
        "first load, cold (warm-up)",
        baseline.map(|b| &b.cold_load),
        Some(&cached.cold_load),
        None,
    );
    let _ = writeln!(out);
    let col =
        |b: Option<String>, c: String| format!("{:>16} {:>16}", b.unwrap_or_else(|| "-".into()), c);
    let _ = writeln!(
        out,
        "{:<w$}   {:>16} {:>16}",
        "",
        baseline.map_or("", |b| b.label.as_str()),
        cached.label
    );
    let req = |f: &RunFigures| f.request_count.to_string();
    let _ = writeln!(
        out,
        "{:<w$}   {}",
        "requests",
        col(baseline.map(req), req(cached))
    );
    let rps = |f: &RunFigures| format!("{:.0}/s", f.requests_per_second);
    let _ = writeln!(
        out,
        "{:<w$}   {}",
        "throughput",
        col(baseline.map(rps), rps(cached))
    );
    let err = |f: &RunFigures| format!("{} ({:.2}%)", f.errors, f.error_rate * 100.0);
    let _ = writeln!(
        out,
        "{:<w$}   {}",
        "errors",
        col(baseline.map(err), err(cached))
    );
    let hits = |f: &RunFigures| pct(f.reads.hit_rate);
    let _ = writeln!(
        out,
        "{:<w$}   {}",
        "hit rate (reads)",
        col(baseline.map(hits), hits(cached))
    );
    let byp = |f: &RunFigures| f.reads.bypasses.to_string();
    if cached.reads.bypasses > 0 {
        let _ = writeln!(
            out,
            "{:<w$}   {}",
            "bypasses (reads)",
            col(baseline.map(byp), byp(cached))
        );
    }
    let q = |f: &RunFigures| f.origin.map_or("n/a".to_owned(), |o| o.queries.to_string());
    let _ = writeln!(
        out,
        "{:<w$}   {}",
        "database queries",
        col(baseline.map(q), q(cached))
    );
    let c = |f: &RunFigures| {
        f.origin.map_or("n/a".to_owned(), |o| {
            format!(
                "{} of {}{}",
                o.max_connections_in_use,
                o.pool_size,
                if f.origin_reset { "" } else { "*" }
            )
        })
    };
    let _ = writeln!(
        out,
        "{:<w$}   {}",
        "most DB connections held",
        col(baseline.map(c), c(cached))
    );
    let late = |f: &RunFigures| f.late_loads.to_string();
    let _ = writeln!(
        out,
        "{:<w$}   {}",
        "loads started late (>10ms)",
        col(baseline.map(late), late(cached))
    );
    if let Some(b) = baseline {
        let s = Speedups::of(b, cached);
        let _ = writeln!(
            out,
            "{:<w$}   {} faster on average, {} at p95, whole loads {} faster; {} fewer database queries",
            "speedup",
            times(s.avg),
            times(s.p95),
            times(s.load_avg),
            pct(s.db_reduction)
        );
    }
    for f in baseline.into_iter().chain([cached]) {
        for e in &f.events {
            let _ = writeln!(out, "{:<w$}   {}: {e}", "event", f.label);
        }
        for e in &f.error_examples {
            let _ = writeln!(out, "{:<w$}   {}: {e}", "error", f.label);
        }
        if !f.origin_reset && f.origin.is_some() {
            let _ = writeln!(
                out,
                "* {}: /_origin/stats could not be reset (no --admin-token): queries are the run's difference, connections since the server started",
                f.label
            );
        }
    }
    out
}

fn short(target: &str) -> String {
    let t = target
        .strip_prefix("in-process dashboard, ")
        .unwrap_or(target);
    let t = t.split(';').next().unwrap_or(t);
    let t = t.split(" (").next().unwrap_or(t);
    t.chars().take(30).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &'static str, kind: Kind, ms: u64, cache: CacheOutcome) -> Sample {
        Sample {
            name,
            kind,
            iteration: 0,
            sent: Instant::now(),
            latency: Duration::from_millis(ms),
            first_byte: Duration::from_millis(ms / 2),
            cache,
            ok: true,
            error: None,
        }
    }

    #[test]
    fn hits_and_misses_are_counted_and_timed_apart() {
        let mut samples = vec![sample("profile", Kind::Read, 200, CacheOutcome::Miss)];
        samples.extend((0..9).map(|_| sample("profile", Kind::Read, 1, CacheOutcome::Hit)));
        samples.push(sample(
            "write: post message",
            Kind::Write,
            210,
            CacheOutcome::Bypass,
        ));
        let mut failed = sample("chat stats", Kind::Read, 3, CacheOutcome::Hit);
        failed.ok = false;
        failed.error = Some("chat stats: status 500".into());
        samples.push(failed);
        let run = RunOutput {
            label: "cached",
            target: "t".into(),
            url: "u".into(),
            samples,
            warm_up: vec![],
            origin: None,
            origin_reset: true,
            cache_stats: None,
            goose: GooseFigures::default(),
            elapsed: Duration::from_secs(2),
            reports: vec![],
            events: vec![],
            epoch: Instant::now(),
            marks: vec![],
        };
        let f = RunFigures::of(&run);
        assert_eq!(f.requests[0].name, "profile");
        assert_eq!(f.requests[0].hits, 9);
        assert_eq!(f.requests[0].hit_rate, Some(0.9));
        assert_eq!(f.reads.latency.count, 11);
        assert_eq!(f.read_misses.count, 1);
        assert_eq!(f.read_misses.avg_ms, 200.0);
        assert_eq!(f.read_hits.count, 10);
        assert_eq!(f.writes.latency.count, 1);
        assert_eq!(f.request_count, 12);
        assert_eq!(f.errors, 1);
        assert_eq!(f.error_examples, ["1x chat stats: status 500"]);
        assert_eq!(f.requests_per_second, 6.0);
        let table = table(None, &f);
        assert!(table.contains("profile"), "{table}");
    }
}
