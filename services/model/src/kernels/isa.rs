//! The one place that decides which instruction-set kernels run: detected once per process and
//! read by every kernel (the f32/bf16/f16 products, the row dots, attention, GELU, the bandwidth
//! probe and q8_0's integer dots).
//!
//! `STEER_NO_AVX512` (any value) turns the AVX-512 kernels off, VNNI's included, so that the
//! AVX2 kernels that AVX2-only hosts run can be measured and tested on an AVX-512 host. All
//! kernels give the same bits on every path, so the switch changes speed only.

use std::sync::OnceLock;

/// The environment variable that turns the AVX-512 kernels off.
pub const NO_AVX512_ENV: &str = "STEER_NO_AVX512";

/// What the kernels may use. Each level implies the ones before it:
/// `vnni` implies `avx512`, which implies `avx2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Isa {
    /// AVX2 with FMA and F16C (every x86 CPU with AVX2 has F16C).
    pub avx2: bool,
    /// AVX-512F: the 512-bit float kernels.
    pub avx512: bool,
    /// AVX512-VNNI with AVX512-VL: q8_0's `vpdpbusd` integer dots.
    pub vnni: bool,
}

impl Isa {
    /// The portable kernels only.
    pub const PORTABLE: Isa = Isa { avx2: false, avx512: false, vnni: false };

    /// Everything this CPU has, whatever the environment says.
    pub fn cpu() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            use std::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("fma") && has!("f16c");
            let avx512 = avx2 && has!("avx512f");
            let vnni = avx512 && has!("avx512vnni") && has!("avx512vl");
            Isa { avx2, avx512, vnni }
        }
        #[cfg(not(target_arch = "x86_64"))]
        Isa::PORTABLE
    }

    /// `self` with the AVX-512 kernels (VNNI's included) turned off when `no_avx512`.
    pub fn limited(self, no_avx512: bool) -> Isa {
        if no_avx512 {
            Isa { avx512: false, vnni: false, ..self }
        } else {
            self
        }
    }

    /// A short name for logs and benchmark output: `avx512+vnni`, `avx512`, `avx2` or `portable`.
    pub fn name(self) -> &'static str {
        match (self.avx2, self.avx512, self.vnni) {
            (true, true, true) => "avx512+vnni",
            (true, true, false) => "avx512",
            (true, false, _) => "avx2",
            _ => "portable",
        }
    }
}

/// The kernels this process runs: [`Isa::cpu`] limited by `STEER_NO_AVX512`, read once.
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| Isa::cpu().limited(std::env::var_os(NO_AVX512_ENV).is_some()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_avx512_turns_off_every_512_bit_kernel_and_keeps_avx2() {
        let full = Isa { avx2: true, avx512: true, vnni: true };
        assert_eq!(full.limited(true), Isa { avx2: true, avx512: false, vnni: false });
        assert_eq!(full.limited(false), full);
        assert_eq!(full.limited(true).name(), "avx2");
        assert_eq!(Isa::PORTABLE.limited(true), Isa::PORTABLE);
    }

    #[test]
    fn the_process_isa_is_the_cpu_limited_by_the_environment() {
        let cpu = Isa::cpu();
        assert!(!cpu.vnni || cpu.avx512, "vnni implies avx512");
        assert!(!cpu.avx512 || cpu.avx2, "avx512 implies avx2");
        assert_eq!(isa(), cpu.limited(std::env::var_os(NO_AVX512_ENV).is_some()));
        if std::env::var_os(NO_AVX512_ENV).is_some() {
            assert!(!isa().avx512 && !isa().vnni, "{NO_AVX512_ENV} must turn off every AVX-512 kernel");
        }
    }
}
