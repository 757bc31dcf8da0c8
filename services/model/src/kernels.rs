//! CPU kernels for the memory-bound shapes of decoding.
//!
//! Decoding multiplies a handful of rows (batch x 1 token) by every weight matrix: the time goes
//! to streaming the weights from memory, once per step. A general GEMM tiles for reuse and leaves
//! bandwidth on the table at m <= 16; `small_m_matmul` instead streams each weight row once,
//! uses it for all m input rows while it is in L1, and splits the output columns over threads.

use rayon::prelude::*;

/// Rows at or below this use [`small_m_matmul`]; above, candle's GEMM wins.
pub const SMALL_M_MAX: usize = 16;

/// Column tile (floats) one task works on: 4 weight rows of it stay in L1.
const TILE: usize = 256;

/// `y[m, n] = x[m, k] . w[k, n] (+ bias[n])`, all row-major f32; `w` in GPT-2's Conv1D layout.
pub fn small_m_matmul(x: &[f32], w: &[f32], bias: Option<&[f32]>, m: usize, k: usize, n: usize) -> Vec<f32> {
    assert_eq!(x.len(), m * k, "x shape");
    assert_eq!(w.len(), k * n, "w shape");
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "bias shape");
    }
    // Column blocks, each owned by one task: contiguous output, strided-but-long weight reads.
    let threads = rayon::current_num_threads().max(1);
    let block = {
        let per_thread = n.div_ceil(threads * 4);
        per_thread.div_ceil(TILE).max(1) * TILE
    };
    let n_blocks = n.div_ceil(block);
    let mut blocks: Vec<Vec<f32>> = (0..n_blocks)
        .into_par_iter()
        .map(|bi| {
            let c0 = bi * block;
            let c1 = (c0 + block).min(n);
            let width = c1 - c0;
            let mut acc = vec![0f32; m * width];
            if let Some(b) = bias {
                for r in 0..m {
                    acc[r * width..(r + 1) * width].copy_from_slice(&b[c0..c1]);
                }
            }
            column_block(x, w, &mut acc, m, k, n, c0, width);
            acc
        })
        .collect();
    if n_blocks == 1 {
        return blocks.pop().unwrap();
    }
    let mut y = vec![0f32; m * n];
    for (bi, acc) in blocks.iter().enumerate() {
        let c0 = bi * block;
        let width = acc.len() / m;
        for r in 0..m {
            y[r * n + c0..r * n + c0 + width].copy_from_slice(&acc[r * width..(r + 1) * width]);
        }
    }
    y
}

#[allow(clippy::too_many_arguments)]
fn column_block(x: &[f32], w: &[f32], acc: &mut [f32], m: usize, k: usize, n: usize, c0: usize, width: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the features were just detected on this CPU.
            unsafe { column_block_avx2(x, w, acc, m, k, n, c0, width) };
            return;
        }
    }
    column_block_generic(x, w, acc, m, k, n, c0, width)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn column_block_avx2(x: &[f32], w: &[f32], acc: &mut [f32], m: usize, k: usize, n: usize, c0: usize, width: usize) {
    column_block_generic(x, w, acc, m, k, n, c0, width)
}

/// Accumulates 4 weight rows at a time into each output row, tile by tile.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn column_block_generic(x: &[f32], w: &[f32], acc: &mut [f32], m: usize, k: usize, n: usize, c0: usize, width: usize) {
    let mut t0 = 0;
    while t0 < width {
        let tw = TILE.min(width - t0);
        let mut i = 0;
        while i + 4 <= k {
            let row = |j: usize| &w[(i + j) * n + c0 + t0..(i + j) * n + c0 + t0 + tw];
            let (w0, w1, w2, w3) = (row(0), row(1), row(2), row(3));
            for r in 0..m {
                let xr = &x[r * k + i..r * k + i + 4];
                let (a0, a1, a2, a3) = (xr[0], xr[1], xr[2], xr[3]);
                let out = &mut acc[r * width + t0..r * width + t0 + tw];
                for c in 0..tw {
                    out[c] = w3[c].mul_add(a3, w2[c].mul_add(a2, w1[c].mul_add(a1, w0[c].mul_add(a0, out[c]))));
                }
            }
            i += 4;
        }
        while i < k {
            let w0 = &w[i * n + c0 + t0..i * n + c0 + t0 + tw];
            for r in 0..m {
                let a0 = x[r * k + i];
                let out = &mut acc[r * width + t0..r * width + t0 + tw];
                for c in 0..tw {
                    out[c] = w0[c].mul_add(a0, out[c]);
                }
            }
            i += 1;
        }
        t0 += tw;
    }
}

/// `y[m, v] = h[m, d] . w[v, d]^T`: the tied lm_head, whose rows are the vocabulary embeddings.
/// Each weight row is read once and dotted with all m hidden rows.
pub fn rows_dot(h: &[f32], w: &[f32], m: usize, d: usize, v: usize) -> Vec<f32> {
    assert_eq!(h.len(), m * d, "h shape");
    assert_eq!(w.len(), v * d, "w shape");
    const ROWS: usize = 512;
    let mut yt = vec![0f32; v * m]; // [v, m], transposed at the end
    yt.par_chunks_mut(ROWS * m).enumerate().for_each(|(ci, out)| {
        let o0 = ci * ROWS;
        let n_rows = out.len() / m;
        dot_rows(h, &w[o0 * d..(o0 + n_rows) * d], out, m, d);
    });
    let mut y = vec![0f32; m * v];
    for o in 0..v {
        for r in 0..m {
            y[r * v + o] = yt[o * m + r];
        }
    }
    y
}

fn dot_rows(h: &[f32], w: &[f32], out: &mut [f32], m: usize, d: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the features were just detected on this CPU.
            unsafe { dot_rows_avx2(h, w, out, m, d) };
            return;
        }
    }
    dot_rows_generic(h, w, out, m, d)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_rows_avx2(h: &[f32], w: &[f32], out: &mut [f32], m: usize, d: usize) {
    dot_rows_generic(h, w, out, m, d)
}

#[inline(always)]
fn dot_rows_generic(h: &[f32], w: &[f32], out: &mut [f32], m: usize, d: usize) {
    const L: usize = 16;
    for (o, wr) in w.chunks_exact(d).enumerate() {
        for r in 0..m {
            let hr = &h[r * d..(r + 1) * d];
            let mut lanes = [0f32; L];
            let mut wc = wr.chunks_exact(L);
            let mut hc = hr.chunks_exact(L);
            for (a, b) in (&mut wc).zip(&mut hc) {
                for j in 0..L {
                    lanes[j] = a[j].mul_add(b[j], lanes[j]);
                }
            }
            let mut s: f32 = lanes.iter().sum();
            for (a, b) in wc.remainder().iter().zip(hc.remainder()) {
                s = a.mul_add(*b, s);
            }
            out[o * m + r] = s;
        }
    }
}

#[cfg(test)]
mod tests {
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

    fn data(len: usize, seed: u32) -> Vec<f32> {
        (0..len).map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0).collect()
    }

    #[test]
    fn rows_dot_matches_naive() {
        for &(m, d, v) in &[(1, 7, 5), (3, 64, 1300), (6, 33, 1031)] {
            let h = data(m * d, 4);
            let w = data(v * d, 5);
            let got = rows_dot(&h, &w, m, d, v);
            for r in 0..m {
                for o in 0..v {
                    let e: f64 = (0..d).map(|i| h[r * d + i] as f64 * w[o * d + i] as f64).sum();
                    let g = got[r * v + o];
                    assert!((g as f64 - e).abs() < 1e-4 * (1.0 + e.abs()), "{g} vs {e}");
                }
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
                let got = small_m_matmul(&x, &w, bias, m, k, n);
                let want = naive(&x, &w, bias, m, k, n);
                for (g, e) in got.iter().zip(&want) {
                    assert!((g - e).abs() < 1e-4 * (1.0 + e.abs()), "m={m} k={k} n={n}: {g} vs {e}");
                }
            }
        }
    }
}
