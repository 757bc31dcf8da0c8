//! A request in the running batch and its lifecycle, as an explicit [`Phase`]:
//! prefilling (its prompt goes through the engine chunk by chunk), decoding (its rows sample a
//! token per forward), draining (every row finished; queued events wait for the client's
//! channel) and ended (delivered, or cancelled: it leaves the batch at the next retirement).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use steer_common::ServiceError;
use steer_model::{Engine, Prefill, Sequence};
use tokio::sync::mpsc::{error::TrySendError, OwnedPermit};

use super::events::{EventWriter, Timing};
use super::{Event, Events};
use crate::validation::ValidRequest;

/// Where a request is in its life.
pub(super) enum Phase {
    /// The prompt goes through the engine chunk by chunk ([`Engine::run`]).
    Prefilling(Box<Prefill>),
    /// Every row has its sequence; those not finished decode.
    Decoding(Vec<Sequence>),
    /// Every row finished; events are still queued for the client.
    Draining,
    /// Nothing left to do: `completed` when every event was delivered, false when cancelled
    /// (client gone, deadline, stall, a failed forward).
    Ended { completed: bool },
}

/// A request in the running batch.
pub(super) struct Running {
    pub(super) request: ValidRequest,
    pub(super) phase: Phase,
    writer: EventWriter,
    /// Events not yet taken by the channel.
    outbox: VecDeque<Event>,
    events: Events,
    /// One channel slot held back for a final status (deadline, stall), whatever the backlog.
    last_word: Option<OwnedPermit<Event>>,
    blocked_since: Option<Instant>,
    deadline: Option<Instant>,
    pub(super) timing: Timing,
    pub(super) produced: u64,
}

impl Running {
    pub(super) fn new(
        request: ValidRequest,
        prefill: Prefill,
        events: Events,
        last_word: OwnedPermit<Event>,
        deadline: Option<Instant>,
        queue_ms: f64,
    ) -> Self {
        Self {
            writer: EventWriter::new(&request, queue_ms),
            phase: Phase::Prefilling(Box::new(prefill)),
            request,
            outbox: VecDeque::new(),
            events,
            last_word: Some(last_word),
            blocked_since: None,
            deadline,
            timing: Timing { started: Instant::now(), prefill_ms: 0.0 },
            produced: 0,
        }
    }

    pub(super) fn ended(&self) -> bool {
        matches!(self.phase, Phase::Ended { .. })
    }

    pub(super) fn prefill(&self) -> Option<&Prefill> {
        match &self.phase {
            Phase::Prefilling(p) => Some(p),
            _ => None,
        }
    }

    /// The rows' sequences while decoding (none before or after).
    pub(super) fn sequences(&self) -> &[Sequence] {
        match &self.phase {
            Phase::Decoding(seqs) => seqs,
            _ => &[],
        }
    }

    /// Rows this request holds in the batch (all of them while prefilling).
    pub(super) fn rows(&self) -> usize {
        match &self.phase {
            Phase::Prefilling(_) => self.request.rows.len(),
            _ => self.decoding_rows(),
        }
    }

    pub(super) fn decoding_rows(&self) -> usize {
        self.sequences().iter().filter(|s| !s.is_finished()).count()
    }

    /// The prefill is over: its rows decode from here.
    pub(super) fn prefilled(&mut self, seqs: Vec<Sequence>) {
        self.phase = Phase::Decoding(seqs);
        self.timing.prefill_ms = self.timing.started.elapsed().as_secs_f64() * 1e3;
    }

    /// Samples every row with pending logits and queues its token (and, when it finished, its
    /// RowFinished); drains once every row finished.
    pub(super) fn sample(&mut self, engine: &Engine, worker: &str) {
        let Phase::Decoding(seqs) = &mut self.phase else { return };
        let tok = engine.tokenizer();
        for ev in steer_model::advance_all(seqs, tok.bos_id()).into_iter().flatten() {
            self.produced += 1;
            let (msg, stopped) = self.writer.token(&self.request, tok, &ev, seqs[ev.row].is_finished());
            self.outbox.push_back(Ok(msg));
            if stopped {
                seqs[ev.row].stop();
            }
            if let Some(reason) = seqs[ev.row].finish {
                self.outbox.push_back(Ok(self.writer.finished(&self.request, tok, ev.row, &seqs[ev.row], reason, &self.timing, worker)));
            }
        }
        if seqs.iter().all(Sequence::is_finished) {
            self.phase = Phase::Draining;
        }
    }

    /// Hands queued events to the channel without waiting, and ends the request if its client
    /// left, its deadline passed or it stalled past `stall_timeout`; a drained request whose
    /// every event went out ends.
    pub(super) fn deliver(&mut self, now: Instant, stall_timeout: Duration) {
        if self.ended() {
            return;
        }
        if self.events.is_closed() {
            return self.end(None); // the client left
        }
        if self.deadline.is_some_and(|d| now >= d) {
            let n = self.produced;
            return self.end(Some(ServiceError::DeadlineExceeded(format!("deadline passed after {n} tokens"))));
        }
        match hand_over(&mut self.outbox, &self.events, &mut self.blocked_since, now, stall_timeout) {
            Handed::All => {}
            Handed::Some => return,
            Handed::Stop(why) => return self.end(why),
        }
        if matches!(self.phase, Phase::Draining) {
            self.phase = Phase::Ended { completed: true };
        }
    }

    /// Cancels every row (their memory goes with them) and sends `status` (if any) in the held
    /// slot.
    pub(super) fn end(&mut self, status: Option<ServiceError>) {
        self.phase = Phase::Ended { completed: false };
        self.outbox.clear();
        if let (Some(permit), Some(e)) = (self.last_word.take(), status) {
            permit.send(Err(e.into()));
        }
    }
}

/// What [`hand_over`] did.
pub(super) enum Handed {
    /// Everything went out.
    All,
    /// The channel is full; the rest waits for the next iteration.
    Some,
    /// The client left (`None`) or read nothing for the stall timeout.
    Stop(Option<ServiceError>),
}

/// Hands `outbox` to `tx` without waiting, noting since when the channel has been full in
/// `blocked_since`.
pub(super) fn hand_over<T>(
    outbox: &mut VecDeque<T>,
    tx: &tokio::sync::mpsc::Sender<T>,
    blocked_since: &mut Option<Instant>,
    now: Instant,
    stall_timeout: Duration,
) -> Handed {
    while let Some(ev) = outbox.pop_front() {
        match tx.try_send(ev) {
            Ok(()) => {}
            Err(TrySendError::Full(ev)) => {
                outbox.push_front(ev);
                let since = *blocked_since.get_or_insert(now);
                if now.duration_since(since) >= stall_timeout {
                    let secs = stall_timeout.as_secs_f64();
                    return Handed::Stop(Some(ServiceError::Aborted(format!("the client read nothing for {secs:.0} s; call cancelled"))));
                }
                return Handed::Some;
            }
            Err(TrySendError::Closed(_)) => return Handed::Stop(None),
        }
    }
    *blocked_since = None;
    Handed::All
}
