//! Test support for Larder: real, throwaway Redis processes and a fault-injecting proxy.
//!
//! Tests, benches and load tests start their **own** `redis-server` processes on free
//! loopback ports — never a shared instance such as the one on 6379 — the way redis-rs's
//! own test suite does:
//!
//! * [`RedisServer`] — one `redis-server` bound to `127.0.0.1` on a free port, with its own
//!   temporary directory, no persistence (`--save "" --appendonly no`) and a log file that is
//!   quoted in the panic message if the server does not come up. It can be stopped,
//!   restarted on the same port, paused (`SIGSTOP`) and resumed (`SIGCONT`). Optional ACL
//!   users, `requirepass`, cluster mode and TLS come from [`RedisServerBuilder`]; with
//!   [`RedisServerBuilder::tls`] the server also listens for `rediss://` on a second port,
//!   with a certificate from a throwaway CA generated in process.
//! * [`RedisCluster`] — three cluster-enabled masters (no replicas) covering all 16384 slots,
//!   ready (`cluster_state:ok` on every node) when [`RedisCluster::start`] returns.
//! * [`Proxy`] — a loopback TCP proxy in front of any address, for fault injection: added
//!   latency, refused or black-holed connections, and dropping every open connection.
//! * [`free_port`] — a free TCP port on `127.0.0.1`.
//!
//! # Process lifetime
//!
//! Every `redis-server` is a direct child of the test process, started with
//! `--daemonize no`. Dropping a [`RedisServer`] kills it (`SIGKILL`), waits for it and removes
//! its temporary directory. In case the test process itself dies without running destructors
//! (for instance killed by a timeout), each server also has a tiny watchdog `sh` process that
//! holds the read end of a pipe from the test process and kills the server when that pipe
//! closes, so no server outlives the process that made it. Ctrl-C reaches the servers too,
//! since they stay in the test's process group.
//!
//! Nothing is downloaded at run time: `redis-server` and `redis-cli` must already be
//! installed (Debian package `redis-server`). The environment variables
//! `LARDER_REDIS_SERVER` and `LARDER_REDIS_CLI` override the binaries used (default: the
//! ones found on `PATH`).
//!
//! # Example
//!
//! ```no_run
//! use larder_testkit::RedisServer;
//!
//! let server = RedisServer::start();
//! assert_eq!(server.cli(&["PING"]).trim(), "PONG");
//! println!("connect to {}", server.url());
//! ```

mod cluster;
mod proxy;
mod server;
mod tls;

pub use cluster::RedisCluster;
pub use proxy::{Proxy, ProxyMode};
pub use server::{
    RESTRICTED_PASSWORD, RESTRICTED_RULES, RESTRICTED_USER, RedisServer, RedisServerBuilder,
};

/// A free TCP port on `127.0.0.1`: binds port 0, reads the port the kernel chose and
/// releases it.
///
/// Another process may take the port before the caller binds it; the servers in this crate
/// retry with a new port when that happens.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("bind 127.0.0.1:0 to find a free port")
}
