//! Generates the wire types and gRPC stubs from `proto/` with protox
//! (pure Rust), so no system `protoc` is ever needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // compile_fds watches nothing by itself.
    println!("cargo:rerun-if-changed=proto");

    let files = [
        "proto/referral/v1/envelope.proto",
        "proto/referral/v1/directory.proto",
        "proto/referral/v1/notice.proto",
        "proto/referral/v1/broker.proto",
        "proto/referral/v1/overlap.proto",
        "proto/referral/v1/audit.proto",
    ];
    let fds = protox::compile(files, ["proto"])?;

    // The encoded descriptor set serves gRPC reflection.
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("referral_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;

    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(fds)?;
    Ok(())
}
