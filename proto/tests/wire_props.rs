//! Property tests of the tensor wire format (the stable-toolchain companion of the cargo-fuzz
//! targets in `fuzz/`): every tensor survives header + chunks + reassembly, in any dtype, and
//! no header or chunk sequence, however hostile, panics or gets past the byte cap.

use proptest::prelude::*;
use steer_proto::v1::{Dtype, TensorChunk, TensorHeader};
use steer_proto::wire::{self, TensorAssembler, WireError, MAX_CHUNK_BYTES};

fn dtype() -> impl Strategy<Value = Dtype> {
    prop_oneof![Just(Dtype::F32), Just(Dtype::F16), Just(Dtype::Bf16)]
}

/// What `dtype` makes of `v` (the wire rounds to its precision).
fn rounded(dtype: Dtype, v: f32) -> f32 {
    match dtype {
        Dtype::F16 => half::f16::from_f32(v).to_f32(),
        Dtype::Bf16 => half::bf16::from_f32(v).to_f32(),
        _ => v,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn any_tensor_round_trips(dtype in dtype(), rows in 1usize..8, cols in 1usize..300_000, seed in any::<u32>()) {
        let cols = cols.min(600_000 / rows);
        let n = rows * cols;
        let values: Vec<f32> = (0..n).map(|i| ((i as u32).wrapping_mul(2_654_435_761) ^ seed) as f32 / 1e6 - 2000.0).collect();
        let (h, chunks) = wire::encode(dtype, &values, &[rows, cols], None, 7);
        prop_assert!(chunks.iter().all(|c| c.data.len() <= MAX_CHUNK_BYTES));
        let mut a = TensorAssembler::new(h.clone(), u64::MAX).unwrap();
        for c in &chunks {
            a.push(c).unwrap();
        }
        let (header, got_dtype, got) = a.finish_f32().unwrap();
        prop_assert_eq!(header, h);
        prop_assert_eq!(got_dtype, dtype);
        let want: Vec<f32> = values.iter().map(|&v| rounded(dtype, v)).collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn hostile_headers_and_chunks_are_errors_never_panics(
        dtype in -2i32..6,
        shape in prop::collection::vec(any::<u64>(), 0..4),
        total in any::<u64>(),
        chunks in prop::collection::vec((any::<u64>(), 0usize..2048), 0..6),
        cap in 0u64..(1 << 20),
    ) {
        let header = TensorHeader { dtype, shape, total_bytes: total, ..Default::default() };
        match TensorAssembler::new(header, cap) {
            Err(_) => {}
            Ok(mut a) => {
                prop_assert!(a.header.total_bytes <= cap, "accepted past the cap");
                for (offset, len) in chunks {
                    let _ = a.push(&TensorChunk { offset, data: vec![0; len] });
                }
                if let Ok((h, _, values)) = a.finish_f32() {
                    prop_assert_eq!(values.len() as u64 * wire::dtype_size(Dtype::try_from(h.dtype).unwrap()).unwrap() as u64, h.total_bytes);
                }
            }
        }
    }

    #[test]
    fn chunks_out_of_order_are_refused(n in 2usize..5, swap in 0usize..4) {
        let values = vec![1.0f32; n * MAX_CHUNK_BYTES / 4];
        let (h, mut chunks) = wire::encode_f32(&values, &[n, MAX_CHUNK_BYTES / 4], None, 0);
        let i = swap % (n - 1);
        chunks.swap(i, i + 1);
        let mut a = TensorAssembler::new(h, u64::MAX).unwrap();
        let errs: Vec<WireError> = chunks.iter().filter_map(|c| a.push(c).err()).collect();
        let first_is_offset = matches!(errs.first(), Some(WireError::Offset { .. }));
        prop_assert!(first_is_offset, "{:?}", errs);
    }

    #[test]
    fn any_steering_fields_read_as_a_window_and_op_or_a_reason_and_valid_ones_round_trip(
        mode in -2i32..8, start in any::<u32>(), end in proptest::option::of(any::<u32>()), op in -2i32..6, value in any::<f32>()
    ) {
        let h = TensorHeader { mode, window_start: start, window_end: end, op, clamp_value: value, ..Default::default() };
        if let (Ok(w), Ok(o)) = (h.steering_window(), h.steering_op()) {
            let back = TensorHeader::default().with_steering(w, o);
            prop_assert_eq!(back.steering_window(), Ok(w));
            prop_assert_eq!(back.steering_op(), Ok(o));
            prop_assert_eq!(w.to_string().parse::<steer_proto::hooks::Window>(), Ok(w));
        }
    }
}
