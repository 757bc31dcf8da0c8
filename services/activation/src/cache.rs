//! The activation cache: keyed by content (model, revision, dtype, residual stream, token ids),
//! never by a name; bounded by bytes with least-recently-used eviction.
//!
//! Single flight per entry, batched computation per request: [`ActivationCache::get_many`] claims
//! every key of a request that nobody holds and computes all of them with one call (one engine
//! forward); keys another request is already computing are awaited, not computed again. The
//! computation runs in its own task, so a caller that goes away never strands its waiters; a
//! failure is not cached.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use futures::future::{BoxFuture, FutureExt, Shared};
use tonic::Status;

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

/// An entry: ready, or being computed (then every holder awaits the same computation).
type Slot = Shared<BoxFuture<'static, Result<Arc<Activation>, Status>>>;

#[derive(Default)]
struct Lru {
    tick: u64,
    used: HashMap<CacheKey, (u64, usize)>, // last use, bytes
    bytes: usize,
}

pub struct ActivationCache {
    slots: DashMap<CacheKey, Slot>,
    lru: Mutex<Lru>,
    capacity: usize,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
}

impl ActivationCache {
    pub fn new(capacity_bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            slots: DashMap::new(),
            lru: Mutex::new(Lru::default()),
            capacity: capacity_bytes,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        })
    }

    /// The activation of every key, in order. The keys nobody holds are computed together by
    /// one call of `compute` (given them in order of first appearance; it returns one activation
    /// per key, in that order); the others come from the cache or from the computation already
    /// running for them.
    pub async fn get_many<F, Fut>(self: &Arc<Self>, keys: &[CacheKey], compute: F) -> Result<Vec<Arc<Activation>>, Status>
    where
        F: FnOnce(Vec<CacheKey>) -> Fut,
        Fut: Future<Output = Result<Vec<Activation>, Status>> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel::<Result<Arc<[Arc<Activation>]>, Status>>();
        let batch = async move { rx.await.unwrap_or_else(|_| Err(Status::internal("activation computation lost"))) }.boxed().shared();
        let mut slots = Vec::with_capacity(keys.len());
        let mut claimed: Vec<(CacheKey, Slot)> = vec![];
        for key in keys {
            match self.slots.entry(key.clone()) {
                Entry::Occupied(e) => {
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    self.touch(key);
                    slots.push(e.get().clone());
                }
                Entry::Vacant(e) => {
                    let i = claimed.len();
                    let slot: Slot = batch.clone().map(move |r| r.map(|all| all[i].clone())).boxed().shared();
                    e.insert(slot.clone());
                    claimed.push((key.clone(), slot.clone()));
                    slots.push(slot);
                }
            }
        }
        if claimed.is_empty() {
            drop(tx);
        } else {
            self.misses.fetch_add(claimed.len() as u64, Ordering::Relaxed);
            let work = compute(claimed.iter().map(|(k, _)| k.clone()).collect());
            let cache = self.clone();
            tokio::spawn(async move {
                let result = match work.await {
                    Ok(v) if v.len() == claimed.len() => Ok(v.into_iter().map(Arc::new).collect::<Arc<[_]>>()),
                    Ok(v) => Err(Status::internal(format!("computed {} activations for {} keys", v.len(), claimed.len()))),
                    Err(s) => Err(s),
                };
                match &result {
                    Ok(all) => {
                        for ((key, _), act) in claimed.iter().zip(all.iter()) {
                            cache.admit(key.clone(), act.bytes());
                        }
                    }
                    Err(_) => {
                        for (key, slot) in &claimed {
                            cache.slots.remove_if(key, |_, s| s.ptr_eq(slot));
                        }
                    }
                }
                let _ = tx.send(result);
            });
        }
        futures::future::try_join_all(slots).await
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
            let Some(victim) =
                lru.used.iter().filter(|(k, _)| **k != key || lru.used.len() == 1).min_by_key(|(_, (t, _))| *t).map(|(k, _)| k.clone())
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

    /// Gets `keys`, counting calls of the computation and the keys it was given.
    async fn get(c: &Arc<ActivationCache>, keys: &[&[u32]], calls: &Arc<AtomicUsize>, computed: &Arc<AtomicUsize>) -> Vec<Arc<Activation>> {
        let keys: Vec<CacheKey> = keys.iter().map(|k| key(k)).collect();
        let (calls, computed) = (calls.clone(), computed.clone());
        c.get_many(&keys, move |missing| async move {
            calls.fetch_add(1, Ordering::SeqCst);
            computed.fetch_add(missing.len(), Ordering::SeqCst);
            Ok(missing.iter().map(|k| act(10 + k.ids[0] as usize)).collect())
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn hits_misses_and_lru_eviction_by_bytes() {
        let c = ActivationCache::new(100); // 25 floats
        let (calls, computed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        get(&c, &[&[0]], &calls, &computed).await;
        get(&c, &[&[0]], &calls, &computed).await;
        get(&c, &[&[1]], &calls, &computed).await; // 11 floats
        assert_eq!((c.stats().hits, c.stats().misses, c.stats().bytes), (1, 2, 84));
        get(&c, &[&[0]], &calls, &computed).await; // 0 is now more recent than 1
        get(&c, &[&[2]], &calls, &computed).await; // 132 bytes > 100: evicts 1
        let s = c.stats();
        assert_eq!((s.entries, s.bytes, s.evictions), (2, 88, 1));
        get(&c, &[&[0]], &calls, &computed).await;
        assert_eq!(computed.load(Ordering::SeqCst), 3);
        get(&c, &[&[1]], &calls, &computed).await; // recomputed
        assert_eq!(computed.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn the_missing_keys_of_a_request_are_computed_in_one_call() {
        let c = ActivationCache::new(1 << 20);
        let (calls, computed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        get(&c, &[&[1]], &calls, &computed).await;
        let got = get(&c, &[&[1], &[2], &[3], &[2]], &calls, &computed).await;
        assert_eq!(got.iter().map(|a| a.d).collect::<Vec<_>>(), vec![11, 12, 13, 12], "in order, duplicates too");
        assert_eq!(calls.load(Ordering::SeqCst), 2, "one call for the request's missing keys");
        assert_eq!(computed.load(Ordering::SeqCst), 3, "1 was cached, 2 once");
        assert_eq!((c.stats().misses, c.stats().hits), (3, 2));
    }

    #[tokio::test]
    async fn concurrent_requests_compute_each_key_once() {
        let c = ActivationCache::new(1 << 20);
        let computed = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = tokio::sync::watch::channel(false);
        let mut tasks = vec![];
        for i in 0..8u32 {
            let (c, computed, mut rx) = (c.clone(), computed.clone(), rx.clone());
            // Overlapping requests: {7, 8} and {7, 9}.
            let keys = vec![key(&[7]), key(&[8 + i % 2])];
            tasks.push(tokio::spawn(async move {
                c.get_many(&keys, |missing| async move {
                    computed.fetch_add(missing.len(), Ordering::SeqCst);
                    let _ = rx.wait_for(|go| *go).await; // hold the computation open
                    Ok(missing.iter().map(|_| act(4)).collect())
                })
                .await
                .unwrap()
            }));
        }
        tokio::task::yield_now().await;
        tx.send(true).unwrap();
        for t in tasks {
            assert_eq!(t.await.unwrap().len(), 2);
        }
        assert_eq!(computed.load(Ordering::SeqCst), 3, "7, 8 and 9 once each");
        assert_eq!((c.stats().misses, c.stats().hits), (3, 13));
    }

    #[tokio::test]
    async fn failures_reach_every_waiter_and_are_not_cached() {
        let c = ActivationCache::new(1 << 20);
        let err = c.get_many(&[key(&[1]), key(&[2])], |_| async { Err(Status::invalid_argument("boom")) }).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        let got = c.get_many(&[key(&[1])], |m| async move { Ok(m.iter().map(|_| act(2)).collect()) }).await.unwrap();
        assert_eq!(got[0].values.len(), 2);
        assert_eq!(c.stats().entries, 1);
    }

    #[tokio::test]
    async fn a_caller_that_leaves_does_not_strand_the_others() {
        let c = ActivationCache::new(1 << 20);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let first = {
            let c = c.clone();
            tokio::spawn(async move {
                c.get_many(&[key(&[5])], |m| async move {
                    let _ = rx.await;
                    Ok(m.iter().map(|_| act(3)).collect())
                })
                .await
            })
        };
        tokio::task::yield_now().await;
        first.abort(); // the claimer goes away while computing
        let waiter = {
            let c = c.clone();
            tokio::spawn(async move { c.get_many(&[key(&[5])], |_| async { Err(Status::internal("recomputed")) }).await })
        };
        tokio::task::yield_now().await;
        tx.send(()).unwrap();
        assert_eq!(waiter.await.unwrap().unwrap()[0].values.len(), 3);
    }
}
