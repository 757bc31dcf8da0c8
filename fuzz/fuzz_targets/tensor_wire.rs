//! A tensor header and chunks from arbitrary bytes: reassembly never panics, never reserves
//! more than the cap, and what it accepts adds up.
#![no_main]

use libfuzzer_sys::fuzz_target;
use steer_proto::v1::{TensorChunk, TensorHeader};
use steer_proto::wire::TensorAssembler;

#[derive(arbitrary::Arbitrary, Debug)]
struct Input {
    dtype: i32,
    shape: Vec<u64>,
    total_bytes: u64,
    chunks: Vec<(u64, Vec<u8>)>,
}

fuzz_target!(|input: Input| {
    let cap = 1 << 20;
    let header = TensorHeader { dtype: input.dtype, shape: input.shape, total_bytes: input.total_bytes, ..Default::default() };
    if let Ok(mut a) = TensorAssembler::new(header, cap) {
        assert!(a.header.total_bytes <= cap);
        for (offset, data) in input.chunks {
            let _ = a.push(&TensorChunk { offset, data });
        }
        let _ = a.finish_f32();
    }
});
