//! What the seeds' users relied on, end to end through the dashboard: warm-up through the
//! routes, a background job's completion invalidating what it changed, response times in the
//! statistics (per rule and per typed category) and their reset, and the library's features
//! at work: the cross-instance fill lock, stale-while-revalidate on the hottest route, the
//! tiered store's L1 lifetime, and a route's TTL or caching changed by configuration.

mod support;

use std::time::Duration;

use axum::{Router, http::Method};
use example_dashboard::{Config, Dashboard, StoreKind, warmup};
use larder_testkit::RedisServer;
use serde_json::{Value, json};
use support::{ADMIN, Answer, call, dashboard, dashboard_with, get, get_until, send};

/// A dashboard on `store` (Redis at `server` if it needs one) with the settings of
/// `support::dashboard` and `tune` applied.
async fn tuned(
    store: StoreKind,
    server: Option<&RedisServer>,
    tune: impl FnOnce(&mut Config),
) -> (Dashboard, Router) {
    let mut config = support::config(store);
    if let Some(server) = server {
        config.redis_url = server.url();
    }
    tune(&mut config);
    dashboard_with(config).await
}

async fn admin(router: &Router, uri: &str, body: Value) -> Answer {
    call(router, Method::POST, uri, Some(ADMIN), Some(body)).await
}

/// Responses the cache has written to the store so far (every route and category).
fn stored(state: &Dashboard) -> u64 {
    state.cache.as_ref().unwrap().stats().total.stored
}

/// Waits until the store has taken `n` writes: a network store writes after the response
/// has been sent. Panics after 5 s.
async fn until_stored(state: &Dashboard, n: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while stored(state) < n {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of {n} writes landed",
            stored(state)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Warm user 7's pages and assistant `asst_8`: every warmed route's first read is a hit, and
/// none of them reaches the database.
async fn warm_up_makes_every_warmed_route_a_hit(state: Dashboard, router: Router) {
    let report = admin(
        &router,
        "/_cache/warmup",
        json!({ "users": [7], "assistants": ["asst_8"] }),
    )
    .await;
    assert_eq!(report.status, 200, "{}", report.body);
    let user_pages = warmup::user_pages(7);
    let assistant_pages = warmup::assistant_pages("asst_8");
    let sent = 1 + user_pages.len() + assistant_pages.len();
    assert_eq!(report.body["requests"], sent, "{}", report.body);
    assert_eq!(report.body["stored"], sent, "{}", report.body);
    assert_eq!(report.body["not_stored"], json!([]), "{}", report.body);
    assert_eq!(report.body["failed"], json!([]), "{}", report.body);
    // The dashboard's nine parts are stored apart from its route's answer.
    until_stored(&state, (sent + 9 - 1) as u64).await;

    let queries = state.db.stats().queries;
    for page in &user_pages {
        let answer = get(&router, page, 7).await;
        assert!(answer.is_hit(), "{page}: {:?}", answer.cache_status);
        assert_eq!(answer.status, 200, "{page}");
    }
    for page in &assistant_pages {
        let answer = get(&router, page, 8).await;
        assert!(answer.is_hit(), "{page}: {:?}", answer.cache_status);
    }
    let public = call(&router, Method::GET, "/api/announcements", None, None).await;
    assert!(public.is_hit(), "{:?}", public.cache_status);
    assert_eq!(
        state.db.stats().queries,
        queries,
        "no warmed read reached the database"
    );
    // A warmed entry is the user's own: another user's read of the same route misses.
    assert!(get(&router, "/api/user/me", 9).await.is_miss());
}

#[tokio::test]
async fn warm_up_makes_every_warmed_route_a_hit_on_the_memory_store() {
    let (state, router) = dashboard(StoreKind::Memory).await;
    warm_up_makes_every_warmed_route_a_hit(state, router).await;
}

#[tokio::test]
async fn warm_up_makes_every_warmed_route_a_hit_on_redis() {
    let server = RedisServer::start();
    let (state, router) = tuned(StoreKind::Redis, Some(&server), |c| {
        c.namespace = "warm".into();
    })
    .await;
    warm_up_makes_every_warmed_route_a_hit(state, router).await;
}

#[tokio::test]
async fn warm_up_refuses_unknown_users_and_assistants_and_needs_the_token() {
    let (_, router) = dashboard(StoreKind::Memory).await;
    let no_token = call(
        &router,
        Method::POST,
        "/_cache/warmup",
        None,
        Some(json!({ "users": [1] })),
    )
    .await;
    assert_eq!(no_token.status, 401);
    for body in [json!({ "users": [0] }), json!({ "users": [1001] })] {
        assert_eq!(
            admin(&router, "/_cache/warmup", body.clone()).await.status,
            400,
            "{body}"
        );
    }
    let unknown_field = admin(&router, "/_cache/warmup", json!({ "nobody": [1] })).await;
    assert_eq!(unknown_field.status, 422);
    let unknown = admin(&router, "/_cache/warmup", json!({ "assistants": ["nope"] })).await;
    assert_eq!(unknown.status, 404, "{}", unknown.body);
}

fn stripe(status: &Answer) -> &Value {
    status.body["connectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["provider"] == "stripe")
        .expect("stripe is listed")
}

/// Seed 001: a connector's data sync runs in the background; its completion updates the
/// status and invalidates it, on the route and in the dashboard's part, with no request to
/// do it.
async fn a_finished_sync_shows_at_once(store: StoreKind, server: Option<&RedisServer>) {
    let (state, router) = tuned(store, server, |c| {
        c.namespace = "sync".into();
        c.sync_ms = 600;
    })
    .await;
    let user = 3;
    let status = "/api/connectors/status";
    assert_eq!(
        send(
            &router,
            Method::POST,
            "/api/connectors/stripe",
            user,
            json!({})
        )
        .await
        .status,
        200
    );
    let before = get(&router, status, user).await;
    assert!(before.is_miss());
    assert_eq!(stripe(&before)["last_sync"], Value::Null);
    let dashboard = get(&router, "/api/dashboard", user).await;
    assert_eq!(dashboard.status, 200);

    let started = send(
        &router,
        Method::POST,
        "/api/connectors/stripe/sync",
        user,
        json!({}),
    )
    .await;
    assert_eq!(started.status, 202, "{}", started.body);
    // Starting it is a write of its own: the status shows it running.
    let running = get(&router, status, user).await;
    assert!(running.is_miss(), "{:?}", running.cache_status);
    assert_eq!(stripe(&running)["last_sync"]["status"], "running");
    if store != StoreKind::Memory {
        until_stored(&state, 4).await;
    }
    let cached = get(&router, status, user).await;
    if state.syncs.finished_count() == 0 {
        // The running state is cached now: only the job's own invalidation can replace it.
        assert!(cached.is_hit(), "{:?}", cached.cache_status);
        assert_eq!(stripe(&cached)["last_sync"]["status"], "running");
    }

    state.syncs.finished(1).await;
    let done = get(&router, status, user).await;
    assert!(
        done.is_miss(),
        "the job invalidated it: {:?}",
        done.cache_status
    );
    let sync = &stripe(&done)["last_sync"];
    assert_eq!(sync["status"], "ok", "{sync}");
    assert!(sync["rows"].as_i64().unwrap() > 0, "{sync}");
    let dashboard = get(&router, "/api/dashboard", user).await;
    let part = dashboard.body["connectors"]["connectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["provider"] == "stripe")
        .unwrap()
        .clone();
    assert_eq!(
        part["last_sync"]["status"], "ok",
        "the dashboard's part too"
    );
}

#[tokio::test]
async fn a_finished_sync_shows_at_once_on_the_memory_store() {
    a_finished_sync_shows_at_once(StoreKind::Memory, None).await;
}

#[tokio::test]
async fn a_finished_sync_shows_at_once_on_redis() {
    let server = RedisServer::start();
    a_finished_sync_shows_at_once(StoreKind::Redis, Some(&server)).await;
}

/// A sync started again while the first runs: the first job's end does not mark the second
/// done (it records its result only while its sync is the provider's last).
#[tokio::test]
async fn an_older_sync_never_marks_a_newer_one_done() {
    let (state, router) = tuned(StoreKind::Memory, None, |c| c.sync_ms = 400).await;
    let user = 12;
    send(
        &router,
        Method::POST,
        "/api/connectors/stripe",
        user,
        json!({}),
    )
    .await;
    let sync = "/api/connectors/stripe/sync";
    assert_eq!(
        send(&router, Method::POST, sync, user, json!({}))
            .await
            .status,
        202
    );
    assert_eq!(
        send(&router, Method::POST, sync, user, json!({}))
            .await
            .status,
        202
    );
    state.syncs.finished(1).await;
    let status = get(&router, "/api/connectors/status", user).await;
    if state.syncs.finished_count() == 1 {
        assert_eq!(
            stripe(&status)["last_sync"]["status"],
            "running",
            "the second still runs"
        );
    }
    state.syncs.finished(2).await;
    let status = get(&router, "/api/connectors/status", user).await;
    assert_eq!(stripe(&status)["last_sync"]["status"], "ok");
}

#[tokio::test]
async fn a_sync_needs_a_known_connected_provider() {
    let (_, router) = dashboard(StoreKind::Memory).await;
    let unknown = send(
        &router,
        Method::POST,
        "/api/connectors/fax/sync",
        4,
        json!({}),
    )
    .await;
    assert_eq!(unknown.status, 404);
    send(&router, Method::POST, "/api/connectors/reset", 4, json!({})).await;
    let idle = send(
        &router,
        Method::POST,
        "/api/connectors/stripe/sync",
        4,
        json!({}),
    )
    .await;
    assert_eq!(idle.status, 400, "{}", idle.body);
}

/// Two instances on one Redis with `--fill-lock-ms`: while A fills a missing page (its
/// database call under way), B's read of it waits for A's entry instead of asking its own
/// database. Without the lock, B asks too.
async fn fill_lock_run(lock: bool) -> (u64, Option<String>) {
    let server = RedisServer::start();
    let tune = |c: &mut Config| {
        c.namespace = "lock".into();
        c.db_latency_ms = 300;
        c.fill_lock_ms = lock.then_some(3000);
    };
    let (a_state, a) = tuned(StoreKind::Redis, Some(&server), tune).await;
    let (b_state, b) = tuned(StoreKind::Redis, Some(&server), tune).await;
    let (qa, qb) = (a_state.db.stats().queries, b_state.db.stats().queries);
    let first = tokio::spawn(async move { get(&a, "/api/user/me", 9).await });
    // B starts once A is at its database (a connection held for 300 ms).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while a_state.db.stats().connections_in_use == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "A never reached its database"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let second = get(&b, "/api/user/me", 9).await;
    let first = first.await.unwrap();
    assert_eq!(first.body, second.body);
    let queries = a_state.db.stats().queries - qa + b_state.db.stats().queries - qb;
    (queries, second.cache_status)
}

#[tokio::test]
async fn with_the_fill_lock_one_instance_fills_a_page_for_all() {
    let (queries, status) = fill_lock_run(true).await;
    assert_eq!(queries, 1, "one database call for both instances");
    let status = status.unwrap();
    assert!(
        status.contains("collapsed") && status.contains("other-instance"),
        "{status}"
    );
    let (queries, _) = fill_lock_run(false).await;
    assert_eq!(
        queries, 2,
        "without the lock each instance asks its database"
    );
}

/// The hottest route, announcements, once expired, is answered stale while one request
/// refreshes it (its TTL shortened to 1 s by configuration for the test).
#[tokio::test]
async fn expired_announcements_are_answered_stale_while_one_refresh_runs() {
    let (state, router) = tuned(StoreKind::Memory, None, |c| {
        c.route_ttl = vec!["announcements=1s".into()];
    })
    .await;
    let read = || call(&router, Method::GET, "/api/announcements", None, None);
    let first = read().await;
    assert!(first.is_miss());
    let queries = state.db.stats().queries;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let stale = loop {
        let answer = read().await;
        if !answer.is_hit() {
            break answer;
        }
        assert!(std::time::Instant::now() < deadline, "never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let status = stale.cache_status.clone().unwrap();
    assert!(status.contains("stale-while-revalidate"), "{status}");
    assert_eq!(stale.x_cache.as_deref(), Some("STALE"));
    assert_eq!(stale.body, first.body);
    // The refresh lands, and the next reads are fresh hits again: one query for all of it.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let answer = read().await;
        if answer.is_hit() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never refreshed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        state.db.stats().queries,
        queries + 1,
        "one refresh, no reader waited"
    );
}

/// On the tiered store, `--l1-ttl-secs 1` keeps an L1 copy one second however long the
/// entry lives: then the read goes to Redis (still a hit) and the L1 takes a new copy.
#[tokio::test]
async fn the_tiered_l1_lifetime_bounds_a_local_copy() {
    let server = RedisServer::start();
    let (state, router) = tuned(StoreKind::Tiered, Some(&server), |c| {
        c.namespace = "l1".into();
        c.l1_ttl_secs = 1;
    })
    .await;
    let cache = state.cache.clone().unwrap();
    let reads = || {
        let usage = cache.stats().usage.unwrap();
        (usage.l1_reads.unwrap(), usage.l2_reads.unwrap())
    };
    assert!(get(&router, "/api/user/me", 5).await.is_miss());
    until_stored(&state, 1).await;
    // The L1 answers once the backplane has subscribed (until then reads go to Redis).
    let (l1, _) = reads();
    let hit = get_until(&router, "/api/user/me", 5, Duration::from_secs(5), |a| {
        a.is_hit() && reads().0 > l1
    })
    .await;
    assert!(hit.is_hit());
    let (_, l2) = reads();
    // Within a few seconds (never the entry's five minutes) a read goes to Redis again.
    let answer = get_until(&router, "/api/user/me", 5, Duration::from_secs(5), |_| {
        reads().1 > l2
    })
    .await;
    assert!(
        answer.is_hit(),
        "Redis still holds it: {:?}",
        answer.cache_status
    );
}

/// `--route-ttl`: `chat_stats=off` sends the route's reads (and the dashboard's part) to the
/// database every time, writes still invalidating; `user_me=2m` shortens a TTL.
#[tokio::test]
async fn a_routes_caching_is_switched_off_or_its_ttl_changed_by_configuration() {
    let (state, router) = tuned(StoreKind::Memory, None, |c| {
        c.route_ttl = vec![
            "chat_stats=off".into(),
            "user_me=2m".into(),
            "schema=off".into(),
        ];
    })
    .await;
    // A typed route switched off says so, and never claims to have stored anything.
    for _ in 0..2 {
        let schema = get(&router, "/api/assistants/asst_6/schema", 6).await;
        assert_eq!(schema.status, 200);
        assert_eq!(
            schema.cache_status.as_deref(),
            Some("larder; fwd=bypass; detail=bypass-if")
        );
    }
    for _ in 0..2 {
        let stats = get(&router, "/api/chat/stats", 6).await;
        assert_eq!(stats.status, 200);
        let status = stats.cache_status.unwrap();
        assert!(status.contains("fwd=bypass"), "{status}");
    }
    get(&router, "/api/user/me", 6).await;
    let me = get(&router, "/api/user/me", 6).await;
    let status = me.cache_status.unwrap();
    assert!(
        status.starts_with("larder; hit; ttl=1"),
        "two minutes, not five: {status}"
    );
    // The dashboard reads the statistics part from the database every time.
    get(&router, "/api/dashboard", 6).await;
    let queries = state.db.stats().queries;
    let again = get(&router, "/api/dashboard", 6).await;
    assert_eq!(state.db.stats().queries, queries + 1, "the stats part only");
    assert_eq!(
        again.cache_status.as_deref(),
        Some("larder; fwd=miss; detail=\"1 of 9 parts\""),
        "loaded, not stored"
    );
    let stats = call(&router, Method::GET, "/_cache/stats", None, None).await;
    assert_eq!(stats.body["ttls"]["chat_stats"], Value::Null);
    assert_eq!(stats.body["ttls"]["user_me"], 120);
    assert_eq!(stats.body["ttls"]["metrics"], 900);
}

#[tokio::test]
async fn a_bad_route_ttl_stops_the_start_with_a_clear_error() {
    let config = Config {
        database_url: Some("sqlite::memory:".into()),
        route_ttl: vec!["metrix=5m".into()],
        ..Config::defaults()
    };
    let error = example_dashboard::connect(&config).await.err().unwrap();
    assert!(
        error.to_string().contains("unknown route \"metrix\""),
        "{error}"
    );
}

/// Seeds 001-004 report response times per category: `/_cache/stats` has them per rule
/// (hits apart from misses) and per typed category, `/metrics` as histograms, and
/// `POST /_cache/stats/reset` starts them again.
#[tokio::test]
async fn response_times_per_rule_and_category_and_their_reset() {
    let (_, router) = dashboard(StoreKind::Memory).await;
    for _ in 0..3 {
        get(&router, "/api/user/me", 2).await;
        get(&router, "/api/dashboard", 2).await;
        get(&router, "/api/assistants/asst_2", 2).await;
    }
    let stats = call(&router, Method::GET, "/_cache/stats", None, None).await;
    let routes = &stats.body["stats"]["routes"];
    let me = &routes["user_me"];
    assert_eq!(me["miss_latency"]["count"], 1, "{me}");
    assert_eq!(me["hit_latency"]["count"], 2, "{me}");
    for field in ["average_ms", "p50_ms", "p95_ms", "p99_ms", "max_ms"] {
        assert!(me["hit_latency"][field].as_f64().is_some(), "{field}: {me}");
    }
    let assistant = &routes["assistant"];
    assert_eq!(
        (assistant["misses"].as_u64(), assistant["hits"].as_u64()),
        (Some(1), Some(2))
    );
    let metrics = &routes["dashboard.metrics"];
    assert_eq!(
        (metrics["misses"].as_u64(), metrics["hits"].as_u64()),
        (Some(5), Some(10))
    );
    assert!(
        routes.get("typed").is_none_or(|t| t["hits"] == 0),
        "{routes}"
    );

    let raw = support::get_text(&router, "/metrics").await;
    assert!(
        raw.contains("larder_response_seconds_bucket{"),
        "histograms"
    );
    assert!(raw.contains("route=\"user_me\"") && raw.contains("served=\"hit\""));
    assert!(raw.contains("# HELP larder_response_seconds"));

    assert_eq!(
        call(&router, Method::POST, "/_cache/stats/reset", None, None)
            .await
            .status,
        401
    );
    assert_eq!(
        admin(&router, "/_cache/stats/reset", json!({}))
            .await
            .status,
        200
    );
    let stats = call(&router, Method::GET, "/_cache/stats", None, None).await;
    let me = &stats.body["stats"]["routes"]["user_me"];
    assert_eq!(me["hits"], 0);
    assert_eq!(me["hit_latency"]["count"], 0);
    // The entries are still there: the next read is a hit, counted afresh.
    assert!(get(&router, "/api/user/me", 2).await.is_hit());
}
