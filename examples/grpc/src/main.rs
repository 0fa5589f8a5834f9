//! Serves the catalog with its Larder cache.
//!
//! `example-grpc [--addr 127.0.0.1:50051] [--latency-ms 100]`; port 0 picks a free port. The
//! first line on stdout is `listening on http://ADDR`.

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use example_grpc::{Catalog, router};
use larder::{CacheHandle, MemoryStore};
use tokio::net::TcpListener;
use tonic::transport::{Server, server::TcpIncoming};

const USAGE: &str = "usage: example-grpc [--addr 127.0.0.1:50051] [--latency-ms 100]";

struct Args {
    addr: SocketAddr,
    latency: Duration,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut parsed = Args {
        addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
        latency: Duration::from_millis(100),
    };
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--addr" => {
                let v = value()?;
                parsed.addr = v.parse().map_err(|e| format!("--addr {v}: {e}"))?;
            }
            "--latency-ms" => {
                let v = value()?;
                let ms = v.parse().map_err(|e| format!("--latency-ms {v}: {e}"))?;
                parsed.latency = Duration::from_millis(ms);
            }
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    Ok(parsed)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    match serve(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("example-grpc: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let listener = TcpListener::bind(args.addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    // Small HTTP/2 frames (a hit's headers, message and trailers) go out at once, not after
    // the client's delayed ACK.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let cache = CacheHandle::builder(MemoryStore::default())
        .x_cache()
        .build();
    let catalog = Catalog::seeded().with_latency(args.latency);
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    router(Server::builder(), catalog, &cache)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}
