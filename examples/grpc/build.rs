//! Compiles `proto/` into the message types, client and server (in `OUT_DIR`).
//!
//! protox parses the `.proto` files in Rust, so the build needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const PROTO: &str = "proto/catalog/v1/catalog.proto";
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile([PROTO], ["proto"])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
