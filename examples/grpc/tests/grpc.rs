//! The catalog over loopback, called with its generated tonic client.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
};

use example_grpc::{
    Catalog, ITEM_TTL,
    pb::{
        GetItemRequest, Item, ListItemsRequest, UpdateItemRequest, catalog_client::CatalogClient,
    },
    router,
};
use http_body::{Body, Frame, SizeHint};
use larder::{CacheHandle, MemoryStore};
use tokio::{net::TcpListener, sync::Semaphore, task::JoinHandle};
use tonic::{
    Code,
    metadata::MetadataMap,
    transport::{Channel, Server, server::TcpIncoming},
};
use tower_layer::layer_fn;
use tower_service::Service;

/// A catalog served on a free loopback port, and a client connected to it.
struct Running {
    client: CatalogClient<Channel>,
    catalog: Catalog,
    server: JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn cache() -> CacheHandle {
    CacheHandle::builder(MemoryStore::default())
        .x_cache()
        .build()
}

/// Serves `catalog` with `serve` (which builds the server) on a free port and connects.
async fn start_on<F>(catalog: Catalog, serve: impl FnOnce(TcpIncoming, Catalog) -> F) -> Running
where
    F: Future<Output = Result<(), tonic::transport::Error>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let serving = serve(incoming, catalog.clone());
    let server = tokio::spawn(async move { serving.await.unwrap() });
    let client = CatalogClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    Running {
        client,
        catalog,
        server,
    }
}

/// The seeded catalog, served as `main` serves it.
async fn start() -> Running {
    start_on(Catalog::seeded(), |incoming, catalog| {
        router(Server::builder(), catalog, &cache()).serve_with_incoming(incoming)
    })
    .await
}

fn cache_status(metadata: &MetadataMap) -> &str {
    metadata
        .get("cache-status")
        .expect("every answer through the layer has Cache-Status")
        .to_str()
        .unwrap()
}

/// Calls `GetItem`; returns the item and the answer's metadata (trailers included).
async fn get(
    client: &CatalogClient<Channel>,
    id: u64,
) -> Result<(Item, MetadataMap), tonic::Status> {
    let response = client.clone().get_item(GetItemRequest { id }).await?;
    let (metadata, item, _) = response.into_parts();
    assert!(
        metadata.get("larder-tags").is_none(),
        "the tag metadata never leaves the layer"
    );
    Ok((item, metadata))
}

async fn update(
    client: &CatalogClient<Channel>,
    id: u64,
    name: &str,
) -> Result<(Item, MetadataMap), tonic::Status> {
    let request = UpdateItemRequest {
        id,
        name: name.to_owned(),
    };
    let response = client.clone().update_item(request).await?;
    let (metadata, item, _) = response.into_parts();
    Ok((item, metadata))
}

#[tokio::test]
async fn a_second_get_is_a_hit_with_the_same_message_and_trailers() {
    let app = start().await;
    let (first, meta) = get(&app.client, 1).await.unwrap();
    assert_eq!(cache_status(&meta), "larder; fwd=miss");
    assert_eq!(meta.get("x-cache").unwrap(), "MISS");
    assert_eq!(first.name, "flour");

    let (second, meta) = get(&app.client, 1).await.unwrap();
    assert!(
        cache_status(&meta).starts_with("larder; hit; ttl="),
        "{meta:?}"
    );
    assert_eq!(meta.get("x-cache").unwrap(), "HIT");
    assert_eq!(second, first);
    // The stored trailers came back: tonic merges them into a unary answer's metadata.
    assert_eq!(meta.get("grpc-status").unwrap(), "0");
    assert_eq!(app.catalog.get_item_calls(), 1);
    let ttl: u64 = cache_status(&meta)["larder; hit; ttl=".len()..]
        .parse()
        .unwrap();
    assert!(ttl <= ITEM_TTL.as_secs() && ttl + 5 >= ITEM_TTL.as_secs());
}

#[tokio::test]
async fn different_request_messages_are_different_entries() {
    let app = start().await;
    let (one, _) = get(&app.client, 1).await.unwrap();
    let (two, meta) = get(&app.client, 2).await.unwrap();
    assert_eq!(cache_status(&meta), "larder; fwd=miss");
    assert_ne!(one, two);
    let (two_again, meta) = get(&app.client, 2).await.unwrap();
    assert!(cache_status(&meta).starts_with("larder; hit"));
    assert_eq!(two_again, two);
    assert_eq!(app.catalog.get_item_calls(), 2);
}

#[tokio::test]
async fn not_found_is_not_stored() {
    let app = start().await;
    for _ in 0..2 {
        let status = get(&app.client, 404).await.unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(
            cache_status(status.metadata()),
            "larder; fwd=miss; detail=grpc-status"
        );
    }
    assert_eq!(app.catalog.get_item_calls(), 2);
}

#[tokio::test]
async fn an_update_invalidates_its_item_only() {
    let app = start().await;
    get(&app.client, 1).await.unwrap();
    get(&app.client, 2).await.unwrap();
    let (_, meta) = get(&app.client, 1).await.unwrap();
    assert!(cache_status(&meta).starts_with("larder; hit"));

    let (updated, meta) = update(&app.client, 1, "rye flour").await.unwrap();
    assert_eq!(
        cache_status(&meta),
        "larder; fwd=method; detail=invalidated"
    );
    assert_eq!(updated.version, 1);

    let (after, meta) = get(&app.client, 1).await.unwrap();
    assert_eq!(cache_status(&meta), "larder; fwd=miss");
    assert_eq!(after, updated);
    let (_, meta) = get(&app.client, 2).await.unwrap();
    assert!(
        cache_status(&meta).starts_with("larder; hit"),
        "item 2 is untouched"
    );
    assert_eq!(app.catalog.get_item_calls(), 3);
}

#[tokio::test]
async fn a_failed_update_invalidates_nothing() {
    let app = start().await;
    get(&app.client, 1).await.unwrap();
    // Both fail with a Trailers-Only status: HTTP 200, grpc-status in the headers.
    let missing = update(&app.client, 404, "nothing").await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert_eq!(cache_status(missing.metadata()), "larder; fwd=method");
    let invalid = update(&app.client, 1, "").await.unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument);
    assert_eq!(cache_status(invalid.metadata()), "larder; fwd=method");
    let (item, meta) = get(&app.client, 1).await.unwrap();
    assert!(cache_status(&meta).starts_with("larder; hit"));
    assert_eq!(item.name, "flour");
    assert_eq!(app.catalog.get_item_calls(), 1);
}

#[tokio::test]
async fn the_streaming_call_passes_through_uncached() {
    let app = start().await;
    let list = |client: CatalogClient<Channel>| async move {
        let response = client
            .clone()
            .list_items(ListItemsRequest {})
            .await
            .unwrap();
        let status = cache_status(response.metadata()).to_owned();
        let mut stream = response.into_inner();
        let mut names = Vec::new();
        while let Some(item) = stream.message().await.unwrap() {
            names.push(item.name);
        }
        (status, names)
    };
    let (status, names) = list(app.client.clone()).await;
    assert_eq!(status, "larder; fwd=bypass; detail=no-rule");
    assert_eq!(
        names,
        ["flour", "olive oil", "sea salt", "dried beans", "honey"]
    );
    update(&app.client, 3, "flaky salt").await.unwrap();
    let (status, names) = list(app.client.clone()).await;
    assert_eq!(status, "larder; fwd=bypass; detail=no-rule");
    assert_eq!(names[2], "flaky salt");
}

/// Counts the requests that wait inside the server with their body read: each adds a permit
/// to `parked` the first time its response future is not ready after the body was read to its
/// end (by the body key layer, before the cache looks the call up and joins its flight).
#[derive(Clone)]
struct Parked<S> {
    inner: S,
    parked: Arc<Semaphore>,
}

impl<S, B> Service<http::Request<B>> for Parked<S>
where
    S: Service<http::Request<Watched<B>>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let read = Arc::new(AtomicBool::new(false));
        let req = req.map(|body| Watched {
            body,
            read: Arc::clone(&read),
        });
        let mut future = Box::pin(self.inner.call(req));
        let parked = Arc::clone(&self.parked);
        let mut counted = false;
        Box::pin(std::future::poll_fn(move |cx| {
            let poll = future.as_mut().poll(cx);
            if poll.is_pending() && !counted && read.load(Ordering::SeqCst) {
                counted = true;
                parked.add_permits(1);
            }
            poll
        }))
    }
}

pin_project_lite::pin_project! {
    /// A request body that records when it has been read to its end.
    struct Watched<B> {
        #[pin]
        body: B,
        read: Arc<AtomicBool>,
    }
}

impl<B: Body> Body for Watched<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = this.body.poll_frame(cx);
        if matches!(frame, Poll::Ready(None)) {
            this.read.store(true, Ordering::SeqCst);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        let end = self.body.is_end_stream();
        if end {
            self.read.store(true, Ordering::SeqCst);
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_gets_make_one_origin_call() {
    const CALLS: u32 = 20;
    // No database connection until every call is waiting in the server.
    let pool = Arc::new(Semaphore::new(0));
    let parked = Arc::new(Semaphore::new(0));
    let counter = Arc::clone(&parked);
    let catalog = Catalog::seeded().with_pool(Arc::clone(&pool));
    let app = start_on(catalog, move |incoming, catalog| {
        let server = Server::builder().layer(layer_fn(move |inner| Parked {
            inner,
            parked: Arc::clone(&counter),
        }));
        router(server, catalog, &cache()).serve_with_incoming(incoming)
    })
    .await;
    let calls: Vec<_> = (0..CALLS)
        .map(|_| {
            let client = app.client.clone();
            tokio::spawn(async move { get(&client, 4).await.unwrap() })
        })
        .collect();
    let all_waiting = parked.acquire_many(CALLS).await.unwrap();
    all_waiting.forget();
    pool.add_permits(1);

    let mut answers = Vec::new();
    for call in calls {
        let (item, meta) = call.await.unwrap();
        answers.push(cache_status(&meta).to_owned());
        assert_eq!(item.name, "dried beans");
    }
    assert_eq!(app.catalog.get_item_calls(), 1);
    assert_eq!(
        answers.iter().filter(|s| *s == "larder; fwd=miss").count(),
        1
    );
    assert_eq!(
        answers
            .iter()
            .filter(|s| *s == "larder; fwd=miss; collapsed")
            .count(),
        CALLS as usize - 1,
        "{answers:?}"
    );
}
