//! A read request (`read::RawRequest`) checked once, at the edge (as TGI's router does), into a
//! typed [`ValidRequest`]: token ids, engine sampling settings, typed additions (hook, k,
//! values) and the paired rows. The batcher and the engine trust it.

use std::sync::Arc;

use steer_common::{convert, steering, ServiceError};
use steer_model::tokenizer::SPACE;
use steer_model::{Addition, Engine, RowRequest, SamplingParams};
use steer_proto::v1::ShortPrompt;

use crate::config::GenerationConfig;
use crate::read::{RawRequest, WireTensor};
use crate::vectors::RefTensor;

/// A request ready for the engine.
#[derive(Debug, Clone)]
pub struct ValidRequest {
    pub rows: Vec<RowRequest>,
    /// Rows `0..n_unsteered` carry no steering.
    pub n_unsteered: usize,
    pub max_new_tokens: usize,
    pub stop_at_eos: bool,
    pub top_logprobs: usize,
    pub prompt_tokens: usize,
    /// Stop strings: a row ends once its text contains one (`stop::StopText`).
    pub stop: Vec<String>,
    /// The steering tensors' share of the worker's in-flight byte budget, given back when the
    /// request (every clone) leaves the worker.
    pub memory: Arc<steer_common::Reservation>,
}

impl ValidRequest {
    /// KV positions the request may come to hold: prompt + max_new_tokens per row (what the
    /// worker's `max_batch_tokens` budget counts).
    pub fn kv_positions(&self) -> usize {
        self.rows.len() * (self.prompt_tokens + self.max_new_tokens)
    }
}

/// Checks everything the engine relies on, naming the field that is wrong.
/// `vectors` are the tensors of the request's library references (already fetched, checked
/// against the model, scaled: see `vectors::VectorCache::resolve`).
pub fn validate(raw: RawRequest, vectors: Vec<RefTensor>, engine: &Engine, cfg: &GenerationConfig) -> Result<ValidRequest, ServiceError> {
    let RawRequest { setup, tensors, memory } = raw;
    let info = engine.info();
    let ids = prompt_ids(&setup, engine)?;
    let stop = stop_strings(&setup.stop)?;
    let n = setup.n_comparisons as usize;
    if n == 0 || n > cfg.max_comparisons {
        return Err(ServiceError::invalid("setup.n_comparisons", format!("{n}: must be in 1..={}", cfg.max_comparisons)));
    }
    let max_new = setup.max_new_tokens as usize;
    if max_new == 0 || max_new > cfg.max_new_tokens {
        return Err(ServiceError::invalid("setup.max_new_tokens", format!("{max_new}: must be in 1..={}", cfg.max_new_tokens)));
    }
    let top_logprobs = setup.top_logprobs as usize;
    if top_logprobs > cfg.max_top_logprobs {
        return Err(ServiceError::invalid("setup.top_logprobs", format!("{top_logprobs}: at most {}", cfg.max_top_logprobs)));
    }
    if tensors.len() != setup.n_tensors as usize {
        return Err(ServiceError::invalid("tensors", format!("{} tensors, setup.n_tensors says {}", tensors.len(), setup.n_tensors)));
    }
    let sampling = convert::sampling(&setup.sampling.unwrap_or_default()).map_err(|e| prefixed("setup.", e))?;
    let additions = additions(tensors, vectors, engine, cfg)?;
    let field = if setup.prompt_token_ids.is_empty() { "setup.prompt" } else { "setup.prompt_token_ids" };
    let prompt = fit(ids, &additions, setup.use_bos, setup.short_prompt, field)?;
    if prompt.len() + max_new > info.n_positions {
        return Err(ServiceError::invalid(
            "setup.max_new_tokens",
            format!("prompt ({}) + new tokens ({max_new}) exceed the model's {} positions", prompt.len(), info.n_positions),
        ));
    }
    let (rows, n_unsteered) = pair_rows(&prompt, &sampling, n, setup.seed, &additions, setup.skip_unsteered);
    // A request must fit the worker's batch budgets on its own.
    if rows.len() > cfg.max_batch_rows {
        return Err(ServiceError::invalid(
            "setup.n_comparisons",
            format!("{n} comparisons make {} rows; this worker decodes at most {} rows at once", rows.len(), cfg.max_batch_rows),
        ));
    }
    let valid = ValidRequest {
        rows,
        n_unsteered,
        max_new_tokens: max_new,
        stop_at_eos: !setup.ignore_eos,
        top_logprobs,
        prompt_tokens: prompt.len(),
        stop,
        memory: Arc::new(memory),
    };
    let positions = valid.kv_positions();
    if positions > cfg.max_batch_tokens {
        return Err(ServiceError::invalid(
            "setup.max_new_tokens",
            format!(
                "{} rows x (prompt {} + {max_new} new tokens) = {positions} KV positions; this worker holds at most {}",
                valid.rows.len(),
                valid.prompt_tokens,
                cfg.max_batch_tokens
            ),
        ));
    }
    Ok(valid)
}

/// The prompt's token ids: `prompt` tokenised (BOS first with `use_bos`), or
/// `prompt_token_ids` as they are.
fn prompt_ids(setup: &steer_proto::v1::GenerateSetup, engine: &Engine) -> Result<Vec<u32>, ServiceError> {
    if setup.prompt_token_ids.is_empty() {
        if setup.prompt.is_empty() {
            return Err(ServiceError::invalid("setup.prompt", "empty prompt"));
        }
        return Ok(engine.encode(&setup.prompt, setup.use_bos)?);
    }
    if !setup.prompt.is_empty() {
        return Err(ServiceError::invalid("setup.prompt_token_ids", "give prompt or prompt_token_ids, not both"));
    }
    if setup.use_bos {
        return Err(ServiceError::invalid("setup.use_bos", "token ids are taken as they are: put <|endoftext|> (50256) first yourself"));
    }
    token_ids(&setup.prompt_token_ids, engine.info().vocab_size, "setup.prompt_token_ids")?;
    Ok(setup.prompt_token_ids.clone())
}

/// Every id of `ids` is in the vocabulary; else INVALID_ARGUMENT naming `{field}[j]`.
pub fn token_ids(ids: &[u32], vocab: usize, field: &str) -> Result<(), ServiceError> {
    match ids.iter().enumerate().find(|(_, &id)| id as usize >= vocab) {
        Some((j, id)) => Err(ServiceError::invalid(format!("{field}[{j}]"), format!("{id} is not a token id (vocabulary of {vocab})"))),
        None => Ok(()),
    }
}

/// Most stop strings a request may give, and the longest.
pub const MAX_STOP: usize = 4;
pub const MAX_STOP_BYTES: usize = 256;

fn stop_strings(stop: &[String]) -> Result<Vec<String>, ServiceError> {
    if stop.len() > MAX_STOP {
        return Err(ServiceError::invalid("setup.stop", format!("{} stop strings: at most {MAX_STOP}", stop.len())));
    }
    for (i, s) in stop.iter().enumerate() {
        if s.is_empty() || s.len() > MAX_STOP_BYTES {
            return Err(ServiceError::invalid(format!("setup.stop[{i}]"), format!("{} bytes: must be 1..={MAX_STOP_BYTES}", s.len())));
        }
    }
    Ok(stop.to_vec())
}

/// The steering of a request: its streamed or inline tensors (`tensors[i]`) and the tensors of
/// its library vectors (named by their reference), checked.
pub fn additions(tensors: Vec<WireTensor>, vectors: Vec<RefTensor>, engine: &Engine, cfg: &GenerationConfig) -> Result<Vec<Addition>, ServiceError> {
    let info = engine.info();
    if tensors.len() + vectors.len() > cfg.max_tensors {
        let n = tensors.len() + vectors.len();
        return Err(ServiceError::invalid("setup.vectors", format!("{n} steering tensors with the library vectors'; at most {}", cfg.max_tensors)));
    }
    let mut additions = tensors
        .into_iter()
        .enumerate()
        .map(|(i, t)| steering::tensor(&t.header, t.values, engine, &format!("tensors[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    for r in vectors {
        let field = format!("{}.tensors.{}", r.field, r.tensor.point);
        let hook = convert::checked_point(r.tensor.point, info.n_layer, &format!("{field}.layer"))?;
        additions.push(steering::checked(hook, r.tensor.k, r.tensor.values, r.mode, r.op, &field)?);
    }
    Ok(additions)
}

/// `sampling.top_p: ...` as `setup.sampling.top_p: ...`.
fn prefixed(prefix: &str, e: ServiceError) -> ServiceError {
    match e {
        ServiceError::InvalidArgument { field, reason } => ServiceError::invalid(format!("{prefix}{field}"), reason),
        ServiceError::Model(steer_model::ModelError::InvalidArgument { field, reason }) => ServiceError::invalid(format!("{prefix}{field}"), reason),
        other => other,
    }
}

/// A prompt's ids against the prefix steering: one shorter than a prefix tensor is an error
/// naming `field`, or padded with spaces after BOS (`short_prompt = PAD`).
pub fn fit(mut prompt: Vec<u32>, additions: &[Addition], use_bos: bool, short_prompt: i32, field: &str) -> Result<Vec<u32>, ServiceError> {
    // Only prefix additions need prompt positions; a direction at all positions fits any prompt.
    let k_max = additions.iter().filter(|a| a.window.positional()).map(|a| a.k).max().unwrap_or(0);
    if k_max > prompt.len() {
        if short_prompt != ShortPrompt::Pad as i32 {
            return Err(ServiceError::invalid(
                field,
                format!(
                    "{} tokens are fewer than the steering tensor's {k_max} positions; to pad the prompt with spaces, pass \
                     --pad-short-prompt (CLI), pad_short_prompt=True (Python), \"pad_short_prompt\": true in `steering` (HTTP) or \
                     short_prompt = SHORT_PROMPT_PAD (gRPC)",
                    prompt.len()
                ),
            ));
        }
        let at = usize::from(use_bos);
        let pad = k_max - prompt.len();
        prompt.splice(at..at, std::iter::repeat_n(SPACE, pad));
    }
    Ok(prompt)
}

/// The rows of a comparison: `n` unsteered (unless skipped), then `n` steered; row i of each
/// side has seed `seed + i`, so unsteered row i and steered row i share a seed. Returns the rows
/// and how many are unsteered.
pub fn pair_rows(
    prompt: &[u32],
    sampling: &SamplingParams,
    n: usize,
    seed: u64,
    additions: &[Addition],
    skip_unsteered: bool,
) -> (Vec<RowRequest>, usize) {
    let row = |i: usize, additions: Vec<Addition>| RowRequest {
        prompt: prompt.to_vec(),
        additions,
        sampling: sampling.clone(),
        seed: seed.wrapping_add(i as u64),
    };
    let mut rows = vec![];
    if !skip_unsteered {
        rows.extend((0..n).map(|i| row(i, vec![])));
    }
    let n_unsteered = rows.len();
    rows.extend((0..n).map(|i| row(i, additions.to_vec())));
    (rows, n_unsteered)
}

#[cfg(test)]
mod tests {
    use super::*;
    use steer_model::HookPoint;

    #[test]
    fn rows_pair_by_seed_and_steering_is_shared() {
        let add = Addition::new(HookPoint::ResidPre(1), 1, vec![0.5f32; 4]);
        let (rows, n_unsteered) = pair_rows(&[1, 2], &SamplingParams::default(), 3, 10, &[add], false);
        assert_eq!(n_unsteered, 3);
        let seeds: Vec<u64> = rows.iter().map(|r| r.seed).collect();
        assert_eq!(seeds, vec![10, 11, 12, 10, 11, 12]);
        assert!(rows[..3].iter().all(|r| r.additions.is_empty()));
        assert!(rows[3].additions[0].same_as(&rows[5].additions[0]), "one copy of the values for every steered row");
        let (rows, n_unsteered) = pair_rows(&[1], &SamplingParams::default(), 2, u64::MAX, &[], true);
        assert_eq!((rows.len(), n_unsteered, rows[1].seed), (2, 0, 0));
    }
}
