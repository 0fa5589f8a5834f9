//! Tests for `Proxy`: pass-through, latency, refuse, blackhole and dropping connections.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use larder_testkit::{Proxy, ProxyMode, RedisServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";

/// Reads one reply line within `limit`: `Ok(Some(line))`, `Ok(None)` on timeout, or the
/// error (end of file is `UnexpectedEof`).
async fn read_line(stream: &mut TcpStream, limit: Duration) -> std::io::Result<Option<String>> {
    let read = async {
        let mut reply = Vec::new();
        let mut buf = [0u8; 64];
        while !reply.ends_with(b"\r\n") {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Err(ErrorKind::UnexpectedEof.into());
            }
            reply.extend_from_slice(&buf[..n]);
        }
        Ok(String::from_utf8_lossy(&reply).into_owned())
    };
    match timeout(limit, read).await {
        Ok(result) => result.map(Some),
        Err(_) => Ok(None),
    }
}

async fn ping_on(stream: &mut TcpStream) -> String {
    stream.write_all(PING).await.expect("send PING");
    read_line(stream, Duration::from_secs(2))
        .await
        .expect("read PING reply")
        .expect("PING reply in time")
}

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr)
        .await
        .expect("connect to the proxy")
}

/// Polls `condition` for up to 2 s.
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn passes_ping_and_counts() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.addr()).await;
    assert_eq!(proxy.target(), server.addr());
    assert_eq!(
        proxy.url(),
        format!("redis://127.0.0.1:{}/", proxy.addr().port())
    );
    assert_eq!(proxy.mode(), ProxyMode::Pass);

    let mut stream = connect(proxy.addr()).await;
    assert_eq!(ping_on(&mut stream).await, "+PONG\r\n");
    assert_eq!(ping_on(&mut stream).await, "+PONG\r\n");
    assert_eq!(proxy.accepted(), 1);
    assert_eq!(proxy.connections(), 1);
    assert_eq!(proxy.bytes_to_server(), 2 * PING.len() as u64);
    assert_eq!(proxy.bytes_to_client(), 2 * b"+PONG\r\n".len() as u64);

    drop(stream);
    eventually("the connection to close", || proxy.connections() == 0).await;
}

#[tokio::test]
async fn adds_latency() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.addr()).await;
    let mut stream = connect(proxy.addr()).await;
    assert_eq!(ping_on(&mut stream).await, "+PONG\r\n");

    let latency = Duration::from_millis(100);
    proxy.set_latency(latency);
    let started = Instant::now();
    assert_eq!(ping_on(&mut stream).await, "+PONG\r\n");
    let elapsed = started.elapsed();
    assert!(elapsed > latency, "round trip took {elapsed:?}");

    proxy.set_latency(Duration::ZERO);
    assert_eq!(ping_on(&mut stream).await, "+PONG\r\n");
}

#[tokio::test]
async fn refuse_closes_new_connections() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.addr()).await;
    let mut open = connect(proxy.addr()).await;
    assert_eq!(ping_on(&mut open).await, "+PONG\r\n");

    proxy.set_mode(ProxyMode::Refuse);
    let mut refused = connect(proxy.addr()).await;
    let _ = refused.write_all(PING).await;
    let outcome = read_line(&mut refused, Duration::from_secs(2)).await;
    match outcome {
        Err(e) => assert!(
            matches!(
                e.kind(),
                ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
            ),
            "unexpected error {e:?}"
        ),
        Ok(reply) => panic!("a refused connection answered {reply:?}"),
    }
    assert_eq!(proxy.accepted(), 2);
    assert_eq!(proxy.bytes_to_server(), PING.len() as u64);

    // Open connections are not affected, and Pass accepts again.
    assert_eq!(ping_on(&mut open).await, "+PONG\r\n");
    proxy.set_mode(ProxyMode::Pass);
    let mut again = connect(proxy.addr()).await;
    assert_eq!(ping_on(&mut again).await, "+PONG\r\n");
}

#[tokio::test]
async fn blackhole_never_answers() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.addr()).await;
    let mut open = connect(proxy.addr()).await;
    assert_eq!(ping_on(&mut open).await, "+PONG\r\n");
    let forwarded = proxy.bytes_to_server();

    proxy.set_mode(ProxyMode::Blackhole);
    // A new connection is accepted, swallows the request and never answers.
    let mut swallowed = connect(proxy.addr()).await;
    swallowed.write_all(PING).await.expect("send PING");
    let reply = read_line(&mut swallowed, Duration::from_millis(300)).await;
    assert!(
        matches!(reply, Ok(None)),
        "expected a timeout, got {reply:?}"
    );
    eventually("the black-holed connection to count", || {
        proxy.connections() == 2
    })
    .await;

    // An open connection stalls...
    open.write_all(PING).await.expect("send PING");
    let reply = read_line(&mut open, Duration::from_millis(300)).await;
    assert!(
        matches!(reply, Ok(None)),
        "expected a timeout, got {reply:?}"
    );
    assert_eq!(proxy.bytes_to_server(), forwarded);

    // ...and gets its reply once the proxy passes again; the swallowed one does not.
    proxy.set_mode(ProxyMode::Pass);
    let reply = read_line(&mut open, Duration::from_secs(2)).await;
    assert_eq!(reply.expect("read").as_deref(), Some("+PONG\r\n"));
    let reply = read_line(&mut swallowed, Duration::from_millis(200)).await;
    assert!(
        matches!(reply, Ok(None)),
        "expected a timeout, got {reply:?}"
    );
    assert_eq!(proxy.accepted(), 2);
}

#[tokio::test]
async fn drop_connections_resets_open_connections() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.addr()).await;
    let mut stream = connect(proxy.addr()).await;
    assert_eq!(ping_on(&mut stream).await, "+PONG\r\n");
    assert_eq!(proxy.connections(), 1);

    proxy.drop_connections();
    let outcome = read_line(&mut stream, Duration::from_secs(2)).await;
    match outcome {
        Err(e) => assert!(
            matches!(
                e.kind(),
                ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
            ),
            "unexpected error {e:?}"
        ),
        Ok(reply) => panic!("expected the connection to be closed, got {reply:?}"),
    }
    eventually("the connection count to drop", || proxy.connections() == 0).await;
    assert_eq!(
        server.cli(&["CLIENT", "LIST"]).lines().count(),
        1,
        "only redis-cli itself"
    );

    // New connections still work.
    let mut stream = connect(proxy.addr()).await;
    assert_eq!(ping_on(&mut stream).await, "+PONG\r\n");
    assert_eq!(proxy.accepted(), 2);
}

#[tokio::test]
async fn drop_closes_the_proxy() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.addr()).await;
    let addr = proxy.addr();
    let mut stream = connect(addr).await;
    assert_eq!(ping_on(&mut stream).await, "+PONG\r\n");

    drop(proxy);
    let outcome = read_line(&mut stream, Duration::from_secs(2)).await;
    assert!(
        outcome.is_err(),
        "expected the connection to close, got {outcome:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    while TcpStream::connect(addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the proxy still accepts connections"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn start_blocking_works_without_a_runtime() {
    use std::io::{Read, Write};

    let server = RedisServer::start();
    let proxy = Proxy::start_blocking(server.addr());
    let addr = proxy.addr();
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("set timeout");
    stream.write_all(PING).expect("send PING");
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).expect("read reply");
    assert_eq!(&reply, b"+PONG\r\n");
    assert_eq!(proxy.accepted(), 1);

    // Dropping joins the background thread: the listener and connections are gone.
    drop(proxy);
    let mut rest = Vec::new();
    assert!(matches!(stream.read_to_end(&mut rest), Ok(0) | Err(_)));
    assert!(std::net::TcpStream::connect(addr).is_err());
}
