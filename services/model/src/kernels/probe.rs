//! This machine's limits, measured: the read bandwidth that bounds memory-bound decode (batch 1)
//! and the FMA rate that bounds compute-bound steps (16+ rows, prefill). `steer bench` states
//! each dtype's figures against them.
//!
//! One access pattern is not the limit: on this project's 2-core hosts a single stream per core
//! read 26-31 GB/s while llama.cpp drew ~31 GB/s streaming XL's f32 weights, so a "% of the
//! limit" from it flattered every engine. [`read_bandwidth`] runs several patterns and thread
//! layouts and keeps the best.

use std::time::Instant;

use rayon::prelude::*;

use super::isa::isa;

/// Sum of `buf`, read once front to back by every core (one contiguous part each): the
/// sequential read that bounds the decode kernels.
pub fn stream_sum(buf: &[f32]) -> f32 {
    sum_with(buf, Pattern::Halves)
}

/// How a buffer is read by the threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// One contiguous part per thread, one stream each.
    Halves,
    /// Blocks of 64 KiB dealt to the threads in turn (neighbouring threads on neighbouring pages).
    Interleaved,
    /// One contiguous part per thread, read as 4 streams side by side (as the panel kernels read
    /// 3-4 panels at once).
    FourStreams,
    /// One contiguous part per thread, one stream with software prefetch 2 KiB ahead.
    Prefetched,
    /// The calling thread alone, one stream.
    OneThread,
}

impl Pattern {
    pub const ALL: [Pattern; 5] = [Pattern::Halves, Pattern::Interleaved, Pattern::FourStreams, Pattern::Prefetched, Pattern::OneThread];

    pub fn name(self) -> &'static str {
        match self {
            Pattern::Halves => "a part per core",
            Pattern::Interleaved => "64 KiB blocks dealt round",
            Pattern::FourStreams => "4 streams per core",
            Pattern::Prefetched => "prefetched",
            Pattern::OneThread => "one core",
        }
    }
}

/// What [`read_bandwidth`] found.
#[derive(Debug, Clone)]
pub struct Bandwidth {
    /// GB/s: the fastest pass of any pattern. On a shared host another tenant can only slow a
    /// pass down, never speed it up, so the fastest pass is the nearest to the machine's limit
    /// (a median of 7 had read 24.8 GB/s a minute before XL's f32 decode drew 27.6).
    pub best: f64,
    pub best_pattern: Pattern,
    /// (pattern, median GB/s, min, max) of every pattern.
    pub patterns: Vec<(Pattern, f64, f64, f64)>,
}

/// This machine's read bandwidth, GB/s: a 1 GiB buffer (larger than any cache) summed in each of
/// [`Pattern::ALL`], `passes` times each with the patterns alternated (a shared host's
/// bandwidth moves within a minute), the fastest pass kept.
pub fn read_bandwidth(passes: usize) -> Bandwidth {
    let buf = vec![1f32; 1 << 28];
    let mut rates: Vec<Vec<f64>> = vec![vec![]; Pattern::ALL.len()];
    for _ in 0..passes.max(1) {
        for (p, r) in Pattern::ALL.iter().zip(rates.iter_mut()) {
            let t = Instant::now();
            std::hint::black_box(sum_with(&buf, *p));
            r.push((buf.len() * 4) as f64 / t.elapsed().as_secs_f64() / 1e9);
        }
    }
    let patterns: Vec<(Pattern, f64, f64, f64)> = Pattern::ALL
        .iter()
        .zip(rates.iter_mut())
        .map(|(&p, r)| {
            r.sort_by(f64::total_cmp);
            (p, r[r.len() / 2], r[0], r[r.len() - 1])
        })
        .collect();
    let &(best_pattern, _, _, best) = patterns.iter().max_by(|a, b| a.3.total_cmp(&b.3)).expect("patterns");
    Bandwidth { best, best_pattern, patterns }
}

/// `buf` summed in `pattern`.
pub fn sum_with(buf: &[f32], pattern: Pattern) -> f32 {
    let threads = rayon::current_num_threads().max(1);
    match pattern {
        Pattern::Halves => buf.par_chunks(buf.len().div_ceil(threads).max(1)).map(|p| sum_part(p, 1, false)).sum(),
        Pattern::FourStreams => buf.par_chunks(buf.len().div_ceil(threads).max(1)).map(|p| sum_part(p, 4, false)).sum(),
        Pattern::Prefetched => buf.par_chunks(buf.len().div_ceil(threads).max(1)).map(|p| sum_part(p, 1, true)).sum(),
        Pattern::Interleaved => {
            const BLOCK: usize = 16 << 10; // floats: 64 KiB
            let blocks = buf.len().div_ceil(BLOCK);
            (0..threads)
                .into_par_iter()
                .map(|t| (t..blocks).step_by(threads).map(|b| sum_part(&buf[b * BLOCK..((b + 1) * BLOCK).min(buf.len())], 1, false)).sum::<f32>())
                .sum()
        }
        Pattern::OneThread => sum_part(buf, 1, false),
    }
}

fn sum_part(part: &[f32], streams: usize, prefetch: bool) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if isa().avx2 {
            // SAFETY: the dispatch found the features on this CPU.
            return unsafe { sum_part_avx2(part, streams, prefetch) };
        }
    }
    sum_part_generic(part, streams, prefetch)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn sum_part_avx2(part: &[f32], streams: usize, prefetch: bool) -> f32 {
    sum_part_generic(part, streams, prefetch)
}

#[inline(always)]
fn sum_part_generic(part: &[f32], streams: usize, prefetch: bool) -> f32 {
    const LANES: usize = 64;
    // `streams` equal runs read side by side, 64 independent lanes each: the adds never wait on
    // each other, only on memory.
    let run = part.len() / streams / LANES * LANES;
    let mut lanes = [[0f32; LANES]; 4];
    for i in (0..run).step_by(LANES) {
        for (s, lane) in lanes.iter_mut().enumerate().take(streams) {
            let at = s * run + i;
            #[cfg(target_arch = "x86_64")]
            if prefetch && at + 512 < part.len() {
                // SAFETY: a hint only; the address is inside `part`.
                unsafe { std::arch::x86_64::_mm_prefetch(part.as_ptr().add(at + 512) as *const i8, std::arch::x86_64::_MM_HINT_T0) };
            }
            for (l, v) in lane.iter_mut().zip(&part[at..at + LANES]) {
                *l += v;
            }
        }
    }
    let _ = prefetch;
    lanes.iter().flatten().sum::<f32>() + part[run * streams..].iter().sum::<f32>()
}

/// This machine's f32 FMA rate with every core busy, GFLOP/s: 12 independent chains of FMAs per
/// thread in the widest vectors the kernels use (512-bit where they do), so the figure is the
/// pipes' throughput, the ceiling for compute-bound steps. `None` without AVX2 and FMA.
pub fn fma_peak() -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        #[target_feature(enable = "avx2,fma")]
        unsafe fn chains256(n: usize) -> f32 {
            let mut a = [_mm256_set1_ps(0.1); 12];
            let (b, c) = (_mm256_set1_ps(0.9999), _mm256_set1_ps(1e-6));
            for _ in 0..n {
                for x in a.iter_mut() {
                    *x = _mm256_fmadd_ps(*x, b, c);
                }
            }
            a.iter().map(|&x| _mm256_cvtss_f32(x)).sum()
        }
        #[target_feature(enable = "avx512f")]
        unsafe fn chains512(n: usize) -> f32 {
            let mut a = [_mm512_set1_ps(0.1); 12];
            let (b, c) = (_mm512_set1_ps(0.9999), _mm512_set1_ps(1e-6));
            for _ in 0..n {
                for x in a.iter_mut() {
                    *x = _mm512_fmadd_ps(*x, b, c);
                }
            }
            a.iter().map(|&x| _mm512_reduce_add_ps(x)).sum()
        }
        if !isa().avx2 {
            return None;
        }
        let (wide, n) = (isa().avx512, 20_000_000usize);
        // SAFETY: the dispatch found the features on this CPU.
        let (threads, secs) = on_every_core(|| unsafe {
            if wide {
                chains512(n / 2) as f64
            } else {
                chains256(n) as f64
            }
        });
        Some((threads * n * 12 * 16) as f64 / secs / 1e9)
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// The int8 dot products' peak on every core, in GOP/s (a multiply and an add count 2, as in
/// [`fma_peak`]), for the instructions q8_0's kernels run: with AVX512-VNNI `vpdpbusd` on 512
/// bits (12 chains), with AVX2 the `sign` + `maddubs` + `madd` + `add` of 32 products per row,
/// 6 rows to each weight vector (whose `abs` is shared), all in registers. The limit q8_0's
/// many-row steps are held to: on the AVX2 Zen 3 host it read 1.36-1.43x [`fma_peak`] in three
/// runs and 0.97x in a fourth.
/// `None` without AVX2.
pub fn int8_dot_peak() -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        #[target_feature(enable = "avx2")]
        unsafe fn rows256(n: usize) -> i32 {
            let (ones, step) = (_mm256_set1_epi16(1), _mm256_set1_epi8(1));
            let x: [__m256i; 6] = std::array::from_fn(|i| _mm256_set1_epi8(i as i8 - 3));
            let (mut w, mut acc) = (_mm256_set1_epi8(-5), [_mm256_setzero_si256(); 6]);
            for _ in 0..n {
                w = _mm256_add_epi8(w, step);
                let abs_w = _mm256_abs_epi8(w);
                for (acc, x) in acc.iter_mut().zip(x) {
                    let p = _mm256_maddubs_epi16(abs_w, _mm256_sign_epi8(x, w));
                    *acc = _mm256_add_epi32(*acc, _mm256_madd_epi16(p, ones));
                }
            }
            acc.iter().map(|&a| _mm256_extract_epi32::<0>(a)).sum()
        }
        #[target_feature(enable = "avx512f,avx512vnni")]
        unsafe fn chains512(n: usize) -> i32 {
            let (w, x) = (_mm512_set1_epi8(3), _mm512_set1_epi8(-2));
            let mut acc = [_mm512_setzero_si512(); 12];
            for _ in 0..n {
                for a in acc.iter_mut() {
                    *a = _mm512_dpbusd_epi32(*a, w, x);
                }
            }
            acc.iter().map(|&a| _mm512_reduce_add_epi32(a)).sum()
        }
        if !isa().avx2 {
            return None;
        }
        let (vnni, n) = (isa().vnni, 10_000_000usize);
        // SAFETY: the dispatch found the features on this CPU.
        let (threads, secs) = on_every_core(|| unsafe {
            if vnni {
                chains512(n) as f64
            } else {
                rows256(n) as f64
            }
        });
        // Products per iteration: 12 x 64 (VNNI), 6 x 32 (AVX2); 2 ops each.
        let products = if vnni { 12 * 64 } else { 6 * 32 };
        Some((threads * n * products * 2) as f64 / secs / 1e9)
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// `work` on one thread per core of the compute pool at once: (threads, seconds for all).
fn on_every_core(work: impl Fn() -> f64 + Sync) -> (usize, f64) {
    let threads = rayon::current_num_threads().max(1);
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| std::hint::black_box(work()));
        }
    });
    (threads, t.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pattern_reads_every_value_once() {
        let buf: Vec<f32> = (0..(1 << 20) + 77).map(|i| (i % 5) as f32).collect();
        let want: f64 = buf.iter().map(|&v| v as f64).sum();
        for p in Pattern::ALL {
            assert_eq!(sum_with(&buf, p) as f64, want, "{p:?}");
        }
    }
}
