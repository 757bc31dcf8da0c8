//! Limits a worker shares among all its requests (bytes of tensors in flight, concurrent
//! calls): taken without waiting, so a client over the limit gets RESOURCE_EXHAUSTED naming the
//! flag at once, never a queue that grows with the clients.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::ServiceError;

/// A shared amount (counted in `unit`s) that requests reserve and give back when dropped.
#[derive(Debug, Clone)]
pub struct Budget {
    sem: Arc<Semaphore>,
    capacity: u64,
    unit: u64,
    /// The flag that sets it, named in the error.
    flag: &'static str,
    what: &'static str,
}

/// A part of a budget, given back when dropped. Empty by default; parts merge.
#[derive(Debug, Default)]
pub struct Reservation(Option<OwnedSemaphorePermit>);

impl Budget {
    /// `capacity` in the caller's measure (bytes, calls), kept in units of `unit`.
    pub fn new(flag: &'static str, what: &'static str, capacity: u64, unit: u64) -> Self {
        let permits = (capacity / unit).min(u32::MAX as u64).min(Semaphore::MAX_PERMITS as u64);
        Self { sem: Arc::new(Semaphore::new(permits as usize)), capacity, unit, flag, what }
    }

    /// Takes `amount` (rounded up to the unit) or fails at once with RESOURCE_EXHAUSTED.
    pub fn try_take(&self, amount: u64) -> Result<Reservation, ServiceError> {
        let n = amount.div_ceil(self.unit).max(1);
        let refuse = || {
            ServiceError::ResourceExhausted(format!(
                "{}: {amount} more would pass the worker's limit of {} ({}); try again later",
                self.what, self.capacity, self.flag
            ))
        };
        let n = u32::try_from(n).map_err(|_| refuse())?;
        self.sem.clone().try_acquire_many_owned(n).map(|p| Reservation(Some(p))).map_err(|_| refuse())
    }

    /// What is taken now, in the caller's measure.
    pub fn in_use(&self) -> u64 {
        let total = (self.capacity / self.unit).min(u32::MAX as u64).min(Semaphore::MAX_PERMITS as u64);
        (total - self.sem.available_permits() as u64) * self.unit
    }
}

impl Reservation {
    pub fn merge(&mut self, other: Reservation) {
        match (&mut self.0, other.0) {
            (Some(a), Some(b)) => a.merge(b),
            (None, b) => self.0 = b,
            (_, None) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taken_until_dropped_and_refused_naming_the_flag() {
        let b = Budget::new("--max-inflight-bytes", "tensor bytes in flight", 4096, 1024);
        let mut r = b.try_take(3000).unwrap();
        assert_eq!(b.in_use(), 3072);
        let err = b.try_take(2000).unwrap_err();
        assert!(matches!(err, ServiceError::ResourceExhausted(_)));
        assert!(err.to_string().contains("--max-inflight-bytes"), "{err}");
        r.merge(b.try_take(1).unwrap());
        assert_eq!(b.in_use(), 4096);
        drop(r);
        assert_eq!(b.in_use(), 0);
        assert!(b.try_take(u64::MAX).is_err(), "an absurd amount is refused, not wrapped");
    }
}
