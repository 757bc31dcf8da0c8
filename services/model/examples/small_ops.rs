//! Time of the non-matmul ops of a GPT-2-XL prefill (9 tokens): `cargo run --release --example small_ops`.
use std::time::Instant;
fn main() {
    let x = candle_core::Tensor::randn(0f32, 1.0, (9, 6400), &candle_core::Device::Cpu).unwrap();
    let y = x.gelu().unwrap();
    let t = Instant::now();
    for _ in 0..48 { std::hint::black_box(x.gelu().unwrap()); }
    println!("candle gelu [9,6400] x48: {:.2} ms", t.elapsed().as_secs_f64() * 1e3);
    let v = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let t = Instant::now();
    for _ in 0..48 { std::hint::black_box(steer_model::kernels::gelu_tanh(&v)); }
    println!("steer gelu [9,6400] x48: {:.2} ms", t.elapsed().as_secs_f64() * 1e3);
    let ln_w = candle_core::Tensor::ones(1600, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    let ln = candle_nn::LayerNorm::new(ln_w.clone(), ln_w.zeros_like().unwrap(), 1e-5);
    let h = candle_core::Tensor::randn(0f32, 1.0, (1, 9, 1600), &candle_core::Device::Cpu).unwrap();
    use candle_core::Module;
    let t = Instant::now();
    for _ in 0..96 { std::hint::black_box(ln.forward(&h).unwrap()); }
    println!("layernorm [9,1600] x96: {:.2} ms", t.elapsed().as_secs_f64() * 1e3);
    let q = candle_core::Tensor::randn(0f32, 1.0, (1, 25, 9, 64), &candle_core::Device::Cpu).unwrap();
    let t = Instant::now();
    for _ in 0..48 {
        let a = q.matmul(&q.t().unwrap()).unwrap();
        let a = candle_nn::ops::softmax_last_dim(&a).unwrap();
        std::hint::black_box(a.matmul(&q).unwrap().transpose(1, 2).unwrap().contiguous().unwrap());
    }
    println!("attention core [1,25,9,64] x48: {:.2} ms", t.elapsed().as_secs_f64() * 1e3);
    drop(y);
}
