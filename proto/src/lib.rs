//! The `steer.v1` contract, generated from `proto/steer/v1/*.proto`, and the helpers that move
//! tensors over it in chunks of at most 1 MiB, and the named sampling settings.

pub mod v1 {
    // Generated: a oneof's variants are as large as their messages (a VectorFile's info).
    #![allow(clippy::large_enum_variant)]
    tonic::include_proto!("steer.v1");
    // serde in the proto3 JSON mapping (pbjson), for HTTP/JSON.
    include!(concat!(env!("OUT_DIR"), "/steer.v1.serde.rs"));
}

pub mod hooks;
pub mod names;
pub mod sampling;
pub mod status;
pub mod wire;

/// The encoded `FileDescriptorSet` of steer.v1, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/steer_descriptor.bin"));
