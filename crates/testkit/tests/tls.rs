//! Tests for `RedisServerBuilder::tls`: a TLS port beside the plain one, certificates from a
//! throwaway CA, kept across restarts, and not trusted by another server's CA.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use larder_testkit::RedisServer;
use redis::TlsCertificates;

/// Connects to `url` over TLS trusting only `ca` and sends `PING`.
async fn tls_ping(url: &str, ca: &[u8]) -> redis::RedisResult<String> {
    // The redis crate's rustls needs a process-level provider; install ring's if none is.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = redis::Client::build_with_tls(
        url,
        TlsCertificates {
            client_tls: None,
            root_cert: Some(ca.to_vec()),
        },
    )?;
    let connect = client.get_multiplexed_async_connection();
    let mut conn = tokio::time::timeout(Duration::from_secs(10), connect)
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    redis::cmd("PING").query_async(&mut conn).await
}

#[tokio::test]
async fn a_tls_server_answers_ping_over_tls_and_keeps_its_plain_port() {
    let server = RedisServer::builder().tls().start();
    let tls_port = server.tls_port().expect("a TLS port");
    assert_ne!(tls_port, server.port());
    assert_eq!(
        server.tls_url().as_deref(),
        Some(format!("rediss://127.0.0.1:{tls_port}/").as_str())
    );
    let ca = server.ca_cert_pem().expect("a CA certificate");
    assert!(
        String::from_utf8_lossy(ca).starts_with("-----BEGIN CERTIFICATE-----"),
        "PEM"
    );

    // TLS, verified against the CA (IP address SAN), and by name (DNS SAN).
    assert_eq!(
        tls_ping(&server.tls_url().unwrap(), ca).await.unwrap(),
        "PONG"
    );
    assert_eq!(
        tls_ping(&format!("rediss://localhost:{tls_port}/"), ca)
            .await
            .unwrap(),
        "PONG"
    );
    // The plain port and redis-cli still work.
    assert_eq!(server.cli(&["PING"]).trim(), "PONG");
    assert_eq!(
        server.cli(&["CONFIG", "GET", "tls-port"]),
        format!("tls-port\n{tls_port}\n")
    );
    // The TLS port does not speak plain RESP.
    let mut stream = TcpStream::connect(("127.0.0.1", tls_port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(b"*1\r\n$4\r\nPING\r\n").unwrap();
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    assert!(
        !reply.starts_with(b"+PONG"),
        "plain PING answered on the TLS port"
    );
}

#[tokio::test]
async fn tls_url_carries_the_credentials_of_url() {
    let server = RedisServer::builder()
        .tls()
        .requirepass("p@ss word")
        .start();
    let tls_port = server.tls_port().unwrap();
    assert_eq!(
        server.tls_url().unwrap(),
        format!("rediss://:p%40ss%20word@127.0.0.1:{tls_port}/")
    );
    assert_eq!(
        tls_ping(&server.tls_url().unwrap(), server.ca_cert_pem().unwrap())
            .await
            .unwrap(),
        "PONG"
    );
}

#[tokio::test]
async fn restart_keeps_the_tls_port_and_certificates() {
    let mut server = RedisServer::builder().tls().start();
    let (tls_port, ca) = (server.tls_port(), server.ca_cert_pem().unwrap().to_vec());
    server.restart();
    assert_eq!(server.tls_port(), tls_port);
    assert_eq!(server.ca_cert_pem(), Some(ca.as_slice()));
    assert_eq!(
        tls_ping(&server.tls_url().unwrap(), &ca).await.unwrap(),
        "PONG"
    );
}

#[tokio::test]
async fn another_servers_ca_is_not_trusted() {
    let a = RedisServer::builder().tls().start();
    let b = RedisServer::builder().tls().start();
    assert_ne!(
        a.ca_cert_pem(),
        b.ca_cert_pem(),
        "each server has its own CA"
    );
    let error = tls_ping(&a.tls_url().unwrap(), b.ca_cert_pem().unwrap())
        .await
        .expect_err("a certificate from an unknown CA is refused");
    assert!(
        error.to_string().to_lowercase().contains("certificate"),
        "{error}"
    );
}

#[test]
fn a_plain_server_has_no_tls() {
    let server = RedisServer::start();
    assert_eq!(server.tls_port(), None);
    assert_eq!(server.tls_url(), None);
    assert_eq!(server.ca_cert_pem(), None);
}
