//! Progress on stderr: a bar (indicatif) on a terminal, plain lines (every tenth of the way)
//! when stderr goes to a file or a pipe, so logs never hold carriage returns.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Decode steps of a generation, with its tokens/s.
pub struct Steps {
    bar: Option<ProgressBar>,
    total: u64,
    printed: u64,
    started: Instant,
}

impl Steps {
    pub fn new(total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::new(total);
            b.set_style(ProgressStyle::with_template("  {bar:30} {pos}/{len} steps  {msg}").expect("template"));
            b
        });
        Self { bar, total: total.max(1), printed: 0, started: Instant::now() }
    }

    fn rate(&self, tokens: usize) -> f64 {
        tokens as f64 / self.started.elapsed().as_secs_f64().max(1e-9)
    }

    /// `done` steps and `tokens` tokens (all rows) so far.
    pub fn update(&mut self, done: u64, tokens: usize) {
        let rate = self.rate(tokens);
        match &self.bar {
            Some(b) => {
                b.set_position(done);
                b.set_message(format!("{rate:.1} tokens/s"));
            }
            None => {
                let tenth = done * 10 / self.total;
                if tenth > self.printed {
                    self.printed = tenth;
                    eprintln!("  step {done}/{} ({rate:.1} tokens/s)", self.total);
                }
            }
        }
    }

    pub fn finish(self, tokens: usize) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        let secs = self.started.elapsed().as_secs_f64();
        eprintln!("  {tokens} tokens in {secs:.1}s ({:.1} tokens/s)", self.rate(tokens));
    }
}

/// A spinner with elapsed time while `what` runs (a plain line off a terminal).
pub fn spinner(what: &str) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        eprintln!("{what} ...");
        return None;
    }
    let s = ProgressBar::new_spinner();
    s.set_style(ProgressStyle::with_template("{spinner} {msg} ({elapsed})").expect("template"));
    s.set_message(what.to_string());
    s.enable_steady_tick(Duration::from_millis(120));
    Some(s)
}
