use super::panels::panels_generic;
#[cfg(target_arch = "x86_64")]
use super::x86::blocked;
use super::*;

fn naive(x: &[f32], w: &[f32], b: Option<&[f32]>, m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut y = vec![0f32; m * n];
    for r in 0..m {
        for c in 0..n {
            let mut s = b.map_or(0.0, |b| b[c]) as f64;
            for i in 0..k {
                s += x[r * k + i] as f64 * w[i * n + c] as f64;
            }
            y[r * n + c] = s as f32;
        }
    }
    y
}

use super::test_data as data;

#[test]
fn a_rows_result_does_not_depend_on_its_neighbours() {
    // Odd shapes: slab and group remainders, a partial column tile.
    for &(k, n) in &[(200usize, 300usize), (64, 1030), (1600, 77)] {
        let w = data(k * n, 5);
        let x = data(70 * k, 6);
        let bias = data(n, 7);
        let all = matmul_reference(&x, &w, Some(&bias), 70, k, n);
        // Both sides of the packed kernel's threshold.
        for m in [1usize, 2, 3, 4, 5, 6, 7, 11, 16, 47, 48, 49, 64] {
            let some = matmul_reference(&x[..m * k], &w, Some(&bias), m, k, n);
            assert_eq!(some[..], all[..m * n], "m = {m}, k = {k}, n = {n}: bit for bit");
        }
        let alone = matmul_reference(&x[5 * k..6 * k], &w, Some(&bias), 1, k, n);
        assert_eq!(alone[..], all[5 * n..6 * n]);
    }
}

/// Panel-packed weights give the row-major kernel's bits, through each of the panel kernels
/// (portable, 256-bit, 512-bit where this CPU has them), for every dtype, any m, and widths
/// that end in a partial panel; packing round-trips.
#[test]
fn panel_kernels_give_the_row_major_kernels_bits() {
    // k = 72: a block of 64 weight rows and a part block; 200: several blocks.
    for (k, n) in [32usize, 40, 96, 100, 200].into_iter().map(|n| (72, n)).chain([(200, 224), (200, 72)]) {
        let w = test_data(k * n, 21);
        let wp = pack_panels(&w, k, n);
        assert_eq!(unpack_panels(&wp, k, n), w);
        let bf: Vec<u16> = w.iter().map(|&v| half::bf16::from_f32(v).to_bits()).collect();
        let bfp = pack_panels(&bf, k, n);
        for m in [1usize, 2, 3, 4, 5, 6, 8, 9, 12, 16, 17, 33] {
            let x = test_data(m * k, 22);
            assert_eq!(matmul_panels(&x, &wp, None, m, k, n), matmul_reference(&x, &w, None, m, k, n), "f32 n={n} m={m}");
            assert_eq!(matmul_panels(&x, bf16_bits(&bfp), None, m, k, n), matmul_reference(&x, bf16_bits(&bf), None, m, k, n), "bf16 n={n} m={m}");
            let np = n.div_ceil(PANEL) * PANEL;
            let slab = |f: &dyn Fn(&mut [f32])| {
                let mut acc = vec![0f32; m * np];
                f(&mut acc);
                acc
            };
            // SAFETY: acc is [m, np], written by this call alone.
            let generic = slab(&|acc| unsafe { panels_generic(&x, &wp, acc.as_mut_ptr(), m, k, np, 0..np / PANEL) });
            #[cfg(target_arch = "x86_64")]
            if Isa::cpu().avx2 {
                let xt = split::transpose(&x, m, k);
                // SAFETY: the features were just detected on this CPU.
                assert_eq!(
                    slab(&|acc| unsafe { blocked::panels_256(&xt, &wp, acc.as_mut_ptr(), m, k, np, 0..np / PANEL) }),
                    generic,
                    "256-bit n={n} m={m}"
                );
                if Isa::cpu().avx512 {
                    // SAFETY: as above.
                    assert_eq!(
                        slab(&|acc| unsafe { blocked::panels_512(&xt, &wp, acc.as_mut_ptr(), m, k, np, 0..np / PANEL) }),
                        generic,
                        "512-bit n={n} m={m}"
                    );
                }
            }
            let whole = slab(&|acc| blocked_free_reference(&x, &w, acc, m, k, n, np));
            assert_eq!(generic, whole, "portable n={n} m={m}");
        }
    }
}

/// One FMA chain per sum over all k weight rows in ascending order, into `[m, np]`.
fn blocked_free_reference(x: &[f32], w: &[f32], acc: &mut [f32], m: usize, k: usize, n: usize, np: usize) {
    for r in 0..m {
        for c in 0..n {
            acc[r * np + c] = (0..k).fold(0f32, |a, i| w[i * n + c].mul_add(x[r * k + i], a));
        }
    }
}

/// The 256-bit blocked kernel (AVX2 machines) and the 512-bit one give the same bits, in
/// the streaming and the packed orders, with panel remainders.
#[cfg(target_arch = "x86_64")]
#[test]
fn the_256_and_512_bit_blocked_kernels_agree_bit_for_bit() {
    if !Isa::cpu().avx512 {
        eprintln!("skipped: this CPU lacks AVX-512");
        return;
    }
    let (k, n) = (96usize, 16 * 7 + 5);
    let w = data(k * n, 21);
    let x = data(60 * k, 22);
    for m in [2usize, 6, 9, 16, 47, 60] {
        let (mut a, mut b) = (vec![0f32; m * n], vec![0f32; m * n]);
        // SAFETY: the features were just detected.
        unsafe {
            blocked::row_slab(&x[..m * k], &w, &mut a, m, k, n, 8, k);
            blocked::row_slab_512(&x[..m * k], &w, &mut b, m, k, n, 8, k);
        }
        assert_eq!(a, b, "m = {m}");
    }
}

#[test]
fn sixteen_bit_weights_give_the_f32_kernels_bits_and_rows_stay_independent() {
    let (k, n) = (200usize, 1030usize);
    let wf = data(k * n, 8);
    let x = data(50 * k, 9);
    let bf: Vec<u16> = wf.iter().map(|&v| half::bf16::from_f32(v).to_bits()).collect();
    let hf: Vec<u16> = wf.iter().map(|&v| half::f16::from_f32(v).to_bits()).collect();
    let bf_f32: Vec<f32> = bf.iter().map(|&b| half::bf16::from_bits(b).to_f32()).collect();
    let hf_f32: Vec<f32> = hf.iter().map(|&b| half::f16::from_bits(b).to_f32()).collect();
    for m in [1usize, 3, 7, 50] {
        let xs = &x[..m * k];
        // The same FMAs in the same order as on the converted values (the F16C kernel too).
        assert_eq!(matmul_reference(xs, bf16_bits(&bf), None, m, k, n), matmul_reference(xs, &bf_f32, None, m, k, n), "bf16 m={m}");
        assert_eq!(matmul_reference(xs, f16_bits(&hf), None, m, k, n), matmul_reference(xs, &hf_f32, None, m, k, n), "f16 m={m}");
        let h = data(m * n, 10); // rows_dot: [m, n] against the [k, n] rows
        assert_eq!(rows_dot(&h, bf16_bits(&bf), m, n, k), rows_dot(&h, &bf_f32, m, n, k), "bf16 rows m={m}");
        assert_eq!(rows_dot(&h, f16_bits(&hf), m, n, k), rows_dot(&h, &hf_f32, m, n, k), "f16 rows m={m}");
    }
}

#[test]
fn the_portable_f16_conversion_is_exact_for_every_finite_half() {
    for bits in 0..=u16::MAX {
        let h = half::f16::from_bits(bits);
        if h.is_finite() {
            assert_eq!(F16Bits(bits).to_f32().to_bits(), h.to_f32().to_bits(), "{bits:#06x}");
        }
    }
}

#[test]
fn attention_of_one_head_matches_the_softmax_formula() {
    let (s, d, hd, off) = (5, 8, 4, 4);
    let q = data(hd, 1);
    let (keys, values) = (data(s * d, 2), data(s * d, 3));
    let mut out = vec![0f32; hd];
    attend_one(&q, &keys, &values, off, d, &mut out);
    let scores: Vec<f64> = (0..s).map(|t| (0..hd).map(|j| q[j] as f64 * keys[t * d + off + j] as f64).sum::<f64>() / (hd as f64).sqrt()).collect();
    let z: f64 = scores.iter().map(|x| x.exp()).sum();
    for j in 0..hd {
        let want: f64 = (0..s).map(|t| scores[t].exp() / z * values[t * d + off + j] as f64).sum();
        assert!((out[j] as f64 - want).abs() < 1e-5, "{j}: {} vs {want}", out[j]);
    }
}

#[test]
fn attention_over_runs_of_heads_gives_each_head_the_bits_of_one_head_alone() {
    let (hd, n_head) = (8, 5);
    let d = hd * n_head;
    for s in [1, 2, 7, 33] {
        let q = data(d, 4);
        let (keys, values) = (data(s * d, 5), data(s * d, 6));
        let alone: Vec<f32> = (0..n_head)
            .flat_map(|h| {
                let mut out = vec![0f32; hd];
                attend_one(&q[h * hd..(h + 1) * hd], &keys, &values, h * hd, d, &mut out);
                out
            })
            .collect();
        for (h0, heads) in [(0, n_head), (0, 1), (1, 3), (4, 1), (2, 3)] {
            let mut out = vec![0f32; heads * hd];
            attend_heads(&q[h0 * hd..(h0 + heads) * hd], &keys, &values, h0, hd, d, &mut out);
            let want = &alone[h0 * hd..(h0 + heads) * hd];
            assert!(out.iter().zip(want).all(|(a, b)| a.to_bits() == b.to_bits()), "s={s} heads {h0}+{heads}");
        }
    }
}

#[test]
fn gelu_matches_the_tanh_formula() {
    let x: Vec<f32> = (-20000..20000).map(|i| i as f32 * 1e-3).chain([-100.0, 100.0, 0.0]).collect();
    let y = gelu_tanh(&x);
    for (&v, &g) in x.iter().zip(&y) {
        let v64 = v as f64;
        let want = 0.5 * v64 * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v64 + 0.044715 * v64.powi(3))).tanh());
        assert!((g as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()), "gelu({v}) = {g}, want {want}");
    }
}

#[test]
fn rows_dot_matches_naive_and_rows_are_independent() {
    for &(m, d, v) in &[(1, 7, 5), (3, 64, 1300), (6, 33, 1031), (9, 200, 70)] {
        let h = data(m * d, 4);
        let w = data(v * d, 5);
        let got = rows_dot(&h, &w, m, d, v);
        for r in 0..m {
            for o in 0..v {
                let e: f64 = (0..d).map(|i| h[r * d + i] as f64 * w[o * d + i] as f64).sum();
                let g = got[r * v + o];
                assert!((g as f64 - e).abs() < 1e-4 * (1.0 + e.abs()), "{g} vs {e}");
            }
            // One row alone takes the single-row loop; in a batch, the grouped one.
            let alone = rows_dot(&h[r * d..(r + 1) * d], &w, 1, d, v);
            assert_eq!(alone[..], got[r * v..(r + 1) * v], "m={m} row {r} alone, bit for bit");
        }
    }
}

#[test]
fn matches_naive_on_odd_shapes() {
    for &(m, k, n) in &[(1, 7, 5), (3, 64, 300), (6, 130, 1031), (16, 9, 2049), (2, 4, 1)] {
        let x = data(m * k, 1);
        let w = data(k * n, 2);
        let b = data(n, 3);
        for bias in [None, Some(b.as_slice())] {
            let got = matmul_reference(&x, &w, bias, m, k, n);
            let want = naive(&x, &w, bias, m, k, n);
            for (g, e) in got.iter().zip(&want) {
                assert!((g - e).abs() < 1e-4 * (1.0 + e.abs()), "m={m} k={k} n={n}: {g} vs {e}");
            }
        }
    }
}

/// The same bits whatever the thread count: every product (panels in f32 and bf16, the
/// row-major reference, q8_0, the tied lm_head) run in pools of 1, 2, 3 and 8 threads, for one
/// row (decode) and many (prefill), on shapes whose outputs split unevenly over the threads.
#[test]
fn products_give_the_same_bits_on_any_thread_count() {
    use crate::quant::{matmul_t, Q8Blocks, Q8Rows, QK8_0};
    let pool = |t: usize| rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap();
    for (k, n) in [(320usize, 1600usize), (640, 224), (96, 50)] {
        let w = test_data(k * n, 31);
        let wp = pack_panels(&w, k, n);
        let bf: Vec<u16> = w.iter().map(|&v| half::bf16::from_f32(v).to_bits()).collect();
        let bfp = pack_panels(&bf, k, n);
        let q = Q8Rows::pack(Q8Blocks::quantize(&w), k / QK8_0); // w read as [n, k]
        let bias = test_data(n, 32);
        // 256 rows: x^T in several chunks of weight rows (`blocked::block_order`).
        for m in [1usize, 6, 17, 70, 256] {
            let x = test_data(m * k, 33);
            let run = || {
                (
                    matmul_panels(&x, &wp, Some(&bias), m, k, n),
                    matmul_panels(&x, bf16_bits(&bfp), None, m, k, n),
                    matmul_reference(&x, &w, None, m, k, n),
                    matmul_t(&x, &q, Some(&bias), m, k, n),
                    rows_dot(&x, &w, m, k, n), // w read as [n, k]
                )
            };
            let one = pool(1).install(run);
            assert_eq!(one.0, one.2.iter().zip(bias.iter().cycle()).map(|(y, b)| y + b).collect::<Vec<_>>(), "panels = reference k={k} n={n} m={m}");
            for t in [2, 3, 8] {
                assert!(pool(t).install(run) == one, "{t} threads k={k} n={n} m={m}");
            }
        }
    }
}
