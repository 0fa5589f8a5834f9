//! A small client for the catalog that prints what the cache did.
//!
//! `client [--addr http://127.0.0.1:50051] get ID | update ID NAME | list`

use std::{process::ExitCode, time::Instant};

use example_grpc::pb::{
    GetItemRequest, Item, ListItemsRequest, UpdateItemRequest, catalog_client::CatalogClient,
};
use tonic::{Code, metadata::MetadataMap, transport::Channel};

const USAGE: &str =
    "usage: client [--addr http://127.0.0.1:50051] (get ID | update ID NAME | list)";

#[tokio::main]
async fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut addr = "http://127.0.0.1:50051".to_owned();
    if args.first().map(String::as_str) == Some("--addr") && args.len() > 1 {
        addr = args.remove(1);
        args.remove(0);
    }
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let channel = match Channel::from_shared(addr.clone()) {
        Ok(endpoint) => match endpoint.connect().await {
            Ok(channel) => channel,
            Err(e) => {
                eprintln!("cannot connect to {addr}: {e}");
                return ExitCode::FAILURE;
            }
        },
        Err(e) => {
            eprintln!("bad address {addr}: {e}");
            return ExitCode::from(2);
        }
    };
    let mut client = CatalogClient::new(channel);
    let started = Instant::now();
    let result = match words.as_slice() {
        ["get", id] => match id.parse() {
            Ok(id) => client.get_item(GetItemRequest { id }).await.map(|r| {
                report(
                    &format!("GetItem {{ id: {id} }}"),
                    r.metadata(),
                    r.get_ref(),
                )
            }),
            Err(_) => return usage(),
        },
        ["update", id, name @ ..] if !name.is_empty() => match id.parse() {
            Ok(id) => {
                let name = name.join(" ");
                let request = UpdateItemRequest { id, name };
                let label = format!("UpdateItem {{ id: {id}, name: {:?} }}", request.name);
                client
                    .update_item(request)
                    .await
                    .map(|r| report(&label, r.metadata(), r.get_ref()))
            }
            Err(_) => return usage(),
        },
        ["list"] => list(&mut client).await,
        _ => return usage(),
    };
    let elapsed = started.elapsed();
    match result {
        Ok(()) => {
            println!("  took            {:.1} ms", elapsed.as_secs_f64() * 1e3);
            ExitCode::SUCCESS
        }
        Err(status) => {
            println!("-> error {:?}: {}", status.code(), status.message());
            print_cache_metadata(status.metadata());
            println!("  took            {:.1} ms", elapsed.as_secs_f64() * 1e3);
            if status.code() == Code::NotFound {
                ExitCode::from(3)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn usage() -> ExitCode {
    eprintln!("{USAGE}");
    ExitCode::from(2)
}

fn report(call: &str, metadata: &MetadataMap, item: &Item) {
    println!("{call}");
    println!(
        "-> Item {{ id: {}, name: {:?}, price_cents: {}, version: {} }}",
        item.id, item.name, item.price_cents, item.version
    );
    print_cache_metadata(metadata);
}

fn print_cache_metadata(metadata: &MetadataMap) {
    // Unary answers carry the trailers merged into their metadata: grpc-status is one of them.
    for name in ["cache-status", "x-cache", "age", "grpc-status"] {
        if let Some(value) = metadata.get(name).and_then(|v| v.to_str().ok()) {
            println!("  {:<15} {value}", format!("{name}:"));
        }
    }
}

async fn list(client: &mut CatalogClient<Channel>) -> Result<(), tonic::Status> {
    let response = client.list_items(ListItemsRequest {}).await?;
    println!("ListItems");
    print_cache_metadata(response.metadata());
    let mut stream = response.into_inner();
    while let Some(item) = stream.message().await? {
        println!("-> Item {{ id: {}, name: {:?} }}", item.id, item.name);
    }
    Ok(())
}
