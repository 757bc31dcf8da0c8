use super::format::quantize_block;
use super::packing::*;
use super::product::*;
use super::*;
use crate::kernels::Isa;

use crate::kernels::test_data as data;

#[test]
fn quantize_round_trip_is_within_half_a_step() {
    let x = data(32 * 50, 3);
    let back = Q8Blocks::quantize(&x).to_f32();
    for (xs, bs) in x.chunks_exact(32).zip(back.chunks_exact(32)) {
        let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs()));
        for (v, b) in xs.iter().zip(bs) {
            // half a step (max/127/2), plus f16's rounding of the scale (2^-11 relative)
            let err = (b - v).abs();
            assert!(err <= amax / 254.0 + amax * 1e-3, "{err} vs {amax}");
        }
    }
}

#[test]
fn the_avx2_block_quantizer_gives_the_portable_bits() {
    #[cfg(target_arch = "x86_64")]
    if Isa::cpu().avx2 {
        let mut blocks: Vec<Vec<f32>> = data(32 * 200, 7).chunks(32).map(|b| b.iter().map(|v| v * 100.0).collect()).collect();
        // ties at every half step (127 * k / 2 scaled), zeros, one value, NaN and infinities
        blocks.push((0..32).map(|i| (i as f32 - 16.0) * 0.5 * 127.0 / 16.0 * 2.0).collect());
        blocks.push((0..32).map(|i| if i == 31 { 127.0 } else { i as f32 - 15.5 }).collect());
        blocks.push(vec![0.0; 32]);
        blocks.push((0..32).map(|i| if i == 3 { -2.5 } else { 0.0 }).collect());
        blocks.push((0..32).map(|i| if i == 5 { f32::NAN } else { i as f32 }).collect());
        blocks.push((0..32).map(|i| if i == 5 { f32::INFINITY } else { -(i as f32) }).collect());
        blocks.push((0..32).map(|i| if i % 2 == 0 { f32::NEG_INFINITY } else { 1.0 }).collect());
        for b in &blocks {
            let (d, q) = quantize_block(b);
            // SAFETY: detected above.
            let (d2, q2) = unsafe { x86::quantize_block_avx2(b) };
            assert_eq!((d.to_bits(), q), (d2.to_bits(), q2), "{b:?}");
        }
    }
}

#[test]
fn bytes_round_trip_in_ggml_layout() {
    let q = Q8Blocks::quantize(&data(64, 9));
    let mut bytes = Vec::new();
    for (qs, d) in q.qs.iter().zip(&q.d) {
        bytes.extend(d.to_le_bytes());
        bytes.extend(qs.0.iter().map(|&v| v as u8));
    }
    assert_eq!(Q8Blocks::from_ggml(&bytes).unwrap(), q);
    assert_eq!(q.bytes(), bytes.len());
    assert!(Q8Blocks::from_ggml(&bytes[1..]).is_none());
}

#[test]
fn packing_keeps_every_weight() {
    for &(n, k) in &[(3usize, 32usize), (2, 256), (4, 320), (1, 1600), (2, 800), (1, 6400)] {
        let b = Q8Blocks::quantize(&data(n * k, 4));
        let plain = b.to_f32();
        let packed = Q8Rows::pack(b.clone(), k / QK8_0);
        assert_eq!(packed.to_f32(), plain, "n={n} k={k}");
        assert_eq!(packed.bytes(), b.bytes());
    }
}

/// The kernels this CPU can run (the portable one always).
fn kernels() -> Vec<Kernel> {
    let mut ks = vec![Kernel::Portable];
    #[cfg(target_arch = "x86_64")]
    {
        if Isa::cpu().avx2 {
            ks.push(Kernel::Avx2);
        }
        if Isa::cpu().vnni {
            ks.push(Kernel::Vnni);
        }
    }
    ks
}

#[test]
fn matmul_matches_the_dequantized_product_and_rows_are_independent() {
    // k: tail blocks only, an 8-block group alone or with a tail, 16-block groups alone, with
    // a tail (XL's 1600), with an 8-block group (XL's 6400) and with both, and tiled (k from
    // 4096, m from 2 with VNNI and from 12 with AVX2's pairs: whole tiles and a partial one, an
    // odd weight row left after the pairs, a 1-row pass, group counts that are and are not a
    // multiple of the tile's); m: every fixed-size kernel, and more rows than one pass takes.
    #[rustfmt::skip]
    let shapes = [(1usize, 32usize, 5usize), (3, 64, 130), (5, 256, 31), (6, 320, 77), (7, 32, 9), (8, 512, 20), (9, 96, 200),
        (16, 288, 40), (4, 800, 19), (2, 1600, 7), (13, 1600, 6), (16, 6400, 5), (8, 768, 5), (11, 6400, 3), (6, 4096, 37), (3, 5120, 21), (13, 4096, 19)];
    for &(m, k, n) in &shapes {
        let x = data(m * k, 1);
        let bias = data(n, 3);
        let blocks = Q8Blocks::quantize(&data(n * k, 2));
        let wd = blocks.to_f32();
        let w = Q8Rows::pack(blocks, k / QK8_0);
        let got = matmul_t(&x, &w, Some(&bias), m, k, n);
        for r in 0..m {
            for o in 0..n {
                let e: f64 = (0..k).map(|i| x[r * k + i] as f64 * wd[o * k + i] as f64).sum::<f64>() + bias[o] as f64;
                // x is quantized to int8 per block too: error <= sum |w| * step/2
                let bound: f64 = (0..k).map(|i| wd[o * k + i].abs() as f64).sum::<f64>() / 254.0 + 1e-4;
                let g = got[r * n + o] as f64;
                assert!((g - e).abs() <= bound, "m={m} k={k} n={n} ({r},{o}): {g} vs {e}");
            }
        }
        for r in 0..m {
            let alone = matmul_t(&x[r * k..(r + 1) * k], &w, Some(&bias), 1, k, n);
            assert_eq!(alone[..], got[r * n..(r + 1) * n], "row {r} alone, bit for bit");
        }
        for kernel in kernels() {
            assert_eq!(matmul_with(kernel, &x, &w, Some(&bias), m, n), got, "{kernel:?}, m={m} k={k}: the same bits");
        }
    }
}

#[test]
fn extreme_quants_neither_saturate_nor_wrap() {
    // -128 (possible in a foreign GGUF file) and 127 weights against +-127 activations.
    let (m, k, n) = (2usize, 320usize, 3usize);
    let mut blocks = Q8Blocks::quantize(&data(n * k, 5));
    for (i, q) in blocks.qs.iter_mut().enumerate() {
        q.0 = [if i % 2 == 0 { -128 } else { 127 }; QK8_0];
    }
    let wd = blocks.to_f32();
    let w = Q8Rows::pack(blocks, k / QK8_0);
    let x: Vec<f32> = (0..m * k).map(|i| if i % 3 == 0 { -1.0 } else { 1.0 }).collect();
    for kernel in kernels() {
        let got = matmul_with(kernel, &x, &w, None, m, n);
        for r in 0..m {
            for o in 0..n {
                let e: f64 = (0..k).map(|i| x[r * k + i] as f64 * wd[o * k + i] as f64).sum();
                assert!((got[r * n + o] as f64 - e).abs() <= 1e-3 * e.abs().max(1.0), "{kernel:?} ({r},{o}): {} vs {e}", got[r * n + o]);
            }
        }
    }
}

/// q8_0 takes its kernel from the one dispatch: `STEER_NO_AVX512` (which `scripts/test.sh` sets
/// for its second pass of these tests) leaves it on AVX2 even on a VNNI host.
#[test]
fn q8_0_follows_the_one_dispatch_and_no_avx512_means_its_avx2_path() {
    assert_eq!(Kernel::detect(), Kernel::for_isa(crate::kernels::isa()));
    #[cfg(target_arch = "x86_64")]
    {
        let full = Isa { avx2: true, avx512: true, vnni: true };
        assert_eq!(Kernel::for_isa(full), Kernel::Vnni);
        assert_eq!(Kernel::for_isa(full.limited(true)), Kernel::Avx2);
        if std::env::var_os(crate::kernels::isa::NO_AVX512_ENV).is_some() && Isa::cpu().avx2 {
            assert_eq!(Kernel::detect(), Kernel::Avx2, "STEER_NO_AVX512 must put q8_0 on its AVX2 kernel");
        }
    }
    assert_eq!(Kernel::for_isa(Isa::PORTABLE), Kernel::Portable);
}
