//! `larder-proxy`: Larder in front of any HTTP service, written in any language.
//!
//! A small reverse proxy (a hyper client) with the cache layer in front: `--origin` names
//! the service, `--rule PREFIX=TTL` (or `PREFIX=origin`) which paths are cached and for how
//! long, `--store` where entries live. Everything the layer does applies: RFC 9111 (the
//! origin's `Cache-Control`, `Vary` with several variants per URL, revalidation with `304`),
//! `Larder-Cache-Control` and `CDN-Cache-Control` (RFC 9213), tags from the origin's
//! `larder-tags` header, single-flight, Redis outages, and writes through the proxy
//! invalidating their path. [`app`] builds the router, [`serve`] runs it.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::State,
    http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, header},
    response::IntoResponse,
    routing::post,
};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use larder::{
    CacheHandle, CacheLayer, KeyOptions, MemoryStore, Rule, Rules,
    store::{RedisStore, TieredStore},
};
use serde::Deserialize;
use serde_json::json;
use tower::Layer;

/// Where cached responses live (`--store`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// The in-process store (the default).
    Memory,
    /// Redis, shared by every proxy on it.
    Redis,
    /// An in-process L1 in front of Redis, kept coherent over pub/sub.
    Tiered,
}

/// The command line (each flag also reads the environment variable named in `--help`).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "larder-proxy",
    version,
    about = "Larder in front of any HTTP service: a caching reverse proxy."
)]
pub struct Config {
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, env = "PROXY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// The service behind the proxy: `http://HOST:PORT` (a path prefix is kept).
    #[arg(long, env = "PROXY_ORIGIN")]
    pub origin: String,
    /// Which paths are cached: `PREFIX=TTL` (`/static/=1h`: the origin's own freshness
    /// wins, the TTL stands in when it gives none) or `PREFIX=origin` (only what the origin
    /// says is cacheable). Repeat the flag, or separate with commas. Paths no rule covers go
    /// straight through. TTLs: `90s`, `10m`, `2h`, `1d`.
    #[arg(
        long = "rule",
        env = "PROXY_RULES",
        value_delimiter = ',',
        default_value = "/=origin"
    )]
    pub rules: Vec<String>,
    /// Where cached responses live.
    #[arg(long, env = "LARDER_STORE", value_enum, default_value_t = StoreKind::Memory)]
    pub store: StoreKind,
    /// Redis for `--store redis` and `--store tiered`.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379/")]
    pub redis_url: String,
    /// Key namespace in the store (proxies sharing a Redis and a namespace share entries).
    #[arg(long, env = "LARDER_NAMESPACE", default_value = "proxy")]
    pub namespace: String,
    /// Memory for the in-process store (or the tiered store's L1), in MiB.
    #[arg(long, env = "LARDER_MEMORY_MB", default_value_t = 256)]
    pub memory_mb: u64,
    /// Token for `POST /_larder/invalidate` (off when unset).
    #[arg(long, env = "LARDER_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
}

/// One `--rule`: a path prefix and its TTL (`None`: the origin's freshness only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixRule {
    /// The path prefix (`/static/`).
    pub prefix: String,
    /// The TTL when the origin gives no freshness of its own.
    pub ttl: Option<Duration>,
}

impl PrefixRule {
    /// Reads `PREFIX=TTL` or `PREFIX=origin`.
    pub fn parse(spec: &str) -> anyhow::Result<PrefixRule> {
        let (prefix, ttl) = spec
            .split_once('=')
            .with_context(|| format!("--rule {spec:?}: expected PREFIX=TTL or PREFIX=origin"))?;
        let prefix = prefix.trim();
        anyhow::ensure!(
            prefix.starts_with('/') && !prefix.contains(['{', '}', '*', '?']),
            "--rule {spec:?}: the prefix must be a path starting with `/`"
        );
        let ttl = match ttl.trim() {
            "origin" => None,
            other => Some(parse_duration(other).with_context(|| {
                format!("--rule {spec:?}: expected a TTL (90s, 10m, 2h, 1d) or `origin`")
            })?),
        };
        Ok(PrefixRule {
            prefix: prefix.to_owned(),
            ttl,
        })
    }

    /// The route patterns the prefix covers: itself and everything under it.
    fn patterns(&self) -> Vec<String> {
        let base = self.prefix.trim_end_matches('/');
        if base.is_empty() {
            return vec!["/".to_owned(), "/{*rest}".to_owned()];
        }
        vec![
            base.to_owned(),
            format!("{base}/"),
            format!("{base}/{{*rest}}"),
        ]
    }
}

fn parse_duration(value: &str) -> anyhow::Result<Duration> {
    let (number, unit) = match value.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => value.split_at(at),
        None => (value, "s"),
    };
    let n: u64 = number.parse().context("not a number")?;
    anyhow::ensure!(n > 0, "zero");
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => anyhow::bail!("unknown unit {unit:?}"),
    };
    Ok(Duration::from_secs(n * seconds))
}

/// The rules of `specs`: one per prefix, named after it.
pub fn rules(specs: &[PrefixRule]) -> Rules {
    let mut rules = Rules::new();
    for spec in specs {
        for pattern in spec.patterns() {
            let mut rule = Rule::new(spec.prefix.clone());
            if let Some(ttl) = spec.ttl {
                rule = rule.ttl(ttl);
            }
            rules = rules.route(&pattern, rule);
        }
    }
    rules
}

/// The service behind the proxy.
#[derive(Clone)]
struct Origin {
    client: Client<HttpConnector, Body>,
    /// `http://host:port`, with a path prefix if one was given (no trailing `/`).
    base: Arc<str>,
    authority: HeaderValue,
}

impl Origin {
    fn new(url: &str) -> anyhow::Result<Origin> {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("--origin {url:?} is not a URL"))?;
        anyhow::ensure!(
            uri.scheme_str() == Some("http"),
            "--origin {url:?}: only http:// origins are supported"
        );
        let authority = uri
            .authority()
            .with_context(|| format!("--origin {url:?} names no host"))?;
        let authority = HeaderValue::from_str(authority.as_str())?;
        let base = url.trim_end_matches('/').to_owned();
        let client = Client::builder(TokioExecutor::new()).build_http();
        Ok(Origin {
            client,
            base: base.into(),
            authority,
        })
    }

    /// Sends `req` to the origin: same method, path, query, end-to-end headers and body,
    /// with the origin's `Host`. The client's `Host`, `X-Forwarded-Host` and `Forwarded` are
    /// not passed on: the key leaves the host out, so the origin must not answer by it (a
    /// link built from a client's host would be cached for everyone). A failure to reach the
    /// origin is a `502`, no answer within [`ORIGIN_TIMEOUT`] a `504` (never stored).
    async fn forward(self, req: Request<Body>) -> Result<Response<Body>, std::convert::Infallible> {
        let (mut parts, body) = req.into_parts();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let uri = match format!("{}{path}", self.base).parse::<Uri>() {
            Ok(uri) => uri,
            Err(e) => {
                tracing::warn!(%path, error = %e, "cannot forward");
                return Ok(gateway_error(
                    StatusCode::BAD_REQUEST,
                    "cannot forward this path",
                ));
            }
        };
        parts.uri = uri;
        strip_hop_by_hop(&mut parts.headers);
        for name in ["x-forwarded-host", "forwarded"] {
            parts.headers.remove(name);
        }
        parts.headers.insert(header::HOST, self.authority.clone());
        let call = self.client.request(Request::from_parts(parts, body));
        match tokio::time::timeout(ORIGIN_TIMEOUT, call).await {
            Ok(Ok(response)) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Ok(Response::from_parts(parts, Body::new(body)))
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "the origin did not answer");
                Ok(gateway_error(
                    StatusCode::BAD_GATEWAY,
                    "the origin did not answer",
                ))
            }
            Err(_) => {
                tracing::warn!(timeout = ?ORIGIN_TIMEOUT, "the origin did not answer in time");
                Ok(gateway_error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "the origin did not answer in time",
                ))
            }
        }
    }
}

/// How long the origin has to answer a request (its headers).
pub const ORIGIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Removes the hop-by-hop fields (RFC 9110 §7.6.1): `Connection` and those it names, and the
/// standard ones; they are for one connection, not passed on.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect();
    for name in named {
        headers.remove(name.as_str());
    }
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ] {
        headers.remove(name);
    }
}

/// An error answer of the proxy's own (the details go to the log, not to clients).
fn gateway_error(status: StatusCode, message: &str) -> Response<Body> {
    (status, Json(json!({ "error": message }))).into_response()
}

/// Builds the cache handle `config` asks for.
pub async fn cache(config: &Config) -> anyhow::Result<CacheHandle> {
    let redis = || async {
        RedisStore::builder(config.redis_url.as_str())
            .namespace(&config.namespace)
            .build()
            .await
            .with_context(|| format!("connect to Redis at {}", config.redis_url))
    };
    let builder = match config.store {
        StoreKind::Memory => CacheHandle::builder(MemoryStore::new(config.memory_mb << 20)),
        StoreKind::Redis => CacheHandle::builder(redis().await?),
        StoreKind::Tiered => CacheHandle::builder(
            TieredStore::builder(redis().await?)
                .l1_capacity(config.memory_mb << 20)
                .build(),
        ),
    };
    // One origin answers whatever name clients reach the proxy by (its `Host` is replaced
    // by the origin's): the key leaves it out, so proxies behind different names share.
    Ok(builder
        .namespace(&config.namespace)
        .x_cache()
        .default_key(KeyOptions::new().ignore_authority())
        .build())
}

#[derive(Clone)]
struct Admin {
    token: Option<Arc<str>>,
    cache: CacheHandle,
    layer: CacheLayer,
}

/// The body of `POST /_larder/invalidate`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvalidateBody {
    /// Tags to invalidate (those the origin sent in `larder-tags`, or a rule's).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Paths whose entries (every query and variant) to invalidate.
    #[serde(default)]
    pub paths: Vec<String>,
}

/// `POST /_larder/invalidate` with `Authorization: Bearer <token>`: `{"tags": [...],
/// "paths": [...]}`. The token is checked first (in constant time), the body after.
async fn invalidate(State(admin): State<Admin>, headers: HeaderMap, body: Bytes) -> Response<Body> {
    let Some(token) = &admin.token else {
        return gateway_error(StatusCode::NOT_FOUND, "admin routes are off");
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // BLAKE3 digests compare in constant time.
    if blake3::hash(given.as_bytes()) != blake3::hash(token.as_bytes()) {
        return gateway_error(StatusCode::UNAUTHORIZED, "wrong or missing token");
    }
    let body: InvalidateBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(e) => {
            let message = format!("expected {{\"tags\": [...], \"paths\": [...]}}: {e}");
            return (StatusCode::BAD_REQUEST, Json(json!({ "error": message }))).into_response();
        }
    };
    let mut deferred = Vec::new();
    if !body.tags.is_empty() {
        if let Err(e) = admin.cache.invalidate_tags(&body.tags).await {
            deferred.push(e.to_string());
        }
    }
    for path in &body.paths {
        let Ok(request) = Request::get(path.as_str()).body(()) else {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({ "error": format!("not a path: {path}") })),
            )
                .into_response();
        };
        if let Err(e) = admin
            .layer
            .invalidate_request(&request.into_parts().0)
            .await
        {
            deferred.push(e.to_string());
        }
    }
    Json(json!({ "tags": body.tags.len(), "paths": body.paths.len(), "deferred": deferred }))
        .into_response()
}

/// The proxy: `POST /_larder/invalidate`, and every other request through the cache layer to
/// the origin.
pub async fn app(config: &Config) -> anyhow::Result<(Router, CacheHandle)> {
    let specs = config
        .rules
        .iter()
        .map(|s| PrefixRule::parse(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let origin = Origin::new(&config.origin)?;
    let cache = cache(config).await?;
    let layer = cache.layer_with(rules(&specs));
    let forward = tower::service_fn(move |req: Request<Body>| origin.clone().forward(req));
    let admin = Admin {
        token: config
            .admin_token
            .as_deref()
            .filter(|t| !t.is_empty())
            .map(Arc::from),
        cache: cache.clone(),
        layer: layer.clone(),
    };
    let router = Router::new()
        .route("/_larder/invalidate", post(invalidate))
        .with_state(admin)
        .fallback_service(layer.layer(forward));
    Ok((router, cache))
}

/// Serves the proxy on `listener` until the future is dropped.
pub async fn serve(listener: tokio::net::TcpListener, router: Router) -> anyhow::Result<()> {
    axum::serve(listener, router).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_read_a_prefix_and_a_ttl_or_origin() {
        assert_eq!(
            PrefixRule::parse("/static/=1h").unwrap(),
            PrefixRule {
                prefix: "/static/".into(),
                ttl: Some(Duration::from_secs(3600))
            }
        );
        assert_eq!(PrefixRule::parse("/=origin").unwrap().ttl, None);
        for bad in ["static=1h", "/a=", "/a=5w", "/a", "/{x}=1h", "/a=0"] {
            assert!(PrefixRule::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            PrefixRule::parse("/api=30s").unwrap().patterns(),
            ["/api", "/api/", "/api/{*rest}"]
        );
        assert_eq!(
            PrefixRule::parse("/=origin").unwrap().patterns(),
            ["/", "/{*rest}"]
        );
    }
}
