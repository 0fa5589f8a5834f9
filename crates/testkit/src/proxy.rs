//! A loopback TCP proxy for fault injection.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What a [`Proxy`] does with connections; set with [`Proxy::set_mode`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ProxyMode {
    /// Forward bytes both ways (after the configured latency). The default.
    #[default]
    Pass,
    /// Close every new connection as soon as it is accepted (with a TCP reset). Open
    /// connections are not affected; use [`Proxy::drop_connections`] for those.
    Refuse,
    /// Accept new connections, read and discard everything they send and never answer
    /// (they never reach the target, even after the mode changes back). Open forwarding
    /// connections stall: nothing is forwarded in either direction until the mode changes
    /// again, and then the held bytes go through unchanged.
    Blackhole,
}

/// State shared by the [`Proxy`] handle and its tasks.
#[derive(Debug)]
struct Shared {
    target: SocketAddr,
    mode: watch::Sender<ProxyMode>,
    latency_nanos: AtomicU64,
    /// Bumped by [`Proxy::drop_connections`]; every connection task watches it.
    generation: watch::Sender<u64>,
    /// Set when the proxy is dropped.
    shutdown: watch::Sender<bool>,
    connections: AtomicUsize,
    accepted: AtomicU64,
    bytes_to_server: AtomicU64,
    bytes_to_client: AtomicU64,
}

impl Shared {
    fn new(target: SocketAddr) -> Arc<Shared> {
        Arc::new(Shared {
            target,
            mode: watch::Sender::new(ProxyMode::Pass),
            latency_nanos: AtomicU64::new(0),
            generation: watch::Sender::new(0),
            shutdown: watch::Sender::new(false),
            connections: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
            bytes_to_server: AtomicU64::new(0),
            bytes_to_client: AtomicU64::new(0),
        })
    }

    fn latency(&self) -> Duration {
        Duration::from_nanos(self.latency_nanos.load(Ordering::Relaxed))
    }
}

/// A loopback TCP proxy in front of a server, for fault injection.
///
/// It listens on a free port of `127.0.0.1` and forwards each accepted connection to the
/// target address over a connection of its own. While running, it can add latency, refuse
/// or black-hole connections ([`ProxyMode`]) and reset every open connection.
///
/// [`Proxy::start`] runs on the caller's tokio runtime (spawned tasks);
/// [`Proxy::start_blocking`] owns a background thread with its own runtime, for benches and
/// tests that are not async. Dropping the proxy stops accepting and closes every connection.
///
/// ```no_run
/// # async fn demo() {
/// use std::time::Duration;
/// use larder_testkit::{Proxy, ProxyMode, RedisServer};
///
/// let server = RedisServer::start();
/// let proxy = Proxy::start(server.addr()).await;
/// proxy.set_latency(Duration::from_millis(50));
/// // ... point the client at proxy.url() ...
/// proxy.set_mode(ProxyMode::Blackhole);
/// proxy.drop_connections();
/// # }
/// ```
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Starts a proxy to `target` on the current tokio runtime.
    ///
    /// # Panics
    ///
    /// If called outside a tokio runtime or if `127.0.0.1:0` cannot be bound.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = bind().await;
        let addr = local_addr(&listener);
        let shared = Shared::new(target);
        tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Proxy {
            addr,
            shared,
            thread: None,
        }
    }

    /// Starts a proxy to `target` on a background thread that runs its own single-threaded
    /// tokio runtime; usable without (or inside) any runtime. Dropping the proxy stops the
    /// thread.
    ///
    /// # Panics
    ///
    /// If the thread or runtime cannot be created or `127.0.0.1:0` cannot be bound.
    pub fn start_blocking(target: SocketAddr) -> Proxy {
        let shared = Shared::new(target);
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let task_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("larder-testkit-proxy-{target}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("build the proxy's tokio runtime");
                runtime.block_on(async move {
                    let listener = bind().await;
                    let _ = addr_tx.send(local_addr(&listener));
                    accept_loop(listener, task_shared).await;
                });
                // Dropping the runtime drops every connection task and closes its sockets.
            })
            .expect("spawn the proxy thread");
        let addr = addr_rx
            .recv()
            .expect("the proxy thread failed before it was listening");
        Proxy {
            addr,
            shared,
            thread: Some(thread),
        }
    }

    /// The address clients connect to: `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address the proxy forwards to.
    pub fn target(&self) -> SocketAddr {
        self.shared.target
    }

    /// A Redis URL for the proxy: `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.addr.port())
    }

    /// Delays every chunk of bytes by `latency` before forwarding it, in both directions
    /// (so a request/response round trip takes at least twice as long). Applies to open
    /// connections too. `Duration::ZERO` turns it off.
    pub fn set_latency(&self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.shared.latency_nanos.store(nanos, Ordering::Relaxed);
    }

    /// Changes what the proxy does with connections; see [`ProxyMode`].
    pub fn set_mode(&self, mode: ProxyMode) {
        self.shared.mode.send_replace(mode);
    }

    /// The current [`ProxyMode`].
    pub fn mode(&self) -> ProxyMode {
        *self.shared.mode.borrow()
    }

    /// Resets (TCP RST) every open connection now, on both the client and the server side.
    /// The proxy keeps accepting new connections according to its mode.
    pub fn drop_connections(&self) {
        self.shared
            .generation
            .send_modify(|generation| *generation += 1);
    }

    /// How many client connections are open right now (forwarding or black-holed).
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// How many client connections were accepted in total, including ones closed at once in
    /// [`ProxyMode::Refuse`] — e.g. to assert that nothing connected while a circuit breaker
    /// was open.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Total bytes forwarded from clients to the target.
    pub fn bytes_to_server(&self) -> u64 {
        self.shared.bytes_to_server.load(Ordering::SeqCst)
    }

    /// Total bytes forwarded from the target to clients.
    pub fn bytes_to_client(&self) -> u64 {
        self.shared.bytes_to_client.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    /// Stops accepting and closes every connection. For [`Proxy::start`] the tasks finish on
    /// the caller's runtime shortly after; for [`Proxy::start_blocking`] this waits for the
    /// background thread to end.
    fn drop(&mut self) {
        self.shared.shutdown.send_replace(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn bind() -> TcpListener {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind the proxy to 127.0.0.1:0")
}

fn local_addr(listener: &TcpListener) -> SocketAddr {
    listener
        .local_addr()
        .expect("read the proxy's listening address")
}

/// Counts an open connection for as long as it lives.
struct ConnectionGuard(Arc<Shared>);

impl ConnectionGuard {
    fn new(shared: &Arc<Shared>) -> ConnectionGuard {
        shared.connections.fetch_add(1, Ordering::SeqCst);
        ConnectionGuard(Arc::clone(shared))
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Signals that end a connection task: [`Proxy::drop_connections`] or the proxy's drop.
struct Stop {
    generation: watch::Receiver<u64>,
    shutdown: watch::Receiver<bool>,
}

impl Stop {
    fn new(shared: &Shared) -> Stop {
        Stop {
            generation: shared.generation.subscribe(),
            shutdown: shared.shutdown.subscribe(),
        }
    }

    /// Completes when the connection must be reset.
    async fn wait(&mut self) {
        tokio::select! {
            _ = self.generation.changed() => {}
            _ = shut_down(&mut self.shutdown) => {}
        }
    }
}

/// Completes once the proxy is dropped (or its handle is gone).
async fn shut_down(shutdown: &mut watch::Receiver<bool>) {
    // Map the borrowed value away so that no lock guard is held across an await.
    let _ = shutdown.wait_for(|stopped| *stopped).await.map(|_| ());
}

/// Closes `stream` with a TCP reset rather than an orderly shutdown.
fn reset(stream: TcpStream) {
    // A zero linger makes close() send RST and never blocks. (`set_linger` is deprecated
    // from tokio 1.50 in favour of `set_zero_linger`, which the workspace's minimum tokio
    // version does not have.)
    #[allow(deprecated)]
    let _ = stream.set_linger(Some(Duration::ZERO));
    drop(stream);
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        let stream = tokio::select! {
            _ = shut_down(&mut shutdown) => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let mode = *shared.mode.borrow();
        match mode {
            ProxyMode::Refuse => reset(stream),
            ProxyMode::Blackhole => {
                let guard = ConnectionGuard::new(&shared);
                let stop = Stop::new(&shared);
                tokio::spawn(blackhole(stream, stop, guard));
            }
            ProxyMode::Pass => {
                let guard = ConnectionGuard::new(&shared);
                let stop = Stop::new(&shared);
                tokio::spawn(pass(stream, Arc::clone(&shared), stop, guard));
            }
        }
    }
}

/// Reads and discards everything the client sends, never answering.
async fn blackhole(mut client: TcpStream, mut stop: Stop, _guard: ConnectionGuard) {
    let mut buf = vec![0u8; 16 * 1024];
    let stopped = tokio::select! {
        _ = stop.wait() => true,
        _ = async {
            while let Ok(n) = client.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        } => false,
    };
    if stopped {
        reset(client);
    }
}

/// Forwards one client connection to the target until either side closes or it is reset.
async fn pass(mut client: TcpStream, shared: Arc<Shared>, mut stop: Stop, _guard: ConnectionGuard) {
    let connected = tokio::select! {
        _ = stop.wait() => None,
        connected = TcpStream::connect(shared.target) => connected.ok(),
    };
    let Some(mut server) = connected else {
        reset(client);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);

    let stopped = {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        tokio::select! {
            _ = stop.wait() => true,
            _ = forward(client_read, server_write, &shared, &shared.bytes_to_server) => false,
            _ = forward(server_read, client_write, &shared, &shared.bytes_to_client) => false,
        }
    };
    if stopped {
        reset(client);
        reset(server);
    }
    // Otherwise one side closed or failed: dropping both ends the other side too.
}

/// Copies chunks from `from` to `to`, applying the proxy's latency and stalling while it is
/// in [`ProxyMode::Blackhole`]. Returns when `from` reaches end of file or either side fails.
async fn forward(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    shared: &Shared,
    counter: &AtomicU64,
) {
    let mut mode = shared.mode.subscribe();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let latency = shared.latency();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let open = mode
            .wait_for(|mode| *mode != ProxyMode::Blackhole)
            .await
            .is_ok();
        if !open {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        counter.fetch_add(n as u64, Ordering::SeqCst);
    }
}
