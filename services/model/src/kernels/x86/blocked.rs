//! The kernel for 2+ rows (compute-bound): 6 rows x 16 columns of sums held in registers
//! while `KC` weight rows go by, each weight vector loaded once for the 6 rows and each x value
//! broadcast once for the 16 columns (BLIS's 6x16 AVX2 micro-kernel; x is packed transposed per
//! slab so that the broadcasts read consecutive floats); 16-bit weights are converted as they are
//! loaded, once for the 6 rows. Every output element is still one FMA
//! chain over the slab's weight rows in ascending order, `w * x + sum`: the same operations in
//! the same order as [`row_slab_generic`], so the same bits, whichever kernel a row goes through.

use super::{load16, load8};
use crate::kernels::Elem;
use std::arch::x86_64::*;
use std::ops::Range;

/// Weight rows per block: the sums are loaded and stored once per block (8 against 16 and
/// 32: 151 against 114 and 95 GFLOP/s at 16 rows, the same at 9 and 32).
const KC: usize = 8;
/// Bytes of sums per column tile of the streaming order.
const ACC_BYTES: usize = 256 << 10;
const MR: usize = 6;
const NR: usize = 16;

/// Rows from which [`row_slab_packed`] takes over.
const PACKED_MIN_ROWS: usize = 48;
/// Weight rows and columns of a packed block (32 KiB of f32), used from L1/L2 by every group
/// of rows of x. Measured with 256-bit sums, GFLOP/s at 64/128/256 rows, PK x PC: 8 x 512
/// 91/98/99, 16 x 256 107/111/128, 32 x 128 125-130/146/152, 64 x 64 136/154/166, 128 x 32
/// 139/163/177, 128 x 64 133/158/172, 256 x 16 119/151/172 (128 x 64 kept: two 512-bit panels).
const PK: usize = 128;
const PC: usize = 64;

/// x^T over the slab: `xt[(i - i0) * m + r] = x[r, i]`.
fn transpose(x: &[f32], m: usize, k: usize, i0: usize, i1: usize) -> Vec<f32> {
    let mut xt = vec![0f32; (i1 - i0) * m];
    for r in 0..m {
        for i in i0..i1 {
            xt[(i - i0) * m + r] = x[r * k + i];
        }
    }
    xt
}

/// Groups of up to 6 rows of x over one 16-column panel: `xr` at the block's first weight
/// row (x^T, stride `m`), `wr` at its first weight (stride `ws`), `ar` at the sums (stride `n`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn panel<E: Elem>(xr: *const f32, wr: *const E, ws: usize, rows: usize, ar: *mut f32, m: usize, n: usize, pf: Pf<E>, j0: usize) {
    let groups = m.div_ceil(MR);
    let mut r0 = 0;
    for g in 0..groups {
        // Groups of even size (9 rows: 5 + 4, not 6 + 3, whose 6 chains of sums wait on
        // the FMA latency).
        let size = (m - r0).div_ceil(groups - g);
        let (x, a) = (xr.add(r0), ar.add(r0 * n));
        let pf = pf.pass(j0 + g);
        match size {
            1 => micro::<E, 1>(x, m, wr, ws, rows, a, n, pf),
            2 => micro::<E, 2>(x, m, wr, ws, rows, a, n, pf),
            3 => micro::<E, 3>(x, m, wr, ws, rows, a, n, pf),
            4 => micro::<E, 4>(x, m, wr, ws, rows, a, n, pf),
            5 => micro::<E, 5>(x, m, wr, ws, rows, a, n, pf),
            _ => micro::<E, MR>(x, m, wr, ws, rows, a, n, pf),
        }
        r0 += size;
    }
}

/// The weight rows of the next block to prefetch, shared out over the passes of this one.
#[derive(Clone, Copy)]
struct Pf<E> {
    /// The next block's first row (null: nothing to prefetch).
    next: *const E,
    /// Its rows.
    len: usize,
    /// Passes over the current block, and its rows.
    passes: usize,
    rows: usize,
}

/// What one pass prefetches: `count` rows from `from`, one every `every` steps.
#[derive(Clone, Copy)]
struct PfPass<E> {
    from: *const E,
    count: usize,
    every: usize,
    /// Rows prefetched so far.
    done: usize,
}

impl<E: Elem> PfPass<E> {
    const NONE: Self = PfPass { from: std::ptr::null(), count: 0, every: 1, done: 0 };

    /// Prefetches the rows due by step `i` of the pass (`usize::MAX`: all that are left).
    #[inline(always)]
    unsafe fn upto(&mut self, i: usize) {
        while self.done < self.count && self.done * self.every <= i {
            prefetch_row(self.from, self.done);
            self.done += 1;
        }
    }
}

impl<E: Elem> Pf<E> {
    const NONE: Self = Pf { next: std::ptr::null(), len: 0, passes: 1, rows: 1 };

    #[inline(always)]
    unsafe fn pass(self, j: usize) -> PfPass<E> {
        if self.next.is_null() || j >= self.passes {
            return PfPass::NONE;
        }
        let q = self.len.div_ceil(self.passes);
        let start = (j * q).min(self.len);
        let count = q.min(self.len - start);
        PfPass { from: self.next.add(start * 2 * NR), count, every: (self.rows / q.max(1)).max(1), done: 0 }
    }
}

/// The columns past the last whole panel, one FMA at a time, weight rows `kb..ke`.
#[allow(clippy::too_many_arguments)]
fn tail<E: Elem>(xt: &[f32], w: &[E], acc: &mut [f32], m: usize, n: usize, i0: usize, kb: usize, ke: usize, from: usize) {
    for r in 0..m {
        for i in kb..ke {
            let xv = xt[(i - i0) * m + r];
            for c in from..n {
                acc[r * n + c] = w[i * n + c].to_f32().mul_add(xv, acc[r * n + c]);
            }
        }
    }
}

/// The streaming or the packed order by m, with 256-bit or (`Z`) 512-bit sums.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn slab<E: Elem, const Z: bool>(x: &[f32], w: &[E], acc: &mut [f32], m: usize, k: usize, n: usize, i0: usize, i1: usize) {
    if m >= PACKED_MIN_ROWS {
        row_slab_packed::<E, Z>(x, w, acc, m, k, n, i0, i1)
    } else {
        row_slab_streaming::<E, Z>(x, w, acc, m, k, n, i0, i1)
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn row_slab<E: Elem>(x: &[f32], w: &[E], acc: &mut [f32], m: usize, k: usize, n: usize, i0: usize, i1: usize) {
    slab::<E, false>(x, w, acc, m, k, n, i0, i1)
}

/// [`row_slab`] with 8 rows x 32 columns of 512-bit sums where the panels allow (the same
/// FMAs per sum in the same order: the same bits). On Zen 4 a 512-bit FMA takes the two
/// 256-bit pipes, so the gain is in the instructions around it: 2 weight loads and 8
/// broadcasts per 16 FMAs of 16 lanes against 2 and 6 per 12 of 8.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn row_slab_512<E: Elem>(x: &[f32], w: &[E], acc: &mut [f32], m: usize, k: usize, n: usize, i0: usize, i1: usize) {
    slab::<E, true>(x, w, acc, m, k, n, i0, i1)
}

/// One 16- or (`Z`) 32-column panel where it fits, from column `c0`; returns its width.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn panel_at<E: Elem, const Z: bool>(
    xr: *const f32,
    wr: *const E,
    ws: usize,
    rows: usize,
    ar: *mut f32,
    m: usize,
    n: usize,
    left: usize,
) -> usize {
    if Z && left >= 2 * NR {
        panel_512(xr, wr, ws, rows, ar, m, n, Pf::NONE);
        2 * NR
    } else {
        panel(xr, wr, ws, rows, ar, m, n, Pf::NONE, 0);
        NR
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn row_slab_streaming<E: Elem, const Z: bool>(x: &[f32], w: &[E], acc: &mut [f32], m: usize, k: usize, n: usize, i0: usize, i1: usize) {
    let xt = transpose(x, m, k, i0, i1);
    let whole = n / NR * NR;
    // Column tiles whose sums stay in L2 between blocks.
    let tile = (ACC_BYTES / (m * 4) / (2 * NR) * (2 * NR)).max(2 * NR);
    let mut ct = 0;
    while ct < whole {
        let ce = (ct + tile).min(whole);
        let mut kb = i0;
        while kb < i1 {
            let ke = (kb + KC).min(i1);
            let mut c0 = ct;
            while c0 < ce {
                // Each 16 columns read one new line of each of the block's weight rows:
                // fetch them 64 columns ahead (without: 121-125 against 129-130 GFLOP/s at 9
                // rows, 128-132 against 148-154 at 16, 89-90 against 127-131 at 32).
                for i in kb..ke {
                    _mm_prefetch::<_MM_HINT_T0>(w.as_ptr().wrapping_add(i * n + c0 + 4 * NR).cast());
                    if Z {
                        _mm_prefetch::<_MM_HINT_T0>(w.as_ptr().wrapping_add(i * n + c0 + 5 * NR).cast());
                    }
                }
                c0 += panel_at::<E, Z>(
                    xt.as_ptr().add((kb - i0) * m),
                    w.as_ptr().add(kb * n + c0),
                    n,
                    ke - kb,
                    acc.as_mut_ptr().add(c0),
                    m,
                    n,
                    ce - c0,
                );
            }
            kb = ke;
        }
        ct = ce;
    }
    tail(&xt, w, acc, m, n, i0, i0, i1, whole);
}

/// Many rows of x (prefill, scoring; compute-bound): the sums of all rows for `PC` columns
/// stay in cache while the slab's weight rows go by in blocks of `PK`, each block converted
/// to f32 once into an L1 buffer and used there by every group of rows (the streaming order
/// above re-reads all `m x n` sums from L2 every 8 weight rows, which stops fitting at ~32
/// rows). Still one FMA chain per sum over the weight rows in ascending order: the same bits.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn row_slab_packed<E: Elem, const Z: bool>(x: &[f32], w: &[E], acc: &mut [f32], m: usize, k: usize, n: usize, i0: usize, i1: usize) {
    let xt = transpose(x, m, k, i0, i1);
    let whole = n / NR * NR;
    let mut pack = vec![0f32; PK * PC];
    let mut ct = 0;
    while ct < whole {
        let cw = PC.min(whole - ct);
        let mut kb = i0;
        while kb < i1 {
            let ke = (kb + PK).min(i1);
            for i in kb..ke {
                let src = w.as_ptr().add(i * n + ct);
                let dst = pack.as_mut_ptr().add((i - kb) * PC);
                let mut c = 0;
                while c < cw {
                    _mm256_storeu_ps(dst.add(c), load8(src.add(c)));
                    c += 8;
                }
                // The same columns of the next block's row.
                let next = w.as_ptr().wrapping_add((i + PK) * n + ct);
                let mut b = 0;
                while b < cw * std::mem::size_of::<E>() {
                    _mm_prefetch::<_MM_HINT_T0>(next.cast::<i8>().wrapping_add(b));
                    b += 64;
                }
            }
            let mut c0 = 0;
            while c0 < cw {
                c0 += panel_at::<f32, Z>(
                    xt.as_ptr().add((kb - i0) * m),
                    pack.as_ptr().add(c0),
                    PC,
                    ke - kb,
                    acc.as_mut_ptr().add(ct + c0),
                    m,
                    n,
                    cw - c0,
                );
            }
            kb = ke;
        }
        ct += cw;
    }
    tail(&xt, w, acc, m, n, i0, i0, i1, whole);
}

/// [`super::matmul_panels`]' slab with 512-bit sums. One row of x (memory-bound) takes
/// [`ROW1_PANELS`] panels at a time; otherwise each panel goes by in blocks of [`KB`] weight
/// rows, each block taken by every group of up to 8 rows of x while it sits in L1 (groups of
/// even size: 9 rows are 5 + 4, not 8 + 1), prefetching the next block spread over those
/// passes, as [`panels_256`] does.
///
/// Against taking each panel whole once per group of 8 rows (the first pass from memory, the
/// others from L2), XL's MLP shapes from memory on a 2-core Zen 4 (FMA peak 228-233 GFLOP/s;
/// `M=1,2,6,9,16,32 ONLY=uncached cargo run --release -p steer-model --example kernels`, old
/// and new binaries in turn): 16 rows 171-186 against 154-169 GFLOP/s, 32 rows 205-210
/// against 165-168, 1-9 rows the same (29-35 GB/s). `SHAPE=6400x1600`, `1600x4800` and
/// `1600x1600` at 16 rows: 193/183/148-159 against 172-179/149-172/134-148. Two XL steps of
/// 16 rows (`steer bench --batches 16`): 350-367 against 375-394 ms.
///
/// `xt` is x transposed over all of k (`[k, m]`, [`super::super::split::transpose`]); the sums of
/// panels `range` go to `ap` (`[m, np]`), each one FMA chain over every weight row in order.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn panels_512<E: Elem>(xt: &[f32], wp: &[E], ap: *mut f32, m: usize, k: usize, np: usize, range: Range<usize>) {
    let (rows, panels) = (k, range.end);
    let w_at = |p: usize, b: usize| wp.as_ptr().add((p * k + b) * 2 * NR);
    let a_at = |p: usize| ap.add(p * 2 * NR);
    let mut p0 = range.start;
    if m == 1 {
        while p0 + ROW1_PANELS <= panels {
            row1_panels::<E, ROW1_PANELS>(xt.as_ptr(), wp.as_ptr(), k, 0, rows, ap, p0);
            p0 += ROW1_PANELS;
        }
    }
    let groups = m.div_ceil(8);
    // One group of rows (memory-bound) takes each panel whole, the hardware prefetcher on
    // one long stream: in blocks, prefetched, 6 rows measured 5% slower per XL step.
    let kb = if groups == 1 { rows.max(1) } else { KB };
    let order = block_order(p0..panels, rows, kb, if groups == 1 { rows } else { chunk_rows(m, kb) });
    let count = order.len();
    let block = |s: usize| order[s];
    for s in 0..count {
        let (p, b, len) = block(s);
        let (xr, ar) = (xt.as_ptr().add(b * m), a_at(p));
        let mut pf = Pf { next: std::ptr::null(), len: 0, passes: groups, rows: len };
        if groups > 1 && s + 1 < count {
            let (pn, bn, ln) = block(s + 1);
            (pf.next, pf.len) = (w_at(pn, bn), ln);
        }
        panel_512(xr, w_at(p, b), 2 * NR, len, ar, m, np, pf);
    }
}

/// The blocks of `panels` (each `kb` weight rows, of `rows`) in the order the panel kernels take
/// them: weight rows in chunks of `chunk` (a multiple of `kb`), and within a chunk panel by panel,
/// each panel's blocks in ascending order. Every sum still sees its weight rows in ascending
/// order (chunk by chunk), so the bits are those of any other chunking; the chunk keeps the part
/// of x^T it reads in L2 while the chunk's panels go by (a task's panels over all of k reread
/// k x m floats per panel: at m = 256 and k = 1600, 1.6 MB per panel, from L3).
fn block_order(panels: Range<usize>, rows: usize, kb: usize, chunk: usize) -> Vec<(usize, usize, usize)> {
    let chunk = chunk.max(kb);
    let mut order = Vec::with_capacity(panels.len() * rows.div_ceil(kb));
    for c0 in (0..rows.max(1)).step_by(chunk) {
        for p in panels.clone() {
            for b in (c0..(c0 + chunk).min(rows)).step_by(kb) {
                order.push((p, b, kb.min(rows - b)));
            }
        }
    }
    order
}

/// Weight rows per chunk of [`block_order`]: x^T's part for them within 256 KiB.
fn chunk_rows(m: usize, kb: usize) -> usize {
    ((256 << 10) / (4 * m.max(1))).max(kb) / kb * kb
}

/// Panels one row of x takes at a time in [`panels_512`]. One stream per core left 16-bit
/// weights at ~63% of the bandwidth limit at batch 1 (f32 at 87%).
const ROW1_PANELS: usize = 4;

/// Panels `p0..p0 + P` for one row of x: `P` weight streams, `2P` chains of sums.
#[inline(always)]
unsafe fn row1_panels<E: Elem, const P: usize>(xt: *const f32, wp: *const E, k: usize, i0: usize, rows: usize, ar: *mut f32, p0: usize) {
    let w: [*const E; P] = std::array::from_fn(|q| wp.add(((p0 + q) * k + i0) * 2 * NR));
    // Loops, not `array::from_fn`: its closure would be compiled without the target
    // features, and its loads called out of line (seen in a profile).
    let mut a = [[_mm512_setzero_ps(); 2]; P];
    for (q, a) in a.iter_mut().enumerate() {
        let o = ar.add((p0 + q) * 2 * NR);
        *a = [_mm512_loadu_ps(o), _mm512_loadu_ps(o.add(NR))];
    }
    for i in 0..rows {
        let b = _mm512_set1_ps(*xt.add(i));
        for (q, a) in a.iter_mut().enumerate() {
            let wi = w[q].add(i * 2 * NR);
            a[0] = _mm512_fmadd_ps(load16(wi), b, a[0]);
            a[1] = _mm512_fmadd_ps(load16(wi.add(NR)), b, a[1]);
        }
    }
    for (q, a) in a.iter().enumerate() {
        let o = ar.add((p0 + q) * 2 * NR);
        _mm512_storeu_ps(o, a[0]);
        _mm512_storeu_ps(o.add(NR), a[1]);
    }
}

/// [`panels_512`] with 256-bit sums (AVX2 without AVX-512).
///
/// - 1 or 2 rows of x (memory-bound) take [`STREAMS`] panels at once, so that each core
///   reads that many weight streams side by side: one stream per core left the memory
///   ~30% short of what the row-major kernel drew from it with its 4-8 weight rows.
/// - The other panels go by in blocks of [`KB`] weight rows, each block taken by every
///   group of rows of x while it sits in L1, and prefetching the next block spread over
///   all those passes: the first pass no longer waits on memory while the others wait on
///   nothing.
///
/// XL's MLP shapes from memory on an AVX2-only EPYC (2 cores, FMA peak 175-203 GFLOP/s),
/// against the kernel that took each panel whole in two 16-column passes per group of rows
/// (`ONLY=uncached cargo run --release -p steer-model --example kernels`, two runs each):
/// 16 rows 144-155 against 103-116 GFLOP/s, 32 rows 148-158 against ~115, 6 rows 83-97
/// against 73-78; 1 row 34-43 GB/s against 26-28, 2 rows 30-39 against 29-31.
///
/// Every sum is still one FMA chain over all the weight rows in ascending order; `xt`, `ap` and
/// `range` as in [`panels_512`].
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn panels_256<E: Elem>(xt: &[f32], wp: &[E], ap: *mut f32, m: usize, k: usize, np: usize, range: Range<usize>) {
    let (rows, panels) = (k, range.end);
    // Panel p's weight row b, and its sums' first column.
    let w_at = |p: usize, b: usize| wp.as_ptr().add((p * k + b) * 2 * NR);
    let a_at = |p: usize| ap.add(p * 2 * NR);
    let mut p0 = range.start;
    if m <= 2 {
        while p0 + STREAMS <= panels {
            if m == 1 {
                row1_streams::<E, STREAMS>(xt.as_ptr(), std::array::from_fn(|q| w_at(p0 + q, 0)), rows, std::array::from_fn(|q| a_at(p0 + q)));
            } else {
                for b in (0..rows).step_by(KB) {
                    for half in [0, NR] {
                        let w = std::array::from_fn(|q| w_at(p0 + q, b).add(half));
                        let a = std::array::from_fn(|q| a_at(p0 + q).add(half));
                        halves::<E, 2, STREAMS>(xt.as_ptr().add(b * m), w, KB.min(rows - b), a, np);
                    }
                }
            }
            p0 += STREAMS;
        }
    }
    // The rest in blocks: (panel, first row, rows), in `block_order`.
    let order = block_order(p0..panels, rows, KB, if m <= FULL_MAX_ROWS { rows } else { chunk_rows(m, KB) });
    let count = order.len();
    let block = |s: usize| order[s];
    let groups = m.div_ceil(MR);
    for s in 0..count {
        let (p, b, len) = block(s);
        let (xr, ar) = (xt.as_ptr().add(b * m), a_at(p));
        let mut pf = Pf { next: std::ptr::null(), len: 0, passes: if m <= FULL_MAX_ROWS { 1 } else { 2 * groups }, rows: len };
        if s + 1 < count {
            let (pn, bn, ln) = block(s + 1);
            (pf.next, pf.len) = (w_at(pn, bn), ln);
        }
        match m {
            1 => micro_full::<E, 1>(xr, m, w_at(p, b), len, ar, np, pf.pass(0)),
            2 => micro_full::<E, 2>(xr, m, w_at(p, b), len, ar, np, pf.pass(0)),
            3 => micro_full::<E, 3>(xr, m, w_at(p, b), len, ar, np, pf.pass(0)),
            _ => {
                for (h, half) in [0, NR].into_iter().enumerate() {
                    panel(xr, w_at(p, b).add(half), 2 * NR, len, ar.add(half), m, np, pf, h * groups);
                }
            }
        }
    }
}

/// Weight rows per block in [`panels_256`] (8 KiB of f32). At 16 rows 32 and 64 measured
/// alike and 128 slower (152 against 161-163 GFLOP/s); at 6 rows 32 was slower (79
/// against 92). Panels taken two at a time, block by block, measured the same.
const KB: usize = 64;

/// Panels that 1 or 2 rows of x take at once in [`panels_256`] (2: 41.6 against 44.5 GB/s
/// at one row; 3 with 2 rows fills the 12 registers of sums).
const STREAMS: usize = 3;

/// Prefetches every line of weight row `i` of a block at `pf`.
#[inline(always)]
unsafe fn prefetch_row<E: Elem>(pf: *const E, i: usize) {
    let row = pf.add(i * 2 * NR) as *const i8;
    _mm_prefetch::<_MM_HINT_T0>(row);
    if std::mem::size_of::<E>() * 2 * NR > 64 {
        _mm_prefetch::<_MM_HINT_T0>(row.add(64));
    }
}

/// One row of x over all 32 columns of P panels, each its own weight stream.
#[inline(always)]
unsafe fn row1_streams<E: Elem, const P: usize>(xt: *const f32, w: [*const E; P], rows: usize, ar: [*mut f32; P]) {
    let mut a = [[_mm256_setzero_ps(); 4]; P];
    for q in 0..P {
        for c in 0..4 {
            a[q][c] = _mm256_loadu_ps(ar[q].add(8 * c));
        }
    }
    for i in 0..rows {
        let b = _mm256_broadcast_ss(&*xt.add(i));
        for q in 0..P {
            let wi = w[q].add(i * 2 * NR);
            for c in 0..4 {
                a[q][c] = _mm256_fmadd_ps(load8(wi.add(8 * c)), b, a[q][c]);
            }
        }
    }
    for q in 0..P {
        for c in 0..4 {
            _mm256_storeu_ps(ar[q].add(8 * c), a[q][c]);
        }
    }
}

/// R rows of x (x^T at `xr`, stride R) over one 16-column half of P panels at once.
#[inline(always)]
unsafe fn halves<E: Elem, const R: usize, const P: usize>(xr: *const f32, w: [*const E; P], rows: usize, ar: [*mut f32; P], n: usize) {
    let mut a = [[[_mm256_setzero_ps(); 2]; R]; P];
    for q in 0..P {
        for r in 0..R {
            let o = ar[q].add(r * n);
            a[q][r] = [_mm256_loadu_ps(o), _mm256_loadu_ps(o.add(8))];
        }
    }
    for i in 0..rows {
        let xi = xr.add(i * R);
        for q in 0..P {
            let wi = w[q].add(i * 2 * NR);
            let (w0, w1) = (load8(wi), load8(wi.add(8)));
            for r in 0..R {
                let b = _mm256_broadcast_ss(&*xi.add(r));
                a[q][r][0] = _mm256_fmadd_ps(w0, b, a[q][r][0]);
                a[q][r][1] = _mm256_fmadd_ps(w1, b, a[q][r][1]);
            }
        }
    }
    for q in 0..P {
        for r in 0..R {
            let o = ar[q].add(r * n);
            _mm256_storeu_ps(o, a[q][r][0]);
            _mm256_storeu_ps(o.add(8), a[q][r][1]);
        }
    }
}

/// Rows of x up to which a block goes by once, all 32 columns at a time ([`micro_full`];
/// at 3 rows 43 against 40 GFLOP/s in two 16-column passes).
const FULL_MAX_ROWS: usize = 3;

/// Up to 3 rows of x over all 32 columns of a block: 4 chains of sums per row, where a
/// 16-column half has 2 and waits on the FMA latency at 1-2 rows.
#[inline(always)]
unsafe fn micro_full<E: Elem, const R: usize>(xr: *const f32, xs: usize, wr: *const E, rows: usize, ar: *mut f32, n: usize, mut pf: PfPass<E>) {
    let mut a = [[_mm256_setzero_ps(); 4]; R];
    for (r, a) in a.iter_mut().enumerate() {
        let o = ar.add(r * n);
        *a = [_mm256_loadu_ps(o), _mm256_loadu_ps(o.add(8)), _mm256_loadu_ps(o.add(16)), _mm256_loadu_ps(o.add(24))];
    }
    for i in 0..rows {
        pf.upto(i);
        let wi = wr.add(i * 2 * NR);
        let w = [load8(wi), load8(wi.add(8)), load8(wi.add(16)), load8(wi.add(24))];
        let xi = xr.add(i * xs);
        for (r, a) in a.iter_mut().enumerate() {
            let b = _mm256_broadcast_ss(&*xi.add(r));
            for c in 0..4 {
                a[c] = _mm256_fmadd_ps(w[c], b, a[c]);
            }
        }
    }
    for (r, a) in a.iter().enumerate() {
        let o = ar.add(r * n);
        for (c, v) in a.iter().enumerate() {
            _mm256_storeu_ps(o.add(8 * c), *v);
        }
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn micro<E: Elem, const R: usize>(xr: *const f32, xs: usize, wr: *const E, ws: usize, rows: usize, ar: *mut f32, n: usize, mut pf: PfPass<E>) {
    let mut a = [[_mm256_setzero_ps(); 2]; R];
    for (r, a) in a.iter_mut().enumerate() {
        let o = ar.add(r * n);
        *a = [_mm256_loadu_ps(o), _mm256_loadu_ps(o.add(8))];
    }
    // One weight row into the sums (a macro, not a closure: a closure would be compiled
    // without this function's target features).
    macro_rules! step {
        ($i:expr) => {{
            let i = $i;
            let w0 = load8(wr.add(i * ws));
            let w1 = load8(wr.add(i * ws + 8));
            let xi = xr.add(i * xs);
            for (r, a) in a.iter_mut().enumerate() {
                let b = _mm256_broadcast_ss(&*xi.add(r));
                a[0] = _mm256_fmadd_ps(w0, b, a[0]);
                a[1] = _mm256_fmadd_ps(w1, b, a[1]);
            }
        }};
    }
    // Two weight rows per iteration, the prefetches due by then first (AVX2-only EPYC,
    // from memory: 9 rows 127 against 102-110 GFLOP/s; 16-48 rows the same within noise).
    let mut i = 0;
    while i + 2 <= rows {
        pf.upto(i + 1);
        step!(i);
        step!(i + 1);
        i += 2;
    }
    if i < rows {
        pf.upto(usize::MAX);
        step!(i);
    }
    for (r, a) in a.iter().enumerate() {
        let o = ar.add(r * n);
        _mm256_storeu_ps(o, a[0]);
        _mm256_storeu_ps(o.add(8), a[1]);
    }
}

/// [`panel`] over 32 columns in groups of up to 8 rows of x, with 512-bit sums; groups of
/// even size (9 rows: 5 + 4, not 8 + 1), pass `g` prefetching its share of `pf`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn panel_512<E: Elem>(xr: *const f32, wr: *const E, ws: usize, rows: usize, ar: *mut f32, m: usize, n: usize, pf: Pf<E>) {
    let groups = m.div_ceil(8);
    let mut r0 = 0;
    for g in 0..groups {
        let size = (m - r0).div_ceil(groups - g);
        let (x, a, pf) = (xr.add(r0), ar.add(r0 * n), pf.pass(g));
        match size {
            1 => micro_512::<E, 1>(x, m, wr, ws, rows, a, n, pf),
            2 => micro_512::<E, 2>(x, m, wr, ws, rows, a, n, pf),
            3 => micro_512::<E, 3>(x, m, wr, ws, rows, a, n, pf),
            4 => micro_512::<E, 4>(x, m, wr, ws, rows, a, n, pf),
            5 => micro_512::<E, 5>(x, m, wr, ws, rows, a, n, pf),
            6 => micro_512::<E, 6>(x, m, wr, ws, rows, a, n, pf),
            7 => micro_512::<E, 7>(x, m, wr, ws, rows, a, n, pf),
            _ => micro_512::<E, 8>(x, m, wr, ws, rows, a, n, pf),
        }
        r0 += size;
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn micro_512<E: Elem, const R: usize>(
    xr: *const f32,
    xs: usize,
    wr: *const E,
    ws: usize,
    rows: usize,
    ar: *mut f32,
    n: usize,
    mut pf: PfPass<E>,
) {
    let mut a = [[_mm512_setzero_ps(); 2]; R];
    for (r, a) in a.iter_mut().enumerate() {
        let o = ar.add(r * n);
        *a = [_mm512_loadu_ps(o), _mm512_loadu_ps(o.add(NR))];
    }
    for i in 0..rows {
        pf.upto(i);
        let w0 = load16(wr.add(i * ws));
        let w1 = load16(wr.add(i * ws + NR));
        let xi = xr.add(i * xs);
        for (r, a) in a.iter_mut().enumerate() {
            let b = _mm512_set1_ps(*xi.add(r));
            a[0] = _mm512_fmadd_ps(w0, b, a[0]);
            a[1] = _mm512_fmadd_ps(w1, b, a[1]);
        }
    }
    for (r, a) in a.iter().enumerate() {
        let o = ar.add(r * n);
        _mm512_storeu_ps(o, a[0]);
        _mm512_storeu_ps(o.add(16), a[1]);
    }
}
