//! A tonic gRPC service cached by Larder: `GetItem` is answered from the cache, keyed by the
//! method and the request message; `UpdateItem` invalidates the item it changed; `ListItems`
//! streams through untouched.
//!
//! ```no_run
//! use example_grpc::{Catalog, router};
//! use larder::CacheHandle;
//! use tonic::transport::Server;
//!
//! # async fn run() -> Result<(), tonic::transport::Error> {
//! let cache = CacheHandle::builder(larder::MemoryStore::default()).x_cache().build();
//! router(Server::builder(), Catalog::seeded(), &cache)
//!     .serve("127.0.0.1:50051".parse().unwrap())
//!     .await
//! # }
//! ```
//!
//! How it is cached:
//!
//! - Every gRPC call is an HTTP/2 `POST` to `/catalog.v1.Catalog/<Method>` whose body is the
//!   request message. [`rules`] gives `GetItem` a rule with [`Rule::cache_posts_by_body`], and
//!   the [`BodyKeyLayer`] in front of the cache reads and hashes the body of exactly those
//!   calls, so each distinct request message is its own entry.
//! - `GetItem` tags its response `item:{id}` in the `larder-tags` response metadata (the id is
//!   in the message, not in the path, so the handler names it). A `NOT_FOUND` answer is a
//!   Trailers-Only response with `grpc-status: 5` and is never stored.
//! - `UpdateItem` names `item:{id}` in the same metadata; its rule has no
//!   `cache_posts_by_body`, so it is a write and the layer invalidates that tag before the
//!   answer leaves. A failed update answered with a Trailers-Only status invalidates nothing.
//! - `ListItems` (server streaming) matches no rule and passes through
//!   (`Cache-Status: larder; fwd=bypass; detail=no-rule`).

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use larder::{
    BodyKeyLayer, CacheHandle, CacheLayer, KeyOptions, Rule, Rules, body_key::KeyedRoutes,
};
use tokio::sync::{Semaphore, SemaphorePermit};
use tonic::{
    Request, Response, Status,
    metadata::MetadataValue,
    transport::{Server, server::Router},
};
use tower_layer::Stack;

/// The generated protobuf messages, client and server of `catalog.v1`.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod pb {
    tonic::include_proto!("catalog.v1");
}

use pb::{
    GetItemRequest, Item, ListItemsRequest, UpdateItemRequest,
    catalog_server::{self, CatalogServer},
};

/// The path of the cached read.
pub const GET_ITEM: &str = "/catalog.v1.Catalog/GetItem";
/// The path of the write that invalidates it.
pub const UPDATE_ITEM: &str = "/catalog.v1.Catalog/UpdateItem";

/// How long a stored `GetItem` answer stays fresh.
pub const ITEM_TTL: Duration = Duration::from_secs(300);

/// The cache rules of the service, by gRPC method path.
pub fn rules() -> Rules {
    // A gRPC client may name the server by any host (`localhost`, an IP, a service name):
    // the answer does not depend on it.
    let key = KeyOptions::new().ignore_authority();
    Rules::new()
        .route(
            GET_ITEM,
            Rule::new("get_item")
                .ttl(ITEM_TTL)
                .key(key.clone())
                .cache_posts_by_body(),
        )
        .route(UPDATE_ITEM, Rule::new("update_item").key(key))
}

/// The layers [`router`] adds to a server: the body key layer outside the cache layer.
pub type Layers<L> = Stack<CacheLayer, Stack<BodyKeyLayer<KeyedRoutes>, L>>;

/// The catalog service on `server`, behind a Larder cache over `cache` (with [`rules`]).
///
/// `server` may carry layers of its own (timeouts, tracing); they run outside the cache.
pub fn router<L>(server: Server<L>, catalog: Catalog, cache: &CacheHandle) -> Router<Layers<L>>
where
    L: Clone,
{
    let layer = cache.layer_with(rules());
    server
        .layer(layer.body_key_layer())
        .layer(layer)
        .add_service(CatalogServer::new(catalog))
}

/// The catalog: items in memory, behind a bounded "database" pool that adds latency to every
/// read and write (standing for a remote database, as in the dashboard example). Cheap to
/// clone; clones share the items, the pool and the counters.
#[derive(Debug, Clone)]
pub struct Catalog {
    items: Arc<Mutex<BTreeMap<u64, Item>>>,
    pool: Arc<Semaphore>,
    latency: Duration,
    get_item_calls: Arc<AtomicU64>,
}

/// Connections in the default pool.
const POOL_SIZE: usize = 16;

impl Catalog {
    /// A catalog holding `items`, with no added latency.
    pub fn new(items: impl IntoIterator<Item = Item>) -> Self {
        Catalog {
            items: Arc::new(Mutex::new(items.into_iter().map(|i| (i.id, i)).collect())),
            pool: Arc::new(Semaphore::new(POOL_SIZE)),
            latency: Duration::ZERO,
            get_item_calls: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The demo pantry: items 1 to 5.
    pub fn seeded() -> Self {
        let item = |id, name: &str, price_cents| Item {
            id,
            name: name.to_owned(),
            price_cents,
            version: 0,
        };
        Self::new([
            item(1, "flour", 180),
            item(2, "olive oil", 950),
            item(3, "sea salt", 320),
            item(4, "dried beans", 240),
            item(5, "honey", 710),
        ])
    }

    /// Adds `latency` to every read and write.
    pub fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// Uses `pool` as the database pool (16 connections by default): every read and write
    /// holds one of its permits while it runs.
    pub fn with_pool(mut self, pool: Arc<Semaphore>) -> Self {
        self.pool = pool;
        self
    }

    /// How many `GetItem` calls reached the service (the cache answered the others).
    pub fn get_item_calls(&self) -> u64 {
        self.get_item_calls.load(Ordering::SeqCst)
    }

    /// Waits for a database connection and for the query's latency.
    async fn query(&self) -> Result<SemaphorePermit<'_>, Status> {
        let permit = self
            .pool
            .acquire()
            .await
            .map_err(|_| Status::unavailable("database closed"))?;
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        Ok(permit)
    }

    fn with_items<T>(&self, f: impl FnOnce(&mut BTreeMap<u64, Item>) -> T) -> T {
        f(&mut self.items.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// An answer tagged `item:{id}` for the cache, in the `larder-tags` metadata that the layer
/// reads and removes.
fn tagged(item: Item) -> Response<Item> {
    let tag = MetadataValue::try_from(format!("item:{}", item.id))
        .expect("a tag made of ASCII digits is valid metadata");
    let mut response = Response::new(item);
    response.metadata_mut().insert("larder-tags", tag);
    response
}

#[tonic::async_trait]
impl catalog_server::Catalog for Catalog {
    async fn get_item(&self, request: Request<GetItemRequest>) -> Result<Response<Item>, Status> {
        self.get_item_calls.fetch_add(1, Ordering::SeqCst);
        let _connection = self.query().await?;
        let id = request.get_ref().id;
        let item = self.with_items(|items| items.get(&id).cloned());
        item.map(tagged)
            .ok_or_else(|| Status::not_found(format!("no item {id}")))
    }

    async fn update_item(
        &self,
        request: Request<UpdateItemRequest>,
    ) -> Result<Response<Item>, Status> {
        let UpdateItemRequest { id, name } = request.into_inner();
        if name.is_empty() {
            return Err(Status::invalid_argument("name is empty"));
        }
        let _connection = self.query().await?;
        let item = self.with_items(|items| {
            items.get_mut(&id).map(|item| {
                item.name = name;
                item.version += 1;
                item.clone()
            })
        });
        item.map(tagged)
            .ok_or_else(|| Status::not_found(format!("no item {id}")))
    }

    type ListItemsStream = tokio_stream::Iter<std::vec::IntoIter<Result<Item, Status>>>;

    async fn list_items(
        &self,
        _request: Request<ListItemsRequest>,
    ) -> Result<Response<Self::ListItemsStream>, Status> {
        let _connection = self.query().await?;
        let items: Vec<_> = self.with_items(|items| items.values().cloned().map(Ok).collect());
        Ok(Response::new(tokio_stream::iter(items)))
    }
}
