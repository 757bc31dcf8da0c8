//! Rate of the small-m kernels per weight format, on GPT-2-XL's MLP matrix shapes ([1600, 6400]
//! and back) x 12 (beyond the caches), beside this machine's read bandwidth: GB/s of weights
//! read and G weights/s. `--qmatmul`: our q8_0 kernel against candle's `QMatMul`. Printed,
//! never asserted.
//!
//!     cargo run --release -p steer-model --example dtypes [-- --qmatmul]

use std::time::Instant;

use steer_model::candle_core::{Device, Tensor};
use steer_model::matrix::{Layout, Matrix, Role, Source};
use steer_model::WeightDtype;

fn main() {
    if std::env::args().any(|a| a == "--qmatmul") {
        return qmatmul();
    }
    let (d, inner, copies) = (1600usize, 6400usize, 12usize);
    let dev = Device::Cpu;
    let buf = vec![1f32; 1 << 28];
    let t = Instant::now();
    for _ in 0..5 {
        std::hint::black_box(steer_model::kernels::stream_sum(&buf));
    }
    println!("read bandwidth: {:.1} GB/s", 5.0 * (buf.len() * 4) as f64 / t.elapsed().as_secs_f64() / 1e9);
    drop(buf);
    let data: Vec<f32> = (0..d * inner).map(|i| ((i as u32).wrapping_mul(2654435761) % 1000) as f32 / 5e4 - 0.01).collect();
    let only: Option<WeightDtype> = std::env::var("ONLY").ok().and_then(|d| d.parse().ok());
    let ms: Vec<usize> = std::env::var("M").ok().map_or(vec![1, 6], |m| vec![m.parse().unwrap()]);
    for dtype in WeightDtype::ALL.into_iter().filter(|d| only.is_none_or(|o| o == *d)) {
        let mats: Vec<(Matrix, Matrix)> = (0..copies)
            .map(|_| {
                let up = Matrix::new(Source::F32(data.clone()), Layout::InOut, d, inner, Role::Linear, dtype, &dev).unwrap();
                let down = Matrix::new(Source::F32(data.clone()), Layout::InOut, inner, d, Role::Linear, dtype, &dev).unwrap();
                (up, down)
            })
            .collect();
        let bytes: usize = mats.iter().map(|(u, w)| u.bytes() + w.bytes()).sum();
        for &m in &ms {
            let x = Tensor::ones((m, d), steer_model::DType::F32, &dev).unwrap();
            let mut best = f64::MAX;
            for _ in 0..5 {
                let t = Instant::now();
                for (up, down) in &mats {
                    let h = up.matmul(&x, None).unwrap();
                    std::hint::black_box(down.matmul(&h, None).unwrap());
                }
                best = best.min(t.elapsed().as_secs_f64());
            }
            println!(
                "{dtype:>5} m={m}: {:.1} GB/s of weights, {:.1} G weights/s",
                bytes as f64 / best / 1e9,
                (2 * copies * d * inner) as f64 / best / 1e9
            );
        }
    }
}

/// Our q8_0 kernel against candle's `QMatMul` on the same q8_0 weights (XL's MLP shapes).
fn qmatmul() {
    use steer_model::candle_core::quantized::{GgmlDType, QMatMul, QTensor};
    use steer_model::candle_core::Module;
    let (d, inner, copies) = (1600usize, 6400usize, 12usize);
    let dev = Device::Cpu;
    let data: Vec<f32> = (0..d * inner).map(|i| ((i as u32).wrapping_mul(2654435761) % 1000) as f32 / 5e4 - 0.01).collect();
    let ours: Vec<(Matrix, Matrix)> = (0..copies)
        .map(|_| {
            let up = Matrix::new(Source::F32(data.clone()), Layout::OutIn, d, inner, Role::Linear, WeightDtype::Q8_0, &dev).unwrap();
            let down = Matrix::new(Source::F32(data.clone()), Layout::OutIn, inner, d, Role::Linear, WeightDtype::Q8_0, &dev).unwrap();
            (up, down)
        })
        .collect();
    let theirs: Vec<(QMatMul, QMatMul)> = (0..copies)
        .map(|_| {
            let q = |rows: usize, cols: usize| {
                let t = Tensor::from_slice(&data, (rows, cols), &dev).unwrap();
                QMatMul::from_qtensor(QTensor::quantize(&t, GgmlDType::Q8_0).unwrap()).unwrap()
            };
            (q(inner, d), q(d, inner))
        })
        .collect();
    let weights = (2 * copies * d * inner) as f64;
    for m in [1usize, 6] {
        let x = Tensor::ones((m, d), steer_model::DType::F32, &dev).unwrap();
        let (mut a, mut b) = (f64::MAX, f64::MAX);
        for _ in 0..5 {
            let t = Instant::now();
            for (up, down) in &ours {
                std::hint::black_box(down.matmul(&up.matmul(&x, None).unwrap(), None).unwrap());
            }
            a = a.min(t.elapsed().as_secs_f64());
            let t = Instant::now();
            for (up, down) in &theirs {
                std::hint::black_box(down.forward(&up.forward(&x).unwrap()).unwrap());
            }
            b = b.min(t.elapsed().as_secs_f64());
        }
        println!("q8_0 m={m}: ours {:.1} G weights/s, candle QMatMul {:.1} G weights/s ({:.2}x)", weights / a / 1e9, weights / b / 1e9, b / a);
    }
}
