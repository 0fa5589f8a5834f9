//! The dashboard on Redis, on the tiered store, and on PostgreSQL: the same contract, with
//! real servers (Redis started by the test kit; PostgreSQL from the machine, see below).

mod support;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use example_dashboard::{Config, StoreKind};
use larder_testkit::{RedisCluster, RedisServer};
use serde_json::json;
use sqlx::{Connection, Executor};
use support::{dashboard_with, first_session, get, get_hit, get_until, post_message, send};

/// Refills are off here: these tests check that a write's invalidation reaches every
/// instance, shown by the next read missing (a refill could have made it a fresh hit; the
/// Cluster test below runs with them on).
fn on_redis(store: StoreKind, server: &RedisServer, namespace: &str) -> Config {
    Config {
        store,
        redis_url: server.url(),
        namespace: namespace.into(),
        database_url: Some("sqlite::memory:".into()),
        db_latency_ms: 0,
        refill: false,
        ..Config::defaults()
    }
}

#[tokio::test]
async fn on_redis_entries_are_shared_by_instances_and_writes_invalidate_them_everywhere() {
    let server = RedisServer::restricted();
    let (_, a) = dashboard_with(on_redis(StoreKind::Redis, &server, "shared")).await;
    // A second instance with its own database file would disagree on data; share the
    // cache only, and check entries and invalidations cross instances.
    let (_, b) = dashboard_with(on_redis(StoreKind::Redis, &server, "shared")).await;
    let user = 101;
    assert!(get(&a, "/api/chat/stats", user).await.is_miss());
    get_hit(&a, "/api/chat/stats", user).await;
    assert!(
        get(&b, "/api/chat/stats", user).await.is_hit(),
        "instance B hits instance A's entry"
    );
    assert!(get(&b, "/api/dashboard", user).await.is_miss());
    get_hit(&a, "/api/dashboard", user).await;

    let w = send(
        &a,
        Method::POST,
        "/api/chat/sessions",
        user,
        json!({ "title": "From A" }),
    )
    .await;
    assert_eq!(w.status, StatusCode::CREATED);
    assert!(
        get(&b, "/api/chat/stats", user).await.is_miss(),
        "A's write invalidated B's view at once"
    );
    let dash = get(&b, "/api/dashboard", user).await;
    assert!(
        dash.cache_status.unwrap().contains("2 of 9 parts"),
        "stats and sessions reload"
    );
}

#[tokio::test]
async fn on_redis_a_dead_redis_costs_the_cache_not_the_answers() {
    let mut server = RedisServer::restricted();
    let (_, router) = dashboard_with(on_redis(StoreKind::Redis, &server, "outage")).await;
    let user = 102;
    get(&router, "/api/user/me", user).await;
    get_hit(&router, "/api/user/me", user).await;
    server.stop();
    for _ in 0..20 {
        for uri in [
            "/api/user/me",
            "/api/dashboard",
            "/api/chat/sessions?page=2",
        ] {
            let answer = get(&router, uri, user).await;
            assert_eq!(
                answer.status,
                StatusCode::OK,
                "{uri} while Redis is down: {:?}",
                answer.body
            );
            assert_eq!(answer.body["error"], serde_json::Value::Null);
        }
    }
    let health = support::call(&router, Method::GET, "/_cache/health", None, None).await;
    assert_eq!(health.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(health.body["status"], "degraded");
    // A write while Redis is down is not forgotten.
    let sid = first_session(&router, user).await;
    let w = post_message(&router, user, sid, "hi").await;
    assert_eq!(w.status, StatusCode::CREATED);
    server.restart();
    // Hits resume, and the pre-outage entry is never served again.
    get_until(
        &router,
        "/api/user/me",
        user,
        Duration::from_secs(10),
        |me| {
            assert_eq!(me.body["credits"], w.body["credits_remaining"]);
            me.is_hit()
        },
    )
    .await;
}

#[tokio::test]
async fn on_the_tiered_store_a_write_on_one_instance_reaches_the_others_l1() {
    let server = RedisServer::restricted();
    let (_, a) = dashboard_with(on_redis(StoreKind::Tiered, &server, "tiered")).await;
    let (_, b) = dashboard_with(on_redis(StoreKind::Tiered, &server, "tiered")).await;
    let user = 103;
    get(&a, "/api/user/me", user).await;
    get_hit(&b, "/api/user/me", user).await;
    assert!(
        get(&b, "/api/user/me", user).await.is_hit(),
        "now from B's L1"
    );
    let sid = first_session(&a, user).await;
    let w = post_message(&a, user, sid, "hello").await;
    assert_eq!(w.status, StatusCode::CREATED);
    // B's database is its own (an in-memory SQLite per instance), so compare cache status,
    // not data: B's L1 copy must be gone within the pub/sub delivery time (well under a
    // second on loopback; the tiered store's docs state this bound).
    get_until(
        &b,
        "/api/user/me",
        user,
        Duration::from_secs(1),
        support::Answer::is_miss,
    )
    .await;
}

/// The tiered store over a three-master Redis Cluster, configured as a user would
/// (`--store tiered --redis-cluster --redis-url URL1,URL2,URL3`): two instances over one
/// SQLite file and the cluster. A read misses then hits; a write through A is shown by the
/// next read on A, by B's read with the write's token, and by B's later reads without it.
#[tokio::test]
async fn on_a_redis_cluster_the_tiered_store_reads_writes_and_shows_the_write() {
    let cluster = RedisCluster::start();
    cluster.wait_ready(Duration::from_secs(20));
    let dir = tempfile::tempdir().unwrap();
    let database = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("dashboard.db").display()
    );
    let seeds = cluster.restricted_urls().join(",");
    let argv = [
        "dashboard",
        "--store",
        "tiered",
        "--redis-cluster",
        "--redis-url",
        seeds.as_str(),
        "--namespace",
        "on-cluster",
        "--database-url",
        database.as_str(),
        "--db-latency-ms",
        "0",
    ];
    let config = <Config as clap::Parser>::try_parse_from(argv).expect("the command line parses");
    assert_eq!(
        config.redis_nodes().unwrap(),
        example_dashboard::RedisNodes::Cluster(cluster.restricted_urls())
    );
    let (a_state, a) = dashboard_with(config.clone()).await;
    let (b_state, b) = dashboard_with(config).await;
    let user = 105;

    // A read: a miss, then a hit, on A; B hits what A stored (in Redis, then its own L1).
    let me = get(&a, "/api/user/me", user).await;
    assert!(me.is_miss(), "{:?}", me.cache_status);
    assert_eq!(me.body["credits"], 1000);
    assert_eq!(
        get_hit(&a, "/api/user/me", user).await.body["credits"],
        1000
    );
    // A network store writes the entry after the response is sent: give it time to land,
    // then B's first read is a hit, with no query of B's own.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = b_state.db.stats().queries;
    let on_b = get(&b, "/api/user/me", user).await;
    assert!(
        on_b.is_hit(),
        "B reads A's entry from the cluster: {:?}",
        on_b.cache_status
    );
    assert_eq!(b_state.db.stats().queries, before);
    let page = get(&a, "/api/chat/sessions?page=1", user).await;
    let sid = page.body["sessions"][0]["id"].as_i64().unwrap();
    get_hit(&a, "/api/chat/sessions?page=1", user).await;
    get_hit(&b, "/api/chat/sessions?page=1", user).await;

    // A write through A.
    let renamed = send(
        &a,
        Method::PUT,
        &format!("/api/chat/sessions/{sid}"),
        user,
        json!({ "title": "renamed on the cluster" }),
    )
    .await;
    assert_eq!(renamed.status, StatusCode::OK, "{:?}", renamed.body);
    let token = renamed
        .token
        .clone()
        .expect("the tiered store answers a write with a token");
    let message = post_message(&a, user, sid, "on the cluster").await;
    assert_eq!(message.status, StatusCode::CREATED, "{:?}", message.body);
    let credits = message.body["credits_remaining"].clone();
    assert!(credits.as_i64().unwrap() < 1000);

    // The reads after it show it: on A at once, on B at once with the token.
    let title = |answer: &support::Answer| answer.body["sessions"][0]["title"].clone();
    let on_a = get(&a, "/api/chat/sessions?page=1", user).await;
    // Refills are on (the dashboard's default): the page may already be refilled, a hit
    // made after the write. A hit is allowed only then; what it shows is the write either way.
    if on_a.is_hit() {
        let refills = a_state.cache.as_ref().unwrap().stats().refills;
        assert!(refills.done > 0, "A hit only a refilled page: {refills:?}");
    }
    assert_eq!(
        title(&on_a),
        "renamed on the cluster",
        "{:?}",
        on_a.cache_status
    );
    assert_eq!(get(&a, "/api/user/me", user).await.body["credits"], credits);
    let token = message.token.clone().unwrap_or(token);
    for uri in ["/api/chat/sessions?page=1", "/api/user/me"] {
        let on_b = support::call_with_token(
            &b,
            Method::GET,
            uri,
            Some(&support::key(user)),
            None,
            Some(&token),
        )
        .await;
        assert_eq!(on_b.status, StatusCode::OK);
        match uri {
            "/api/user/me" => assert_eq!(on_b.body["credits"], credits, "{uri} on B"),
            _ => assert_eq!(title(&on_b), "renamed on the cluster", "{uri} on B"),
        }
    }
    // And B's other clients (no token) within the backplane's delay; then B hits again.
    get_until(&b, "/api/user/me", user, Duration::from_secs(2), |me| {
        me.body["credits"] == credits && me.is_hit()
    })
    .await;
    let on_b = get_hit(&b, "/api/chat/sessions?page=1", user).await;
    assert_eq!(title(&on_b), "renamed on the cluster");
}

/// PostgreSQL from the machine (`LARDER_TEST_POSTGRES_URL`, default
/// `postgres://postgres@127.0.0.1:5432/postgres`). Each run creates and drops its own
/// database. If the server cannot be reached the test says so and passes, unless
/// `LARDER_REQUIRE_POSTGRES` is set (CI sets it).
#[tokio::test]
async fn on_postgres_the_contract_holds() {
    sqlx::any::install_default_drivers();
    let admin_url = std::env::var("LARDER_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let mut admin = match sqlx::AnyConnection::connect(&admin_url).await {
        Ok(c) => c,
        Err(e) if std::env::var_os("LARDER_REQUIRE_POSTGRES").is_none() => {
            eprintln!("skipping the PostgreSQL test: cannot connect to {admin_url}: {e}");
            return;
        }
        Err(e) => panic!("LARDER_REQUIRE_POSTGRES is set but {admin_url} is unreachable: {e}"),
    };
    let name = format!(
        "larder_dashboard_{}_{}",
        std::process::id(),
        fastrand_suffix()
    );
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap();
    let base = admin_url.rsplit_once('/').unwrap().0;
    let url = format!("{base}/{name}");
    let result = tokio::spawn(async move {
        let (state, router) = dashboard_with(Config {
            database_url: Some(url),
            db_latency_ms: 0,
            // The next read after a write must miss (no refill may have made it a hit).
            refill: false,
            ..Config::defaults()
        })
        .await;
        assert_eq!(state.db.backend(), example_dashboard::db::Backend::Postgres);
        let user = 104;
        assert!(
            get(&router, "/api/chat/sessions?page=3", user)
                .await
                .is_miss()
        );
        let me = get(&router, "/api/user/me", user).await;
        assert_eq!(me.body["credits"], 1000);
        let stats = get(&router, "/api/chat/stats", user).await.body;
        assert!(
            stats["sessions"].as_i64().unwrap() >= 30,
            "three pages of sessions: {stats}"
        );
        let found = get(&router, "/api/chat/search?q=CHURN", user).await.body;
        assert!(
            !found["sessions"].as_array().unwrap().is_empty(),
            "search is case-insensitive"
        );
        let metrics = get(&router, "/api/metrics/strategy", user).await.body;
        assert_eq!(metrics["metrics"].as_array().unwrap().len(), 4);
        let sid = first_session(&router, user).await;
        let w = post_message(&router, user, sid, "pg").await;
        assert_eq!(w.status, StatusCode::CREATED, "{:?}", w.body);
        let me = get(&router, "/api/user/me", user).await;
        assert!(me.is_miss());
        assert_eq!(me.body["credits"], 999);
        let created = send(
            &router,
            Method::POST,
            "/api/chat/sessions",
            user,
            json!({ "title": "pg session" }),
        )
        .await;
        assert_eq!(created.status, StatusCode::CREATED);
        let id = created.body["id"].as_i64().unwrap();
        let renamed = send(
            &router,
            Method::PUT,
            &format!("/api/chat/sessions/{id}"),
            user,
            json!({ "title": "renamed" }),
        )
        .await;
        assert_eq!(renamed.body["title"], "renamed");
        let deleted = send(
            &router,
            Method::DELETE,
            &format!("/api/chat/sessions/{id}"),
            user,
            json!({}),
        )
        .await;
        assert_eq!(deleted.status, StatusCode::NO_CONTENT);
        let connected = send(
            &router,
            Method::POST,
            "/api/connectors/stripe",
            user,
            json!({}),
        )
        .await;
        assert_eq!(connected.status, StatusCode::OK, "{:?}", connected.body);
        state.db.stats().queries
    })
    .await;
    admin
        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
        .await
        .unwrap();
    let queries = result.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    assert!(queries > 0);
}

fn fastrand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
}
