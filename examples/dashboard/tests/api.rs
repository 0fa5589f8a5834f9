//! The rest of the contract: authentication, bad input, the admin and operations routes,
//! and the uncached baseline (`--store none`).

mod support;

use axum::http::{Method, StatusCode};
use example_dashboard::{Config, StoreKind};
use serde_json::json;
use support::{ADMIN, call, dashboard, dashboard_with, first_session, get, post_message};

#[tokio::test]
async fn a_missing_or_unknown_key_gets_401_and_nothing_is_cached() {
    let (state, router) = dashboard(StoreKind::Memory).await;
    for bearer in [
        None,
        Some("demo-key-0"),
        Some("demo-key-1001"),
        Some("nope"),
    ] {
        for uri in ["/api/user/me", "/api/dashboard", "/api/chat/sessions"] {
            let answer = call(&router, Method::GET, uri, bearer, None).await;
            assert_eq!(
                answer.status,
                StatusCode::UNAUTHORIZED,
                "{uri} with {bearer:?}"
            );
            assert_eq!(
                answer.cache_status, None,
                "a 401 never goes through the cache"
            );
            assert!(answer.body["error"].is_string());
        }
    }
    let stats = state.cache.as_ref().unwrap().stats();
    assert_eq!(stats.total.stored, 0);
    assert_eq!(state.db.stats().queries, 0);
    // Keys 1 and 1000 are the ends of the seeded range.
    assert_eq!(get(&router, "/api/user/me", 1).await.status, StatusCode::OK);
    assert_eq!(get(&router, "/api/user/me", 1000).await.body["id"], 1000);
}

#[tokio::test]
async fn two_users_never_see_each_others_entries() {
    let (_, router) = dashboard(StoreKind::Memory).await;
    let first = get(&router, "/api/user/me", 5).await;
    let other = get(&router, "/api/user/me", 6).await;
    assert!(first.is_miss() && other.is_miss(), "one entry per user");
    assert_eq!(first.body["id"], 5);
    assert_eq!(other.body["id"], 6);
    assert_eq!(get(&router, "/api/user/me", 6).await.body["id"], 6);
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_is_not_cached() {
    let (_, router) = dashboard(StoreKind::Memory).await;
    let user = 40;
    for (method, uri, body, status) in [
        (
            Method::GET,
            "/api/metrics/weather",
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            Method::GET,
            "/api/chat/search",
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/api/chat/search?q=",
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/api/chat/sessions?page=0",
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/api/chat/sessions?per_page=1000",
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/api/connectors/myspace",
            Some(json!({})),
            StatusCode::NOT_FOUND,
        ),
        (
            Method::POST,
            "/api/chat/sessions",
            Some(json!({ "title": "" })),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/api/chat/sessions",
            Some(json!({ "name": "x" })),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::PUT,
            "/api/chat/sessions/1",
            Some(json!({ "title": "not yours" })),
            StatusCode::NOT_FOUND,
        ),
        (
            Method::DELETE,
            "/api/chat/sessions/999999",
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            Method::POST,
            "/api/chat/sessions/1/messages",
            Some(json!({ "content": "hi" })),
            StatusCode::NOT_FOUND,
        ),
        (
            Method::POST,
            "/api/chat/sessions/1/messages",
            Some(json!({ "content": "" })),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let answer = call(
            &router,
            method.clone(),
            uri,
            Some(&support::key(user)),
            body.clone(),
        )
        .await;
        assert_eq!(answer.status, status, "{method} {uri}: {:?}", answer.body);
        if method == Method::GET {
            let again = call(
                &router,
                method.clone(),
                uri,
                Some(&support::key(user)),
                body,
            )
            .await;
            assert!(
                !again.is_hit(),
                "{uri}: an error response was served from the cache"
            );
        }
    }
}

#[tokio::test]
async fn credits_run_out_with_402_and_the_profile_says_so() {
    let (state, router) = dashboard(StoreKind::Memory).await;
    let user = 50;
    let sid = first_session(&router, user).await;
    let mut conn = state.db.lease().await.unwrap();
    sqlx::query("UPDATE users SET credits = 1 WHERE id = 50")
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    let ok = post_message(&router, user, sid, "last one").await;
    assert_eq!(ok.status, StatusCode::CREATED);
    assert_eq!(ok.body["credits_remaining"], 0);
    let refused = post_message(&router, user, sid, "one more").await;
    assert_eq!(refused.status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(get(&router, "/api/user/me", user).await.body["credits"], 0);
}

#[tokio::test]
async fn admin_routes_need_the_token_and_are_off_without_one() {
    let (_, router) = dashboard(StoreKind::Memory).await;
    let body = json!({ "all": true });
    for (bearer, status) in [
        (None, StatusCode::UNAUTHORIZED),
        (Some("demo-key-1"), StatusCode::UNAUTHORIZED),
        (Some(ADMIN), StatusCode::OK),
    ] {
        for uri in ["/_cache/invalidate", "/_origin/stats/reset"] {
            let answer = call(&router, Method::POST, uri, bearer, Some(body.clone())).await;
            assert_eq!(answer.status, status, "{uri} with {bearer:?}");
        }
        let warm = call(
            &router,
            Method::POST,
            "/_cache/warmup",
            bearer,
            Some(json!({ "users": [1] })),
        )
        .await;
        assert_eq!(warm.status, status, "/_cache/warmup with {bearer:?}");
    }

    let (_, off) = dashboard_with(Config {
        database_url: Some("sqlite::memory:".into()),
        db_latency_ms: 0,
        admin_token: None,
        ..Config::defaults()
    })
    .await;
    let answer = call(
        &off,
        Method::POST,
        "/_cache/invalidate",
        Some(ADMIN),
        Some(body),
    )
    .await;
    assert_eq!(
        answer.status,
        StatusCode::NOT_FOUND,
        "no token configured: the admin routes are off"
    );
}

#[tokio::test]
async fn admin_invalidation_by_tag_key_and_all() {
    let (state, router) = dashboard(StoreKind::Memory).await;
    let admin = |body| {
        call(
            &router,
            Method::POST,
            "/_cache/invalidate",
            Some(ADMIN),
            Some(body),
        )
    };
    let user = 60;
    get(&router, "/api/metrics/sales", user).await;
    get(&router, "/api/dashboard", user).await;
    assert!(get(&router, "/api/metrics/sales", user).await.is_hit());

    // Tags: metrics are never invalidated by a write, only by an operator.
    let answer = admin(json!({ "tags": ["metrics:60"] })).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    assert!(get(&router, "/api/metrics/sales", user).await.is_miss());
    let dash = get(&router, "/api/dashboard", user).await;
    assert!(
        dash.cache_status.unwrap().contains("5 of 9 parts"),
        "the five metric parts reload"
    );

    // Keys of the typed API.
    admin(json!({ "keys": ["dashboard:60:profile"] })).await;
    let dash = get(&router, "/api/dashboard", user).await;
    assert!(dash.cache_status.unwrap().contains("1 of 9 parts"));

    // Everything.
    admin(json!({ "all": true })).await;
    assert!(get(&router, "/api/metrics/sales", user).await.is_miss());
    assert!(
        get(&router, "/api/dashboard", user)
            .await
            .cache_status
            .unwrap()
            .contains("9 of 9 parts")
    );

    // Nothing named, or an unknown field: 400 / 422, nothing done.
    assert_eq!(admin(json!({})).await.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        admin(json!({ "tagz": ["x"] })).await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert!(state.cache.unwrap().stats().total.hits > 0);
}

#[tokio::test]
async fn warmup_fills_dashboards_so_the_first_load_is_a_hit() {
    let (state, router) = dashboard(StoreKind::Memory).await;
    let warm = call(
        &router,
        Method::POST,
        "/_cache/warmup",
        Some(ADMIN),
        Some(json!({ "users": [70, 71] })),
    )
    .await;
    assert_eq!(warm.status, StatusCode::OK, "{:?}", warm.body);
    // Through the routes: each user's 12 pages (their assistant's two among them), and the
    // announcements.
    assert_eq!(warm.body["users"], 2);
    assert_eq!(warm.body["stored"], 2 * 12 + 1, "{}", warm.body);
    assert_eq!(warm.body["failed"], json!([]));
    let queries = state.db.stats().queries;
    assert!(get(&router, "/api/dashboard", 70).await.is_hit());
    assert!(get(&router, "/api/dashboard", 71).await.is_hit());
    assert_eq!(state.db.stats().queries, queries);
    let too_many: Vec<i64> = (1..=101).collect();
    let refused = call(
        &router,
        Method::POST,
        "/_cache/warmup",
        Some(ADMIN),
        Some(json!({ "users": too_many })),
    )
    .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    let unknown = call(
        &router,
        Method::POST,
        "/_cache/warmup",
        Some(ADMIN),
        Some(json!({ "users": [0] })),
    )
    .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn health_stats_metrics_and_origin_stats() {
    let (_, router) = dashboard(StoreKind::Memory).await;
    get(&router, "/api/chat/stats", 80).await;
    get(&router, "/api/chat/stats", 80).await;

    let health = call(&router, Method::GET, "/_cache/health", None, None).await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.body["status"], "ok");
    assert_eq!(health.body["store"], "memory");
    assert_eq!(health.body["database"], "sqlite");

    let stats = call(&router, Method::GET, "/_cache/stats", None, None).await;
    let route = &stats.body["stats"]["routes"]["chat_stats"];
    assert_eq!(route["hits"], 1);
    assert_eq!(route["misses"], 1);
    assert_eq!(route["hit_rate"], 0.5);
    let usage = &stats.body["stats"]["usage"];
    assert_eq!(usage["entries"], 1, "{usage}");
    assert!(usage["bytes"].as_u64().unwrap() > 0, "{usage}");
    assert_eq!(stats.body["stats"]["store_available"], true);
    assert_eq!(stats.body["stats"]["unmatched"], 0);

    let origin = call(&router, Method::GET, "/_origin/stats", None, None).await;
    assert_eq!(origin.body["queries"], 1, "one miss, one query");
    assert_eq!(origin.body["max_connections_in_use"], 1);

    let reset = call(
        &router,
        Method::POST,
        "/_origin/stats/reset",
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(reset.body["queries"], 0);

    let request = axum::http::Request::get("/metrics")
        .body(axum::body::Body::empty())
        .unwrap();
    let response = tower::ServiceExt::oneshot(router.clone(), request)
        .await
        .unwrap();
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4"
    );
    let text = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    let text = std::str::from_utf8(&text).unwrap();
    // The exporter serves the whole process: other tests' dashboards count here too, so
    // the values are at least this test's.
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("/metrics lacks `{series}`:\n{text}"))
    };
    assert!(value("larder_requests_total{route=\"chat_stats\",outcome=\"hit\"}") >= 1.0);
    assert!(value("larder_requests_total{route=\"chat_stats\",outcome=\"miss\"}") >= 1.0);
    assert!(value("larder_store_available{store=\"memory\",namespace=\"dashboard\"}") >= 0.0);
    assert!(value("larder_entries{store=\"memory\",namespace=\"dashboard\"}") >= 0.0);
    assert!(value("larder_bytes{store=\"memory\",namespace=\"dashboard\"}") >= 0.0);
    assert!(value("dashboard_db_queries_total") >= 0.0);
    // Every series is described.
    for name in [
        "larder_requests_total",
        "larder_stored_total",
        "larder_store_available",
        "larder_pending_invalidations",
        "larder_entries",
        "larder_bytes",
        "dashboard_db_queries_total",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("# HELP {name} "))),
            "/metrics does not describe {name}:\n{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("# TYPE {name} "))),
            "/metrics gives no type of {name}:\n{text}"
        );
    }
}

#[tokio::test]
async fn store_none_serves_the_same_routes_uncached() {
    let (state, router) = dashboard(StoreKind::None).await;
    let (_, cached) = dashboard(StoreKind::Memory).await;
    for uri in [
        "/api/user/me",
        "/api/metrics/finance",
        "/api/chat/sessions?page=3",
        "/api/dashboard",
    ] {
        let plain = get(&router, uri, 90).await;
        assert_eq!(plain.status, StatusCode::OK);
        assert_eq!(plain.cache_status, None, "{uri}: no cache, no Cache-Status");
        assert_eq!(plain.x_cache, None);
        assert_eq!(
            plain.body,
            get(&cached, uri, 90).await.body,
            "{uri}: same data with and without the cache"
        );
    }
    let before = state.db.stats().queries;
    get(&router, "/api/user/me", 90).await;
    get(&router, "/api/dashboard", 90).await;
    assert_eq!(
        state.db.stats().queries,
        before + 1 + 9,
        "every read goes to the database"
    );
    let admin = call(
        &router,
        Method::POST,
        "/_cache/invalidate",
        Some(ADMIN),
        Some(json!({ "all": true })),
    )
    .await;
    assert_eq!(admin.status, StatusCode::OK);
    assert_eq!(admin.body["invalidated"], false);
}

/// `GET /api/announcements` is public and cached once for every caller: anonymous, bearer
/// (a known key or not) and cookie callers share one entry, which one database query filled;
/// the per-user routes stay per user; an operator's invalidation of `announcements` refills it.
#[tokio::test]
async fn announcements_are_one_entry_for_anonymous_bearer_and_cookie_callers() {
    for store in [StoreKind::Memory, StoreKind::None] {
        let (state, router) = dashboard(store).await;
        let before = state.db.stats().queries;
        let callers: [&[(&str, &str)]; 5] = [
            &[],
            &[("authorization", "Bearer demo-key-1")],
            &[("cookie", "session=abc")],
            &[
                ("authorization", "Bearer demo-key-2"),
                ("cookie", "session=def"),
            ],
            &[("authorization", "Bearer not-a-key")],
        ];
        let mut bodies = Vec::new();
        for (i, headers) in callers.iter().enumerate() {
            let answer = support::get_with(&router, "/api/announcements", headers).await;
            assert_eq!(
                answer.status,
                StatusCode::OK,
                "{headers:?}: {:?}",
                answer.body
            );
            let list = answer.body["announcements"].as_array().unwrap().clone();
            assert_eq!(list.len(), 3, "{:?}", answer.body);
            assert_eq!(list[0]["title"], "Maintenance", "newest first");
            if store == StoreKind::Memory {
                let want = if i == 0 { "MISS" } else { "HIT" };
                assert_eq!(answer.x_cache.as_deref(), Some(want), "caller {headers:?}");
            }
            bodies.push(answer.body);
        }
        assert!(bodies.windows(2).all(|w| w[0] == w[1]));
        let queries = state.db.stats().queries - before;
        match store {
            StoreKind::Memory => assert_eq!(queries, 1, "one entry for all five callers"),
            _ => assert_eq!(queries, 5, "uncached: a query per caller"),
        }
    }

    // Per-user routes are still per user.
    let (_, router) = dashboard(StoreKind::Memory).await;
    let a = get(&router, "/api/user/me", 1).await;
    let b = get(&router, "/api/user/me", 2).await;
    assert!(a.is_miss() && b.is_miss());
    assert_ne!(a.body["id"], b.body["id"]);

    // An operator's invalidation of the tag: the next caller misses, then all hit again.
    get(&router, "/api/announcements", 1).await;
    assert!(get(&router, "/api/announcements", 2).await.is_hit());
    let answer = call(
        &router,
        Method::POST,
        "/_cache/invalidate",
        Some(ADMIN),
        Some(json!({ "tags": ["announcements"] })),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    let cookie = [("cookie", "session=abc")];
    assert!(
        support::get_with(&router, "/api/announcements", &cookie)
            .await
            .is_miss()
    );
    assert!(
        support::get_with(&router, "/api/announcements", &[])
            .await
            .is_hit()
    );
}
