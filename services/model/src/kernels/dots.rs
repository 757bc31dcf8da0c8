//! The tied lm_head, `h . w^T` with the vocabulary embeddings as rows.

use rayon::prelude::*;

use super::isa::isa;
#[cfg(target_arch = "x86_64")]
use super::x86::dots256;
use super::Elem;

/// `y[m, v] = h[m, d] . w[v, d]^T`: the tied lm_head, whose rows are the vocabulary embeddings.
/// Each weight row is read once and dotted with all m hidden rows.
pub fn rows_dot<E: Elem>(h: &[f32], w: &[E], m: usize, d: usize, v: usize) -> Vec<f32> {
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

fn dot_rows<E: Elem>(h: &[f32], w: &[E], out: &mut [f32], m: usize, d: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if isa().avx2 && m > 1 {
            // SAFETY: the dispatch found the features on this CPU.
            unsafe { dots256::rows(h, w, out, m, d) };
            return;
        }
        if isa().avx2 {
            // SAFETY: the dispatch found the features on this CPU.
            unsafe { dot_rows_avx2(h, w, out, m, d) };
            return;
        }
    }
    dot_rows_generic(h, w, out, m, d)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_rows_avx2<E: Elem>(h: &[f32], w: &[E], out: &mut [f32], m: usize, d: usize) {
    dot_rows_generic(h, w, out, m, d)
}

#[inline(always)]
fn dot_rows_generic<E: Elem>(h: &[f32], w: &[E], out: &mut [f32], m: usize, d: usize) {
    const L: usize = 16;
    for (o, wr) in w.chunks_exact(d).enumerate() {
        for r in 0..m {
            let hr = &h[r * d..(r + 1) * d];
            let mut lanes = [0f32; L];
            let mut wc = wr.chunks_exact(L);
            let mut hc = hr.chunks_exact(L);
            for (a, b) in (&mut wc).zip(&mut hc) {
                for j in 0..L {
                    lanes[j] = a[j].to_f32().mul_add(b[j], lanes[j]);
                }
            }
            let mut s: f32 = lanes.iter().sum();
            for (a, b) in wc.remainder().iter().zip(hc.remainder()) {
                s = a.to_f32().mul_add(*b, s);
            }
            out[o * m + r] = s;
        }
    }
}
