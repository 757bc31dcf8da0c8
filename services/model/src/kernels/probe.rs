//! The bandwidth probe: a sequential read of a buffer by every core.

use rayon::prelude::*;

use super::isa::isa;

/// Sum of `buf`, read once front to back by every core (one contiguous part each): the
/// sequential read that bounds the decode kernels, for measuring a machine's read bandwidth.
pub fn stream_sum(buf: &[f32]) -> f32 {
    let threads = rayon::current_num_threads().max(1);
    buf.par_chunks(buf.len().div_ceil(threads).max(1)).map(sum_part).sum()
}

fn sum_part(part: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if isa().avx2 {
            // SAFETY: the dispatch found the features on this CPU.
            return unsafe { sum_part_avx2(part) };
        }
    }
    sum_part_generic(part)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn sum_part_avx2(part: &[f32]) -> f32 {
    sum_part_generic(part)
}

#[inline(always)]
fn sum_part_generic(part: &[f32]) -> f32 {
    // 64 independent lanes: the adds never wait on each other, only on memory.
    let mut lanes = [0f32; 64];
    let mut chunks = part.chunks_exact(64);
    for c in &mut chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l += v;
        }
    }
    lanes.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}
