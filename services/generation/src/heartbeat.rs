//! The engine loop's pulse, for a watchdog: the loop ticks after every iteration, saying
//! whether it has work; a loop that has work and has not ticked for a while, or that has ended
//! (a panic), is stuck, and the server reports the generation service NOT_SERVING.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Heartbeat {
    epoch: Instant,
    /// Milliseconds after `epoch` of the last tick.
    last_ms: AtomicU64,
    busy: AtomicBool,
    alive: AtomicBool,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self { epoch: Instant::now(), last_ms: AtomicU64::new(0), busy: AtomicBool::new(false), alive: AtomicBool::new(true) }
    }
}

impl Heartbeat {
    /// An iteration ended (or the loop is about to wait for work, `busy` false).
    pub fn tick(&self, busy: bool) {
        self.last_ms.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.busy.store(busy, Ordering::Relaxed);
    }

    /// The loop has ended.
    pub fn stop(&self) {
        self.alive.store(false, Ordering::Relaxed);
    }

    /// Why the loop counts as stuck at `now`, if it does: ended, or busy with no tick for `timeout`.
    pub fn stuck(&self, now: Instant, timeout: Duration) -> Option<String> {
        if !self.alive.load(Ordering::Relaxed) {
            return Some("the generation engine loop has stopped".into());
        }
        let since = now.saturating_duration_since(self.epoch + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)));
        (self.busy.load(Ordering::Relaxed) && since >= timeout)
            .then(|| format!("the generation engine has made no progress for {:.0} s", since.as_secs_f64()))
    }
}

/// Stops the heartbeat when the loop ends, by return or by panic.
pub(crate) struct StopOnDrop<'a>(pub &'a Heartbeat);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_without_ticks_is_stuck_idle_is_not_and_a_stopped_loop_always_is() {
        let h = Heartbeat::default();
        let t = Duration::from_secs(5);
        let later = Instant::now() + Duration::from_secs(10);
        h.tick(false);
        assert_eq!(h.stuck(later, t), None, "idle for long is fine");
        h.tick(true);
        assert!(h.stuck(Instant::now(), t).is_none());
        assert!(h.stuck(later, t).unwrap().contains("no progress"));
        {
            let _guard = StopOnDrop(&h);
        }
        assert!(h.stuck(Instant::now(), t).unwrap().contains("stopped"));
    }
}
