//! The invalidation matrix of the HTTP contract: for each write route, the affected reads go
//! miss -> hit, the write lands, and the next read is a miss with the new data; the reads it
//! does not affect stay hits; and another user's entries are never touched.

mod support;

use axum::http::{Method, StatusCode};
use example_dashboard::StoreKind;
use serde_json::json;
use support::{dashboard, first_session, get, post_message, send};

/// Every cached read of the contract.
const READS: [&str; 7] = [
    "/api/user/me",
    "/api/connectors/status",
    "/api/metrics/finance",
    "/api/chat/stats",
    "/api/chat/search?q=churn",
    "/api/chat/sessions",
    "/api/chat/sessions?page=2",
];

/// Reads every route twice for `user`: the second read must be a hit.
async fn warm(router: &axum::Router, user: i64) {
    for uri in READS {
        let first = get(router, uri, user).await;
        assert_eq!(first.status, StatusCode::OK, "{uri}: {:?}", first.body);
        let second = get(router, uri, user).await;
        assert!(
            second.is_hit(),
            "{uri} for user {user} is not a hit: {:?}",
            second.cache_status
        );
        assert_eq!(
            first.body, second.body,
            "{uri}: a hit serves the stored body"
        );
    }
}

/// After a write, `invalidated` reads are misses and every other read is still a hit.
async fn expect_invalidated(router: &axum::Router, user: i64, invalidated: &[&str], write: &str) {
    for uri in READS {
        let answer = get(router, uri, user).await;
        assert_eq!(answer.status, StatusCode::OK);
        if invalidated.contains(&uri) {
            assert!(
                answer.is_miss(),
                "after {write}, {uri} should be a miss: {:?}",
                answer.cache_status
            );
        } else {
            assert!(
                answer.is_hit(),
                "after {write}, {uri} should still be a hit: {:?}",
                answer.cache_status
            );
        }
    }
}

#[tokio::test]
async fn every_write_route_invalidates_exactly_its_tags_and_the_next_read_shows_the_new_data() {
    let (_, router) = dashboard(StoreKind::Memory).await;
    let (a, b) = (11, 12);
    warm(&router, b).await;

    // POST /api/connectors/{provider}: connectors.
    warm(&router, a).await;
    let before = get(&router, "/api/connectors/status", a).await.body;
    let provider = before["connectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["connected"] == false)
        .expect("seed data leaves some platforms unconnected")["provider"]
        .as_str()
        .unwrap()
        .to_owned();
    let uri = format!("/api/connectors/{provider}");
    let w = send(&router, Method::POST, &uri, a, json!({ "account": "acme" })).await;
    assert_eq!(w.status, StatusCode::OK);
    expect_invalidated(
        &router,
        a,
        &["/api/connectors/status"],
        "POST /api/connectors/{provider}",
    )
    .await;
    let after = get(&router, "/api/connectors/status", a).await.body;
    assert_eq!(
        after["connected"].as_u64(),
        before["connected"].as_u64().map(|n| n + 1)
    );

    // DELETE /api/connectors/{provider}: connectors.
    warm(&router, a).await;
    let w = send(&router, Method::DELETE, &uri, a, json!({})).await;
    assert_eq!(w.status, StatusCode::OK);
    expect_invalidated(
        &router,
        a,
        &["/api/connectors/status"],
        "DELETE /api/connectors/{provider}",
    )
    .await;
    assert_eq!(
        get(&router, "/api/connectors/status", a).await.body["connected"],
        before["connected"]
    );

    // POST /api/connectors/reset: connectors.
    warm(&router, a).await;
    let w = send(&router, Method::POST, "/api/connectors/reset", a, json!({})).await;
    assert_eq!(w.status, StatusCode::OK);
    expect_invalidated(
        &router,
        a,
        &["/api/connectors/status"],
        "POST /api/connectors/reset",
    )
    .await;
    assert_eq!(
        get(&router, "/api/connectors/status", a).await.body["connected"],
        0
    );

    // POST /api/chat/sessions: stats, sessions, search (titles are searched).
    warm(&router, a).await;
    let stats = get(&router, "/api/chat/stats", a).await.body;
    let w = send(
        &router,
        Method::POST,
        "/api/chat/sessions",
        a,
        json!({ "title": "Quarterly churn plan" }),
    )
    .await;
    assert_eq!(w.status, StatusCode::CREATED);
    let created = w.body["id"].as_i64().expect("the new session's id");
    expect_invalidated(
        &router,
        a,
        &[
            "/api/chat/stats",
            "/api/chat/search?q=churn",
            "/api/chat/sessions",
            "/api/chat/sessions?page=2",
        ],
        "POST /api/chat/sessions",
    )
    .await;
    let found = get(&router, "/api/chat/search?q=churn", a).await.body;
    assert!(
        found["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == created),
        "search finds the new session's title: {found}"
    );
    assert_eq!(
        get(&router, "/api/chat/stats", a).await.body["sessions"],
        stats["sessions"].as_i64().unwrap() + 1
    );
    assert_eq!(first_session(&router, a).await, created);

    // PUT /api/chat/sessions/{sid}: sessions, search.
    warm(&router, a).await;
    let w = send(
        &router,
        Method::PUT,
        &format!("/api/chat/sessions/{created}"),
        a,
        json!({ "title": "Renamed churn plan" }),
    )
    .await;
    assert_eq!(w.status, StatusCode::OK);
    expect_invalidated(
        &router,
        a,
        &[
            "/api/chat/search?q=churn",
            "/api/chat/sessions",
            "/api/chat/sessions?page=2",
        ],
        "PUT /api/chat/sessions/{sid}",
    )
    .await;
    let page = get(&router, "/api/chat/sessions", a).await.body;
    assert_eq!(page["sessions"][0]["title"], "Renamed churn plan");
    let found = get(&router, "/api/chat/search?q=churn", a).await.body;
    assert_eq!(found["sessions"][0]["title"], "Renamed churn plan");

    // POST /api/chat/sessions/{sid}/messages: stats, search, user (credits), sessions (the
    // session moves to the top of the list and its count changes).
    warm(&router, a).await;
    let page = get(&router, "/api/chat/sessions", a).await.body;
    let last = page["sessions"].as_array().unwrap().last().unwrap().clone();
    let target = last["id"].as_i64().unwrap();
    let credits = get(&router, "/api/user/me", a).await.body["credits"]
        .as_i64()
        .unwrap();
    let messages = get(&router, "/api/chat/stats", a).await.body["messages"]
        .as_i64()
        .unwrap();
    let w = post_message(
        &router,
        a,
        target,
        "What drives churn in the enterprise tier?",
    )
    .await;
    assert_eq!(w.status, StatusCode::CREATED);
    expect_invalidated(
        &router,
        a,
        &[
            "/api/user/me",
            "/api/chat/stats",
            "/api/chat/search?q=churn",
            "/api/chat/sessions",
            "/api/chat/sessions?page=2",
        ],
        "POST /api/chat/sessions/{sid}/messages",
    )
    .await;
    // Sessions are listed by their last change (in seconds, then newest id first): the one
    // written to moves up from the bottom of page 1.
    let page = get(&router, "/api/chat/sessions", a).await.body;
    let listed = page["sessions"].as_array().unwrap();
    let at = listed
        .iter()
        .position(|s| s["id"] == target)
        .expect("the session written to is on page 1");
    assert!(at < listed.len() - 1, "the session moved up: {page}");
    assert_eq!(
        listed[at]["message_count"],
        last["message_count"].as_i64().unwrap() + 2
    );
    let me = get(&router, "/api/user/me", a).await.body;
    assert_eq!(
        me["credits"],
        credits - 1,
        "credits fall after a message and /api/user/me shows it at once"
    );
    assert_eq!(me["credits"], w.body["credits_remaining"]);
    assert_eq!(
        get(&router, "/api/chat/stats", a).await.body["messages"],
        messages + 2
    );

    // DELETE /api/chat/sessions/{sid}: stats, sessions, search.
    warm(&router, a).await;
    let w = send(
        &router,
        Method::DELETE,
        &format!("/api/chat/sessions/{created}"),
        a,
        json!({}),
    )
    .await;
    assert_eq!(w.status, StatusCode::NO_CONTENT);
    expect_invalidated(
        &router,
        a,
        &[
            "/api/chat/stats",
            "/api/chat/search?q=churn",
            "/api/chat/sessions",
            "/api/chat/sessions?page=2",
        ],
        "DELETE /api/chat/sessions/{sid}",
    )
    .await;
    assert_ne!(first_session(&router, a).await, created);
    // Back to the sessions there were; the message posted to another session stays.
    let now = get(&router, "/api/chat/stats", a).await.body;
    assert_eq!(now["sessions"], stats["sessions"]);
    assert_eq!(now["messages"], stats["messages"].as_i64().unwrap() + 2);

    // None of user 11's writes touched user 12's entries.
    for uri in READS {
        let answer = get(&router, uri, b).await;
        assert!(
            answer.is_hit(),
            "user 12's {uri} was invalidated by user 11's writes: {:?}",
            answer.cache_status
        );
    }
}

#[tokio::test]
async fn pages_are_distinct_entries_and_one_write_clears_them_all() {
    let (_, router) = dashboard(StoreKind::Memory).await;
    let user = 21;
    let mut pages = Vec::new();
    for page in 1..=3 {
        let uri = format!("/api/chat/sessions?page={page}");
        let miss = get(&router, &uri, user).await;
        assert!(miss.is_miss(), "page {page} starts as a miss");
        assert!(
            get(&router, &uri, user).await.is_hit(),
            "page {page} is then a hit"
        );
        pages.push(miss.body["sessions"].clone());
    }
    assert_ne!(pages[0], pages[1]);
    assert_ne!(pages[1], pages[2]);
    // `page=1` and no page parameter are one entry.
    assert!(get(&router, "/api/chat/sessions", user).await.is_hit());
    assert!(
        get(&router, "/api/chat/sessions?page=1&per_page=10", user)
            .await
            .is_hit()
    );

    let w = send(
        &router,
        Method::POST,
        "/api/chat/sessions",
        user,
        json!({ "title": "New" }),
    )
    .await;
    assert_eq!(w.status, StatusCode::CREATED);
    for page in 1..=3 {
        let uri = format!("/api/chat/sessions?page={page}");
        let fresh = get(&router, &uri, user).await;
        assert!(fresh.is_miss(), "page {page} was cleared by the write");
    }
    // The new session leads page 1 and pushes one session to the next page.
    let page1 = get(&router, "/api/chat/sessions?page=1", user).await.body;
    assert_eq!(page1["sessions"][0]["id"], w.body["id"]);
    let page2 = get(&router, "/api/chat/sessions?page=2", user).await.body;
    assert_eq!(page2["sessions"][0], pages[0][9]);
}

#[tokio::test]
async fn the_dashboard_reads_its_parts_in_one_batch_and_writes_reach_it() {
    let (state, router) = dashboard(StoreKind::Memory).await;
    let user = 31;
    let first = get(&router, "/api/dashboard", user).await;
    assert_eq!(first.status, StatusCode::OK);
    assert!(first.is_miss());
    assert!(
        first
            .cache_status
            .as_deref()
            .unwrap()
            .contains("9 of 9 parts")
    );
    for part in [
        "profile",
        "connectors",
        "metrics",
        "chat_stats",
        "recent_sessions",
    ] {
        assert!(!first.body[part].is_null(), "the dashboard has {part}");
    }
    assert_eq!(first.body["metrics"].as_object().unwrap().len(), 5);
    let queries = state.db.stats().queries;
    let second = get(&router, "/api/dashboard", user).await;
    assert!(second.is_hit());
    assert_eq!(second.body, first.body);
    assert_eq!(
        state.db.stats().queries,
        queries,
        "a dashboard hit makes no query"
    );

    // A message spends credits, changes stats and moves its session up: those three parts
    // reload, the rest hit.
    let sid = first.body["recent_sessions"]["sessions"][0]["id"]
        .as_i64()
        .unwrap();
    let w = post_message(&router, user, sid, "hi").await;
    assert_eq!(w.status, StatusCode::CREATED);
    let third = get(&router, "/api/dashboard", user).await;
    assert!(third.is_miss());
    assert!(
        third
            .cache_status
            .as_deref()
            .unwrap()
            .contains("3 of 9 parts"),
        "{:?}",
        third.cache_status
    );
    assert_eq!(
        third.body["profile"]["credits"],
        w.body["credits_remaining"]
    );
    assert_eq!(
        third.body["chat_stats"]["messages"],
        first.body["chat_stats"]["messages"].as_i64().unwrap() + 2
    );
    let recent = &third.body["recent_sessions"]["sessions"][0];
    assert_eq!(recent["id"], sid);
    assert_eq!(
        recent["message_count"],
        first.body["recent_sessions"]["sessions"][0]["message_count"]
            .as_i64()
            .unwrap()
            + 2
    );
}

/// The key never accepts what the handler rejects: a page given twice is not page 3's entry.
#[tokio::test]
async fn a_page_given_twice_is_rejected_even_when_one_of_them_is_cached() {
    let (_, router) = dashboard(StoreKind::Memory).await;
    let user = 41;
    let page3 = get(&router, "/api/chat/sessions?page=3", user).await;
    assert_eq!(page3.status, StatusCode::OK);
    assert!(
        get(&router, "/api/chat/sessions?page=3", user)
            .await
            .is_hit()
    );
    for _ in 0..2 {
        let twice = get(&router, "/api/chat/sessions?page=3&page=1", user).await;
        assert_eq!(twice.status, StatusCode::BAD_REQUEST, "{:?}", twice.body);
        assert!(!twice.is_hit(), "{:?}", twice.cache_status);
    }
}

/// With `--audit-rate 1`, hits are asked again of the database: after a write of every kind,
/// the audit finds no entry that a write changed without invalidating it. (With the message
/// route's `sessions:{id}` taken out of its rule, this test fails: the audit sees the stale
/// session page.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_finds_no_stale_entry_after_every_kind_of_write() {
    let (state, router) = support::dashboard_with(example_dashboard::Config {
        database_url: Some("sqlite::memory:".into()),
        db_latency_ms: 0,
        audit_rate: Some(1.0),
        ..example_dashboard::Config::defaults()
    })
    .await;
    let cache = state.cache.clone().expect("a cache");
    let user = 51;
    warm(&router, user).await;
    let sid = first_session(&router, user).await;
    let path = format!("/api/chat/sessions/{sid}");
    let renamed = json!({ "title": "Renamed churn" });
    send(&router, Method::PUT, &path, user, renamed).await;
    let created = json!({ "title": "New churn" });
    let w = send(&router, Method::POST, "/api/chat/sessions", user, created).await;
    assert_eq!(w.status, StatusCode::CREATED);
    send(
        &router,
        Method::POST,
        "/api/connectors/reset",
        user,
        json!({}),
    )
    .await;
    // Every entry filled again, then a message: what it changes must have been invalidated.
    warm(&router, user).await;
    let last = get(&router, "/api/chat/sessions", user).await.body["sessions"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    post_message(&router, user, last, "churn?").await;

    // Read everything again (a miss, then hits) until every cached rule has been audited
    // twice since the message.
    const RULES: [&str; 6] = [
        "user_me",
        "connectors_status",
        "metrics",
        "chat_stats",
        "chat_search",
        "chat_sessions",
    ];
    let audits = |stats: &larder::StatsSnapshot, rule: &str| stats.routes[rule].audits;
    let before = cache.stats();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        for uri in READS {
            get(&router, uri, user).await;
        }
        let now = cache.stats();
        if RULES
            .iter()
            .all(|r| audits(&now, r) >= audits(&before, r) + 2)
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{:?}", now.routes);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let total = cache.stats().total;
    assert_eq!(total.audit_mismatches, 0, "{total:?}");
}

/// With refills on (the default), a message refills what it invalidated of its user's reads
/// in the background: once the refills are done, the next load is all hits, showing the write
/// (the new credits, the session's new message count); the other user's entries are untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_refills_what_its_user_read_so_the_next_load_is_all_hits_with_the_new_data() {
    let (state, router) = support::dashboard_refilling(StoreKind::Memory).await;
    let cache = state.cache.clone().expect("a cache");
    let (a, b) = (61, 62);
    warm(&router, a).await;
    warm(&router, b).await;
    let credits = get(&router, "/api/user/me", a).await.body["credits"].clone();
    let sid = first_session(&router, a).await;
    let queries = state.db.stats().queries;
    post_message(&router, a, sid, "refill me").await;
    // The message invalidates profile, stats, search and the session pages of user a: five
    // of the reads `warm` made.
    let mut done = 0;
    for _ in 0..500 {
        done = cache.stats().refills.done;
        if done >= 5 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(done, 5, "{:?}", cache.stats().refills);
    assert!(
        state.db.stats().queries > queries,
        "the refills asked the database"
    );
    for uri in READS {
        for user in [a, b] {
            let answer = get(&router, uri, user).await;
            assert!(
                answer.is_hit(),
                "{uri} for {user}: {:?}",
                answer.cache_status
            );
        }
    }
    let me = get(&router, "/api/user/me", a).await.body;
    assert_ne!(me["credits"], credits, "the refill shows the write");
    assert_eq!(cache.stats().refills.failed, 0);
}
