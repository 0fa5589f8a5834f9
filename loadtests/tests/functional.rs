//! A short run of the real runner (the binary, as `cargo run -p loadtests` runs it): four
//! users for a few seconds against the in-process dashboard with a 20 ms database. It
//! checks that both runs happened, that goose's reports, `summary.json` and the chart were
//! written, and that hits were counted from `Cache-Status`; then the other scenarios, each
//! for a few seconds.

use std::{path::Path, process::Command};

fn run(args: &[&str], dir: &Path) -> (std::process::Output, serde_json::Value) {
    let output = Command::new(env!("CARGO_BIN_EXE_loadtests"))
        .args(args)
        .arg("--report-dir")
        .arg(dir)
        .output()
        .expect("run the loadtests binary");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let summary = std::fs::read(dir.join("summary.json"))
        .unwrap_or_else(|e| panic!("no summary.json ({e})\nstdout:\n{stdout}\nstderr:\n{stderr}"));
    let summary = serde_json::from_slice(&summary).expect("summary.json is JSON");
    (output, summary)
}

/// Runs the binary, which must exit 0 with `"passed": true`; returns its stdout and summary.
fn run_passing(args: &[&str], dir: &Path) -> (String, serde_json::Value) {
    let (output, summary) = run(args, dir);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(summary["passed"], true);
    (stdout, summary)
}

/// Loose targets: this checks the machinery, not the machine's speed.
const SHORT: &[&str] = &[
    "--users=4",
    "--period=500ms",
    "--warm-up=1s",
    "--run-time=3s",
    "--db-latency-ms=20",
    "--write-share=0.05",
    "--target-avg-ms=1000",
    "--target-p95-ms=1000",
    "--target-hit-p99-ms=1000",
    "--target-hit-rate=0.5",
    "--target-speedup=1.5",
    "--target-db-reduction=0.3",
    "--target-max-connections=100",
];

#[test]
fn a_short_benchmark_writes_its_reports_and_counts_hits() {
    let dir = tempfile::tempdir().unwrap();
    let (output, summary) = run(SHORT, dir.path());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    for file in [
        "goose-baseline.html",
        "goose-baseline.json",
        "goose-cached.html",
        "goose-cached.json",
        "latency.svg",
    ] {
        let path = dir.path().join(file);
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        assert!(len > 0, "{} is missing or empty", path.display());
    }
    let goose_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("goose-cached.json")).unwrap())
            .expect("goose's JSON report is JSON");
    assert!(goose_json.is_object());

    assert_eq!(summary["passed"], true);
    let runs = summary["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    let (baseline, cached) = (&runs[0], &runs[1]);
    assert_eq!(baseline["label"], "baseline");
    assert_eq!(cached["label"], "cached");
    // Same workload: 4 users x 6 loads x 11 reads in both runs.
    assert_eq!(baseline["reads"]["latency"]["count"], 4 * 6 * 11);
    assert_eq!(cached["reads"]["latency"]["count"], 4 * 6 * 11);
    assert_eq!(
        baseline["writes"]["latency"]["count"],
        cached["writes"]["latency"]["count"]
    );
    // Hits were counted, from Cache-Status, and only with the cache.
    let hits = cached["reads"]["hits"].as_u64().unwrap();
    assert!(hits > 100, "hits: {hits}");
    assert_eq!(baseline["reads"]["hits"], 0);
    assert!(cached["reads"]["hit_rate"].as_f64().unwrap() > 0.5);
    assert!(baseline["reads"]["hit_rate"].is_null());
    // The database did the baseline's work and much less with the cache.
    let queries = |run: &serde_json::Value| run["origin"]["queries"].as_u64().unwrap();
    assert!(queries(baseline) >= 4 * 6 * 11);
    assert!(queries(cached) < queries(baseline) / 2);
    assert_eq!(baseline["errors"], 0);
    assert_eq!(cached["errors"], 0);
    // The table names every read of a dashboard load.
    for name in [
        "profile",
        "connector status",
        "metrics finance",
        "chat stats",
        "sessions page 3",
        "all reads",
    ] {
        assert!(stdout.contains(name), "{name} missing from:\n{stdout}");
    }
}

#[test]
fn a_missed_target_exits_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut args: Vec<&str> = SHORT
        .iter()
        .copied()
        .filter(|a| !a.starts_with("--target-hit-rate"))
        .collect();
    args.extend(["--no-baseline", "--target-hit-rate=1.01"]);
    let (output, summary) = run(&args, dir.path());
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(summary["passed"], false);
    assert_eq!(summary["runs"].as_array().unwrap().len(), 1);
}

#[test]
fn pagination_pages_stay_fresh_after_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (output, summary) = run(
        &[
            "--scenario=pagination",
            "--users=3",
            "--period=500ms",
            "--warm-up=500ms",
            "--run-time=2s",
            "--db-latency-ms=10",
        ],
        dir.path(),
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let cached = &summary["runs"][0];
    assert_eq!(cached["errors"], 0);
    assert!(cached["writes"]["latency"]["count"].as_u64().unwrap() >= 12);
}

#[test]
fn an_outage_of_redis_fails_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let (output, summary) = run(
        &[
            "--scenario=outage",
            "--users=3",
            "--period=500ms",
            "--warm-up=1s",
            "--run-time=3s",
            "--db-latency-ms=10",
        ],
        dir.path(),
    );
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let cached = &summary["runs"][0];
    assert!(
        cached["target"].as_str().unwrap().contains("Redis"),
        "{}",
        cached["target"]
    );
    assert_eq!(
        cached["events"].as_array().unwrap().len(),
        2,
        "{}",
        cached["events"]
    );
    assert_eq!(cached["errors"], 0);
    assert!(cached["reads"]["bypasses"].as_u64().unwrap() > 0);
    // The reads second by second, around the two events, and the chart of them.
    let timeline = &summary["timeline"];
    let seconds = timeline["seconds"].as_array().unwrap();
    assert!(seconds.len() >= 3, "{timeline}");
    let sum = |field: &str| -> u64 { seconds.iter().map(|s| s[field].as_u64().unwrap()).sum() };
    assert_eq!(
        sum("reads"),
        cached["reads"]["latency"]["count"].as_u64().unwrap()
    );
    assert_eq!(
        sum("bypasses"),
        cached["reads"]["bypasses"].as_u64().unwrap()
    );
    assert_eq!(timeline["marks"].as_array().unwrap().len(), 2);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("<- redis stopped at"), "{stdout}");
    assert!(stdout.contains("hits resumed"), "{stdout}");
    let svg = std::fs::read_to_string(dir.path().join("timeline.svg")).unwrap();
    assert!(svg.contains("redis running again"));
}

#[test]
fn consistency_finds_no_stale_read_across_two_instances() {
    let dir = tempfile::tempdir().unwrap();
    let (stdout, summary) = run_passing(
        &[
            "--scenario=consistency",
            "--store=redis",
            "--users=3",
            "--run-time=2s",
            "--db-latency-ms=10",
        ],
        dir.path(),
    );
    // Two instances: A and B are different servers.
    assert_ne!(summary["setup"]["a"], summary["setup"]["b"]);
    let figures = &summary["figures"];
    let writes = figures["writes"].as_u64().unwrap();
    assert!(writes >= 3 * 5, "{figures}");
    assert_eq!(figures["checked_reads"], writes * 2, "{figures}");
    assert!(
        figures["checked_read_hits"].as_u64().unwrap() > 0,
        "{figures}"
    );
    assert_eq!(figures["stale_reads"], 0);
    assert!(figures["observed_writes"].as_u64().unwrap() >= 3);
    assert!(stdout.contains("STALE reads (must be 0)"), "{stdout}");
}

#[test]
fn fleet_runs_each_size_over_one_redis_cluster_without_stale_reads() {
    let dir = tempfile::tempdir().unwrap();
    let (stdout, summary) = run_passing(
        &[
            "--scenario=fleet",
            "--instances=1,2",
            "--users=4",
            "--period=1s",
            "--warm-up=1s",
            "--run-time=2s",
            "--write-share=0.1",
            "--db-latency-ms=10",
            "--db-pool=10",
        ],
        dir.path(),
    );
    let fleets = summary["fleets"].as_array().unwrap();
    assert_eq!(fleets.len(), 2);
    for (fleet, n) in fleets.iter().zip([1, 2]) {
        assert_eq!(fleet["instances"], n);
        // 4 users x 2 loads x 11 reads, spread over the instances.
        assert_eq!(fleet["reads"], 4 * 2 * 11, "{fleet}");
        let per_instance = fleet["requests_per_instance"].as_array().unwrap();
        assert_eq!(per_instance.len(), n);
        assert!(per_instance.iter().all(|r| r.as_u64().unwrap() > 0));
        assert_eq!(fleet["stale_reads"], 0);
        assert_eq!(fleet["errors"], 0);
        // The warm-up filled the cache; the instances share its entries through Redis.
        assert!(fleet["hit_rate"].as_f64().unwrap() > 0.5, "{fleet}");
        let masters = fleet["masters"].as_array().unwrap();
        assert_eq!(masters.len(), 3);
        let calls: u64 = masters.iter().map(|m| m["calls"].as_u64().unwrap()).sum();
        assert!(calls > 0, "{fleet}");
        assert!(fleet["busiest_master_share"].as_f64().unwrap() >= 1.0 / 3.0);
    }
    assert!(stdout.contains("STALE reads (must be 0)"), "{stdout}");
    assert!(stdout.contains("busiest master's share"), "{stdout}");
    assert!(dir.path().join("summary.md").exists());
}
