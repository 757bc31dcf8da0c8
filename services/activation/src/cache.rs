//! The activation cache: keyed by content (model, revision, dtype, residual stream, token ids),
//! never by a name; bounded by bytes with least-recently-used eviction; concurrent requests for
//! the same key wait for one computation.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use tokio::sync::OnceCell;

/// What identifies an activation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// Model name, revision and dtype.
    pub model: String,
    /// Residual stream index (RESID_PRE(L) = L = BLOCK_OUTPUT(L - 1)).
    pub stream: usize,
    pub ids: Vec<u32>,
}

/// A `[len, d]` activation in f32.
#[derive(Debug)]
pub struct Activation {
    pub values: Vec<f32>,
    pub len: usize,
    pub d: usize,
}

impl Activation {
    pub fn bytes(&self) -> usize {
        self.values.len() * 4
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub entries: u64,
    pub bytes: u64,
    pub capacity_bytes: u64,
    pub evictions: u64,
}

#[derive(Default)]
struct Lru {
    tick: u64,
    used: HashMap<CacheKey, (u64, usize)>, // last use, bytes
    bytes: usize,
}

pub struct ActivationCache {
    slots: DashMap<CacheKey, Arc<OnceCell<Arc<Activation>>>>,
    lru: Mutex<Lru>,
    capacity: usize,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
}

impl ActivationCache {
    pub fn new(capacity_bytes: usize) -> Self {
        Self {
            slots: DashMap::new(),
            lru: Mutex::new(Lru::default()),
            capacity: capacity_bytes,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    /// The cached activation of `key`, or the result of `compute` (run once however many
    /// callers ask at the same time; a failure is not cached).
    pub async fn get_or_compute<E, F, Fut>(&self, key: CacheKey, compute: F) -> Result<Arc<Activation>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Activation, E>>,
    {
        let slot = self.slots.entry(key.clone()).or_default().clone();
        let mut computed = false;
        let value = slot
            .get_or_try_init(|| {
                computed = true;
                async { compute().await.map(Arc::new) }
            })
            .await?
            .clone();
        if computed {
            self.misses.fetch_add(1, Ordering::Relaxed);
            self.admit(key, value.bytes());
        } else {
            self.hits.fetch_add(1, Ordering::Relaxed);
            self.touch(&key);
        }
        Ok(value)
    }

    fn touch(&self, key: &CacheKey) {
        let mut lru = self.lru.lock().unwrap();
        lru.tick += 1;
        let tick = lru.tick;
        if let Some(e) = lru.used.get_mut(key) {
            e.0 = tick;
        }
    }

    fn admit(&self, key: CacheKey, bytes: usize) {
        let mut lru = self.lru.lock().unwrap();
        lru.tick += 1;
        let tick = lru.tick;
        lru.used.insert(key.clone(), (tick, bytes));
        lru.bytes += bytes;
        while lru.bytes > self.capacity {
            // Evict the least recently used entry (never the one just admitted, unless alone).
            let Some(victim) = lru
                .used
                .iter()
                .filter(|(k, _)| **k != key || lru.used.len() == 1)
                .min_by_key(|(_, (t, _))| *t)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            let (_, b) = lru.used.remove(&victim).unwrap();
            lru.bytes -= b;
            self.slots.remove(&victim);
            self.evictions.fetch_add(1, Ordering::Relaxed);
            if victim == key {
                break;
            }
        }
    }

    pub fn stats(&self) -> CacheStats {
        let lru = self.lru.lock().unwrap();
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: lru.used.len() as u64,
            bytes: lru.bytes as u64,
            capacity_bytes: self.capacity as u64,
            evictions: self.evictions.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn key(ids: &[u32]) -> CacheKey {
        CacheKey { model: "m".into(), stream: 1, ids: ids.to_vec() }
    }

    fn act(n: usize) -> Activation {
        Activation { values: vec![1.0; n], len: 1, d: n }
    }

    #[tokio::test]
    async fn hits_misses_and_lru_eviction_by_bytes() {
        let c = ActivationCache::new(100); // 25 floats
        let computed = AtomicUsize::new(0);
        let get = |ids: &'static [u32]| {
            let computed = &computed;
            let c = &c;
            async move {
                c.get_or_compute::<(), _, _>(key(ids), || async {
                    computed.fetch_add(1, Ordering::SeqCst);
                    Ok(act(10))
                })
                .await
                .unwrap()
            }
        };
        get(&[1]).await;
        get(&[1]).await;
        get(&[2]).await;
        assert_eq!((c.stats().hits, c.stats().misses, c.stats().bytes), (1, 2, 80));
        get(&[1]).await; // 1 is now more recent than 2
        get(&[3]).await; // 120 bytes > 100: evicts 2
        let s = c.stats();
        assert_eq!((s.entries, s.bytes, s.evictions), (2, 80, 1));
        get(&[1]).await;
        assert_eq!(computed.load(Ordering::SeqCst), 3);
        get(&[2]).await; // recomputed
        assert_eq!(computed.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn concurrent_identical_requests_compute_once() {
        let c = Arc::new(ActivationCache::new(1 << 20));
        let computed = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = tokio::sync::watch::channel(false);
        let mut tasks = vec![];
        for _ in 0..8 {
            let (c, computed, mut rx) = (c.clone(), computed.clone(), rx.clone());
            tasks.push(tokio::spawn(async move {
                c.get_or_compute::<(), _, _>(key(&[7]), || async move {
                    computed.fetch_add(1, Ordering::SeqCst);
                    let _ = rx.wait_for(|go| *go).await; // hold the computation open
                    Ok(act(4))
                })
                .await
                .unwrap()
            }));
        }
        tokio::task::yield_now().await;
        tx.send(true).unwrap();
        for t in tasks {
            assert_eq!(t.await.unwrap().values.len(), 4);
        }
        assert_eq!(computed.load(Ordering::SeqCst), 1);
        assert_eq!(c.stats().misses, 1);
        assert_eq!(c.stats().hits, 7);
    }

    #[tokio::test]
    async fn failures_are_not_cached() {
        let c = ActivationCache::new(1 << 20);
        assert!(c.get_or_compute(key(&[1]), || async { Err::<Activation, _>("boom") }).await.is_err());
        assert!(c.get_or_compute::<&str, _, _>(key(&[1]), || async { Ok(act(2)) }).await.is_ok());
    }
}
