//! Tests for `RedisServer`: start, stop, restart, pause/resume, ACL users and cleanup.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use larder_testkit::{RedisServer, free_port};

const PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";

/// Connects to `addr` and sends a raw `PING`; returns the connection.
fn send_ping(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.write_all(PING)?;
    Ok(stream)
}

/// Reads one reply line, waiting at most `timeout`.
fn read_line(stream: &mut TcpStream, timeout: Duration) -> std::io::Result<String> {
    stream.set_read_timeout(Some(timeout))?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 64];
    while !reply.ends_with(b"\r\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        reply.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

fn ping(addr: SocketAddr) -> String {
    let mut stream = send_ping(addr).expect("connect and send PING");
    read_line(&mut stream, Duration::from_secs(2)).expect("read the PING reply")
}

#[test]
fn starts_and_answers_ping() {
    let server = RedisServer::start();
    assert!(server.is_running());
    assert_ne!(server.port(), 6379);
    assert_eq!(
        server.addr().to_string(),
        format!("127.0.0.1:{}", server.port())
    );
    assert_eq!(
        server.url(),
        format!("redis://127.0.0.1:{}/", server.port())
    );
    assert_eq!(ping(server.addr()), "+PONG\r\n");
    assert_eq!(server.cli(&["PING"]).trim(), "PONG");
    // No persistence.
    assert_eq!(
        server.cli(&["CONFIG", "GET", "appendonly"]),
        "appendonly\nno\n"
    );
    assert_eq!(server.cli(&["CONFIG", "GET", "save"]), "save\n\n");
    assert!(server.log().contains("Ready to accept connections"));
}

#[test]
fn stop_refuses_connections_and_restart_reuses_the_port() {
    let mut server = RedisServer::start();
    let port = server.port();
    assert_eq!(server.cli(&["SET", "k", "v"]).trim(), "OK");

    server.stop();
    assert!(!server.is_running());
    let error = TcpStream::connect_timeout(&server.addr(), Duration::from_secs(1))
        .expect_err("a stopped server refuses connections");
    assert_eq!(error.kind(), ErrorKind::ConnectionRefused);
    server.stop(); // idempotent

    server.restart();
    assert!(server.is_running());
    assert_eq!(server.port(), port);
    assert_eq!(ping(server.addr()), "+PONG\r\n");
    // Nothing was persisted across the restart.
    assert_eq!(server.cli(&["EXISTS", "k"]).trim(), "0");

    // Restarting a running server works too.
    server.restart();
    assert_eq!(ping(server.addr()), "+PONG\r\n");
}

#[test]
fn pause_stalls_replies_until_resume() {
    let server = RedisServer::start();
    server.pause();
    assert!(server.is_running(), "a paused server is still alive");

    // The kernel still accepts the connection, but nobody answers.
    let mut stream = send_ping(server.addr()).expect("connect to the paused server");
    let error = read_line(&mut stream, Duration::from_millis(300))
        .expect_err("a paused server does not answer");
    assert!(
        matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "expected a timeout, got {error:?}"
    );

    server.resume();
    assert_eq!(
        read_line(&mut stream, Duration::from_secs(2)).expect("reply after resume"),
        "+PONG\r\n"
    );
}

#[test]
fn acl_user_without_dangerous_commands_gets_noperm() {
    let server = RedisServer::builder()
        .acl_user("app", "s3cret", "+@all -@dangerous ~* &*")
        .start();

    let keys = server.cli_as("app", "s3cret", &["KEYS", "*"]);
    assert!(keys.starts_with("NOPERM"), "KEYS as app: {keys:?}");
    assert_eq!(
        server.cli_as("app", "s3cret", &["SET", "k", "v"]).trim(),
        "OK"
    );
    assert_eq!(server.cli_as("app", "s3cret", &["GET", "k"]).trim(), "v");

    // The default user stays enabled, with every permission.
    assert_eq!(server.cli(&["KEYS", "*"]).trim(), "k");
    assert_eq!(
        server.url(),
        format!("redis://127.0.0.1:{}/", server.port())
    );
    assert_eq!(
        server.url_for("app", "s3cret"),
        format!("redis://app:s3cret@127.0.0.1:{}/", server.port())
    );
}

#[test]
#[should_panic(expected = "WRONGPASS")]
fn cli_as_with_a_wrong_password_panics() {
    let server = RedisServer::builder()
        .acl_user("app", "s3cret", "+@all ~* &*")
        .start();
    // redis-cli alone would warn and go on as the default user.
    server.cli_as("app", "wrong", &["ACL", "WHOAMI"]);
}

#[test]
fn requirepass_and_extra_args() {
    let server = RedisServer::builder()
        .requirepass("pw")
        .arg("--maxmemory")
        .arg("1mb")
        .start();
    assert_eq!(ping(server.addr()), "-NOAUTH Authentication required.\r\n");
    assert_eq!(server.cli(&["PING"]).trim(), "PONG");
    assert_eq!(
        server.cli(&["CONFIG", "GET", "maxmemory"]),
        "maxmemory\n1048576\n"
    );
    assert_eq!(
        server.url(),
        format!("redis://:pw@127.0.0.1:{}/", server.port())
    );
}

#[test]
fn disabled_default_user_uses_the_first_acl_user() {
    let server = RedisServer::builder()
        .acl_user("admin", "p@ss", "+@all ~* &*")
        .disable_default_user()
        .start();
    assert_eq!(ping(server.addr()), "-NOAUTH Authentication required.\r\n");
    assert_eq!(server.cli(&["ACL", "WHOAMI"]).trim(), "admin");
    assert_eq!(
        server.url(),
        format!("redis://admin:p%40ss@127.0.0.1:{}/", server.port())
    );
}

#[test]
fn drop_kills_the_process_and_removes_its_directory() {
    let server = RedisServer::start();
    let pid = server.pid().expect("running");
    let addr = server.addr();
    let dir = server.dir().to_path_buf();
    assert!(dir.exists());
    server.pause(); // a paused server is killed too
    drop(server);

    assert!(!dir.exists(), "temporary directory removed");
    let alive = Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run kill -0");
    assert!(!alive.success(), "process {pid} is gone");
    assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err());
}

#[test]
fn free_port_is_bindable() {
    let port = free_port();
    assert_ne!(port, 0);
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind the free port");
}

#[test]
fn restricted_servers_refuse_dangerous_commands_and_connect_as_their_user() {
    let server = RedisServer::restricted();
    assert!(server.url().contains("larder:"), "{}", server.url());
    assert_eq!(server.cli(&["SET", "k", "v"]).trim(), "OK");
    assert!(server.cli(&["KEYS", "*"]).contains("NOPERM"));
    assert!(server.cli(&["FLUSHALL"]).contains("NOPERM"));
    assert_eq!(server.cli(&["ACL", "WHOAMI"]).trim(), "larder");
}

#[test]
fn command_calls_counts_what_the_server_ran() {
    let server = RedisServer::start();
    assert_eq!(server.command_calls("set"), 0);
    server.cli(&["SET", "a", "1"]);
    server.cli(&["SET", "b", "2"]);
    assert_eq!(server.command_calls("set"), 2);
    assert_eq!(server.command_calls("mget"), 0);
}
