//! Compiles proto/steer/v1/*.proto with protox (pure Rust: no system protoc needed).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["steer/v1/tensor.proto", "steer/v1/activation.proto", "steer/v1/generation.proto", "steer/v1/eval.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    // The descriptor set, for server reflection.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let bytes = prost::Message::encode_to_vec(&fds);
    std::fs::write(out.join("steer_descriptor.bin"), &bytes)?;
    tonic_prost_build::configure().compile_fds(fds)?;
    // serde impls in the proto3 JSON mapping (lowerCamelCase names, enums by name, bytes as
    // base64), for the HTTP/JSON mirrors of the RPCs.
    pbjson_build::Builder::new().register_descriptors(&bytes)?.build(&[".steer.v1"])?;
    Ok(())
}
