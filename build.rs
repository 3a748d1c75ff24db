//! Compiles the wire protocol in `apis/` with protox (a pure-Rust protobuf compiler), so a
//! fresh machine needs no `protoc` binary.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=apis");
    println!("cargo:rerun-if-changed=migrations");
    let files = [
        "apis/apache/rocketmq/v2/definition.proto",
        "apis/apache/rocketmq/v2/service.proto",
        "apis/apache/rocketmq/v2/admin.proto",
        "apis/rmq/gateway/cluster/v1/peer.proto",
    ];
    let fds = protox::compile(files, ["apis"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Message bodies stay `Bytes` from the socket to the log and back: no copies.
        .bytes(".")
        .compile_fds(fds)?;
    Ok(())
}
