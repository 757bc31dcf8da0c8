//! `steer bench --dtypes f32,bf16,f16,q8_0`: the weights' dtypes side by side, in one run.
//!
//! Machines differ (read bandwidth 18 to 36 GB/s on the same kind), so the run first measures
//! the read bandwidth ([`limits`]) and states each dtype's batch-1 limit: bandwidth / bytes of weights read
//! per token. Each dtype is then measured in a process of its own (this binary, `--child`), so
//! that its peak RSS is its own, and reported as a fraction of its limit and against f32.

use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::BenchArgs;

/// What one process measured for one dtype.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measured {
    pub dtype: String,
    /// Bytes of weights streamed per decode step.
    pub weight_bytes: u64,
    pub prefill_secs: f64,
    /// (batch, tokens/s per row)
    pub decode: Vec<(usize, f64)>,
    pub peak_rss_gb: f64,
}

/// Marks the line a child prints its measurement on.
pub const LINE: &str = "BENCH-DTYPE ";

/// This machine's limits, printed: the read bandwidth (every pattern of
/// [`steer_model::kernels::read_bandwidth`], 7 alternated passes each, the fastest pass kept),
/// the f32 FMA peak and the int8 dot products' peak (q8_0's many-row limit).
pub fn limits() -> Limits {
    let bw = steer_model::kernels::read_bandwidth(7);
    let each: Vec<String> = bw.patterns.iter().map(|(p, med, lo, hi)| format!("{} {med:.1} ({lo:.1}-{hi:.1})", p.name())).collect();
    outln!(
        "read bandwidth: {:.1} GB/s ({}'s fastest pass); median (range) of 7 passes of a 1 GiB buffer: {}",
        bw.best,
        bw.best_pattern.name(),
        each.join("; ")
    );
    let fma = steer_model::kernels::fma_peak();
    if let Some(p) = fma {
        outln!("f32 FMA peak: {p:.1} GFLOP/s (every core, 12 chains each)");
    }
    let int8 = steer_model::kernels::int8_dot_peak();
    if let Some(p) = int8 {
        outln!("int8 dot peak: {p:.1} GOP/s (q8_0's products' instructions, every core)");
    }
    Limits { bandwidth: bw.best, fma, int8 }
}

/// What [`limits`] measured: GB/s, GFLOP/s, GOP/s.
#[derive(Clone, Copy)]
pub struct Limits {
    pub bandwidth: f64,
    pub fma: Option<f64>,
    pub int8: Option<f64>,
}

pub fn compare(a: &BenchArgs) -> Result<()> {
    let bw = limits().bandwidth;
    let exe = std::env::current_exe().context("locating this binary")?;
    let mut all = vec![];
    for dtype in &a.dtypes {
        eprintln!("measuring {dtype} in its own process");
        let out = Command::new(&exe)
            .args(["bench", "--child", "--model", &a.model.model, "--dtype", dtype, "--tokens", &a.tokens.to_string()])
            .arg("--batches")
            .arg(a.batches.iter().map(|b| b.to_string()).collect::<Vec<_>>().join(","))
            .args(a.model.revision.iter().flat_map(|r| ["--revision", r.as_str()]))
            .stderr(std::process::Stdio::inherit())
            .output()
            .with_context(|| format!("running {}", exe.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        out!("{text}");
        if !out.status.success() {
            bail!("the {dtype} measurement failed ({})", out.status);
        }
        let line = text.lines().find_map(|l| l.strip_prefix(LINE)).context("the child printed no measurement")?;
        all.push(serde_json::from_str::<Measured>(line)?);
    }
    outln!();
    out!("{}", table(&all, bw));
    Ok(())
}

/// The table: each dtype against its own limit and against f32 (the first f32 row, if any).
pub fn table(all: &[Measured], bw: f64) -> String {
    let base = all.iter().find(|m| m.dtype == "f32");
    let rate = |m: &Measured, b: usize| m.decode.iter().find(|d| d.0 == b).map(|d| d.1);
    let batches: Vec<usize> = all.first().map(|m| m.decode.iter().map(|d| d.0).collect()).unwrap_or_default();
    let mut s = String::from("| dtype | weights | batch-1 limit |");
    for b in &batches {
        s += &format!(" batch {b} decode |");
    }
    s += " prefill 9 tokens | peak RSS |\n|---|---|---|";
    s += &"---|".repeat(batches.len());
    s += "---|---|\n";
    for m in all {
        let limit = bw * 1e9 / m.weight_bytes as f64;
        s += &format!("| {} | {:.2} GB | {:.2} tok/s |", m.dtype, m.weight_bytes as f64 / 1e9, limit);
        for &b in &batches {
            let Some(r) = rate(m, b) else {
                s += " - |";
                continue;
            };
            let total = r * b as f64;
            s += &if b == 1 { format!(" {total:.2} tok/s = {:.0}% of limit", 100.0 * total / limit) } else { format!(" {total:.2} tok/s total") };
            if let (Some(f), false) = (base.and_then(|f| rate(f, b)), m.dtype == "f32") {
                s += &format!(" ({:.2}x f32)", r / f);
            }
            s += " |";
        }
        s += &format!(" {:.3} s", m.prefill_secs);
        if let (Some(f), false) = (base, m.dtype == "f32") {
            s += &format!(" ({:.2}x f32)", m.prefill_secs / f.prefill_secs);
        }
        s += &format!(" | {:.2} GB |\n", m.peak_rss_gb);
    }
    s
}
