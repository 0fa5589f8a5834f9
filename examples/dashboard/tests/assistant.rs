//! The assistant of seed 004: its data, schema and thread context through the typed API, its
//! streamed replies cached by the HTTP layer by body, what invalidates them, and that no user
//! ever gets another's. On the memory store, on Redis (the test kit's server) and uncached.

mod support;

use std::time::Duration;

use axum::{
    Router,
    body::Body,
    http::{Method, Request, StatusCode, header},
};
use example_dashboard::{Config, Dashboard, StoreKind};
use http_body_util::BodyExt;
use larder_testkit::RedisServer;
use serde_json::{Value, json};
use support::{ADMIN, call, dashboard_with, first_session, get, post_message, send};
use tower::ServiceExt;

/// The model's latency in these tests: eight pauses of 5 ms.
const MODEL_LATENCY_MS: u64 = 40;

/// `support::config` (refills off: the reads after a write or an invalidation show exactly
/// what it invalidated) with a fast model.
fn config(store: StoreKind) -> Config {
    Config {
        model_latency_ms: MODEL_LATENCY_MS,
        ..support::config(store)
    }
}

fn on_redis(server: &RedisServer, namespace: &str) -> Config {
    Config {
        redis_url: server.url(),
        namespace: namespace.into(),
        ..config(StoreKind::Redis)
    }
}

fn aid(user: i64) -> String {
    format!("asst_{user}")
}

/// A reply as the client saw it: the raw bytes of the event stream, and how many body frames
/// they came in.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    content_type: Option<String>,
    cache_status: Option<String>,
    bytes: Vec<u8>,
    frames: usize,
}

impl Reply {
    fn is_hit(&self) -> bool {
        self.cache_status
            .as_deref()
            .is_some_and(|s| s.starts_with("larder; hit"))
    }

    fn is_miss(&self) -> bool {
        self.cache_status
            .as_deref()
            .is_some_and(|s| s.contains("fwd=miss"))
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.bytes).expect("the event stream is UTF-8")
    }
}

/// `POST /api/assistants/{aid}/threads/{sid}/reply` as `user`, with `{"content": content}`.
async fn reply(router: &Router, user: i64, aid: &str, sid: i64, content: &str) -> Reply {
    reply_raw(
        router,
        user,
        &format!("/api/assistants/{aid}/threads/{sid}/reply"),
        json!({ "content": content }).to_string(),
    )
    .await
}

async fn reply_raw(router: &Router, user: i64, uri: &str, body: String) -> Reply {
    let request = Request::post(uri)
        .header(
            header::AUTHORIZATION,
            format!("Bearer {}", support::key(user)),
        )
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let (parts, mut body) = response.into_parts();
    let value = |name: &str| {
        parts
            .headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let (status, content_type, cache_status) =
        (parts.status, value("content-type"), value("cache-status"));
    let (mut bytes, mut frames) = (Vec::new(), 0);
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("the body streams to its end").into_data() {
            bytes.extend_from_slice(&data);
            frames += 1;
        }
    }
    Reply {
        status,
        content_type,
        cache_status,
        bytes,
        frames,
    }
}

/// Checks a reply is a well-formed event stream: eight `delta` events, then `[DONE]`. Returns
/// the text the deltas make.
fn events(reply: &Reply) -> String {
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.content_type.as_deref(), Some("text/event-stream"));
    let text = reply.text();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let events: Vec<&str> = text.split_terminator("\n\n").collect();
    assert_eq!(events.len(), 9, "eight deltas and [DONE]: {text}");
    events[..8]
        .iter()
        .map(|e| {
            let json: Value = serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap();
            json["delta"].as_str().unwrap().to_owned()
        })
        .collect()
}

/// `model_calls` of `GET /_origin/stats`.
async fn model_calls(router: &Router) -> u64 {
    let stats = call(router, Method::GET, "/_origin/stats", None, None).await;
    stats.body["model_calls"]
        .as_u64()
        .unwrap_or_else(|| panic!("no model_calls in {}", stats.body))
}

/// Replies the cache has stored (the rule `ai_reply`).
fn replies_stored(state: &Dashboard) -> u64 {
    state
        .cache
        .as_ref()
        .unwrap()
        .stats()
        .routes
        .get("ai_reply")
        .map_or(0, |r| r.stored)
}

/// Waits until the cache counts `n` stored replies: a network store writes a miss after its
/// response has been sent. Panics after 5 s.
async fn until_stored(state: &Dashboard, n: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while replies_stored(state) < n {
        assert!(
            std::time::Instant::now() < deadline,
            "the reply was never stored ({} of {n})",
            replies_stored(state)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn admin_invalidate(router: &Router, body: Value) -> support::Answer {
    let answer = call(
        router,
        Method::POST,
        "/_cache/invalidate",
        Some(ADMIN),
        Some(body.clone()),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{body}: {:?}", answer.body);
    answer
}

/// A message asked twice gets one model call: the first reply is a miss streamed by the
/// model in several frames, the second a hit with the same bytes.
async fn a_repeated_message_is_a_hit(state: &Dashboard, router: &Router, user: i64) {
    let (aid, sid) = (aid(user), first_session(router, user).await);
    let calls = model_calls(router).await;
    let stored = replies_stored(state);
    let first = reply(router, user, &aid, sid, "How is revenue trending?").await;
    let text = events(&first);
    assert!(first.is_miss(), "{:?}", first.cache_status);
    assert!(
        first.frames >= 8,
        "the model streams its answer: {} frames",
        first.frames
    );
    assert!(text.contains("How is revenue trending?"), "{text}");
    assert_eq!(model_calls(router).await, calls + 1);

    until_stored(state, stored + 1).await;
    let second = reply(router, user, &aid, sid, "How is revenue trending?").await;
    assert!(second.is_hit(), "{:?}", second.cache_status);
    assert_eq!(second.content_type.as_deref(), Some("text/event-stream"));
    assert_eq!(second.bytes, first.bytes, "a hit streams the same bytes");
    assert_eq!(model_calls(router).await, calls + 1, "a hit calls no model");

    // Another message is another entry.
    let other = reply(router, user, &aid, sid, "And churn?").await;
    assert!(other.is_miss(), "{:?}", other.cache_status);
    assert_ne!(events(&other), text);
    assert_eq!(model_calls(router).await, calls + 2);
}

#[tokio::test]
async fn a_repeated_reply_is_a_hit_that_streams_the_same_bytes_on_the_memory_store() {
    let (state, router) = dashboard_with(config(StoreKind::Memory)).await;
    a_repeated_message_is_a_hit(&state, &router, 11).await;
}

#[tokio::test]
async fn a_repeated_reply_is_a_hit_that_streams_the_same_bytes_on_redis() {
    let server = RedisServer::restricted();
    let (state, router) = dashboard_with(on_redis(&server, "assistant-replies")).await;
    a_repeated_message_is_a_hit(&state, &router, 12).await;
    // A second instance on the same Redis hits the first one's entry (its own database
    // holds the same seed, so the key and the answer are the same).
    let (other_state, other) = dashboard_with(on_redis(&server, "assistant-replies")).await;
    let sid = first_session(&other, 12).await;
    let shared = reply(&other, 12, &aid(12), sid, "How is revenue trending?").await;
    assert!(shared.is_hit(), "{:?}", shared.cache_status);
    assert_eq!(other_state.model.calls(), 0);
    events(&shared);
}

/// The answer is a function of the thread and the message: with no cache, asking twice calls
/// the model twice and streams the same bytes; the data routes answer without `Cache-Status`.
#[tokio::test]
async fn without_a_cache_every_reply_calls_the_model_and_says_the_same() {
    let (state, router) = dashboard_with(config(StoreKind::None)).await;
    let user = 13;
    let sid = first_session(&router, user).await;
    let first = reply(&router, user, &aid(user), sid, "Forecast?").await;
    let second = reply(&router, user, &aid(user), sid, "Forecast?").await;
    events(&first);
    assert_eq!(first.bytes, second.bytes);
    assert_eq!((first.cache_status, second.cache_status), (None, None));
    assert_eq!(state.model.calls(), 2);
    for uri in [
        format!("/api/assistants/{}", aid(user)),
        format!("/api/assistants/{}/schema", aid(user)),
        format!("/api/assistants/{}/threads/{sid}", aid(user)),
    ] {
        let answer = get(&router, &uri, user).await;
        assert_eq!(answer.status, StatusCode::OK, "{uri}: {:?}", answer.body);
        assert_eq!(answer.cache_status, None, "{uri}");
    }
}

/// (d) Each data route: a miss, then a hit that asks the database nothing.
#[tokio::test]
async fn assistant_data_schema_and_context_miss_then_hit() {
    let (state, router) = dashboard_with(config(StoreKind::Memory)).await;
    let user = 14;
    let (aid, sid) = (aid(user), first_session(&router, user).await);
    let data = format!("/api/assistants/{aid}");
    let schema = format!("/api/assistants/{aid}/schema");
    let context = format!("/api/assistants/{aid}/threads/{sid}");
    for uri in [&data, &schema, &context] {
        let first = get(&router, uri, user).await;
        assert_eq!(first.status, StatusCode::OK, "{uri}: {:?}", first.body);
        assert!(first.is_miss(), "{uri}: {:?}", first.cache_status);
        assert!(first.cache_status.as_deref().unwrap().contains("fwd=miss"));
        let queries = state.db.stats().queries;
        let second = get(&router, uri, user).await;
        assert!(second.is_hit(), "{uri}: {:?}", second.cache_status);
        assert_eq!(second.cache_status.as_deref(), Some("larder; hit"));
        assert_eq!(second.body, first.body, "{uri}");
        assert_eq!(
            state.db.stats().queries,
            queries,
            "{uri}: a hit asks nothing"
        );
    }

    let data = get(&router, &data, user).await.body;
    assert_eq!(data["id"], aid);
    assert_eq!(data["user_id"], user);
    let sources = data["sources"].as_array().unwrap();
    assert_eq!(sources.len(), 3, "{data}");
    assert!(sources.iter().all(|s| s["columns"][0] == "date"), "{data}");

    let schema = get(&router, &schema, user).await.body;
    assert_eq!(schema["assistant"], aid);
    let tables = schema["tables"].as_array().unwrap();
    assert_eq!(tables.len(), 3, "{schema}");
    assert_eq!(tables[0]["name"], sources[0]["name"]);
    assert_eq!(
        tables[0]["columns"].as_array().unwrap().len(),
        5,
        "{schema}"
    );

    let context = get(&router, &context, user).await.body;
    assert_eq!(context["thread"], sid);
    let messages = context["messages"].as_array().unwrap();
    assert_eq!(
        messages.len(),
        2,
        "a seeded session has two messages: {context}"
    );
    assert_eq!(messages[0]["role"], "user");
    assert_eq!(messages[1]["role"], "assistant");

    // The context keeps the last 20 messages, oldest first.
    for n in 0..11 {
        let saved = post_message(&router, user, sid, &format!("message {n}")).await;
        assert_eq!(saved.status, StatusCode::CREATED, "{:?}", saved.body);
    }
    let context = get(
        &router,
        &format!("/api/assistants/{aid}/threads/{sid}"),
        user,
    )
    .await;
    assert!(context.is_miss(), "each message invalidated the thread");
    let messages = context.body["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 20);
    assert_eq!(messages[19]["role"], "assistant");
    assert_eq!(messages[18]["content"], "message 10");
}

/// (b) What invalidates a reply: an operator's `threads` (that thread only), a message saved
/// to the thread, a message deleted from it, and an operator's `assistants`, which also
/// drops the assistant's data, schema and context.
#[tokio::test]
async fn invalidating_a_thread_or_an_assistant_makes_its_replies_and_data_miss() {
    let (state, router) = dashboard_with(config(StoreKind::Memory)).await;
    let user = 15;
    let aid = aid(user);
    let page = get(&router, "/api/chat/sessions", user).await.body;
    let sid = page["sessions"][0]["id"].as_i64().unwrap();
    let other_sid = page["sessions"][1]["id"].as_i64().unwrap();
    let ask = "What drove the change?";
    let calls = || state.model.calls();

    let first = reply(&router, user, &aid, sid, ask).await;
    let first_text = events(&first);
    let elsewhere = reply(&router, user, &aid, other_sid, ask).await;
    events(&elsewhere);
    assert!(reply(&router, user, &aid, sid, ask).await.is_hit());
    assert_eq!(calls(), 2);

    // An operator drops the thread (with a tag of the old kind in the same call).
    let answer = admin_invalidate(&router, json!({ "threads": [sid], "tags": ["stats:15"] })).await;
    assert_eq!(answer.body["threads"], 1);
    assert_eq!(answer.body["tags"], 1);
    let again = reply(&router, user, &aid, sid, ask).await;
    assert!(again.is_miss(), "{:?}", again.cache_status);
    assert_eq!(calls(), 3, "the model is asked again");
    assert_eq!(again.bytes, first.bytes, "the same thread, the same answer");
    assert!(
        reply(&router, user, &aid, other_sid, ask).await.is_hit(),
        "another thread is untouched"
    );
    assert!(get(&router, "/api/chat/stats", user).await.is_miss());
    assert!(reply(&router, user, &aid, sid, ask).await.is_hit());

    // Saving a message to the thread changes its context: the reply is asked again, and
    // says something else.
    let saved = post_message(&router, user, sid, ask).await;
    assert_eq!(saved.status, StatusCode::CREATED, "{:?}", saved.body);
    let after_save = reply(&router, user, &aid, sid, ask).await;
    assert!(after_save.is_miss(), "{:?}", after_save.cache_status);
    assert_eq!(calls(), 4);
    assert_ne!(events(&after_save), first_text, "the context grew");
    assert!(reply(&router, user, &aid, sid, ask).await.is_hit());

    // Deleting a message changes it again.
    let mid = saved.body["reply"]["id"].as_i64().unwrap();
    let deleted = send(
        &router,
        Method::DELETE,
        &format!("/api/chat/sessions/{sid}/messages/{mid}"),
        user,
        json!({}),
    )
    .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{:?}", deleted.body);
    let after_delete = reply(&router, user, &aid, sid, ask).await;
    assert!(after_delete.is_miss(), "{:?}", after_delete.cache_status);
    assert_eq!(calls(), 5);
    events(&after_delete);

    // An operator drops the assistant: its data, schema, every context and reply of it.
    let data = format!("/api/assistants/{aid}");
    let schema = format!("/api/assistants/{aid}/schema");
    let context = format!("/api/assistants/{aid}/threads/{sid}");
    for uri in [&data, &schema, &context] {
        get(&router, uri, user).await;
        assert!(get(&router, uri, user).await.is_hit(), "{uri}");
    }
    assert!(reply(&router, user, &aid, sid, ask).await.is_hit());
    assert!(reply(&router, user, &aid, other_sid, ask).await.is_hit());
    let answer = admin_invalidate(&router, json!({ "assistants": [aid] })).await;
    assert_eq!(answer.body["assistants"], 1);
    let calls_before = calls();
    // The reply first: it reads the assistant and the context again itself.
    for thread in [sid, other_sid] {
        let r = reply(&router, user, &aid, thread, ask).await;
        assert!(r.is_miss(), "thread {thread}: {:?}", r.cache_status);
    }
    assert_eq!(calls(), calls_before + 2);
    assert!(get(&router, &schema, user).await.is_miss());
    // The replies above read the data and the context again; drop the assistant once more
    // and read those first.
    admin_invalidate(&router, json!({ "assistants": [aid] })).await;
    for uri in [&data, &schema, &context] {
        let answer = get(&router, uri, user).await;
        assert!(answer.is_miss(), "{uri}: {:?}", answer.cache_status);
    }
    // Other users' assistants are untouched.
    let neighbour = format!("/api/assistants/{}", self::aid(16));
    get(&router, &neighbour, 16).await;
    admin_invalidate(&router, json!({ "assistants": [aid] })).await;
    assert!(get(&router, &neighbour, 16).await.is_hit());

    // The admin route still refuses an empty or unknown body.
    let empty = call(
        &router,
        Method::POST,
        "/_cache/invalidate",
        Some(ADMIN),
        Some(json!({ "assistants": [], "threads": [] })),
    )
    .await;
    assert_eq!(empty.status, StatusCode::BAD_REQUEST);
    let unknown = call(
        &router,
        Method::POST,
        "/_cache/invalidate",
        Some(ADMIN),
        Some(json!({ "thread": [sid] })),
    )
    .await;
    assert_eq!(unknown.status, StatusCode::UNPROCESSABLE_ENTITY);
}

/// (c) User B never gets user A's assistant data, schema, context or reply, even right after
/// A cached them: 404, never cached, no model call.
#[tokio::test]
async fn another_user_never_gets_a_users_assistant_schema_context_or_reply() {
    let (state, router) = dashboard_with(config(StoreKind::Memory)).await;
    let (a, b) = (17, 18);
    let (a_sid, b_sid) = (
        first_session(&router, a).await,
        first_session(&router, b).await,
    );
    let ask = "Show me the numbers";
    let a_uris = [
        format!("/api/assistants/{}", aid(a)),
        format!("/api/assistants/{}/schema", aid(a)),
        format!("/api/assistants/{}/threads/{a_sid}", aid(a)),
    ];
    for uri in &a_uris {
        get(&router, uri, a).await;
        assert!(get(&router, uri, a).await.is_hit(), "{uri}");
    }
    let a_reply = reply(&router, a, &aid(a), a_sid, ask).await;
    events(&a_reply);
    assert!(reply(&router, a, &aid(a), a_sid, ask).await.is_hit());
    let calls = state.model.calls();
    let contexts = || {
        let stats = state.cache.as_ref().unwrap().stats();
        stats
            .routes
            .get("thread_context")
            .map_or(0, |r| r.stored + r.misses)
    };
    let contexts_before = contexts();

    // B asks for A's things: they are in the cache, and B gets 404.
    for uri in a_uris.iter().cloned().chain([
        // B's own assistant with A's thread, and the other way round.
        format!("/api/assistants/{}/threads/{a_sid}", aid(b)),
        format!("/api/assistants/{}/threads/{b_sid}", aid(a)),
    ]) {
        for _ in 0..2 {
            let answer = get(&router, &uri, b).await;
            assert_eq!(
                answer.status,
                StatusCode::NOT_FOUND,
                "{uri}: {:?}",
                answer.body
            );
            assert!(answer.body["error"].is_string(), "{uri}: {:?}", answer.body);
            assert_eq!(answer.body.get("id"), None);
        }
    }
    for (assistant, thread) in [(aid(a), a_sid), (aid(b), a_sid), (aid(a), b_sid)] {
        for _ in 0..2 {
            let r = reply(&router, b, &assistant, thread, ask).await;
            assert_eq!(r.status, StatusCode::NOT_FOUND, "{assistant}/{thread}");
            assert!(!r.is_hit(), "a 404 is never served from the cache");
            assert!(!r.text().contains("data:"), "{}", r.text());
        }
    }
    // B's own context was never read under A's assistant (nor cached under its tag): the
    // assistant's owner is checked first.
    assert_eq!(
        contexts(),
        contexts_before,
        "no context read for a foreign assistant"
    );
    // A cannot use B's thread with A's assistant either.
    let r = reply(&router, a, &aid(a), b_sid, ask).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // Unknown and malformed ids.
    for uri in [
        "/api/assistants/asst_999999",
        "/api/assistants/asst_1%20OR%201=1",
        "/api/assistants/asst_17/threads/999999999",
    ] {
        assert_eq!(
            get(&router, uri, a).await.status,
            StatusCode::NOT_FOUND,
            "{uri}"
        );
    }
    assert_eq!(state.model.calls(), calls, "no 404 reached the model");

    // A still gets its own, from the cache.
    for uri in &a_uris {
        assert!(get(&router, uri, a).await.is_hit(), "{uri}");
    }
    let again = reply(&router, a, &aid(a), a_sid, ask).await;
    assert!(again.is_hit());
    assert_eq!(again.bytes, a_reply.bytes);
    // B's own assistant works for B.
    let own = get(&router, &format!("/api/assistants/{}", aid(b)), b).await;
    assert_eq!(own.status, StatusCode::OK);
    assert_eq!(own.body["user_id"], b);
}

/// A reply to an empty or too long message is 400, never cached, and calls no model.
#[tokio::test]
async fn a_bad_message_is_400_and_never_reaches_the_model() {
    let (state, router) = dashboard_with(config(StoreKind::Memory)).await;
    let user = 19;
    let sid = first_session(&router, user).await;
    let long = "x".repeat(8001);
    for content in ["", "   ", long.as_str()] {
        for _ in 0..2 {
            let r = reply(&router, user, &aid(user), sid, content).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
            assert!(!r.is_hit());
        }
    }
    let uri = format!("/api/assistants/{}/threads/{sid}/reply", aid(user));
    let malformed = reply_raw(&router, user, &uri, "{\"text\": 1}".into()).await;
    assert!(malformed.status.is_client_error(), "{:?}", malformed.status);
    assert_eq!(state.model.calls(), 0);
    let longest = reply(&router, user, &aid(user), sid, &"y".repeat(8000)).await;
    events(&longest);
    assert_eq!(state.model.calls(), 1);
}

/// (e) Deleting a message: 204; chat stats, search and session pages are read again; a
/// message that is not the caller's in that session is 404 and invalidates nothing.
#[tokio::test]
async fn deleting_a_message_invalidates_stats_search_and_the_thread() {
    let (_, router) = dashboard_with(config(StoreKind::Memory)).await;
    let (a, b) = (20, 21);
    let sid = first_session(&router, a).await;
    let b_sid = first_session(&router, b).await;
    let saved = post_message(&router, a, sid, "a note about lighthouses").await;
    assert_eq!(saved.status, StatusCode::CREATED, "{:?}", saved.body);
    let mid = saved.body["message"]["id"].as_i64().unwrap();
    let b_saved = post_message(&router, b, b_sid, "b's note").await;
    let b_mid = b_saved.body["message"]["id"].as_i64().unwrap();

    let reads = [
        "/api/chat/stats",
        "/api/chat/search?q=lighthouses",
        "/api/chat/sessions",
    ];
    let mut before = Vec::new();
    for uri in reads {
        get(&router, uri, a).await;
        let hit = get(&router, uri, a).await;
        assert!(hit.is_hit(), "{uri}");
        before.push(hit.body);
    }
    let context = format!("/api/assistants/{}/threads/{sid}", aid(a));
    get(&router, &context, a).await;
    assert!(get(&router, &context, a).await.is_hit());

    let delete = |user: i64, sid: i64, mid: i64| {
        let router = router.clone();
        async move {
            send(
                &router,
                Method::DELETE,
                &format!("/api/chat/sessions/{sid}/messages/{mid}"),
                user,
                json!({}),
            )
            .await
        }
    };
    // Not the caller's: B deletes A's message (in A's session, or named under B's own), A
    // names its message under B's session or a session of its own it is not in.
    let other_sid = get(&router, "/api/chat/sessions", a).await.body["sessions"][1]["id"]
        .as_i64()
        .unwrap();
    for (user, s, m) in [
        (b, sid, mid),
        (b, b_sid, mid),
        (a, b_sid, b_mid),
        (a, other_sid, mid),
    ] {
        let answer = delete(user, s, m).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{user} {s} {m}");
    }
    for uri in reads {
        assert!(
            get(&router, uri, a).await.is_hit(),
            "{uri}: a 404 invalidates nothing"
        );
    }
    assert!(get(&router, &context, a).await.is_hit());

    let deleted = delete(a, sid, mid).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{:?}", deleted.body);
    assert_eq!(deleted.body, Value::Null);
    let stats = get(&router, reads[0], a).await;
    assert!(stats.is_miss(), "stats are read again");
    assert_eq!(
        stats.body["messages"].as_i64().unwrap(),
        before[0]["messages"].as_i64().unwrap() - 1
    );
    let search = get(&router, reads[1], a).await;
    assert!(search.is_miss(), "search is read again");
    assert!(
        search.body["sessions"].as_array().unwrap().is_empty(),
        "the only message about lighthouses is gone: {}",
        search.body
    );
    let page = get(&router, reads[2], a).await;
    assert!(page.is_miss(), "the session's message count changed");
    let context = get(&router, &context, a).await;
    assert!(context.is_miss(), "the thread changed");
    assert!(
        context.body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["content"] != "a note about lighthouses")
    );
    // Twice is 404; B's message is still there.
    assert_eq!(delete(a, sid, mid).await.status, StatusCode::NOT_FOUND);
    assert_eq!(delete(b, b_sid, b_mid).await.status, StatusCode::NO_CONTENT);
}

/// The assistant's tables, seed and queries on PostgreSQL (`LARDER_TEST_POSTGRES_URL`, as in
/// `tests/stores.rs`): skipped with a message when the server cannot be reached, unless
/// `LARDER_REQUIRE_POSTGRES` is set.
#[tokio::test]
async fn on_postgres_the_assistant_reads_replies_and_deletes() {
    use sqlx::{Connection, Executor};
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
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let name = format!("larder_assistant_{}_{nanos}", std::process::id());
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap();
    let url = format!("{}/{name}", admin_url.rsplit_once('/').unwrap().0);
    let result = tokio::spawn(async move {
        let (state, router) = dashboard_with(Config {
            database_url: Some(url),
            ..config(StoreKind::Memory)
        })
        .await;
        assert_eq!(state.db.backend(), example_dashboard::db::Backend::Postgres);
        let user = 22;
        let (aid, sid) = (aid(user), first_session(&router, user).await);
        let data = get(&router, &format!("/api/assistants/{aid}"), user).await;
        assert_eq!(data.status, StatusCode::OK, "{:?}", data.body);
        assert_eq!(data.body["sources"].as_array().unwrap().len(), 3);
        let schema = get(&router, &format!("/api/assistants/{aid}/schema"), user).await;
        assert_eq!(schema.body["tables"].as_array().unwrap().len(), 3);
        let context = format!("/api/assistants/{aid}/threads/{sid}");
        let ctx = get(&router, &context, user).await;
        assert_eq!(
            ctx.body["messages"].as_array().unwrap().len(),
            2,
            "{:?}",
            ctx.body
        );
        let first = reply(&router, user, &aid, sid, "pg?").await;
        events(&first);
        let second = reply(&router, user, &aid, sid, "pg?").await;
        assert!(second.is_hit());
        assert_eq!(second.bytes, first.bytes);
        let saved = post_message(&router, user, sid, "pg message").await;
        let mid = saved.body["message"]["id"].as_i64().unwrap();
        let path = format!("/api/chat/sessions/{sid}/messages/{mid}");
        let deleted = send(&router, Method::DELETE, &path, user, json!({})).await;
        assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{:?}", deleted.body);
        let again = send(&router, Method::DELETE, &path, user, json!({})).await;
        assert_eq!(again.status, StatusCode::NOT_FOUND);
        assert_eq!(
            get(&router, &context, user).await.body["messages"]
                .as_array()
                .unwrap()
                .len(),
            3,
            "the reply to the deleted message is left"
        );
        assert_eq!(
            get(&router, &context, 23).await.status,
            StatusCode::NOT_FOUND
        );
        state.model.calls()
    })
    .await;
    admin
        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
        .await
        .unwrap();
    let calls = result.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    assert_eq!(calls, 1);
}
