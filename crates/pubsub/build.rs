//! Generates the Pub/Sub API code from `proto/pubsub_api.proto`.
//!
//! `protox` parses the proto in pure Rust, so building needs no system `protoc` and downloads
//! nothing; `tonic-prost-build` turns its FileDescriptorSet into messages, client and server.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/pubsub_api.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
