//! A choice's `logprobs` object, as OpenAI's completions API writes it: the tokens (as text),
//! each one's log-probability, a dict of the most likely tokens at each position (the chosen
//! one always among them, as vLLM does) and each token's offset in the choice's text. Echoed
//! prompt tokens come first (the first one `null` when nothing came before it), then the
//! generated ones. Log-probabilities are clamped at -9999 (JSON has no -inf).

use serde_json::{json, Map, Value};
use steer_model::Gpt2Tokenizer;
use steer_proto::v1::{TextScore, TokenEvent, TopLogprob};

const FLOOR: f32 = -9999.0;

#[derive(Debug, Clone, Default)]
pub struct Logprobs {
    tokens: Vec<String>,
    token_logprobs: Vec<Option<f32>>,
    top_logprobs: Vec<Option<Map<String, Value>>>,
    text_offset: Vec<usize>,
    /// Characters of the choice's text so far.
    at: usize,
}

impl Logprobs {
    /// Starting `at` characters into the choice's text.
    pub fn starting_at(at: usize) -> Self {
        Self { at, ..Default::default() }
    }

    /// The next token starts `at` characters into the choice's text.
    pub fn continue_at(&mut self, at: usize) {
        self.at = at;
    }

    fn push(&mut self, text: String, logprob: Option<f32>, top: Option<Map<String, Value>>) {
        self.text_offset.push(self.at);
        self.at += text.chars().count();
        self.tokens.push(text);
        self.token_logprobs.push(logprob.map(|x| x.max(FLOOR)));
        self.top_logprobs.push(top);
    }

    /// The echoed prompt: `ids`, scored by `score` from `ids[1]` on when the prompt's
    /// log-probabilities were computed for every token after the first; the first token is
    /// `null` unless `conditioned` (a BOS the server added came before it, and `score` covers
    /// it too). `k` alternatives per position.
    pub fn echo(&mut self, tok: &Gpt2Tokenizer, ids: &[u32], score: Option<&TextScore>, conditioned: bool, k: usize) {
        let values = score.map_or(&[][..], |s| &s.logprobs[..]);
        let tops = score.map_or(&[][..], |s| &s.top_logprobs[..]);
        // `values` covers the last `values.len()` tokens of `ids`.
        let first_scored = ids.len().saturating_sub(values.len());
        for (i, &id) in ids.iter().enumerate() {
            let text = token_text(tok, id);
            match i.checked_sub(first_scored).filter(|_| score.is_some() && (i > 0 || conditioned)) {
                Some(j) => {
                    let top = dict(tok, tops.get(j).map_or(&[][..], |t| &t.top[..]), k, (id, values[j]));
                    self.push(text, Some(values[j]), Some(top));
                }
                None => self.push(text, None, None),
            }
        }
    }

    /// A generated token, with the alternatives the generation reported.
    pub fn generated(&mut self, tok: &Gpt2Tokenizer, t: &TokenEvent, k: usize) {
        let top = dict(tok, &t.top_logprobs, k, (t.token_id, t.logprob));
        self.push(token_text(tok, t.token_id), Some(t.logprob), Some(top));
    }

    pub fn json(&self) -> Value {
        json!({"tokens": self.tokens, "token_logprobs": self.token_logprobs, "top_logprobs": self.top_logprobs,
               "text_offset": self.text_offset})
    }

    /// The entries pushed after the first `from`, as their own object (a streamed chunk's).
    pub fn since(&self, from: usize) -> Value {
        json!({"tokens": self.tokens[from..], "token_logprobs": self.token_logprobs[from..],
               "top_logprobs": self.top_logprobs[from..], "text_offset": self.text_offset[from..]})
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }
}

fn token_text(tok: &Gpt2Tokenizer, id: u32) -> String {
    tok.token_strings(&[id]).pop().unwrap_or_default()
}

/// The `k` most likely tokens and the chosen one, by their text.
fn dict(tok: &Gpt2Tokenizer, top: &[TopLogprob], k: usize, chosen: (u32, f32)) -> Map<String, Value> {
    let mut m = Map::new();
    for t in top.iter().take(k) {
        m.insert(token_text(tok, t.token_id), json!(t.logprob.max(FLOOR)));
    }
    m.entry(token_text(tok, chosen.0)).or_insert_with(|| json!(chosen.1.max(FLOOR)));
    m
}
