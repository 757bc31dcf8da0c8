//! CPU kernels for every product on the host, shaped first for decoding.
//!
//! Decoding multiplies a handful of rows (batch x 1 token) by every weight matrix: the time goes
//! to streaming the weights from memory, once per step. A general GEMM tiles for reuse and leaves
//! bandwidth on the table at m <= 16; `matmul` instead streams each weight row once and uses it
//! for all m input rows while it is in cache, one slab of weight rows per thread. From 2 rows a
//! register-blocked kernel does the FMAs, from 48 a packed one (prefill, scoring). Every path
//! gives each row the same bits whatever m, so a row's numbers never depend on its batch.
//!
//! The model's linears on the host now hold their weights in panels of 32 columns
//! ([`pack_panels`]) and go through [`matmul_panels`], which keeps the sums in registers over a
//! core's whole share of each panel and reads it as one stream (four at one row). It gives the
//! bits of [`matmul`] (tested), which stays as the row-major reference and the old path the
//! `kernels` example measures it against.

use rayon::prelude::*;

/// Which 16-bit float a half-precision matrix holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HalfKind {
    /// bfloat16: the high half of an f32.
    Bf16,
    /// IEEE half.
    F16,
}

/// An element of a weight matrix, converted to f32 in registers as it is streamed: the memory
/// traffic is the stored bytes, the arithmetic stays f32. Each conversion is a few integer and
/// float ops that the compiler vectorises inside the kernels' loops (a first version converted
/// 1024-column tiles into an L1 buffer instead; streaming from memory it reached half the rate
/// of this, on XL's matrices: 8 against 16+ G weights/s on 2 cores).
pub trait Elem: Copy + Send + Sync {
    /// IEEE half, which x86's F16C converts in one instruction (see [`f16c`]).
    const IS_F16: bool = false;
    fn to_f32(self) -> f32;
}

impl Elem for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

/// bfloat16 bits: f32's high half, so conversion is a 16-bit shift.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(transparent)]
pub struct Bf16Bits(pub u16);

impl Elem for Bf16Bits {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from_bits((self.0 as u32) << 16)
    }
}

/// IEEE half bits, finite (the loader refuses others). Exponent and mantissa move into f32's
/// fields by a shift and one multiply by 2^112 rebiases the exponent, which also turns f16's
/// subnormals into f32 normals exactly; then the sign. Five vector ops, no lookup, no F16C.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(transparent)]
pub struct F16Bits(pub u16);

impl Elem for F16Bits {
    const IS_F16: bool = true;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        let h = self.0 as u32;
        let magnitude = f32::from_bits((h & 0x7fff) << 13) * f32::from_bits(0x7780_0000); // 2^112
        f32::from_bits(magnitude.to_bits() | ((h & 0x8000) << 16))
    }
}

/// 16-bit bits as the element type `kind` names.
pub fn bf16_bits(bits: &[u16]) -> &[Bf16Bits] {
    // SAFETY: Bf16Bits is repr(transparent) over u16: same size, alignment and validity.
    unsafe { std::slice::from_raw_parts(bits.as_ptr().cast(), bits.len()) }
}

pub fn f16_bits(bits: &[u16]) -> &[F16Bits] {
    // SAFETY: F16Bits is repr(transparent) over u16: same size, alignment and validity.
    unsafe { std::slice::from_raw_parts(bits.as_ptr().cast(), bits.len()) }
}

/// Column tile (floats) one task works on: 4 weight rows of it stay in L1.
const TILE: usize = 1024;

/// `y[m, n] = x[m, k] . w[k, n] (+ bias[n])`, all row-major f32; `w` in GPT-2's Conv1D layout.
///
/// The weight rows are split into one contiguous slab per thread, so that each core streams its
/// slab front to back (the access pattern hardware prefetchers serve best); each thread keeps a
/// partial `[m, n]` sum in cache, and the partials are added at the end.
pub fn matmul<E: Elem>(x: &[f32], w: &[E], bias: Option<&[f32]>, m: usize, k: usize, n: usize) -> Vec<f32> {
    assert_eq!(x.len(), m * k, "x shape");
    assert_eq!(w.len(), k * n, "w shape");
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "bias shape");
    }
    let mut y = by_slabs(k, m * n, |acc, i0, i1| row_slab(x, w, acc, m, k, n, i0, i1));
    if let Some(b) = bias {
        add_bias(&mut y, b);
    }
    y
}

/// Columns per panel of a packed weight matrix ([`pack_panels`]).
pub const PANEL: usize = 32;

/// `w [k, n]` (row-major, GPT-2's Conv1D) in panels of [`PANEL`] columns: panel p holds rows
/// `0..k` of columns `p * 32..p * 32 + 32` one after another (`out[(p * k + i) * 32 + c]`), the
/// last panel padded with zeros. A core's share of one panel's rows is then one sequential
/// stream, and 8 rows x 32 columns of sums stay in registers over all of it ([`matmul_panels`]).
pub fn pack_panels<T: Copy + Default>(w: &[T], k: usize, n: usize) -> Vec<T> {
    assert_eq!(w.len(), k * n, "w shape");
    let panels = n.div_ceil(PANEL);
    let mut out = vec![T::default(); panels * k * PANEL];
    for p in 0..panels {
        let cols = PANEL.min(n - p * PANEL);
        for i in 0..k {
            out[(p * k + i) * PANEL..][..cols].copy_from_slice(&w[i * n + p * PANEL..][..cols]);
        }
    }
    out
}

/// [`pack_panels`]'s input back, `[k, n]` row-major.
pub fn unpack_panels<T: Copy + Default>(wp: &[T], k: usize, n: usize) -> Vec<T> {
    let mut out = vec![T::default(); k * n];
    for p in 0..n.div_ceil(PANEL) {
        let cols = PANEL.min(n - p * PANEL);
        for i in 0..k {
            out[i * n + p * PANEL..][..cols].copy_from_slice(&wp[(p * k + i) * PANEL..][..cols]);
        }
    }
    out
}

/// [`matmul`] on panel-packed weights ([`pack_panels`]): the same slabs per thread and the same
/// FMA chain per output element (the slab's weight rows in ascending order, slabs added in
/// order), so the same bits, for every m. A panel goes by in blocks of 64 weight rows that every
/// group of rows of x takes from L1 while the next block is prefetched (`blocked::panels_512`
/// with 8 rows x 32 columns of 512-bit sums in registers, `blocked::panels_256` with 6 x 16 of
/// 256-bit), where the row-major kernel reloads its sums every 8 weight rows and reads 8 weight
/// rows 4-25 KiB apart.
/// XL's MLP shapes, weights from memory, 2-core Zen 4, GFLOP/s: 16 rows 171-186 against 142,
/// 32 rows 205-210 against 144, 1-6 rows the same (memory-bound).
pub fn matmul_panels<E: Elem>(x: &[f32], wp: &[E], bias: Option<&[f32]>, m: usize, k: usize, n: usize) -> Vec<f32> {
    let np = n.div_ceil(PANEL) * PANEL;
    assert_eq!(x.len(), m * k, "x shape");
    assert_eq!(wp.len(), k * np, "packed w shape");
    let mut y = by_slabs(k, m * np, |acc, i0, i1| panels_slab(x, wp, acc, m, k, np, i0, i1));
    if np != n {
        y = y.chunks_exact(np).flat_map(|row| &row[..n]).copied().collect();
    }
    if let Some(b) = bias {
        add_bias(&mut y, b);
    }
    y
}

/// Weight rows `i0..i1` of every panel into `acc` (`[m, np]`).
#[allow(clippy::too_many_arguments)]
fn panels_slab<E: Elem>(x: &[f32], wp: &[E], acc: &mut [f32], m: usize, k: usize, np: usize, i0: usize, i1: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx2() {
            // SAFETY: the features are detected on this CPU before each call.
            unsafe {
                if has_avx512() {
                    blocked::panels_512(x, wp, acc, m, k, np, i0, i1)
                } else {
                    blocked::panels_256(x, wp, acc, m, k, np, i0, i1)
                }
            }
            return;
        }
    }
    panels_slab_generic(x, wp, acc, m, k, np, i0, i1)
}

/// [`panels_slab`] without SIMD: per sum the same FMAs in the same order.
#[allow(clippy::too_many_arguments)]
fn panels_slab_generic<E: Elem>(x: &[f32], wp: &[E], acc: &mut [f32], m: usize, k: usize, np: usize, i0: usize, i1: usize) {
    for p in 0..np / PANEL {
        for r in 0..m {
            let out = &mut acc[r * np + p * PANEL..][..PANEL];
            for i in i0..i1 {
                let xv = x[r * k + i];
                for (o, w) in out.iter_mut().zip(&wp[(p * k + i) * PANEL..][..PANEL]) {
                    *o = w.to_f32().mul_add(xv, *o);
                }
            }
        }
    }
}

/// The weight rows `0..k` split into one contiguous slab per thread; `slab(acc, i0, i1)` adds
/// rows `i0..i1` into a zeroed partial sum of `len` values, and the partials are added in order.
/// Slabs of whole 4-row groups, at least 64 rows each so tiny matrices stay on one thread (the
/// split depends on k and the thread count only, never on m: every output element is one FMA
/// chain over the slab's rows in order, and the slabs are added in order, whatever m is, so a
/// row's result never depends on how many rows share the call).
fn by_slabs(k: usize, len: usize, slab: impl Fn(&mut [f32], usize, usize) + Sync) -> Vec<f32> {
    let threads = rayon::current_num_threads().max(1);
    let rows_per = k.div_ceil(threads).div_ceil(4).max(16) * 4;
    let slabs: Vec<(usize, usize)> = (0..k).step_by(rows_per).map(|i0| (i0, (i0 + rows_per).min(k))).collect();
    let mut partials: Vec<Vec<f32>> = slabs
        .par_iter()
        .map(|&(i0, i1)| {
            let mut acc = vec![0f32; len];
            slab(&mut acc, i0, i1);
            acc
        })
        .collect();
    let mut y = partials.swap_remove(0);
    for p in &partials {
        for (a, b) in y.iter_mut().zip(p) {
            *a += b;
        }
    }
    y
}

/// Adds `bias` to each row of `y` (rows of `bias.len()`).
pub fn add_bias(y: &mut [f32], bias: &[f32]) {
    for row in y.chunks_exact_mut(bias.len()) {
        for (a, b) in row.iter_mut().zip(bias) {
            *a += b;
        }
    }
}

/// Deterministic values in [-1, 1) for the tests of the kernels and the formats built on them.
#[cfg(test)]
pub(crate) fn test_data(len: usize, seed: u32) -> Vec<f32> {
    (0..len).map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0).collect()
}

/// Whether the 512-bit kernels run: AVX-512F on this CPU, unless `STEER_NO_AVX512` is set (to
/// measure or test the AVX2 kernels, which AVX2-only hosts run, on an AVX-512 one).
#[cfg(target_arch = "x86_64")]
fn has_avx512() -> bool {
    static USE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *USE.get_or_init(|| std::is_x86_feature_detected!("avx512f") && std::env::var_os("STEER_NO_AVX512").is_none())
}

/// Whether this CPU has AVX2, FMA and F16C (every x86 CPU with AVX2 has F16C).
fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") && std::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

#[allow(clippy::too_many_arguments)]
fn row_slab<E: Elem>(x: &[f32], w: &[E], acc: &mut [f32], m: usize, k: usize, n: usize, i0: usize, i1: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if m >= BLOCKED_MIN_ROWS && has_avx2() {
            // SAFETY: the features were just detected on this CPU.
            unsafe {
                // 16-bit weights under 16 rows stay on 256-bit: their conversions share the
                // vector pipes with the FMAs, and at 6 rows that measured 8.9-9.4 against 8.4-8.9
                // G weights/s (the same at 16 and 32 rows; f32 the same at 6, faster from ~24).
                if has_avx512() && (std::mem::size_of::<E>() == 4 || m >= 16) {
                    blocked::row_slab_512(x, w, acc, m, k, n, i0, i1)
                } else {
                    blocked::row_slab(x, w, acc, m, k, n, i0, i1)
                }
            };
            return;
        }
    }
    // One row of 16-bit weights: 8 weight rows per pass (see `WIDE` in `row_slab_generic`).
    if std::mem::size_of::<E>() == 2 && m == 1 {
        row_slab_for::<E, true>(x, w, acc, m, k, n, i0, i1)
    } else {
        row_slab_for::<E, false>(x, w, acc, m, k, n, i0, i1)
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn row_slab_for<E: Elem, const WIDE: bool>(x: &[f32], w: &[E], acc: &mut [f32], m: usize, k: usize, n: usize, i0: usize, i1: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if E::IS_F16 && has_avx2() {
            // SAFETY: E is F16Bits, repr(transparent) over u16; the features were just detected.
            unsafe { f16c::row_slab::<WIDE>(x, std::slice::from_raw_parts(w.as_ptr().cast::<u16>(), w.len()), acc, m, k, n, i0, i1) };
            return;
        }
        if has_avx2() && has_avx512() {
            // SAFETY: the features were just detected on this CPU.
            unsafe { row_slab_avx512::<E, WIDE>(x, w, acc, m, k, n, i0, i1) };
            return;
        }
        if has_avx2() {
            // SAFETY: the features were just detected on this CPU.
            unsafe { row_slab_avx2::<E, WIDE>(x, w, acc, m, k, n, i0, i1) };
            return;
        }
    }
    row_slab_generic::<E, WIDE>(x, w, acc, m, k, n, i0, i1)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn row_slab_avx2<E: Elem, const WIDE: bool>(x: &[f32], w: &[E], acc: &mut [f32], m: usize, k: usize, n: usize, i0: usize, i1: usize) {
    row_slab_generic::<E, WIDE>(x, w, acc, m, k, n, i0, i1)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn row_slab_avx512<E: Elem, const WIDE: bool>(x: &[f32], w: &[E], acc: &mut [f32], m: usize, k: usize, n: usize, i0: usize, i1: usize) {
    row_slab_generic::<E, WIDE>(x, w, acc, m, k, n, i0, i1)
}

/// Rows of x from which the register-blocked kernel ([`blocked`]) takes over (at one row it
/// measured the same as the streaming loop for f32, and 16-bit weights have their 8-row loop).
const BLOCKED_MIN_ROWS: usize = 2;

/// The kernel for 2+ rows (compute-bound): 6 rows x 16 columns of sums held in registers
/// while `KC` weight rows go by, each weight vector loaded once for the 6 rows and each x value
/// broadcast once for the 16 columns (BLIS's 6x16 AVX2 micro-kernel; x is packed transposed per
/// slab so that the broadcasts read consecutive floats); 16-bit weights are converted as they are
/// loaded, once for the 6 rows. Every output element is still one FMA
/// chain over the slab's weight rows in ascending order, `w * x + sum`: the same operations in
/// the same order as [`row_slab_generic`], so the same bits, whichever kernel a row goes through.
#[cfg(target_arch = "x86_64")]
mod blocked {
    use super::dots::load8;
    use super::wide::load16;
    use super::Elem;
    use std::arch::x86_64::*;

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
    unsafe fn panel_at<E: Elem, const Z: bool>(xr: *const f32, wr: *const E, ws: usize, rows: usize, ar: *mut f32, m: usize, n: usize, left: usize) -> usize {
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
                    c0 += panel_at::<E, Z>(xt.as_ptr().add((kb - i0) * m), w.as_ptr().add(kb * n + c0), n, ke - kb, acc.as_mut_ptr().add(c0), m, n, ce - c0);
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
                    c0 += panel_at::<f32, Z>(xt.as_ptr().add((kb - i0) * m), pack.as_ptr().add(c0), PC, ke - kb, acc.as_mut_ptr().add(ct + c0), m, n, cw - c0);
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
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn panels_512<E: Elem>(x: &[f32], wp: &[E], acc: &mut [f32], m: usize, k: usize, np: usize, i0: usize, i1: usize) {
        let xt = transpose(x, m, k, i0, i1);
        let (rows, panels) = (i1 - i0, np / (2 * NR));
        let w_at = |p: usize, b: usize| wp.as_ptr().add((p * k + i0 + b) * 2 * NR);
        let ap = acc.as_mut_ptr();
        let a_at = |p: usize| ap.add(p * 2 * NR);
        let mut p0 = 0;
        if m == 1 {
            while p0 + ROW1_PANELS <= panels {
                row1_panels::<E, ROW1_PANELS>(xt.as_ptr(), wp.as_ptr(), k, i0, rows, ap, p0);
                p0 += ROW1_PANELS;
            }
        }
        let groups = m.div_ceil(8);
        // One group of rows (memory-bound) takes each panel whole, the hardware prefetcher on
        // one long stream: in blocks, prefetched, 6 rows measured 5% slower per XL step.
        let kb = if groups == 1 { rows.max(1) } else { KB };
        let blocks = rows.div_ceil(kb);
        let count = (panels - p0) * blocks;
        let block = |s: usize| {
            let b = s % blocks * kb;
            (p0 + s / blocks, b, kb.min(rows - b))
        };
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
    /// Every sum is still one FMA chain over the slab's weight rows in ascending order.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn panels_256<E: Elem>(x: &[f32], wp: &[E], acc: &mut [f32], m: usize, k: usize, np: usize, i0: usize, i1: usize) {
        let xt = transpose(x, m, k, i0, i1);
        let (rows, panels) = (i1 - i0, np / (2 * NR));
        // Panel p's weight row i0 + b, and its sums' first column.
        let w_at = |p: usize, b: usize| wp.as_ptr().add((p * k + i0 + b) * 2 * NR);
        let ap = acc.as_mut_ptr();
        let a_at = |p: usize| ap.add(p * 2 * NR);
        let mut p0 = 0;
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
        let blocks = rows.div_ceil(KB);
        let count = (panels - p0) * blocks;
        // Block s of the rest: its panel, its first row and its rows.
        let block = |s: usize| {
            let b = s % blocks * KB;
            (p0 + s / blocks, b, KB.min(rows - b))
        };
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
    unsafe fn micro_512<E: Elem, const R: usize>(xr: *const f32, xs: usize, wr: *const E, ws: usize, rows: usize, ar: *mut f32, n: usize, mut pf: PfPass<E>) {
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
}

/// The axpy kernel for IEEE-half weights with F16C's `vcvtph2ps` (8 per instruction, against
/// 6 vector ops per 16 for the portable conversion; 1.2x the rate on XL's MLP shapes). The same
/// sums in the same order as [`row_slab_generic`], so the results are the same bit for bit.
#[cfg(target_arch = "x86_64")]
mod f16c {
    use super::TILE;
    use std::arch::x86_64::*;

    #[inline(always)]
    fn f(b: u16) -> f32 {
        half::f16::from_bits(b).to_f32()
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn row_slab<const WIDE: bool>(x: &[f32], w: &[u16], acc: &mut [f32], m: usize, k: usize, n: usize, i0: usize, i1: usize) {
        let mut i = i0;
        if WIDE {
            while i + 8 <= i1 {
                group::<8, 1>(x, w, acc, m, k, n, i);
                i += 8;
            }
        }
        while i + 4 <= i1 {
            group::<4, 3>(x, w, acc, m, k, n, i);
            i += 4;
        }
        while i < i1 {
            for r in 0..m {
                let a0 = x[r * k + i];
                let out = &mut acc[r * n..(r + 1) * n];
                for (o, &b) in out.iter_mut().zip(&w[i * n..(i + 1) * n]) {
                    *o = f(b).mul_add(a0, *o);
                }
            }
            i += 1;
        }
    }

    /// Weight rows `i..i + R` into `acc`, `P` rows of x per pass: each 8 weights of the R rows
    /// converted once for them. (At 6 rows this loop measured 0.85x of a written-out 4-row one;
    /// 2+ rows now take the register-blocked kernel, so here m is 1 on x86.)
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn group<const R: usize, const P: usize>(x: &[f32], w: &[u16], acc: &mut [f32], m: usize, k: usize, n: usize, i: usize) {
        let mut t0 = 0;
        while t0 < n {
            let tw = TILE.min(n - t0);
            let ws: [&[u16]; R] = std::array::from_fn(|j| &w[(i + j) * n + t0..(i + j) * n + t0 + tw]);
            let mut r = 0;
            while r < m {
                let g = (m - r).min(P);
                let mut xs = [[_mm256_setzero_ps(); R]; P];
                for (q, xq) in xs.iter_mut().enumerate().take(g) {
                    for (j, v) in xq.iter_mut().enumerate() {
                        *v = _mm256_set1_ps(x[(r + q) * k + i + j]);
                    }
                }
                let mut c = 0;
                while c + 8 <= tw {
                    let mut v = [_mm256_setzero_ps(); R];
                    for (j, v) in v.iter_mut().enumerate() {
                        *v = _mm256_cvtph_ps(_mm_loadu_si128(ws[j].as_ptr().add(c).cast()));
                    }
                    for (q, xq) in xs.iter().enumerate().take(g) {
                        let o = acc.as_mut_ptr().add((r + q) * n + t0 + c);
                        let mut a = _mm256_loadu_ps(o);
                        for j in 0..R {
                            a = _mm256_fmadd_ps(v[j], xq[j], a);
                        }
                        _mm256_storeu_ps(o, a);
                    }
                    c += 8;
                }
                for q in 0..g {
                    let xr = &x[(r + q) * k + i..(r + q) * k + i + R];
                    let out = &mut acc[(r + q) * n + t0..(r + q) * n + t0 + tw];
                    for c in c..tw {
                        for j in 0..R {
                            out[c] = f(ws[j][c]).mul_add(xr[j], out[c]);
                        }
                    }
                }
                r += g;
            }
            t0 += tw;
        }
    }
}

/// Adds weight rows i0..i1 into `acc` ([m, n]): 4 rows at a time, column tile by column tile,
/// so each weight element is loaded from memory once and used for all m rows from L1.
///
/// `WIDE` (one row of x, 16-bit weights): 8 weight rows at a time, so 8 streams are in flight
/// and `acc` is loaded and stored half as often. A 16-bit weight costs a conversion and an FMA
/// per 2 bytes against f32's FMA per 4, and at one row 4 streams left the 16-bit kernels at
/// ~24 GB/s against f32's ~28-34; with 8, XL's batch-1 decode went from 1.36x to 1.76x f32's
/// tokens/s for bf16 and from 1.44x to 2.22x for f16 (`steer bench --dtypes f32,bf16,f16`,
/// before and after, one session). The sums and their order are those of 4 at a time. Packing
/// each 4-row group's tiles contiguously (one stream per core) was slower: 20 against 26 GB/s.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn row_slab_generic<E: Elem, const WIDE: bool>(x: &[f32], w: &[E], acc: &mut [f32], m: usize, k: usize, n: usize, i0: usize, i1: usize) {
    let mut i = i0;
    if WIDE {
        while i + 8 <= i1 {
            rows_group::<E, 8>(x, w, acc, m, k, n, i);
            i += 8;
        }
    }
    while i + 4 <= i1 {
        rows_group::<E, 4>(x, w, acc, m, k, n, i);
        i += 4;
    }
    while i < i1 {
        rows_group::<E, 1>(x, w, acc, m, k, n, i);
        i += 1;
    }
}

/// Adds weight rows `i..i + R` into `acc`, column tile by column tile: each element of `acc`
/// is loaded once, takes R FMAs (rows in ascending order, so the sum's order is that of one
/// row at a time, whatever R) and is stored once; three input rows share each weight vector
/// loaded from L1. Measured on XL's shapes and not kept: R = 8 for f32 (no faster at 1 or 6
/// rows; 16-bit weights at one row do take it, see `row_slab_generic`),
/// software prefetch of the next tile, in a burst or a line per step (slower). On x86 this loop
/// now serves one row only: from 2 rows the register-blocked kernel ([`blocked`], which reads
/// the weights in place 8 rows at a time; a first version that packed 16-64 weight rows into
/// panels as they streamed had reached 0.7-1.2x of this loop) gives the same bits faster.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn rows_group<E: Elem, const R: usize>(x: &[f32], w: &[E], acc: &mut [f32], m: usize, k: usize, n: usize, i: usize) {
    let mut t0 = 0;
    while t0 < n {
        let tw = TILE.min(n - t0);
        let ws: [&[E]; R] = std::array::from_fn(|j| &w[(i + j) * n + t0..(i + j) * n + t0 + tw]);
        let xs = |r: usize| -> [f32; R] { std::array::from_fn(|j| x[r * k + i + j]) };
        let mut r = 0;
        while r + 3 <= m {
            let (xa, xb, xc) = (xs(r), xs(r + 1), xs(r + 2));
            let (oa, rest) = acc[r * n..].split_at_mut(n);
            let (ob, rest) = rest.split_at_mut(n);
            let oa = &mut oa[t0..t0 + tw];
            let ob = &mut ob[t0..t0 + tw];
            let oc = &mut rest[t0..t0 + tw];
            for c in 0..tw {
                let (mut a, mut b, mut d) = (oa[c], ob[c], oc[c]);
                for j in 0..R {
                    let v = ws[j][c].to_f32();
                    a = v.mul_add(xa[j], a);
                    b = v.mul_add(xb[j], b);
                    d = v.mul_add(xc[j], d);
                }
                (oa[c], ob[c], oc[c]) = (a, b, d);
            }
            r += 3;
        }
        for r in r..m {
            let xr = xs(r);
            let out = &mut acc[r * n + t0..r * n + t0 + tw];
            for c in 0..tw {
                let mut a = out[c];
                for j in 0..R {
                    a = ws[j][c].to_f32().mul_add(xr[j], a);
                }
                out[c] = a;
            }
        }
        t0 += tw;
    }
}

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
        if has_avx2() && m > 1 {
            // SAFETY: the features were just detected on this CPU.
            unsafe { dots::rows(h, w, out, m, d) };
            return;
        }
        if has_avx2() {
            // SAFETY: the features were just detected on this CPU.
            unsafe { dot_rows_avx2(h, w, out, m, d) };
            return;
        }
    }
    dot_rows_generic(h, w, out, m, d)
}

/// [`dot_rows_generic`]'s sums for several rows of h: each 16 weights are loaded and converted
/// once for up to 4 rows, whose 8 chains of FMAs run side by side (one row at a time is 2 chains
/// of `d / 16` dependent FMAs: latency-bound, 23 ms for XL's lm_head at 6 rows against 11 ms
/// to stream it). The same operations in the same order per row, so the same bits.
#[cfg(target_arch = "x86_64")]
mod dots {
    use super::Elem;
    use std::arch::x86_64::*;

    /// 8 weights from `p` as f32 (f32, bf16 or f16 bits, by size and [`Elem::IS_F16`]).
    #[inline(always)]
    pub(super) unsafe fn load8<E: Elem>(p: *const E) -> __m256 {
        if std::mem::size_of::<E>() == 4 {
            _mm256_loadu_ps(p.cast())
        } else if E::IS_F16 {
            _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
        } else {
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast()))))
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn rows<E: Elem>(h: &[f32], w: &[E], out: &mut [f32], m: usize, d: usize) {
        let mut first = 0;
        if super::has_avx512() {
            first = super::wide::rows(h, w, out, m, d);
        }
        for (o, wr) in w.chunks_exact(d).enumerate().skip(first) {
            let out = &mut out[o * m..(o + 1) * m];
            let mut r = 0;
            while r < m {
                match m - r {
                    1 => group::<E, 1>(h, wr, &mut out[r..], r, d),
                    2 => group::<E, 2>(h, wr, &mut out[r..], r, d),
                    3 => group::<E, 3>(h, wr, &mut out[r..], r, d),
                    _ => group::<E, 4>(h, wr, &mut out[r..], r, d),
                }
                r += (m - r).min(4);
            }
        }
    }

    #[inline(always)]
    unsafe fn group<E: Elem, const G: usize>(h: &[f32], wr: &[E], out: &mut [f32], r0: usize, d: usize) {
        const L: usize = 16;
        let whole = d / L * L;
        let (wp, hp) = (wr.as_ptr(), h.as_ptr().add(r0 * d));
        let mut acc = [[_mm256_setzero_ps(); 2]; G];
        let mut c = 0;
        while c < whole {
            if r0 == 0 {
                // The weight row 4 ahead, a line per 16 weights: 19.5 against 24.2 ms for XL's
                // f32 lm_head at 6 rows, 12.0 against 15.0 for bf16, -9% at 16 rows.
                _mm_prefetch::<_MM_HINT_T0>(wp.wrapping_add(c + 4 * d).cast());
            }
            let (v0, v1) = (load8(wp.add(c)), load8(wp.add(c + 8)));
            for (q, acc) in acc.iter_mut().enumerate() {
                let hq = hp.add(q * d + c);
                acc[0] = _mm256_fmadd_ps(v0, _mm256_loadu_ps(hq), acc[0]);
                acc[1] = _mm256_fmadd_ps(v1, _mm256_loadu_ps(hq.add(8)), acc[1]);
            }
            c += L;
        }
        for (q, acc) in acc.iter().enumerate() {
            let mut lanes = [0f32; L];
            _mm256_storeu_ps(lanes.as_mut_ptr(), acc[0]);
            _mm256_storeu_ps(lanes.as_mut_ptr().add(8), acc[1]);
            let mut s: f32 = lanes.iter().sum();
            for c in whole..d {
                s = wr[c].to_f32().mul_add(h[(r0 + q) * d + c], s);
            }
            out[q] = s;
        }
    }
}

/// [`dots::rows`] with AVX-512: 4 weight rows x up to 4 rows of h per pass, 16 sums in
/// registers, so each 16 values of h read from L2 serve 4 weight rows (one weight row at a time
/// read all of h from L2 per weight row: at 16 rows, 102 KB per 6.4 KB row, which bounded the
/// lm_head at ~60 GFLOP/s). A 512-bit sum's 16 lanes are the 2 x 8 lanes of the 256-bit loop,
/// summed in the same order: the same bits.
#[cfg(target_arch = "x86_64")]
mod wide {
    use super::Elem;
    use std::arch::x86_64::*;

    /// 16 weights from `p` as f32.
    #[inline(always)]
    pub(super) unsafe fn load16<E: Elem>(p: *const E) -> __m512 {
        if std::mem::size_of::<E>() == 4 {
            _mm512_loadu_ps(p.cast())
        } else if E::IS_F16 {
            _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()))
        } else {
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(_mm256_loadu_si256(p.cast()))))
        }
    }

    /// The sums of the whole groups of 4 weight rows; returns how many weight rows that was.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    pub unsafe fn rows<E: Elem>(h: &[f32], w: &[E], out: &mut [f32], m: usize, d: usize) -> usize {
        let whole_rows = w.len() / d / 4 * 4;
        for o in (0..whole_rows).step_by(4) {
            let wr = &w[o * d..(o + 4) * d];
            let mut r = 0;
            while r < m {
                match m - r {
                    1 => block::<E, 1>(h, wr, out, o, r, m, d),
                    2 => block::<E, 2>(h, wr, out, o, r, m, d),
                    3 => block::<E, 3>(h, wr, out, o, r, m, d),
                    _ => block::<E, 4>(h, wr, out, o, r, m, d),
                }
                r += (m - r).min(4);
            }
        }
        whole_rows
    }

    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block<E: Elem, const G: usize>(h: &[f32], wr: &[E], out: &mut [f32], o: usize, r0: usize, m: usize, d: usize) {
        const L: usize = 16;
        let whole = d / L * L;
        let (wp, hp) = (wr.as_ptr(), h.as_ptr().add(r0 * d));
        let mut acc = [[_mm512_setzero_ps(); G]; 4];
        let mut c = 0;
        while c < whole {
            if r0 == 0 {
                // The next group's weight rows, a line per 16 weights.
                for j in 0..4 {
                    _mm_prefetch::<_MM_HINT_T0>(wp.wrapping_add((4 + j) * d + c).cast());
                }
            }
            let v = [load16(wp.add(c)), load16(wp.add(d + c)), load16(wp.add(2 * d + c)), load16(wp.add(3 * d + c))];
            for q in 0..G {
                let hq = _mm512_loadu_ps(hp.add(q * d + c));
                for j in 0..4 {
                    acc[j][q] = _mm512_fmadd_ps(v[j], hq, acc[j][q]);
                }
            }
            c += L;
        }
        for (j, acc) in acc.iter().enumerate() {
            for (q, a) in acc.iter().enumerate() {
                let mut lanes = [0f32; L];
                _mm512_storeu_ps(lanes.as_mut_ptr(), *a);
                let mut s: f32 = lanes.iter().sum();
                for c in whole..d {
                    s = wr[j * d + c].to_f32().mul_add(h[(r0 + q) * d + c], s);
                }
                out[(o + j) * m + r0 + q] = s;
            }
        }
    }
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

/// Sum of `buf`, read once front to back by every core (one contiguous part each): the
/// sequential read that bounds the decode kernels, for measuring a machine's read bandwidth.
pub fn stream_sum(buf: &[f32]) -> f32 {
    let threads = rayon::current_num_threads().max(1);
    buf.par_chunks(buf.len().div_ceil(threads).max(1)).map(sum_part).sum()
}

fn sum_part(part: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx2() {
            // SAFETY: the features were just detected on this CPU.
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

/// One head of one row attending over its cache: `q` ([hd]) against positions `0..S` of
/// `keys`/`values` (`[S, d]`, this head's slice at `offset..offset + hd`), softmax of the
/// scaled scores, weighted sum of the values into `out` ([hd]). The order of every sum is fixed
/// by S alone, so a row's result never depends on the rows decoded beside it.
///
/// Dispatched to an AVX2+FMA build: without it every `mul_add` here was a call to libm's
/// `fmaf` (15% of a q8_0 decode step at 300 tokens, growing with the sequence).
pub fn attend_one(q: &[f32], keys: &[f32], values: &[f32], offset: usize, d: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx2() {
            // SAFETY: the features were just detected on this CPU.
            unsafe { attend_one_avx2(q, keys, values, offset, d, out) };
            return;
        }
    }
    attend_one_generic(q, keys, values, offset, d, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn attend_one_avx2(q: &[f32], keys: &[f32], values: &[f32], offset: usize, d: usize, out: &mut [f32]) {
    attend_one_generic(q, keys, values, offset, d, out)
}

#[inline(always)]
fn attend_one_generic(q: &[f32], keys: &[f32], values: &[f32], offset: usize, d: usize, out: &mut [f32]) {
    let hd = q.len();
    let s = keys.len() / d;
    let scale = 1.0 / (hd as f32).sqrt();
    // Each q.k in 8 lanes summed in a fixed order: one chain of 64 dependent FMAs per position
    // was latency-bound. (Plain loops, no closures: a closure is compiled on its own, without
    // the caller's target features, and its mul_add became a call to libm's fmaf.)
    let mut scores = vec![0f32; s];
    for (t, score) in scores.iter_mut().enumerate() {
        let k = &keys[t * d + offset..t * d + offset + hd];
        let mut l = [0f32; 8];
        let (mut qc, mut kc) = (q.chunks_exact(8), k.chunks_exact(8));
        for (a, b) in (&mut qc).zip(&mut kc) {
            for j in 0..8 {
                l[j] = a[j].mul_add(b[j], l[j]);
            }
        }
        let mut dot = ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]));
        for (a, b) in qc.remainder().iter().zip(kc.remainder()) {
            dot = a.mul_add(*b, dot);
        }
        *score = dot * scale;
    }
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for x in scores.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    out.fill(0.0);
    for (t, p) in scores.iter().enumerate() {
        let p = p / sum;
        let v = &values[t * d + offset..t * d + offset + hd];
        for (o, x) in out.iter_mut().zip(v) {
            *o = x.mul_add(p, *o);
        }
    }
}

/// GELU, tanh approximation (GPT-2's `gelu_new`), in the equivalent form
/// `x * sigmoid(2u)`, `u = sqrt(2/pi) (x + 0.044715 x^3)`, with a polynomial exp that the
/// compiler vectorises (libm's tanhf is scalar and cost 11% of a GPT-2-XL prefill).
pub fn gelu_tanh(x: &[f32]) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(8192).zip(x.par_chunks(8192)).for_each(|(o, i)| gelu_chunk(i, o));
    y
}

fn gelu_chunk(x: &[f32], y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the features were just detected on this CPU.
            unsafe { gelu_chunk_avx2(x, y) };
            return;
        }
    }
    gelu_chunk_generic(x, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_chunk_avx2(x: &[f32], y: &mut [f32]) {
    gelu_chunk_generic(x, y)
}

#[inline(always)]
fn gelu_chunk_generic(x: &[f32], y: &mut [f32]) {
    const C: f32 = 0.797_884_56; // sqrt(2 / pi)
    for (o, &v) in y.iter_mut().zip(x) {
        let u = C * (v + 0.044715 * v * v * v);
        *o = v / (1.0 + exp_approx(-2.0 * u));
    }
}

/// e^x to about 1e-7 relative error: 2^n e^r with |r| <= ln2/2 and a degree-6 polynomial.
#[inline(always)]
fn exp_approx(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
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

    use super::test_data as data;

    #[test]
    fn a_rows_result_does_not_depend_on_its_neighbours() {
        // Odd shapes: slab and group remainders, a partial column tile.
        for &(k, n) in &[(200usize, 300usize), (64, 1030), (1600, 77)] {
            let w = data(k * n, 5);
            let x = data(70 * k, 6);
            let bias = data(n, 7);
            let all = matmul(&x, &w, Some(&bias), 70, k, n);
            // Both sides of the packed kernel's threshold.
            for m in [1usize, 2, 3, 4, 5, 6, 7, 11, 16, 47, 48, 49, 64] {
                let some = matmul(&x[..m * k], &w, Some(&bias), m, k, n);
                assert_eq!(some[..], all[..m * n], "m = {m}, k = {k}, n = {n}: bit for bit");
            }
            let alone = matmul(&x[5 * k..6 * k], &w, Some(&bias), 1, k, n);
            assert_eq!(alone[..], all[5 * n..6 * n]);
        }
    }

    /// The 256-bit blocked kernel (AVX2 machines) and the 512-bit one give the same bits, in
    /// the streaming and the packed orders, with panel remainders.
    #[cfg(target_arch = "x86_64")]
    /// Panel-packed weights give the row-major kernel's bits, through each of the panel kernels
    /// (portable, 256-bit, 512-bit where this CPU has them), for every dtype, any m, and widths
    /// that end in a partial panel; packing round-trips.
    #[test]
    fn panel_kernels_give_the_row_major_kernels_bits() {
        // k = 72: a block of 64 weight rows and a part block; 200: blocks across two slabs.
        for (k, n) in [32usize, 40, 96, 100, 200].into_iter().map(|n| (72, n)).chain([(200, 224), (200, 72)]) {
            let w = test_data(k * n, 21);
            let wp = pack_panels(&w, k, n);
            assert_eq!(unpack_panels(&wp, k, n), w);
            let bf: Vec<u16> = w.iter().map(|&v| half::bf16::from_f32(v).to_bits()).collect();
            let bfp = pack_panels(&bf, k, n);
            for m in [1usize, 2, 3, 4, 5, 6, 8, 9, 12, 16, 17, 33] {
                let x = test_data(m * k, 22);
                assert_eq!(matmul_panels(&x, &wp, None, m, k, n), matmul(&x, &w, None, m, k, n), "f32 n={n} m={m}");
                assert_eq!(matmul_panels(&x, bf16_bits(&bfp), None, m, k, n), matmul(&x, bf16_bits(&bf), None, m, k, n), "bf16 n={n} m={m}");
                let np = n.div_ceil(PANEL) * PANEL;
                let slab = |f: &dyn Fn(&mut [f32])| {
                    let mut acc = vec![0f32; m * np];
                    f(&mut acc);
                    acc
                };
                let generic = slab(&|acc| panels_slab_generic(&x, &wp, acc, m, k, np, 0, k));
                #[cfg(target_arch = "x86_64")]
                if has_avx2() {
                    // SAFETY: the features were just detected on this CPU.
                    assert_eq!(slab(&|acc| unsafe { blocked::panels_256(&x, &wp, acc, m, k, np, 0, k) }), generic, "256-bit n={n} m={m}");
                    if std::is_x86_feature_detected!("avx512f") {
                        // SAFETY: as above.
                        assert_eq!(slab(&|acc| unsafe { blocked::panels_512(&x, &wp, acc, m, k, np, 0, k) }), generic, "512-bit n={n} m={m}");
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

    #[test]
    fn the_256_and_512_bit_blocked_kernels_agree_bit_for_bit() {
        if !(has_avx2() && std::is_x86_feature_detected!("avx512f")) {
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
            assert_eq!(matmul(xs, bf16_bits(&bf), None, m, k, n), matmul(xs, &bf_f32, None, m, k, n), "bf16 m={m}");
            assert_eq!(matmul(xs, f16_bits(&hf), None, m, k, n), matmul(xs, &hf_f32, None, m, k, n), "f16 m={m}");
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
        let scores: Vec<f64> = (0..s)
            .map(|t| (0..hd).map(|j| q[j] as f64 * keys[t * d + off + j] as f64).sum::<f64>() / (hd as f64).sqrt())
            .collect();
        let z: f64 = scores.iter().map(|x| x.exp()).sum();
        for j in 0..hd {
            let want: f64 = (0..s).map(|t| scores[t].exp() / z * values[t * d + off + j] as f64).sum();
            assert!((out[j] as f64 - want).abs() < 1e-5, "{j}: {} vs {want}", out[j]);
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
                let got = matmul(&x, &w, bias, m, k, n);
                let want = naive(&x, &w, bias, m, k, n);
                for (g, e) in got.iter().zip(&want) {
                    assert!((g - e).abs() < 1e-4 * (1.0 + e.abs()), "m={m} k={k} n={n}: {g} vs {e}");
                }
            }
        }
    }
}
