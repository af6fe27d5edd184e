//! Compiles proto/fedgw/v1/*.proto with protox (a pure-Rust protobuf compiler: no protoc needed)
//! and generates prost messages and tonic clients and servers.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "fedgw/v1/types.proto",
        "fedgw/v1/records.proto",
        "fedgw/v1/join.proto",
        "fedgw/v1/federation.proto",
        "fedgw/v1/admin.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    tonic_prost_build::configure()
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
