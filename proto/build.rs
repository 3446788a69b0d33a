//! Compiles the wire contract with protox (pure Rust), so building needs no `protoc` binary.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "wardwatch/v1/events.proto",
        "wardwatch/v1/sync.proto",
        "wardwatch/v1/models.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
