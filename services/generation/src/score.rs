//! `GenerationService.Score`: teacher-forced log-probabilities of continuations under the given
//! steering, through the same reading (inline tensors, byte budgets), library references and
//! validation of steering as a generation. The engine loop scores the texts (the scheduler's
//! `scoring` module): each text's rows (unsteered and steered) are one scoring prefill, batched
//! with generations and other Score calls, through the prefix cache; the scores stream back in
//! text order.

use steer_common::ServiceError;
use steer_model::{Addition, Engine, Scored};
use steer_proto::v1::{KlContribution, ScoreRequest, TextScore, TopLogprob, TopLogprobs};

use crate::config::GenerationConfig;
use crate::validation;

/// One text, tokenised and fitted to the steering.
#[derive(Debug, Clone)]
pub struct ScoreText {
    pub index: usize,
    /// Prompt then continuation.
    pub ids: Vec<u32>,
    /// Where the continuation starts.
    pub start: usize,
}

/// A checked Score request.
#[derive(Debug, Clone)]
pub struct ValidScore {
    pub texts: Vec<ScoreText>,
    pub additions: Vec<Addition>,
    pub include_unsteered: bool,
    pub kl_top: usize,
    /// Alternatives reported at each scored token.
    pub top_logprobs: usize,
    /// Steered rows keep their KV in the prefix cache too (`share_prefixes`).
    pub keep_kv: bool,
}

/// Checks the texts (errors name `texts[i].prompt` / `.continuation`) against the model and
/// the steering's positions.
pub fn validate(req: &ScoreRequest, additions: Vec<Addition>, engine: &Engine, cfg: &GenerationConfig) -> Result<ValidScore, ServiceError> {
    let n = req.texts.len();
    if n == 0 || n > cfg.max_score_texts {
        return Err(ServiceError::invalid("texts", format!("{n} texts: must be in 1..={}", cfg.max_score_texts)));
    }
    if req.kl_top as usize > cfg.max_top_logprobs {
        return Err(ServiceError::invalid("kl_top", format!("{}: at most {}", req.kl_top, cfg.max_top_logprobs)));
    }
    if req.kl_top > 0 && !req.include_unsteered {
        return Err(ServiceError::invalid("kl_top", "the KL needs the unsteered scores too: set include_unsteered"));
    }
    let most = cfg.max_top_logprobs.min(steer_model::SCORE_TOP);
    if req.top_logprobs as usize > most {
        return Err(ServiceError::invalid("top_logprobs", format!("{}: at most {most}", req.top_logprobs)));
    }
    let n_positions = engine.info().n_positions;
    let mut texts = vec![];
    for (i, t) in req.texts.iter().enumerate() {
        let field = format!("texts[{i}]");
        if !t.token_ids.is_empty() {
            texts.push(token_text(t, i, &additions, req, engine)?);
            continue;
        }
        if t.score_from != 0 {
            return Err(ServiceError::invalid(format!("{field}.score_from"), "applies to token_ids only"));
        }
        let prompt = engine.encode(&t.prompt, req.use_bos)?;
        let continuation = engine.encode(&t.continuation, false)?;
        if continuation.is_empty() && req.kl_top == 0 {
            return Err(ServiceError::invalid(format!("{field}.continuation"), "nothing to score"));
        }
        if prompt.is_empty() {
            return Err(ServiceError::invalid(format!("{field}.prompt"), "the first token needs a context: give a prompt or set use_bos"));
        }
        // Prefix steering sits at positions 0..k-1 of the whole text (padding, if asked, goes
        // after BOS and moves the continuation).
        let n = prompt.len() + continuation.len();
        let ids = validation::fit([prompt.clone(), continuation].concat(), &additions, req.use_bos, req.short_prompt, &field)?;
        let start = prompt.len() + (ids.len() - n);
        if ids.len() > n_positions {
            return Err(ServiceError::invalid(
                format!("{field}.continuation"),
                format!("{} tokens exceed the model's {n_positions} positions", ids.len()),
            ));
        }
        texts.push(ScoreText { index: i, ids, start });
    }
    Ok(ValidScore {
        texts,
        additions,
        include_unsteered: req.include_unsteered,
        kl_top: req.kl_top as usize,
        top_logprobs: req.top_logprobs as usize,
        keep_kv: req.share_prefixes,
    })
}

/// A text given as token ids: taken as they are (no BOS), scored from `score_from` (at least 1).
fn token_text(
    t: &steer_proto::v1::ScoreText,
    i: usize,
    additions: &[Addition],
    req: &ScoreRequest,
    engine: &Engine,
) -> Result<ScoreText, ServiceError> {
    let field = format!("texts[{i}]");
    if !t.prompt.is_empty() || !t.continuation.is_empty() {
        return Err(ServiceError::invalid(format!("{field}.token_ids"), "give token_ids, or prompt and continuation, not both"));
    }
    validation::token_ids(&t.token_ids, engine.info().vocab_size, &format!("{field}.token_ids"))?;
    let from = (t.score_from as usize).max(1);
    let n = t.token_ids.len();
    if from > n || (from == n && req.kl_top == 0) {
        return Err(ServiceError::invalid(format!("{field}.score_from"), format!("{from}: nothing to score in {n} tokens")));
    }
    // Padding (PAD) goes after a leading <|endoftext|> when use_bos says the text has one.
    let bos = req.use_bos && t.token_ids.first() == Some(&engine.tokenizer().bos_id());
    let ids = validation::fit(t.token_ids.clone(), additions, bos, req.short_prompt, &format!("{field}.token_ids"))?;
    let start = from + (ids.len() - n);
    let n_positions = engine.info().n_positions;
    if ids.len() > n_positions {
        return Err(ServiceError::invalid(format!("{field}.token_ids"), format!("{} tokens exceed the model's {n_positions} positions", ids.len())));
    }
    Ok(ScoreText { index: i, ids, start })
}

impl ValidScore {
    /// The steering of each row of a text: unsteered first when asked, then steered.
    pub fn sides(&self) -> Vec<Vec<Addition>> {
        let mut sides = vec![];
        if self.include_unsteered {
            sides.push(vec![]);
        }
        sides.push(self.additions.clone());
        sides
    }
}

/// A text's scores (unsteered first when asked), from the engine's scores of its rows in
/// [`ValidScore::sides`] order.
pub fn text_scores(engine: &Engine, valid: &ValidScore, t: &ScoreText, scored: &[Scored]) -> Vec<TextScore> {
    let steered_side = |i: usize| !valid.include_unsteered || i == 1;
    let unsteered_next = if valid.include_unsteered { scored.first().and_then(|s| s.next.as_ref()) } else { None };
    let mut out = vec![];
    for (i, s) in scored.iter().enumerate() {
        let steered = steered_side(i);
        // Scored holds tokens 1..len; the continuation starts at `t.start` (and never at 0).
        let logprobs = s.logprobs[t.start.max(1) - 1..].to_vec();
        let top_logprobs = match valid.top_logprobs {
            0 => vec![],
            k => s.top[t.start.max(1) - 1..]
                .iter()
                .map(|top| TopLogprobs {
                    top: top
                        .iter()
                        .take(k)
                        .map(|&(token_id, logprob)| TopLogprob {
                            token_id,
                            logprob,
                            text: engine.tokenizer().decode(&[token_id]).unwrap_or_default(),
                        })
                        .collect(),
                })
                .collect(),
        };
        let sum: f64 = logprobs.iter().map(|&x| x as f64).sum();
        let mut score = TextScore {
            index: t.index as u32,
            steered,
            token_ids: t.ids[t.start..].to_vec(),
            mean: if logprobs.is_empty() { 0.0 } else { sum / logprobs.len() as f64 },
            logprobs,
            sum,
            prompt_tokens: t.start as u32,
            top_logprobs,
            ..Default::default()
        };
        if let (true, true, Some(p), Some(q)) = (steered, valid.kl_top > 0, &s.next, unsteered_next) {
            let (kl, top) = kl_contributions(p, q, valid.kl_top);
            score.next_token_kl = kl;
            score.kl_top = top
                .into_iter()
                .map(|(token, ps, pu, c)| KlContribution {
                    token_id: token,
                    text: engine.tokenizer().decode(&[token]).unwrap_or_default(),
                    p_steered: ps,
                    p_unsteered: pu,
                    contribution: c,
                })
                .collect();
        }
        out.push(score);
    }
    out
}

/// KL(p || q) from log-probabilities, and the `n` tokens with the largest p * (log p - log q):
/// (token, p, q, contribution), largest first.
pub fn kl_contributions(logp: &[f32], logq: &[f32], n: usize) -> (f64, Vec<(u32, f32, f32, f32)>) {
    let terms: Vec<f64> = logp.iter().zip(logq).map(|(&a, &b)| (a as f64).exp() * (a as f64 - b as f64)).collect();
    let kl = terms.iter().sum();
    let mut idx: Vec<usize> = (0..terms.len()).collect();
    let n = n.min(idx.len());
    if n > 0 {
        idx.select_nth_unstable_by(n - 1, |&a, &b| terms[b].total_cmp(&terms[a]));
    }
    let mut top: Vec<(u32, f32, f32, f32)> = idx[..n].iter().map(|&i| (i as u32, logp[i].exp(), logq[i].exp(), terms[i] as f32)).collect();
    top.sort_by(|a, b| b.3.total_cmp(&a.3));
    (kl, top)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_and_its_largest_terms() {
        let p = [0.7f64, 0.2, 0.1].map(|x| x.ln() as f32);
        let q = [0.5f64, 0.25, 0.25].map(|x| x.ln() as f32);
        let (kl, top) = kl_contributions(&p, &q, 2);
        let want = 0.7 * (0.7f64 / 0.5).ln() + 0.2 * (0.2f64 / 0.25).ln() + 0.1 * (0.1f64 / 0.25).ln();
        assert!((kl - want).abs() < 1e-6, "{kl} {want}");
        assert_eq!(top[0].0, 0);
        assert!((top[0].3 as f64 - 0.7 * (1.4f64).ln()).abs() < 1e-6);
        assert_eq!(top.len(), 2);
        assert_eq!(kl_contributions(&p, &p, 3).0, 0.0);
    }
}
