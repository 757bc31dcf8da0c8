//! The ActAdd post's measurements as functions over a sweep of (layer, coefficient) settings of
//! a `plus - minus` steering vector, each returning one JSON object per setting (`layer`,
//! `coeff` and its measures), for `steer eval`, and the same in Python:
//!
//! - [`perplexity`]: steered / unsteered perplexity of text sets (Score), and of prompting
//!   (the plus text prepended instead of added);
//! - [`kl`]: next-token KL(steered || unsteered) after a prompt, and the tokens contributing most;
//! - [`topic_words`]: topic-word counts in steered and unsteered completions, with the steering
//!   at the front, middle or end of the prompt;
//! - [`norms`]: the residual stream's norm at each layer against the steering tensor's, and the
//!   KL of a random tensor of the same norms as a control.
//!
//! `progress(done, total, row)` sees each setting's row as it finishes, so a caller can keep the
//! finished part of a sweep it cancels (dropping the future stops it between calls).

use futures::StreamExt;
use serde_json::{json, Value};
use steer_proto::v1::{HookPoint, TextScore};

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::run::{score_request, AdditionSpec, RunOptions, SteeringTensor};

/// The post's wedding words.
pub const WEDDING_WORDS: &[&str] = &["wedding", "weddings", "wed", "marry", "married", "marriage", "bride", "groom", "honeymoon"];

/// The text sets committed under fixtures/eval (on-topic and off-topic for the wedding vector).
pub fn default_text_sets() -> Vec<TextSet> {
    let set =
        |name: &str, text: &str| TextSet { name: name.into(), texts: text.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect() };
    vec![set("wedding", include_str!("../../fixtures/eval/wedding.txt")), set("unrelated", include_str!("../../fixtures/eval/unrelated.txt"))]
}

#[derive(Debug, Clone, PartialEq)]
pub struct TextSet {
    pub name: String,
    pub texts: Vec<String>,
}

/// The settings of a sweep: every layer with every coefficient of `plus - minus`.
#[derive(Debug, Clone)]
pub struct Sweep {
    pub plus: String,
    pub minus: String,
    pub layers: Vec<u32>,
    pub coeffs: Vec<f64>,
}

impl Sweep {
    pub fn settings(&self) -> Vec<(u32, f64)> {
        self.layers.iter().flat_map(|&l| self.coeffs.iter().map(move |&c| (l, c))).collect()
    }

    /// `coeff * act(plus) - coeff * act(minus)` at `layer`.
    pub fn additions(&self, layer: u32, coeff: f64) -> Vec<AdditionSpec> {
        vec![AdditionSpec::new(layer, coeff, self.plus.clone()), AdditionSpec::new(layer, -coeff, self.minus.clone())]
    }
}

/// exp(-(sum of log-probabilities) / tokens) over scores.
pub fn perplexity<'a>(scores: impl IntoIterator<Item = &'a TextScore>) -> f64 {
    let (sum, n) = scores.into_iter().fold((0.0, 0usize), |(s, n), t| (s + t.sum, n + t.logprobs.len()));
    (-sum / n.max(1) as f64).exp()
}

async fn set_perplexity(client: &impl Backend, set: &TextSet, prompt: &str, tensors: &[SteeringTensor], opts: &RunOptions) -> Result<f64> {
    let texts: Vec<(String, String)> = set.texts.iter().map(|t| (prompt.to_string(), t.clone())).collect();
    Ok(perplexity(&client.score(score_request(&texts, tensors, opts, false, 0)).await?))
}

/// Steered and unsteered perplexity of each text set per setting (`method: "actadd"`), then
/// one object for prompting (`method: "prompting"`: the plus text as the texts' prompt, no
/// steering). Each set's measures are `{perplexity_unsteered, perplexity_steered, ratio}`.
pub async fn perplexity_sweep(
    client: &impl Backend,
    sweep: &Sweep,
    sets: &[TextSet],
    opts: &RunOptions,
    progress: impl FnMut(usize, usize, &Value),
) -> Result<Vec<Value>> {
    perplexity_sweep_at(client, sweep, sets, opts, SETTINGS_AT_ONCE, progress).await
}

/// [`perplexity_sweep`] with `at_once` settings in flight (1: one after another).
pub async fn perplexity_sweep_at(
    client: &impl Backend,
    sweep: &Sweep,
    sets: &[TextSet],
    opts: &RunOptions,
    at_once: usize,
    mut progress: impl FnMut(usize, usize, &Value),
) -> Result<Vec<Value>> {
    let settings = sweep.settings();
    let mut base = vec![];
    for set in sets {
        base.push(set_perplexity(client, set, "", &[], opts).await?);
    }
    let measures = |steered: &[f64]| -> Value {
        sets.iter()
            .zip(&base)
            .zip(steered)
            .map(|((s, &u), &p)| (s.name.clone(), json!({"perplexity_unsteered": u, "perplexity_steered": p, "ratio": p / u})))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    // The unsteered pass above left each text's trunk in the generation worker's prefix cache:
    // each setting's texts start at its steered stream, and settings in flight together share
    // the worker's forwards.
    let pending: Vec<Pending<'_, (u32, f64, Vec<f64>)>> = settings
        .iter()
        .copied()
        .map(|(layer, coeff)| -> Pending<'_, (u32, f64, Vec<f64>)> {
            Box::pin(async move {
                let tensors = client.steering_tensors(&sweep.additions(layer, coeff), opts).await?;
                let mut steered = vec![];
                for set in sets {
                    steered.push(set_perplexity(client, set, "", &tensors, opts).await?);
                }
                Ok((layer, coeff, steered))
            })
        })
        .collect();
    let mut per_setting = futures::stream::iter(pending).buffered(at_once.max(1));
    let mut rows = vec![];
    while let Some(done) = per_setting.next().await {
        let (layer, coeff, steered) = done?;
        rows.push(json!({"method": "actadd", "layer": layer, "coeff": coeff, "sets": measures(&steered)}));
        progress(rows.len(), settings.len() + 1, &rows[rows.len() - 1]);
    }
    drop(per_setting);
    let mut prompted = vec![];
    for set in sets {
        prompted.push(set_perplexity(client, set, &sweep.plus, &[], opts).await?);
    }
    rows.push(json!({"method": "prompting", "layer": null, "coeff": null, "prompt": sweep.plus, "sets": measures(&prompted)}));
    progress(settings.len() + 1, settings.len() + 1, &rows[settings.len()]);
    Ok(rows)
}

/// KL(steered || unsteered) of the next token after `prompt` per setting, with the `top`
/// tokens contributing most.
pub async fn kl_sweep(
    client: &impl Backend,
    sweep: &Sweep,
    prompt: &str,
    top: u32,
    opts: &RunOptions,
    progress: impl FnMut(usize, usize, &Value),
) -> Result<Vec<Value>> {
    each_setting(sweep, progress, |_, layer, coeff| async move {
        let tensors = client.steering_tensors(&sweep.additions(layer, coeff), opts).await?;
        let s = next_token_kl(client, prompt, &tensors, top, opts).await?;
        let top: Vec<Value> = s
            .kl_top
            .iter()
            .map(|k| {
                json!({"token_id": k.token_id, "text": k.text, "contribution": k.contribution,
                       "p_steered": k.p_steered, "p_unsteered": k.p_unsteered})
            })
            .collect();
        Ok(json!({"layer": layer, "coeff": coeff, "kl": s.next_token_kl, "top": top}))
    })
    .await
}

/// A setting's computation, boxed (a sweep's futures run inside spawned tasks).
type Pending<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T>> + Send + 'a>>;

/// Settings a sweep has in flight at once: they batch in the generation worker's forwards (and
/// fit its default `--max-score-calls`).
pub const SETTINGS_AT_ONCE: usize = 4;

/// Runs `row(i, layer, coeff)` for each of the sweep's settings, [`SETTINGS_AT_ONCE`] at a time,
/// passing each row to `progress(done, total, row)` in order as it finishes.
async fn each_setting<F, Fut>(sweep: &Sweep, mut progress: impl FnMut(usize, usize, &Value), mut row: F) -> Result<Vec<Value>>
where
    F: FnMut(usize, u32, f64) -> Fut,
    Fut: std::future::Future<Output = Result<Value>> + Send,
{
    let settings = sweep.settings();
    let rows_of = settings.iter().enumerate().map(|(i, &(layer, coeff))| -> Pending<'_, Value> { Box::pin(row(i, layer, coeff)) });
    let mut each = futures::stream::iter(rows_of.collect::<Vec<_>>()).buffered(SETTINGS_AT_ONCE);
    let mut rows = vec![];
    while let Some(r) = each.next().await {
        rows.push(r?);
        progress(rows.len(), settings.len(), &rows[rows.len() - 1]);
    }
    Ok(rows)
}

async fn next_token_kl(client: &impl Backend, prompt: &str, tensors: &[SteeringTensor], top: u32, opts: &RunOptions) -> Result<TextScore> {
    let scores = client.score(score_request(&[(prompt.to_string(), String::new())], tensors, opts, true, top.max(1))).await?;
    scores.into_iter().find(|s| s.steered).ok_or_else(|| Error::Protocol("Score without the steered side".into()))
}

/// Where the steering sits within the prompt (the post's front/middle/end variant).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    Front,
    Middle,
    End,
}

impl Position {
    pub fn name(self) -> &'static str {
        match self {
            Position::Front => "front",
            Position::Middle => "middle",
            Position::End => "end",
        }
    }

    /// First position of a `k`-position tensor in a `len`-token prompt.
    pub fn offset(self, len: usize, k: usize) -> usize {
        let room = len.saturating_sub(k);
        match self {
            Position::Front => 0,
            Position::Middle => room / 2,
            Position::End => room,
        }
    }
}

/// Occurrences of `words` (whole words, any case) in `text`.
pub fn count_words(text: &str, words: &[String]) -> usize {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).filter(|w| words.iter().any(|x| x.eq_ignore_ascii_case(w))).count()
}

/// Topic-word counts in `n` unsteered and `n` steered completions of `prompt` per setting and
/// position: mean count per completion and the fraction of completions with any.
#[allow(clippy::too_many_arguments)]
pub async fn topic_words(
    client: &impl Backend,
    sweep: &Sweep,
    prompt: &str,
    words: &[String],
    n: u32,
    positions: &[Position],
    opts: &RunOptions,
    mut progress: impl FnMut(usize, usize, &Value),
) -> Result<Vec<Value>> {
    let settings = sweep.settings();
    let per_call = client.max_comparisons().await?.clamp(1, 16);
    // The prompt's length: its activation at the embeddings (a forward that stops there).
    let prompt_len = client.activations(&[prompt.to_string()], &[HookPoint { hook: 1, layer: 0 }], opts.use_bos).await?[0][0].0;
    let total = settings.len() * positions.len();
    let mut rows = vec![];
    for &(layer, coeff) in &settings {
        let tensors = client.steering_tensors(&sweep.additions(layer, coeff), opts).await?;
        for &pos in positions {
            let placed: Vec<SteeringTensor> = tensors.iter().map(|t| shifted(t, pos.offset(prompt_len, t.header.shape[0] as usize))).collect();
            let (mut counts, mut done) = ([0usize; 2], 0u32);
            let mut any = [0usize; 2];
            while done < n {
                let batch = (n - done).min(per_call);
                let o = RunOptions { n_comparisons: batch, seed: opts.seed + done as u64, ..opts.clone() };
                let cmp = client.comparison(prompt, &placed, &o).await?;
                for (side, rows) in [&cmp.unsteered, &cmp.steered].into_iter().enumerate() {
                    for c in rows {
                        let k = count_words(&c.text, words);
                        counts[side] += k;
                        any[side] += usize::from(k > 0);
                    }
                }
                done += batch;
            }
            let n = n.max(1) as f64;
            rows.push(json!({
                "layer": layer, "coeff": coeff, "position": pos.name(), "completions": n,
                "mean_count_unsteered": counts[0] as f64 / n, "mean_count_steered": counts[1] as f64 / n,
                "fraction_unsteered": any[0] as f64 / n, "fraction_steered": any[1] as f64 / n,
            }));
            progress(rows.len(), total, &rows[rows.len() - 1]);
        }
    }
    Ok(rows)
}

/// `t` moved `offset` positions later (zero rows in front).
fn shifted(t: &SteeringTensor, offset: usize) -> SteeringTensor {
    if offset == 0 {
        return t.clone();
    }
    let d = t.header.shape[1] as usize;
    let mut values = vec![0f32; offset * d];
    values.extend_from_slice(&t.values);
    SteeringTensor::prefix(t.header.point.unwrap_or_default(), values, d)
}

/// Per layer: the mean norm of the prompt's residual stream (BOS excluded) against the steering
/// tensor's mean position norm, and the next-token KL of the steering against that of a random
/// tensor with the same position norms (seeded), the post's control.
pub async fn norms(
    client: &impl Backend,
    sweep: &Sweep,
    prompt: &str,
    opts: &RunOptions,
    progress: impl FnMut(usize, usize, &Value),
) -> Result<Vec<Value>> {
    each_setting(sweep, progress, |i, layer, coeff| async move {
        let point = HookPoint { hook: opts.hook as i32, layer };
        let acts = client.activations(&[prompt.to_string()], &[point], opts.use_bos).await?;
        let (len, d, values) = &acts[0][0];
        let skip = usize::from(opts.use_bos && *len > 1);
        let resid = (skip..*len).map(|p| l2(&values[p * d..(p + 1) * d])).sum::<f64>() / (len - skip) as f64;
        let tensors = client.steering_tensors(&sweep.additions(layer, coeff), opts).await?;
        let t = &tensors[0];
        let norms: Vec<f64> = t.values.chunks(*d).map(l2).collect();
        let steering = norms.iter().sum::<f64>() / norms.len() as f64;
        let random = random_like(t, &norms, 1000 + i as u64);
        let kl_steering = next_token_kl(client, prompt, &tensors, 1, opts).await?.next_token_kl;
        let kl_random = next_token_kl(client, prompt, &[random], 1, opts).await?.next_token_kl;
        Ok(json!({
            "layer": layer, "coeff": coeff, "resid_norm": resid, "steering_norm": steering, "ratio": steering / resid,
            "kl_steering": kl_steering, "kl_random": kl_random,
        }))
    })
    .await
}

fn l2(v: &[f32]) -> f64 {
    v.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>().sqrt()
}

/// A tensor shaped as `t` whose positions are random directions with the given norms.
fn random_like(t: &SteeringTensor, norms: &[f64], seed: u64) -> SteeringTensor {
    let d = t.header.shape[1] as usize;
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        // xorshift64*, then Box-Muller: Gaussian coordinates, so the direction is uniform.
        let mut u = || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            ((state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        let (a, b) = (u(), u());
        (-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()
    };
    let mut values = vec![];
    for &n in norms {
        let v: Vec<f64> = (0..d).map(|_| next()).collect();
        let len = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        values.extend(v.iter().map(|x| (x / len * n) as f32));
    }
    SteeringTensor::prefix(t.header.point.unwrap_or_default(), values, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_positions_and_perplexity() {
        let words: Vec<String> = WEDDING_WORDS.iter().map(|w| w.to_string()).collect();
        assert_eq!(count_words("The Wedding! a wedding-cake; married, unmarried, bride's", &words), 4);
        assert_eq!(Position::Middle.offset(10, 4), 3);
        assert_eq!(Position::End.offset(10, 4), 6);
        assert_eq!(Position::End.offset(3, 4), 0);
        let s = |lp: Vec<f32>| TextScore { sum: lp.iter().map(|&x| x as f64).sum(), logprobs: lp, ..Default::default() };
        let p = perplexity(&[s(vec![-1.0, -2.0]), s(vec![-3.0])]);
        assert!((p - 2f64.exp()).abs() < 1e-12);
        let sets = default_text_sets();
        assert_eq!((sets[0].texts.len(), sets[1].texts.len()), (12, 12));
    }
}
