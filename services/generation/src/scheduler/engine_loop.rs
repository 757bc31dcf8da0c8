//! The engine loop: intake, admission, one forward, sampling, delivery, retirement, every
//! iteration (see the module doc of [`super`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use steer_common::ServiceError;
use steer_model::{Engine, GenerateOptions, Prefill, PrefixCache, Sequence};
use steer_telemetry::Metrics;
use tonic::Status;

use super::running::{Phase, Running};
use super::scoring::Scoring;
use super::{Events, Job, Work};
use crate::config::GenerationConfig;
use crate::heartbeat::{Heartbeat, StopOnDrop};
use crate::validation::ValidRequest;

pub(super) struct EngineLoop {
    pub(super) engine: Arc<Engine>,
    pub(super) cfg: GenerationConfig,
    pub(super) rx: std::sync::mpsc::Receiver<Job>,
    pub(super) depth: Arc<AtomicUsize>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) waiting: VecDeque<Job>,
    pub(super) running: Vec<Running>,
    /// Score calls being computed.
    pub(super) scoring: Vec<Scoring>,
    pub(super) heartbeat: Arc<Heartbeat>,
    /// Prefilled rows kept for later requests with the same prompt and steering.
    pub(super) prefix: PrefixCache,
}

impl EngineLoop {
    pub(super) fn run(&mut self) {
        let heartbeat = self.heartbeat.clone();
        let _stop = StopOnDrop(&heartbeat);
        loop {
            if !self.intake() {
                return;
            }
            heartbeat.tick(true);
            self.admit();
            self.start_texts();
            self.forward();
            let now = Instant::now();
            for r in self.running.iter_mut() {
                r.sample(&self.engine, &self.cfg.worker_id);
                r.deliver(now, self.cfg.stall_timeout);
            }
            for s in self.scoring.iter_mut() {
                s.deliver(now, self.cfg.stall_timeout);
            }
            self.retire();
            heartbeat.tick(!(self.running.is_empty() && self.waiting.is_empty() && self.scoring.is_empty()));
        }
    }

    /// Takes arrivals (waiting for one when idle) and drops waiting jobs whose client left or
    /// whose deadline passed. False once the service is gone and nothing is left to do.
    fn intake(&mut self) -> bool {
        let idle = self.running.is_empty() && self.waiting.is_empty() && self.scoring.is_empty();
        let busy = self.running.iter().any(|r| r.rows() > 0 && !r.ended()) || self.scoring.iter().any(|s| !s.active.is_empty() || s.pending());
        if idle {
            match self.rx.recv() {
                Ok(job) => self.waiting.push_back(job),
                Err(_) => return false,
            }
            // A burst of arrivals (a dashboard's viewers, a sweep) reaches an idle engine over a
            // few milliseconds: gather it, so that the first forward prefills its shortest
            // prompts instead of whichever came first.
            let until = Instant::now() + self.cfg.arrival_window;
            while let Some(left) = until.checked_duration_since(Instant::now()) {
                match self.rx.recv_timeout(left) {
                    Ok(job) => self.waiting.push_back(job),
                    Err(_) => break,
                }
            }
        } else if !busy {
            // Only undelivered events (slow readers) or jobs over budget: wait briefly for news
            // instead of spinning.
            if let Ok(job) = self.rx.recv_timeout(Duration::from_millis(5)) {
                self.waiting.push_back(job);
            }
        }
        while let Ok(job) = self.rx.try_recv() {
            self.waiting.push_back(job);
        }
        let now = Instant::now();
        let before = self.waiting.len();
        self.waiting.retain(|job| {
            if job.is_closed() {
                return false;
            }
            if job.deadline.is_some_and(|d| now >= d) {
                job.refuse(ServiceError::DeadlineExceeded("deadline passed while queued".into()));
                return false;
            }
            true
        });
        self.depth.fetch_sub(before - self.waiting.len(), Ordering::SeqCst);
        true
    }

    /// Rows and KV positions the running generations and Score calls hold.
    fn in_use(&self) -> (usize, usize) {
        let rows = self.running.iter().map(Running::rows).sum::<usize>() + self.scoring.iter().map(Scoring::rows).sum::<usize>();
        let reserved = self.running.iter().filter(|r| !r.ended()).map(|r| r.request.kv_positions()).sum::<usize>()
            + self.scoring.iter().map(Scoring::reserved).sum::<usize>();
        (rows, reserved)
    }

    /// Admits waiting requests in order while they fit the budgets; their prefills start. A
    /// Score call is admitted at once: its texts start as the budgets allow ([`Self::start_texts`]).
    fn admit(&mut self) {
        while let Some(job) = self.waiting.front() {
            let (rows, reserved) = self.in_use();
            let fits = match &job.work {
                Work::Generate { request, .. } => {
                    rows + request.rows.len() <= self.cfg.max_batch_rows && reserved + request.kv_positions() <= self.cfg.max_batch_tokens
                }
                Work::Score(_) => true,
            };
            // Wait for retirements (a request alone always fits: validation checks it).
            let alone = self.running.is_empty() && self.scoring.is_empty();
            if !fits && !alone {
                break;
            }
            let job = self.waiting.pop_front().expect("front exists");
            self.depth.fetch_sub(1, Ordering::SeqCst);
            self.metrics.queue_wait.observe(job.queued_at.elapsed().as_secs_f64());
            match job.work {
                Work::Generate { request, events } => {
                    if let Some(r) = self.begin(request, events, job.queued_at, job.deadline) {
                        self.running.push(r);
                    }
                }
                Work::Score(s) => self.scoring.extend(Scoring::new(s, job.deadline)),
            }
        }
        self.metrics.queue_depth.set(self.depth.load(Ordering::SeqCst) as i64);
    }

    /// Starts Score calls' next texts, oldest call first, while they fit the budgets (one text
    /// at least when nothing else runs).
    fn start_texts(&mut self) {
        for i in 0..self.scoring.len() {
            while let Some(t) = self.scoring[i].next_text() {
                let (rows, reserved) = self.in_use();
                let (r, k) = self.scoring[i].cost(t);
                let fits = rows + r <= self.cfg.max_batch_rows && reserved + k <= self.cfg.max_batch_tokens;
                if !fits && rows > 0 {
                    return self.prefix_metrics();
                }
                self.scoring[i].start(t, &self.engine, &mut self.prefix);
            }
        }
        self.prefix_metrics();
    }

    fn begin(&mut self, request: ValidRequest, events: Events, queued_at: Instant, deadline: Option<Instant>) -> Option<Running> {
        let last_word = events.clone().try_reserve_owned().ok()?; // None: the client left
        let opts = GenerateOptions {
            max_new_tokens: request.max_new_tokens,
            stop_at_eos: request.stop_at_eos,
            use_kv_cache: true,
            top_logprobs: request.top_logprobs,
        };
        let mut prefill = match self.engine.begin_cached(&request.rows, &opts, &mut self.prefix) {
            Ok(p) => p,
            Err(e) => {
                last_word.send(Err(ServiceError::from(e).into()));
                return None;
            }
        };
        let ready = prefill.take_ready();
        let mut running = Running::new(request, prefill, events, last_word, deadline, queued_at.elapsed().as_secs_f64() * 1e3);
        // Every row's prompt was in the prefix cache: it decodes from the next forward on.
        if let Some(seqs) = ready {
            running.prefilled(seqs);
            self.metrics.time_to_first_token.observe(running.timing.started.elapsed().as_secs_f64());
        }
        self.prefix_metrics();
        Some(running)
    }

    fn prefix_metrics(&self) {
        let s = self.prefix.stats();
        let m = &self.metrics;
        m.prefix_cache_hits.set(s.hits as i64);
        m.prefix_cache_misses.set(s.misses as i64);
        m.prefix_cache_positions_reused.set(s.positions_reused as i64);
        m.prefix_cache_partial_hits.set(s.partial_hits as i64);
        m.prefix_cache_block_positions_reused.set(s.block_positions_reused as i64);
        m.prefix_cache_bytes.set(s.bytes as i64);
        m.prefix_cache_entries.set(s.entries as i64);
    }

    /// The prefills that join this iteration's forward, in order: one chunk of
    /// `max_prefill_tokens` positions (at most) from each, shortest remaining prefill first (then
    /// oldest first), except that requests admitted `prefill_aging` ago or more go first, oldest
    /// first; while the chunks stay within `prefill_tokens_per_step` positions (at least one
    /// chunk: a forward never waits for a larger one to fill up, so the first of a burst of
    /// arrivals get their first tokens after a forward of their own size).
    /// Chunk boundaries depend on the request alone, so its numbers do too.
    ///
    /// Shortest first because prefill is compute-bound here (~3 GFLOP per prompt position and
    /// row on XL): of requests that arrive together, the short ones get their first tokens after
    /// their own prefills instead of after every longer one ahead of them, which minimises the
    /// mean time to first token; the aging bound keeps a long prompt from waiting on a stream
    /// of short ones for more than `prefill_aging`.
    fn prefills(&self) -> Vec<usize> {
        let now = Instant::now();
        let mut order: Vec<(bool, usize, usize, usize)> = self
            .running
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.prefill().map(|p| (i, r, p)))
            .map(|(i, r, p)| {
                let aged = now.duration_since(r.timing.started) >= self.cfg.prefill_aging;
                (!aged, if aged { 0 } else { p.remaining() }, i, p.next_chunk(self.cfg.max_prefill_tokens))
            })
            .collect();
        order.sort_unstable();
        let mut spent = 0;
        let mut chosen = vec![];
        for (_, _, i, chunk) in order {
            if !chosen.is_empty() && spent + chunk > self.cfg.prefill_tokens_per_step {
                break;
            }
            chosen.push(i);
            spent += chunk;
        }
        chosen
    }

    /// One forward (`Engine::run`) for the chosen prefill chunks and a decode step of every
    /// running row that has sampled its last token: the weights are streamed once for both, so
    /// a joining request costs the decoding rows its chunk's compute, not another pass over the
    /// weights. A request's first tokens are sampled right after the forward that ends its
    /// prefill.
    fn forward(&mut self) {
        let chosen = self.prefills();
        // In the batch's order (the order does not change any row's numbers).
        let mut joined = vec![];
        let mut prefills: Vec<&mut Prefill> = vec![];
        let mut seqs: Vec<&mut Sequence> = vec![];
        for (i, r) in self.running.iter_mut().enumerate() {
            match &mut r.phase {
                Phase::Prefilling(p) if chosen.contains(&i) => {
                    joined.push(i);
                    prefills.push(p);
                }
                Phase::Decoding(rows) => seqs.extend(rows.iter_mut().filter(|s| !s.is_finished() && !s.has_pending())),
                _ => {}
            }
        }
        // Score calls' chunks fill the forward: up to `prefill_tokens_per_step` positions in all
        // while generations run (their streams wait on this forward), `score_batch_tokens` when
        // only scoring runs; at least one chunk.
        let chunk = |p: &Prefill| p.next_chunk(self.cfg.max_prefill_tokens);
        let budget = match prefills.is_empty() && seqs.is_empty() {
            true => self.cfg.score_batch_tokens,
            false => self.cfg.prefill_tokens_per_step,
        };
        let mut spent: usize = prefills.iter().map(|p| chunk(p)).sum();
        let mut texts = vec![];
        'calls: for (j, sc) in self.scoring.iter_mut().enumerate() {
            for (a, (_, p)) in sc.active.iter_mut().enumerate() {
                let c = chunk(p);
                if !(prefills.is_empty() && seqs.is_empty()) && spent + c > budget {
                    break 'calls;
                }
                spent += c;
                texts.push((j, a));
                prefills.push(p);
            }
        }
        if prefills.is_empty() && seqs.is_empty() {
            return;
        }
        let (n, positions) = (seqs.len(), spent);
        let span = tracing::info_span!("forward", decode_rows = n, prefills = prefills.len(), prefill_positions = positions);
        let started = Instant::now();
        let result = span.in_scope(|| self.engine.run(&mut prefills, self.cfg.max_prefill_tokens, &mut seqs));
        tracing::debug!(parent: &span, secs = started.elapsed().as_secs_f64(), "forward done");
        let done = match result {
            Ok(done) => done,
            Err(e) => {
                tracing::error!(error = %e, "forward failed");
                let status: Status = ServiceError::from(e).into();
                for (i, r) in self.running.iter_mut().enumerate() {
                    if joined.contains(&i) || r.decoding_rows() > 0 {
                        r.end(Some(ServiceError::Internal(status.message().to_string())));
                    }
                }
                for &(j, _) in &texts {
                    self.scoring[j].end(Some(ServiceError::Internal(status.message().to_string())));
                }
                return;
            }
        };
        let mut done = done.into_iter();
        for (&i, seqs) in joined.iter().zip(done.by_ref()) {
            let Some(seqs) = seqs else { continue };
            let r = &mut self.running[i];
            if let Phase::Prefilling(p) = &mut r.phase {
                p.remember(&seqs, &mut self.prefix);
            }
            r.prefilled(seqs);
            self.metrics.time_to_first_token.observe(r.timing.started.elapsed().as_secs_f64());
        }
        // Texts scored: their scores go out, their prefills go (last first, so indices hold).
        for (&(j, a), seqs) in texts.iter().zip(done).rev() {
            let Some(seqs) = seqs else { continue };
            let sc = &mut self.scoring[j];
            let (text, mut p) = sc.active.remove(a);
            p.remember(&seqs, &mut self.prefix);
            let scored = p.take_scored().expect("a scoring prefill that is over has its scores");
            sc.text_done(&self.engine, text, scored);
        }
        self.prefix_metrics();
        if n > 0 {
            self.metrics.decode_steps.inc();
            self.metrics.step_rows.observe(n as f64);
        }
    }

    /// Removes finished requests and Score calls; updates the gauges.
    fn retire(&mut self) {
        self.scoring.retain(|s| !s.ended);
        let metrics = &self.metrics;
        self.running.retain_mut(|r| {
            let Phase::Ended { completed } = r.phase else {
                return true;
            };
            if completed {
                let secs = r.timing.started.elapsed().as_secs_f64();
                metrics.generation_seconds.observe(secs);
                let per_row = r.produced / (r.rows() as u64).max(1);
                if per_row > 1 {
                    let decode = (secs - r.timing.prefill_ms / 1e3).max(0.0);
                    metrics.time_per_output_token.observe(decode / (per_row - 1) as f64);
                }
                if secs > 0.0 {
                    metrics.tokens_per_second.set(r.produced as f64 / secs);
                }
            }
            metrics.tokens_generated.inc_by(r.produced);
            false
        });
        let rows: usize = self.running.iter().map(Running::rows).sum();
        let kv: usize = self.running.iter().flat_map(|r| r.sequences()).map(Sequence::kv_bytes).sum();
        self.metrics.batch_rows.set(rows as i64);
        self.metrics.requests_running.set(self.running.len() as i64);
        self.metrics.kv_bytes.set(kv as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::Event;
    use crate::validation::ValidRequest;
    use std::time::Duration;
    use steer_model::{LoadOptions, ModelSource, SamplingParams, Sequence};
    use tokio::sync::mpsc;

    fn engine() -> Arc<Engine> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny-gpt2");
        Arc::new(Engine::load(&ModelSource::Dir(dir), &LoadOptions::default()).expect("the tiny fixture loads"))
    }

    /// An engine loop, not started, taking jobs from `rx`.
    fn engine_loop(engine: &Arc<Engine>, cfg: GenerationConfig, rx: std::sync::mpsc::Receiver<Job>) -> EngineLoop {
        EngineLoop {
            heartbeat: Default::default(),
            engine: engine.clone(),
            cfg,
            rx,
            depth: Default::default(),
            metrics: Metrics::new(),
            waiting: VecDeque::new(),
            running: vec![],
            scoring: vec![],
            prefix: PrefixCache::new(0),
        }
    }

    /// A job of two plain rows (one comparison, no steering) for `prompt`, and its event receiver.
    fn job(engine: &Engine, prompt: &str) -> (Job, mpsc::Receiver<Event>) {
        let ids = engine.encode(prompt, true).unwrap();
        let (rows, n_unsteered) = crate::validation::pair_rows(&ids, &SamplingParams::greedy(), 1, 0, &[], false);
        let request = ValidRequest {
            rows,
            n_unsteered,
            max_new_tokens: 8,
            stop_at_eos: false,
            top_logprobs: 0,
            prompt_tokens: ids.len(),
            stop: vec![],
            memory: Arc::new(Default::default()),
        };
        let (tx, rx) = mpsc::channel(64);
        (Job { work: Work::Generate { request, events: tx }, queued_at: Instant::now(), deadline: None }, rx)
    }

    /// One request decodes while three arrive: which of the three (in arrival order) finish
    /// their prefill in each of the next two iterations, with chunks of 8 positions, `budget`
    /// positions per iteration and `prefill_aging` set to `aging`.
    fn prefilled_per_iteration(budget: usize, aging: Duration) -> [Vec<usize>; 2] {
        let engine = engine();
        let cfg = GenerationConfig { max_prefill_tokens: 8, prefill_tokens_per_step: budget, prefill_aging: aging, ..Default::default() };
        let (_tx, rx) = std::sync::mpsc::channel();
        let mut lp = engine_loop(&engine, cfg, rx);
        let mut receivers = vec![];
        let (first, rx) = job(&engine, "I went up to my friend and said");
        receivers.push(rx);
        lp.waiting.push_back(first);
        lp.depth.fetch_add(1, Ordering::SeqCst);
        lp.admit();
        // 9 positions in chunks of 8: two forwards, one chunk each.
        lp.forward();
        assert!(lp.running[0].prefill().is_some(), "one chunk of a prompt per forward");
        lp.forward();
        assert!(lp.running[0].prefill().is_none());
        lp.running[0].sample(&engine, "");
        for prompt in ["To see the eiffel tower, people flock to", "Hi there", "I hate you because"] {
            let (j, rx) = job(&engine, prompt);
            receivers.push(rx);
            lp.waiting.push_back(j);
            lp.depth.fetch_add(1, Ordering::SeqCst);
        }
        lp.admit();
        let mut after = [vec![], vec![]];
        for done in after.iter_mut() {
            lp.forward();
            assert!(lp.running[0].sequences().iter().all(Sequence::has_pending), "the decoding rows step in the same forward");
            lp.running[0].sample(&engine, "");
            *done = (0..3).filter(|&i| lp.running[1 + i].prefill().is_none()).collect();
        }
        after
    }

    #[test]
    fn a_burst_reaching_an_idle_engine_is_gathered_before_the_first_forward() {
        let engine = engine();
        let window = Duration::from_millis(50);
        let cfg = GenerationConfig { arrival_window: window, ..Default::default() };
        // A rendezvous channel: each send completes only when the loop takes the job.
        let (tx, rx) = std::sync::mpsc::sync_channel(0);
        let mut lp = engine_loop(&engine, cfg, rx);
        let (a, _ra) = job(&engine, "I went up to my friend and said");
        let (b, _rb) = job(&engine, "Hi there");
        let (release, released) = std::sync::mpsc::channel::<()>();
        let sender = std::thread::spawn(move || {
            tx.send(a).unwrap();
            tx.send(b).unwrap();
            released.recv().ok(); // the service stays up until the test is done
        });
        let started = Instant::now();
        assert!(lp.intake());
        assert_eq!(lp.waiting.len(), 2, "the second arrival joined the first");
        assert!(started.elapsed() >= window, "the loop waited the window out for more arrivals");
        release.send(()).unwrap();
        sender.join().unwrap();
    }

    #[test]
    fn the_prefill_budget_sets_how_many_positions_join_per_iteration_shortest_first() {
        // Prompts of 12, 3 and 5 positions (with BOS) arrive in that order; in chunks of 8,
        // shortest first: 3, 5, 8 (then 4 in the next forward): chunks join a forward while they
        // stay within the budget (the first always joins), one chunk per request.
        let young = Duration::from_secs(3600);
        assert_eq!(prefilled_per_iteration(1, young), [vec![1], vec![1, 2]]);
        assert_eq!(prefilled_per_iteration(8, young), [vec![1, 2], vec![1, 2]]);
        assert_eq!(prefilled_per_iteration(12, young), [vec![1, 2], vec![1, 2]]);
        assert_eq!(prefilled_per_iteration(16, young), [vec![1, 2], vec![0, 1, 2]]);
        assert_eq!(prefilled_per_iteration(1024, young), [vec![1, 2], vec![0, 1, 2]]);
    }

    #[test]
    fn prefills_that_waited_past_the_aging_bound_go_oldest_first() {
        // Every request aged at once: arrival order, 8, 3, 5 (then 4).
        let aged = Duration::ZERO;
        assert_eq!(prefilled_per_iteration(1, aged), [vec![], vec![0]]);
        assert_eq!(prefilled_per_iteration(8, aged), [vec![], vec![0, 1]]);
        assert_eq!(prefilled_per_iteration(11, aged), [vec![1], vec![0, 1, 2]]);
        assert_eq!(prefilled_per_iteration(16, aged), [vec![1, 2], vec![0, 1, 2]]);
    }

    #[test]
    fn a_request_goes_prefilling_decoding_draining_ended_and_its_stream_ends_with_every_row() {
        let engine = engine();
        let (_tx, rx) = std::sync::mpsc::channel();
        let mut lp = engine_loop(&engine, GenerationConfig::default(), rx);
        let (j, mut events) = job(&engine, "Hi there");
        lp.waiting.push_back(j);
        lp.depth.fetch_add(1, Ordering::SeqCst);
        lp.admit();
        assert!(matches!(lp.running[0].phase, Phase::Prefilling(_)));
        let mut phases = vec![];
        while !lp.running.is_empty() {
            lp.forward();
            let now = Instant::now();
            for r in lp.running.iter_mut() {
                r.sample(&engine, "w");
                r.deliver(now, Duration::from_secs(60));
            }
            phases.push(match lp.running[0].phase {
                Phase::Prefilling(_) => "prefilling",
                Phase::Decoding(_) => "decoding",
                Phase::Draining => "draining",
                Phase::Ended { completed: true } => "completed",
                Phase::Ended { completed: false } => "cancelled",
            });
            lp.retire();
        }
        // One forward prefills "Hi there" (3 positions) and samples the first token; 7 more
        // decode; the eighth token finishes both rows and their events all fit the channel.
        assert_eq!(phases.first(), Some(&"decoding"));
        assert_eq!(phases.last(), Some(&"completed"));
        assert_eq!(phases.len(), 8);
        let mut finished = 0;
        while let Ok(ev) = events.try_recv() {
            if let Some(steer_proto::v1::generate_response::Event::Finished(f)) = ev.unwrap().event {
                assert_eq!((f.generated_tokens, f.reason), (8, steer_proto::v1::FinishReason::Length as i32));
                finished += 1;
            }
        }
        assert_eq!(finished, 2, "both rows' RowFinished reached the stream");
    }

    #[test]
    fn a_request_seen_before_decodes_at_once_from_the_prefix_cache_with_the_same_tokens() {
        let engine = engine();
        let (_tx, rx) = std::sync::mpsc::channel();
        let mut lp = engine_loop(&engine, GenerationConfig::default(), rx);
        lp.prefix = PrefixCache::new(64 << 20);
        let mut runs = vec![];
        for _ in 0..2 {
            let (j, mut events) = job(&engine, "I went up to my friend and said");
            lp.waiting.push_back(j);
            lp.depth.fetch_add(1, Ordering::SeqCst);
            lp.admit();
            let prefilling = matches!(lp.running[0].phase, Phase::Prefilling(_));
            while !lp.running.is_empty() {
                lp.forward();
                for r in lp.running.iter_mut() {
                    r.sample(&engine, "w");
                    r.deliver(Instant::now(), Duration::from_secs(60));
                }
                lp.retire();
            }
            let mut rows = vec![];
            while let Ok(ev) = events.try_recv() {
                if let Some(steer_proto::v1::generate_response::Event::Finished(f)) = ev.unwrap().event {
                    rows.push((f.row, f.token_ids));
                }
            }
            runs.push((prefilling, rows));
        }
        assert!(runs[0].0 && !runs[1].0, "the second request skipped its prefill");
        assert_eq!(runs[0].1, runs[1].1);
        assert_eq!(runs[0].1.len(), 2);
        // Both rows share one prompt and no steering: one distinct row, held once, hit once.
        assert_eq!((lp.prefix.stats().hits, lp.prefix.stats().misses, lp.prefix.stats().entries), (1, 1, 1));
        assert_eq!(lp.metrics.prefix_cache_hits.get(), 1);
    }
}
