//! Compiles proto/steer/v1/*.proto with protox (pure Rust: no system protoc needed).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["steer/v1/tensor.proto", "steer/v1/activation.proto", "steer/v1/generation.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
