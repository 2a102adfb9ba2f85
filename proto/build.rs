//! Compiles gantry's .proto files with the system protoc (Debian: protobuf-compiler).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&["proto/gantry.proto", "proto/hub.proto"], &["proto"])?;
    Ok(())
}
