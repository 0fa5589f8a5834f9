//! The HTTP-level run: one axum app served by hyper (`axum::serve`) on a loopback port, in
//! this process, driven by `wrk` over 100 keep-alive connections. The app has two routes with
//! paths of the same length and the same 2 KiB JSON body: `/api/static`, with no cache, and
//! `/api/report`, behind Larder on `MemoryStore` (the set-up of `hit_miss.rs`).
//!
//! The server runs on the benches' tokio runtime (two workers); `wrk -t1 -c100 -d<secs>s
//! --latency` runs as a child process from the main thread, alternately against the static
//! and the cached route (static first in odd rounds, cached first in even ones), so that the
//! noise of a shared machine shows in the runs. Every run is printed with its requests per
//! second and its p50 and p99 latency, then the median and the best of each route, and the
//! ratio of the cached route's requests per second to the static route's (issue 6's target:
//! at least 0.80).
//!
//! This is no criterion bench. Under `cargo bench` (which passes `--bench`) each run lasts
//! `LARDER_HTTP_SECS` seconds (10 by default) over `LARDER_HTTP_ROUNDS` rounds (3 by default),
//! after a 1 s warm-up of each route. Without `--bench` (`cargo test --benches`) it is a smoke
//! test: one round of 1 s runs. A filter argument (`cargo bench -p benches -- hit/`) that is
//! not part of `http/static` or `http/cached` skips the whole run. When `wrk` is not installed
//! the run says so and exits with success: `wrk` is needed only to run this, not to build it.

use std::{
    env,
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use axum::Router;
use benches::{BODY_LEN, ROUTE, json_body, origin, runtime};
use bytes::Bytes;
use larder::{CacheHandle, MemoryStore, Rule};

/// The uncached route; as long as [`ROUTE`], so both requests have the same size.
const STATIC_ROUTE: &str = "/api/static";

/// wrk's keep-alive connections.
const CONNECTIONS: u32 = 100;

/// One of the two routes the run compares.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    /// The route with no cache.
    Static,
    /// The route behind Larder.
    Cached,
}

impl Route {
    fn name(self) -> &'static str {
        match self {
            Route::Static => "static",
            Route::Cached => "cached",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Route::Static => STATIC_ROUTE,
            Route::Cached => ROUTE,
        }
    }
}

/// What one `wrk` run reported.
struct Run {
    route: Route,
    round: usize,
    rps: f64,
    /// Median latency, in microseconds.
    p50_us: f64,
    /// 99th percentile latency, in microseconds.
    p99_us: f64,
    /// Completed requests.
    requests: u64,
    /// Socket errors plus responses other than 2xx and 3xx.
    errors: u64,
    /// Cache hits counted by Larder during the run (cached route only).
    hits: u64,
}

/// How long and how often to run, from the arguments and the environment.
struct Plan {
    secs: u64,
    rounds: usize,
    warm_up: bool,
    smoke: bool,
}

fn main() {
    let args: Vec<String> = env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        println!("http/static: bench");
        println!("http/cached: bench");
        return;
    }
    if !benches::selected(&args, &["http/static", "http/cached"]) {
        return;
    }
    let plan = plan(&args);

    let Some(wrk_version) = wrk_version() else {
        println!("http: skipped, `wrk` is not installed (it is needed to run this bench).");
        if !plan.smoke {
            println!("http: install it with `sudo apt-get install wrk`, then run");
            println!("      `cargo bench -p benches --bench http`.");
        }
        return;
    };

    let rt = runtime();
    let body = json_body(BODY_LEN);
    let cache = CacheHandle::builder(MemoryStore::new(64 * 1024 * 1024)).build();
    let rule = Rule::new("report").ttl(Duration::from_secs(600));
    let app = Router::new()
        .route(STATIC_ROUTE, origin(body.clone()))
        .route(ROUTE, origin(body.clone()).layer(cache.layer(rule)));

    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("the bound address");
    // The server runs until the runtime is dropped at the end of `main`.
    rt.spawn(async move { axum::serve(listener, app).await });

    // Over real HTTP, as wrk will ask (the key includes the `Host`): the static route answers
    // without a cache status, and the cached route becomes a hit before anything is timed.
    let path = STATIC_ROUTE;
    assert_eq!(get(addr, path, &body), None, "{path} has a Cache-Status");
    warm(addr, &body);

    println!(
        "http: {wrk_version}; -t1 -c{CONNECTIONS} --latency, {} s per run, {} round{}; \
         axum::serve on {addr}, tokio with 2 workers{}",
        plan.secs,
        plan.rounds,
        if plan.rounds == 1 { "" } else { "s" },
        if plan.smoke {
            " (smoke run: the figures mean nothing)"
        } else {
            ""
        }
    );

    if plan.warm_up {
        for route in [Route::Static, Route::Cached] {
            wrk(addr, route, 1);
        }
    }

    let mut runs = Vec::new();
    for round in 1..=plan.rounds {
        // Static first in odd rounds, cached first in even ones (static, cached, cached,
        // static, ...), so that a machine getting slower or faster favours neither route.
        let order = if round % 2 == 1 {
            [Route::Static, Route::Cached]
        } else {
            [Route::Cached, Route::Static]
        };
        for route in order {
            let before = cache.stats().total;
            let out = wrk(addr, route, plan.secs);
            let after = cache.stats().total;
            let mut run = parse(&out, route, round);
            if route == Route::Cached {
                run.hits = after.hits - before.hits;
                let misses = after.misses + after.collapsed - before.misses - before.collapsed;
                assert_eq!(misses, 0, "the cached route missed during a timed run");
            }
            runs.push(run);
        }
    }
    report(&runs, plan.smoke);
    drop(rt);
}

/// Whether the filters among `args` (criterion's positional arguments) select this run.
fn plan(args: &[String]) -> Plan {
    if !args.iter().any(|a| a == "--bench") {
        return Plan {
            secs: 1,
            rounds: 1,
            warm_up: false,
            smoke: true,
        };
    }
    Plan {
        secs: env_number("LARDER_HTTP_SECS", 10),
        rounds: env_number("LARDER_HTTP_ROUNDS", 3),
        warm_up: true,
        smoke: false,
    }
}

/// A positive number from the environment variable `name`, `default` when it is unset.
fn env_number<T: std::str::FromStr + PartialOrd + From<u8>>(name: &str, default: T) -> T {
    match env::var(name) {
        Err(_) => default,
        Ok(value) => match value.trim().parse::<T>() {
            Ok(n) if n >= T::from(1) => n,
            _ => panic!("{name} must be a whole number of at least 1, not {value:?}"),
        },
    }
}

/// The first line of `wrk`'s usage (its version), or `None` when `wrk` is not on the `PATH`.
fn wrk_version() -> Option<String> {
    // `wrk --version` prints the version and the usage, and exits with 1.
    match Command::new("wrk").arg("--version").output() {
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => panic!("run wrk: {e}"),
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            let first = text.lines().next().unwrap_or("wrk").trim();
            // "wrk debian/4.1.0-3+b2 [epoll] Copyright (C) 2012 Will Glozer"
            Some(first.split(" Copyright").next().unwrap_or(first).to_owned())
        }
    }
}

/// Sends `GET path` over a new connection, panics unless the answer is `200` with `body`,
/// and returns its `Cache-Status` header, if any.
fn get(addr: SocketAddr, path: &str, body: &Bytes) -> Option<String> {
    let mut stream = TcpStream::connect(addr).expect("connect to the server");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("a read timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .expect("read the response");
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response head");
    let head = String::from_utf8_lossy(&response[..split]).to_ascii_lowercase();
    let got = &response[split + 4..];
    assert!(head.starts_with("http/1.1 200"), "{path} answered:\n{head}");
    assert!(
        got == &body[..],
        "{path} answered a body of {} bytes, not the {} expected (head:\n{head})",
        got.len(),
        body.len()
    );
    head.lines()
        .find_map(|l| l.strip_prefix("cache-status:"))
        .map(|v| v.trim().to_owned())
}

/// Sends the cached route until it answers `Cache-Status: larder; hit` (fresh), and panics
/// if it never does: the cached runs must time hits.
fn warm(addr: SocketAddr, body: &Bytes) {
    let mut status = None;
    for _ in 0..50 {
        status = get(addr, ROUTE, body);
        // `larder; hit; ttl=N`; a negative ttl would be a stale hit.
        let parts: Vec<&str> = status
            .iter()
            .flat_map(|s| s.split(';'))
            .map(str::trim)
            .collect();
        if parts.starts_with(&["larder", "hit"]) && !parts.iter().any(|p| p.starts_with("ttl=-")) {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    panic!("{ROUTE} never became a hit; its last Cache-Status: {status:?}");
}

/// Runs `wrk` against `route` for `secs` seconds and returns what it printed. `wrk` stops by
/// itself; it is killed if it is still running a minute after it should have stopped.
fn wrk(addr: SocketAddr, route: Route, secs: u64) -> String {
    let url = format!("http://{addr}{}", route.path());
    let mut child = Command::new("wrk")
        .args(["-t1", &format!("-c{CONNECTIONS}"), &format!("-d{secs}s")])
        .args(["--latency", &url])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start wrk");
    let deadline = Instant::now() + Duration::from_secs(secs + 60);
    loop {
        if child.try_wait().expect("wait for wrk").is_some() {
            break;
        }
        if Instant::now() > deadline {
            child.kill().expect("stop wrk");
            panic!("wrk against {url} did not stop within {} s", secs + 60);
        }
        thread::sleep(Duration::from_millis(50));
    }
    // wrk's output is a few hundred bytes, well within the pipes' buffers.
    let out = child.wait_with_output().expect("wrk's output");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "wrk against {url} failed ({}):\n{text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// Reads the requests per second, the 50% and 99% latencies, the request count and the errors
/// from `wrk --latency`'s output.
fn parse(out: &str, route: Route, round: usize) -> Run {
    let field = |prefix: &str| {
        out.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::trim)
    };
    let rps = field("Requests/sec:")
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| missing("Requests/sec", out));
    let dist = out
        .split("Latency Distribution")
        .nth(1)
        .unwrap_or_else(|| missing("Latency Distribution", out));
    let percentile = |p: &str| {
        dist.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(p))
            .and_then(|v| micros(v.trim()))
            .unwrap_or_else(|| missing(p, out))
    };
    let p50_us = percentile("50%");
    let p99_us = percentile("99%");
    // "  812345 requests in 10.00s, 2.01GB read"
    let requests = out
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| missing("request count", out));
    // "  Socket errors: connect 0, read 0, write 0, timeout 0"
    let socket = field("Socket errors:").map_or(0, |v| {
        v.split(',')
            .filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum()
    });
    let non_2xx = field("Non-2xx or 3xx responses:")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    Run {
        route,
        round,
        rps,
        p50_us,
        p99_us,
        requests,
        errors: socket + non_2xx,
        hits: 0,
    }
}

/// Panics: `what` is not in wrk's output `out`.
fn missing(what: &str, out: &str) -> ! {
    panic!("no {what} in wrk's output:\n{out}")
}

/// A wrk duration ("512.00us", "1.23ms", "2.00s", "1.00m") in microseconds.
fn micros(v: &str) -> Option<f64> {
    let split = v.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = v.split_at(split);
    let n: f64 = n.parse().ok()?;
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        _ => return None,
    };
    Some(n * scale)
}

/// A latency in microseconds, as wrk would print it.
fn latency(us: f64) -> String {
    if us < 1e3 {
        format!("{us:.0} us")
    } else if us < 1e6 {
        format!("{:.2} ms", us / 1e3)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 0 {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

/// Prints every run, the median and the best of each route, and the ratio against the target
/// (not judged in a smoke run: a debug build's figures say nothing).
fn report(runs: &[Run], smoke: bool) {
    println!();
    println!(
        "{:<6} {:<7} {:<12} {:>10} {:>10} {:>10} {:>9} {:>7} {:>9}",
        "round", "route", "path", "rps", "p50", "p99", "requests", "errors", "hits"
    );
    for run in runs {
        let hits = match run.route {
            Route::Static => "-".to_owned(),
            Route::Cached => run.hits.to_string(),
        };
        println!(
            "{:<6} {:<7} {:<12} {:>10.0} {:>10} {:>10} {:>9} {:>7} {:>9}",
            run.round,
            run.route.name(),
            run.route.path(),
            run.rps,
            latency(run.p50_us),
            latency(run.p99_us),
            run.requests,
            run.errors,
            hits
        );
    }

    let of = |route: Route, f: fn(&Run) -> f64| -> Vec<f64> {
        runs.iter().filter(|r| r.route == route).map(f).collect()
    };
    println!();
    let mut medians = [0.0; 2];
    let mut bests = [0.0; 2];
    for (i, route) in [Route::Static, Route::Cached].into_iter().enumerate() {
        let rps = of(route, |r| r.rps);
        let p50 = of(route, |r| r.p50_us);
        let p99 = of(route, |r| r.p99_us);
        medians[i] = median(rps.clone());
        bests[i] = rps.iter().copied().fold(0.0, f64::max);
        println!(
            "{:<6} {:<7} {:<12} {:>10.0} {:>10} {:>10}",
            "median",
            route.name(),
            route.path(),
            medians[i],
            latency(median(p50.clone())),
            latency(median(p99.clone()))
        );
        println!(
            "{:<6} {:<7} {:<12} {:>10.0} {:>10} {:>10}",
            "best",
            route.name(),
            route.path(),
            bests[i],
            latency(p50.iter().copied().fold(f64::INFINITY, f64::min)),
            latency(p99.iter().copied().fold(f64::INFINITY, f64::min))
        );
    }
    println!("(best: the highest rps and the lowest p50 and p99 of the runs, each on its own)");

    let statics = of(Route::Static, |r| r.rps);
    let cached = of(Route::Cached, |r| r.rps);
    let per_round: Vec<String> = statics
        .iter()
        .zip(&cached)
        .map(|(s, c)| format!("{:.2}", c / s))
        .collect();
    let ratio = medians[1] / medians[0];
    let errors: u64 = runs.iter().map(|r| r.errors).sum();
    println!();
    println!("cached/static rps by round: {}", per_round.join(", "));
    println!("cached/static rps, best:    {:.3}", bests[1] / bests[0]);
    println!(
        "cached/static rps: {ratio:.3} (medians; target >= 0.80) {}",
        if smoke {
            "(smoke run, not judged)"
        } else if ratio >= 0.80 {
            "PASS"
        } else {
            "FAIL"
        }
    );
    if errors > 0 {
        println!("warning: {errors} socket errors or non-2xx responses over the runs");
    }
}
