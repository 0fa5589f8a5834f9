//! The HTTP-level run: one axum app served by hyper (`axum::serve`) on a loopback port, in
//! this process, driven by `wrk` over 100 keep-alive connections. The app has five routes with
//! paths of the same length and the same 2 KiB JSON body:
//!
//! - `/api/static`: no cache, the ceiling;
//! - `/api/report`: Larder on `MemoryStore` (the set-up of `hit_miss.rs`);
//! - `/api/rredis`: Larder on `RedisStore`;
//! - `/api/tiered`: Larder on `TieredStore` (L1 in process, Redis behind);
//! - `/api/aside1`: hand-written cache-aside over Redis, the seeds' design and the floor the
//!   Redis store must beat: one `GET` of the body per hit, `SET .. EX` on a miss, no tags.
//!
//! Redis is a throwaway `redis-server` started by `larder-testkit`. The server runs on the
//! benches' tokio runtime (two workers); `wrk -t1 -c100 -d<secs>s --latency` runs as a child
//! process from the main thread, against each route in turn (the order rotates every round), so
//! that the noise of a shared machine shows in the runs. Every run is printed with its requests
//! per second, p50 and p99 latency, and the CPU time it cost per request (this process plus
//! `redis-server`, from `/proc`), then per route the median and best, and each cached route's
//! requests per second as a fraction of the static route's in the same round (issue 6's target
//! for the memory store: at least 0.80; issue 13's: Redis >= 0.75 and above cache-aside,
//! tiered >= 0.90).
//!
//! This is no criterion bench. Under `cargo bench` (which passes `--bench`) each run lasts
//! `LARDER_HTTP_SECS` seconds (10 by default) over `LARDER_HTTP_ROUNDS` rounds (3 by default),
//! after a 1 s warm-up of each route; `LARDER_HTTP_ROUTES=static,memory` runs some routes only.
//! Without `--bench` (`cargo test --benches`) it is a smoke test: one round of 1 s runs. A
//! filter argument (`cargo bench -p benches -- hit/`) that is not part of an `http/<route>`
//! name skips the whole run. When `wrk` is not installed the run says so and exits with
//! success: `wrk` is needed only to run this, not to build it.

use std::{
    env,
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use axum::Router;
use benches::{BODY_LEN, ROUTE, json_body, origin, redis_store, runtime, tiered_store};
use bytes::Bytes;
use larder::{CacheHandle, MemoryStore, Rule};
use larder_testkit::RedisServer;

/// The uncached route; as long as [`ROUTE`], so every request has the same size.
const STATIC_ROUTE: &str = "/api/static";

/// wrk's keep-alive connections.
const CONNECTIONS: u32 = 100;

/// One of the routes the run compares.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Route {
    /// No cache.
    Static,
    /// Larder on the memory store.
    Memory,
    /// Larder on the Redis store.
    Redis,
    /// Larder on the tiered store.
    Tiered,
    /// Hand-written cache-aside over Redis: one `GET` per hit.
    Aside,
}

impl Route {
    const ALL: [Route; 5] = [
        Route::Static,
        Route::Memory,
        Route::Redis,
        Route::Tiered,
        Route::Aside,
    ];

    fn name(self) -> &'static str {
        match self {
            Route::Static => "static",
            Route::Memory => "memory",
            Route::Redis => "redis",
            Route::Tiered => "tiered",
            Route::Aside => "aside",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Route::Static => STATIC_ROUTE,
            Route::Memory => ROUTE,
            Route::Redis => "/api/rredis",
            Route::Tiered => "/api/tiered",
            Route::Aside => "/api/aside1",
        }
    }

    /// Larder's status name (`Cache-Status: larder; hit`), for the routes it caches.
    fn is_larder(self) -> bool {
        matches!(self, Route::Memory | Route::Redis | Route::Tiered)
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
    /// Cache hits counted during the run (cached routes only).
    hits: u64,
    /// CPU time of this process and `redis-server` per request, in microseconds.
    cpu_us: f64,
    /// The part of `cpu_us` spent in `redis-server`.
    redis_cpu_us: f64,
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
    let names: Vec<String> = Route::ALL
        .iter()
        .map(|r| format!("http/{}", r.name()))
        .collect();
    if args.iter().any(|a| a == "--list") {
        for name in &names {
            println!("{name}: bench");
        }
        return;
    }
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    if !benches::selected(&args, &name_refs) {
        return;
    }
    let plan = plan(&args);
    let routes = routes_wanted();

    let Some(wrk_version) = wrk_version() else {
        println!("http: skipped, `wrk` is not installed (it is needed to run this bench).");
        if !plan.smoke {
            println!("http: install it with `sudo apt-get install wrk`, then run");
            println!("      `cargo bench -p benches --bench http`.");
        }
        return;
    };

    let rt = runtime();
    let redis = RedisServer::start();
    let body = json_body(BODY_LEN);
    let rule = || Rule::new("report").ttl(Duration::from_secs(600));
    let memory = CacheHandle::builder(MemoryStore::new(64 * 1024 * 1024)).build();
    let on_redis = CacheHandle::builder(rt.block_on(redis_store(&redis.url(), "httpr")))
        .namespace("httpr")
        .build();
    let tiered = CacheHandle::builder(rt.block_on(tiered_store(&redis.url(), "httpt")))
        .namespace("httpt")
        .build();
    let aside_hits = Arc::new(AtomicU64::new(0));
    let aside = rt.block_on(aside_route(
        &redis.url(),
        body.clone(),
        Arc::clone(&aside_hits),
    ));
    let app = Router::new()
        .route(STATIC_ROUTE, origin(body.clone()))
        .route(ROUTE, origin(body.clone()).layer(memory.layer(rule())))
        .route(
            Route::Redis.path(),
            origin(body.clone()).layer(on_redis.layer(rule())),
        )
        .route(
            Route::Tiered.path(),
            origin(body.clone()).layer(tiered.layer(rule())),
        )
        .route(Route::Aside.path(), aside);

    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("the bound address");
    // The server runs until the runtime is dropped at the end of `main`.
    rt.spawn(async move { axum::serve(listener, app).await });

    // Over real HTTP, as wrk will ask (the key includes the `Host`): the static route answers
    // without a cache status, and every cached route is a hit before anything is timed.
    let path = STATIC_ROUTE;
    assert_eq!(get(addr, path, &body), None, "{path} has a Cache-Status");
    for route in routes.iter().filter(|r| r.is_larder()) {
        warm(addr, route.path(), &body);
    }
    if routes.contains(&Route::Aside) {
        get(addr, Route::Aside.path(), &body);
        let before = aside_hits.load(Ordering::Relaxed);
        get(addr, Route::Aside.path(), &body);
        assert_eq!(
            aside_hits.load(Ordering::Relaxed),
            before + 1,
            "cache-aside hits"
        );
    }

    println!(
        "http: {wrk_version}; -t1 -c{CONNECTIONS} --latency, {} s per run, {} round{}; \
         axum::serve on {addr}, tokio with 2 workers; redis-server {}{}",
        plan.secs,
        plan.rounds,
        if plan.rounds == 1 { "" } else { "s" },
        redis.addr(),
        if plan.smoke {
            " (smoke run: the figures mean nothing)"
        } else {
            ""
        }
    );

    if plan.warm_up {
        for &route in &routes {
            wrk(addr, route, 1);
        }
    }

    let redis_pid = redis.pid();
    let mut runs = Vec::new();
    for round in 1..=plan.rounds {
        // The order rotates every round, so that a machine getting slower or faster favours
        // no route.
        let mut order = routes.clone();
        order.rotate_left((round - 1) % routes.len());
        for route in order {
            let handle = match route {
                Route::Memory => Some(&memory),
                Route::Redis => Some(&on_redis),
                Route::Tiered => Some(&tiered),
                Route::Static | Route::Aside => None,
            };
            let before = handle.map(|h| h.stats().total);
            let aside_before = aside_hits.load(Ordering::Relaxed);
            let redis_ticks = || redis_pid.map_or(0, |p| cpu_ticks(Some(p)));
            let (own_before, redis_before) = (cpu_ticks(None), redis_ticks());
            let out = wrk(addr, route, plan.secs);
            let (own_after, redis_after) = (cpu_ticks(None), redis_ticks());
            let mut run = parse(&out, route, round);
            let per_request =
                |ticks: u64| ticks as f64 * 1e6 / ticks_per_second() / run.requests.max(1) as f64;
            run.redis_cpu_us = per_request(redis_after - redis_before);
            run.cpu_us = per_request(own_after - own_before) + run.redis_cpu_us;
            if let (Some(h), Some(before)) = (handle, before) {
                let after = h.stats().total;
                run.hits = after.hits - before.hits;
                let misses = after.misses + after.collapsed - before.misses - before.collapsed;
                assert_eq!(misses, 0, "{} missed during a timed run", route.name());
            }
            if route == Route::Aside {
                run.hits = aside_hits.load(Ordering::Relaxed) - aside_before;
            }
            runs.push(run);
        }
    }
    report(&runs, &routes, plan.smoke);
    drop(rt);
    drop(redis);
}

/// The routes `LARDER_HTTP_ROUTES` names (comma-separated), all of them by default; the
/// static route always runs (the ratios are against it).
fn routes_wanted() -> Vec<Route> {
    let Ok(list) = env::var("LARDER_HTTP_ROUTES") else {
        return Route::ALL.to_vec();
    };
    let mut routes = vec![Route::Static];
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match Route::ALL.iter().find(|r| r.name() == name) {
            Some(&r) if !routes.contains(&r) => routes.push(r),
            Some(_) => {}
            None => panic!(
                "LARDER_HTTP_ROUTES: no route {name:?} (static, memory, redis, tiered, aside)"
            ),
        }
    }
    routes
}

/// The hand-written cache-aside route: `GET` the body from Redis, answer it on a hit; on a
/// miss make it, `SET` it with a 600 s expiry, and answer it. What the seeds wrote by hand.
async fn aside_route(url: &str, body: Bytes, hits: Arc<AtomicU64>) -> axum::routing::MethodRouter {
    let client = redis::Client::open(url).expect("a Redis URL");
    let conn = redis::aio::ConnectionManager::new(client)
        .await
        .expect("connect to Redis");
    axum::routing::get(move || {
        let (mut conn, body, hits) = (conn.clone(), body.clone(), Arc::clone(&hits));
        async move {
            let json = [(axum::http::header::CONTENT_TYPE, "application/json")];
            let cached: Option<Vec<u8>> = redis::cmd("GET")
                .arg("aside:report")
                .query_async(&mut conn)
                .await
                .unwrap_or(None);
            if let Some(v) = cached {
                hits.fetch_add(1, Ordering::Relaxed);
                return (json, Bytes::from(v));
            }
            let _: Result<(), _> = redis::cmd("SET")
                .arg("aside:report")
                .arg(&body[..])
                .arg("EX")
                .arg(600)
                .query_async(&mut conn)
                .await;
            (json, body)
        }
    })
}

/// User plus system CPU time, in clock ticks, of this process (`None`) or of `pid`.
fn cpu_ticks(pid: Option<u32>) -> u64 {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let Ok(stat) = std::fs::read_to_string(path) else {
        return 0;
    };
    // After the command name in parentheses: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(14) + field(15)
}

/// Clock ticks per second (`_SC_CLK_TCK`, 100 on Linux).
fn ticks_per_second() -> f64 {
    100.0
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

/// Sends `path` (a route behind Larder) until it answers `Cache-Status: larder; hit` (fresh), and panics
/// if it never does: the cached runs must time hits.
fn warm(addr: SocketAddr, path: &str, body: &Bytes) {
    let mut status = None;
    for _ in 0..50 {
        status = get(addr, path, body);
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
    panic!("{path} never became a hit; its last Cache-Status: {status:?}");
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
        cpu_us: 0.0,
        redis_cpu_us: 0.0,
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

/// Prints every run, the median and the best of each route, and each cached route's ratio to
/// the static route (not judged in a smoke run: a debug build's figures say nothing).
fn report(runs: &[Run], routes: &[Route], smoke: bool) {
    println!();
    println!(
        "{:<6} {:<7} {:<12} {:>10} {:>10} {:>10} {:>9} {:>7} {:>9} {:>8} {:>8}",
        "round",
        "route",
        "path",
        "rps",
        "p50",
        "p99",
        "requests",
        "errors",
        "hits",
        "cpu/req",
        "(redis)"
    );
    for run in runs {
        let hits = match run.route {
            Route::Static => "-".to_owned(),
            _ => run.hits.to_string(),
        };
        println!(
            "{:<6} {:<7} {:<12} {:>10.0} {:>10} {:>10} {:>9} {:>7} {:>9} {:>6.1}us {:>6.1}us",
            run.round,
            run.route.name(),
            run.route.path(),
            run.rps,
            latency(run.p50_us),
            latency(run.p99_us),
            run.requests,
            run.errors,
            hits,
            run.cpu_us,
            run.redis_cpu_us
        );
    }

    let of = |route: Route, f: fn(&Run) -> f64| -> Vec<f64> {
        runs.iter().filter(|r| r.route == route).map(f).collect()
    };
    println!();
    for &route in routes {
        let rps = of(route, |r| r.rps);
        let p50 = of(route, |r| r.p50_us);
        let p99 = of(route, |r| r.p99_us);
        println!(
            "{:<6} {:<7} {:<12} {:>10.0} {:>10} {:>10} {:>32.1}us {:>6.1}us",
            "median",
            route.name(),
            route.path(),
            median(rps.clone()),
            latency(median(p50.clone())),
            latency(median(p99.clone())),
            median(of(route, |r| r.cpu_us)),
            median(of(route, |r| r.redis_cpu_us))
        );
        println!(
            "{:<6} {:<7} {:<12} {:>10.0} {:>10} {:>10}",
            "best",
            route.name(),
            route.path(),
            rps.iter().copied().fold(0.0, f64::max),
            latency(p50.iter().copied().fold(f64::INFINITY, f64::min)),
            latency(p99.iter().copied().fold(f64::INFINITY, f64::min))
        );
    }
    println!("(best: the highest rps and the lowest p50 and p99 of the runs, each on its own)");
    println!();

    // Each round's static run is the ceiling of that round's other runs.
    let statics = of(Route::Static, |r| r.rps);
    for &route in routes.iter().filter(|&&r| r != Route::Static) {
        let ratios: Vec<f64> = of(route, |r| r.rps)
            .iter()
            .zip(&statics)
            .map(|(c, s)| c / s)
            .collect();
        let ratio = median(ratios.clone());
        let target = match route {
            Route::Memory => Some(0.80),
            Route::Redis => Some(0.75),
            Route::Tiered => Some(0.90),
            Route::Static | Route::Aside => None,
        };
        let verdict = match target {
            _ if smoke => "(smoke run, not judged)".to_owned(),
            Some(t) if ratio >= t => format!("(target >= {t:.2}) PASS"),
            Some(t) => format!("(target >= {t:.2}) FAIL"),
            None => "(the floor the Redis store must beat)".to_owned(),
        };
        let by_round: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        println!(
            "{:<7} of static: {ratio:.3} (median of rounds {}) {verdict}",
            route.name(),
            by_round.join(", ")
        );
    }
    let errors: u64 = runs.iter().map(|r| r.errors).sum();
    if errors > 0 {
        println!("warning: {errors} socket errors or non-2xx responses over the runs");
    }
}
