//! Compiles the protocol with protox, a pure-Rust protobuf compiler, so a
//! build needs no `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["remedy/v1/agent.proto", "remedy/v1/admin.proto"];
    for file in files.iter().chain(&["remedy/v1/common.proto"]) {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["."])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // The generated `connect(dst)` constructor would collide with the
        // `Connect` rpc; clients are built from a `Channel` instead.
        .build_transport(false)
        .compile_fds(descriptors)?;
    Ok(())
}
