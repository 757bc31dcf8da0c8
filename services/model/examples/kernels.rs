//! Bandwidth of the decode kernels on GPT-2-XL shapes: `cargo run --release --example kernels`.

use std::time::Instant;

use steer_model::kernels::{bf16_bits, f16_bits, matmul_panels, matmul_reference as matmul, pack_panels, rows_dot};

/// Whether section `name` runs: all by default, or those named in `ONLY` (comma-separated:
/// cached, uncached, many, lm_head); `M` picks the rows of the uncached section.
fn wanted(name: &str) -> bool {
    std::env::var("ONLY").map_or(true, |only| only.split(',').any(|s| s == name))
}

/// The rows of x to measure: `M` (comma-separated) or `default`.
fn rows_or(default: &[usize]) -> Vec<usize> {
    std::env::var("M").map_or(default.to_vec(), |m| m.split(',').filter_map(|s| s.trim().parse().ok()).collect())
}

fn main() {
    if let Some(peak) = steer_model::kernels::fma_peak() {
        println!("f32 FMA peak, every core: {peak:.1} GFLOP/s");
    }
    for &(k, n) in if wanted("cached") { &[(1600usize, 6400usize), (6400, 1600), (1600, 4800), (1600, 1600)][..] } else { &[] } {
        let w: Vec<f32> = (0..k * n).map(|i| (i % 97) as f32 * 1e-3).collect();
        for &m in &[1usize, 6, 9, 16, 32] {
            let x: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 1e-2).collect();
            let mut best = f64::MAX;
            for _ in 0..20 {
                let t = Instant::now();
                std::hint::black_box(matmul(&x, &w, None, m, k, n));
                best = best.min(t.elapsed().as_secs_f64());
            }
            println!(
                "matmul m={m} k={k} n={n}: {:.3} ms, {:.1} GB/s, {:.1} GFLOP/s",
                best * 1e3,
                (k * n * 4) as f64 / best / 1e9,
                (2 * m * k * n) as f64 / best / 1e9
            );
        }
    }
    // Weights that do not fit in cache: 32 distinct 1600x6400 matrices (1.3 GB), as in a forward.
    // `SHAPE=KxN` measures another shape (XL's others: 6400x1600, 1600x4800, 1600x1600).
    let (k, n) = std::env::var("SHAPE")
        .ok()
        .and_then(|s| s.split_once('x').and_then(|(k, n)| Some((k.parse().ok()?, n.parse().ok()?))))
        .unwrap_or((1600usize, 6400usize));
    let count = 32 * 1600 * 6400 / (k * n);
    let ws: Vec<Vec<f32>> = (0..count).map(|j| (0..k * n).map(|i| ((i + j) % 97) as f32 * 1e-3).collect()).collect();
    // The model's layout (panels of 32 columns) against the row-major kernel, the same weights.
    let wps: Vec<Vec<f32>> = if wanted("uncached") || wanted("many") { ws.iter().map(|w| pack_panels(w, k, n)).collect() } else { vec![] };
    for m in if wanted("uncached") { rows_or(&[1, 2, 3, 4, 6, 9, 16, 32]) } else { vec![] } {
        let x: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 1e-2).collect();
        let best = |f: &dyn Fn(usize)| {
            (0..3)
                .map(|_| {
                    let t = Instant::now();
                    (0..count).for_each(f);
                    t.elapsed().as_secs_f64()
                })
                .fold(f64::MAX, f64::min)
        };
        let panels = best(&|j| drop(std::hint::black_box(matmul_panels(&x, &wps[j], None, m, k, n))));
        let rows = best(&|j| drop(std::hint::black_box(matmul(&x, &ws[j], None, m, k, n))));
        let (bytes, flops) = ((count * k * n * 4) as f64, (2 * m * k * n * count) as f64);
        println!(
            "uncached m={m}: panels {:.1} GB/s, {:.1} GFLOP/s; row-major {:.1} GB/s, {:.1} GFLOP/s",
            bytes / panels / 1e9,
            flops / panels / 1e9,
            bytes / rows / 1e9,
            flops / rows / 1e9
        );
    }
    // Many rows (prefill, scoring): our kernel against candle's GEMM, in cache-missing weights as above.
    let dev = candle_core::Device::Cpu;
    let wt: Vec<candle_core::Tensor> = ws.iter().take(8).map(|w| candle_core::Tensor::from_slice(w, (k, n), &dev).unwrap()).collect();
    for &m in if wanted("many") { &[16usize, 24, 32, 48, 64, 96, 128, 256][..] } else { &[] } {
        let x: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 1e-2).collect();
        let xt = candle_core::Tensor::from_slice(&x, (m, k), &dev).unwrap();
        let best = |f: &dyn Fn(usize)| {
            (0..3)
                .map(|_| {
                    let t = Instant::now();
                    (0..wt.len()).for_each(f);
                    t.elapsed().as_secs_f64()
                })
                .fold(f64::MAX, f64::min)
        };
        let panels = best(&|j| drop(std::hint::black_box(matmul_panels(&x, &wps[j], None, m, k, n))));
        let ours = best(&|j| drop(std::hint::black_box(matmul(&x, &ws[j], None, m, k, n))));
        let candle = best(&|j| drop(std::hint::black_box(xt.matmul(&wt[j]).unwrap())));
        let flops = (2 * m * k * n * wt.len()) as f64;
        println!(
            "many rows m={m}: panels {:.1} GFLOP/s, row-major {:.1} GFLOP/s, candle's GEMM {:.1} GFLOP/s",
            flops / panels / 1e9,
            flops / ours / 1e9,
            flops / candle / 1e9
        );
    }
    let (v, d) = (50257usize, 1600usize);
    let w: Vec<f32> = (0..v * d).map(|i| (i % 97) as f32 * 1e-3).collect();
    let bf: Vec<u16> = w.iter().map(|&x| half::bf16::from_f32(x).to_bits()).collect();
    let hf: Vec<u16> = w.iter().map(|&x| half::f16::from_f32(x).to_bits()).collect();
    for &m in if wanted("lm_head") { &[1usize, 6, 16][..] } else { &[] } {
        let h: Vec<f32> = (0..m * d).map(|i| (i % 13) as f32 * 1e-2).collect();
        let time = |f: &dyn Fn()| {
            (0..5)
                .map(|_| {
                    let t = Instant::now();
                    f();
                    t.elapsed().as_secs_f64()
                })
                .fold(f64::MAX, f64::min)
        };
        let f32_s = time(&|| drop(std::hint::black_box(rows_dot(&h, &w, m, d, v))));
        let bf_s = time(&|| drop(std::hint::black_box(rows_dot(&h, bf16_bits(&bf), m, d, v))));
        let hf_s = time(&|| drop(std::hint::black_box(rows_dot(&h, f16_bits(&hf), m, d, v))));
        println!("rows_dot m={m} lm_head: f32 {:.2} ms, bf16 {:.2} ms, f16 {:.2} ms", f32_s * 1e3, bf_s * 1e3, hf_s * 1e3);
    }
}
