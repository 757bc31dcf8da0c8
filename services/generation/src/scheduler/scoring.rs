//! A Score call in the engine loop ([`Scoring`]): its texts start as scoring prefills
//! (`Engine::begin_score`, one per text, its unsteered and steered rows together) while the
//! budgets have room, their chunks join the loop's forwards beside generations, and each text's
//! scores go out in text order as soon as the texts before it are done. A client that leaves,
//! a deadline that passes or a reader that stalls ends the call; its prefills go with it.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use steer_common::ServiceError;
use steer_model::{Engine, Prefill, PrefixCache};
use steer_proto::v1::ScoreResponse;
use tokio::sync::mpsc::{self, OwnedPermit};

use super::running::{hand_over, Handed};
use tonic::Status;

use crate::score::{text_scores, ValidScore};

type ScoreEvent = Result<ScoreResponse, Status>;

/// A checked Score call and where its scores go.
pub(crate) struct ScoreJob {
    pub valid: ValidScore,
    pub out: mpsc::Sender<ScoreEvent>,
    /// Held until the call ends (its Score-call slot, its tensors' bytes).
    pub _held: Box<dyn Send>,
}

/// A Score call being computed.
pub(super) struct Scoring {
    job: ScoreJob,
    deadline: Option<Instant>,
    /// Texts started so far, by text.
    started: Vec<bool>,
    /// Texts being computed: (text, its prefill).
    pub(super) active: Vec<(usize, Box<Prefill>)>,
    /// Finished texts' scores waiting for the texts before them.
    finished: BTreeMap<usize, Vec<ScoreEvent>>,
    /// The next text whose scores go out.
    emit_next: usize,
    outbox: VecDeque<ScoreEvent>,
    /// One channel slot held back for a final status (deadline, stall), whatever the backlog.
    last_word: Option<OwnedPermit<ScoreEvent>>,
    blocked_since: Option<Instant>,
    pub(super) ended: bool,
}

impl Scoring {
    /// `None` when the client already left.
    pub(super) fn new(job: ScoreJob, deadline: Option<Instant>) -> Option<Self> {
        let last_word = job.out.clone().try_reserve_owned().ok()?;
        let n = job.valid.texts.len();
        Some(Self {
            last_word: Some(last_word),
            job,
            deadline,
            started: vec![false; n],
            active: vec![],
            finished: BTreeMap::new(),
            emit_next: 0,
            outbox: VecDeque::new(),
            blocked_since: None,
            ended: false,
        })
    }

    /// KV positions its running texts hold (every row of every text).
    pub(super) fn reserved(&self) -> usize {
        let rows = self.job.valid.sides().len();
        self.active.iter().map(|(t, _)| self.job.valid.texts[*t].ids.len() * rows).sum()
    }

    /// Rows its running texts hold.
    pub(super) fn rows(&self) -> usize {
        self.active.len() * self.job.valid.sides().len()
    }

    /// The first text not started yet whose context (a prompt of 2+ tokens) no running text
    /// shares: a text whose context is being computed waits for the prefix cache to hold it, so
    /// a context is computed once.
    pub(super) fn next_text(&self) -> Option<usize> {
        if self.ended {
            return None;
        }
        let texts = &self.job.valid.texts;
        let context = |i: usize| &texts[i].ids[..texts[i].start];
        (0..texts.len()).filter(|&i| !self.started[i]).find(|&i| context(i).len() < 2 || !self.active.iter().any(|&(a, _)| context(a) == context(i)))
    }

    /// Texts not started yet.
    pub(super) fn pending(&self) -> bool {
        !self.ended && self.started.iter().any(|s| !s)
    }

    /// The rows and KV positions text `i` takes.
    pub(super) fn cost(&self, i: usize) -> (usize, usize) {
        let rows = self.job.valid.sides().len();
        (rows, self.job.valid.texts[i].ids.len() * rows)
    }

    /// Starts text `i`: a scoring prefill, or its scores at once when the prefix cache holds
    /// every row.
    pub(super) fn start(&mut self, i: usize, engine: &Engine, cache: &mut PrefixCache) {
        self.started[i] = true;
        let t = &self.job.valid.texts[i];
        match engine.begin_score(&t.ids, t.start, &self.job.valid.sides(), Some(cache), self.job.valid.keep_kv) {
            Ok(mut p) => match p.take_scored() {
                Some(scored) => self.text_done(engine, i, scored),
                None => self.active.push((i, Box::new(p))),
            },
            Err(e) => self.end(Some(ServiceError::from(e))),
        }
    }

    /// Text `i` is scored: queue its scores (and any finished texts after it) in order.
    pub(super) fn text_done(&mut self, engine: &Engine, i: usize, scored: Vec<steer_model::Scored>) {
        let valid = &self.job.valid;
        let scores = text_scores(engine, valid, &valid.texts[i], &scored);
        self.finished.insert(i, scores.into_iter().map(|s| Ok(ScoreResponse { score: Some(s) })).collect());
        while let Some(events) = self.finished.remove(&self.emit_next) {
            self.outbox.extend(events);
            self.emit_next += 1;
        }
    }

    /// Every text is scored and every score delivered.
    fn complete(&self) -> bool {
        self.emit_next == self.job.valid.texts.len() && self.outbox.is_empty()
    }

    /// Hands queued scores to the client without waiting; ends the call when it is complete,
    /// when the client left, when its deadline passed or when the client read nothing for
    /// `stall_timeout`.
    pub(super) fn deliver(&mut self, now: Instant, stall_timeout: Duration) {
        if self.ended {
            return;
        }
        if self.job.out.is_closed() {
            return self.end(None);
        }
        if self.deadline.is_some_and(|d| now >= d) {
            let done = self.emit_next;
            return self.end(Some(ServiceError::DeadlineExceeded(format!("deadline passed after {done} texts"))));
        }
        match hand_over(&mut self.outbox, &self.job.out, &mut self.blocked_since, now, stall_timeout) {
            Handed::All => {}
            Handed::Some => return,
            Handed::Stop(why) => return self.end(why),
        }
        if self.complete() {
            self.ended = true;
        }
    }

    /// Ends the call (its prefills go with it), telling the client why when there is room.
    pub(super) fn end(&mut self, status: Option<ServiceError>) {
        self.ended = true;
        self.active.clear();
        self.outbox.clear();
        if let (Some(permit), Some(e)) = (self.last_word.take(), status) {
            permit.send(Err(e.into()));
        }
    }
}
