//! The `dashboard` binary: its first stdout line names the real address, and it serves there.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    process::{Command, Stdio},
    time::Duration,
};

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_binary_prints_its_address_first_and_serves_the_contract() {
    let child = Command::new(env!("CARGO_BIN_EXE_dashboard"))
        .args([
            "--addr",
            "127.0.0.1:0",
            "--database-url",
            "sqlite::memory:",
            "--db-latency-ms",
            "0",
        ])
        .env_remove("DATABASE_URL")
        .env_remove("LARDER_STORE")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run the dashboard binary");
    let mut child = Killed(child);
    let mut first = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let addr = first
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("first line: {first:?}"));
    assert!(!addr.ends_with(":0"), "the real port is printed: {addr}");

    let get = |path: &str, key: &str| {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response.to_lowercase()
    };
    let miss = get("/api/user/me", "demo-key-3");
    assert!(miss.starts_with("http/1.1 200"), "{miss}");
    assert!(miss.contains("x-cache: miss"), "{miss}");
    let hit = get("/api/user/me", "demo-key-3");
    assert!(hit.contains("cache-status: larder; hit"), "{hit}");
    assert!(hit.contains("\"credits\":1000"), "{hit}");
    let denied = get("/api/user/me", "demo-key-9999");
    assert!(denied.starts_with("http/1.1 401"), "{denied}");
}
