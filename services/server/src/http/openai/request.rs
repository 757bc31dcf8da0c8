//! A completion request read to the letter of OpenAI's completions API ([`Completion`]):
//! every field checked against its range, named in the error when it is out of it; fields
//! this server does not implement (`suffix`, `logit_bias`, `best_of` other than `n`) and
//! unknown fields are refused by name, never ignored. vLLM's extras that the engine has
//! (`top_k`, `repetition_penalty`, `ignore_eos`) are taken, and `steering`.

use serde_json::{Map, Value};
use tonic::Status;

use crate::steering::Steering;

/// OpenAI's and vLLM's most `logprobs`.
pub const MAX_LOGPROBS: u32 = 20;
/// Most prompts in one request.
pub const MAX_PROMPTS: usize = 256;
/// OpenAI's most stop strings.
pub const MAX_STOP: usize = 4;

/// One prompt as given.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Tokenised by the server, BOS first when the steering's `use_bos` (default) says so.
    Text(String),
    /// Taken as they are: no BOS added.
    Ids(Vec<u32>),
}

/// A checked completion request.
#[derive(Debug, Clone)]
pub struct Completion {
    pub model: Option<String>,
    pub prompts: Vec<Prompt>,
    pub max_tokens: u32,
    pub temperature: f32,
    pub top_p: Option<f32>,
    pub top_k: u32,
    pub repetition_penalty: f32,
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    pub n: u32,
    pub seed: u64,
    pub stream: bool,
    pub include_usage: bool,
    pub echo: bool,
    pub logprobs: Option<u32>,
    pub stop: Vec<String>,
    pub ignore_eos: bool,
    pub steering: Option<Steering>,
}

/// The fields read here (OpenAI's, vLLM's extras the engine has, and `steering`).
const KNOWN: &[&str] = &[
    "model",
    "prompt",
    "max_tokens",
    "temperature",
    "top_p",
    "n",
    "stream",
    "stream_options",
    "logprobs",
    "echo",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "best_of",
    "logit_bias",
    "user",
    "seed",
    "suffix",
    "top_k",
    "repetition_penalty",
    "ignore_eos",
    "steering",
];

fn bad(field: &str, why: impl std::fmt::Display) -> Status {
    steer_proto::status::invalid_argument(field, &why.to_string())
}

/// Reads and checks a request body.
pub fn parse(body: Value) -> Result<Completion, Status> {
    let Value::Object(o) = body else { return Err(bad("body", "a completion request is a JSON object")) };
    if let Some(k) = o.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(bad(k, "unknown field (OpenAI's completions API has no such field)"));
    }
    let present = |k: &str| o.get(k).is_some_and(|v| !v.is_null());
    if present("suffix") {
        return Err(bad("suffix", "not implemented: GPT-2 does not insert text"));
    }
    if let Some(b) = o.get("logit_bias").filter(|v| !v.is_null()) {
        if !b.as_object().is_some_and(Map::is_empty) {
            return Err(bad("logit_bias", "not implemented"));
        }
    }
    let n = uint(&o, "n", 1)?;
    if n == 0 {
        return Err(bad("n", "0: must be at least 1"));
    }
    if present("best_of") && uint(&o, "best_of", n)? != n {
        return Err(bad("best_of", "not implemented: only best_of = n (every completion is returned)"));
    }
    if let Some(u) = o.get("user").filter(|v| !v.is_null()) {
        if !u.is_string() {
            return Err(bad("user", "must be a string"));
        }
    }
    let model = match o.get("model") {
        None | Some(Value::Null) => None,
        Some(Value::String(m)) => Some(m.clone()),
        Some(_) => return Err(bad("model", "must be a string")),
    };
    let stream = boolean(&o, "stream", false)?;
    let include_usage = match o.get("stream_options").filter(|v| !v.is_null()) {
        None => false,
        Some(Value::Object(so)) => {
            if !stream {
                return Err(bad("stream_options", "only with stream: true"));
            }
            if let Some(k) = so.keys().find(|k| *k != "include_usage") {
                return Err(bad(&format!("stream_options.{k}"), "unknown field"));
            }
            boolean(so, "include_usage", false).map_err(|e| bad("stream_options.include_usage", e.message()))?
        }
        Some(_) => return Err(bad("stream_options", "must be an object")),
    };
    let echo = boolean(&o, "echo", false)?;
    let logprobs = match o.get("logprobs") {
        None | Some(Value::Null) => None,
        Some(_) => {
            let k = uint(&o, "logprobs", 0)?;
            if k > MAX_LOGPROBS {
                return Err(bad("logprobs", format!("{k}: must be in 0..={MAX_LOGPROBS}")));
            }
            Some(k)
        }
    };
    let max_tokens = match o.get("max_tokens") {
        None | Some(Value::Null) => 16, // OpenAI's default
        Some(_) => uint(&o, "max_tokens", 16)?,
    };
    if max_tokens == 0 && !echo {
        return Err(bad("max_tokens", "0 returns nothing without echo"));
    }
    let temperature = number(&o, "temperature", 1.0, 0.0, 2.0, "[0, 2]")?;
    let top_p = match o.get("top_p") {
        None | Some(Value::Null) => None,
        Some(_) => {
            let p = number(&o, "top_p", 1.0, f64::MIN_POSITIVE, 1.0, "(0, 1]")?;
            (p < 1.0).then_some(p)
        }
    };
    let seed = match o.get("seed") {
        None | Some(Value::Null) => 0,
        Some(v) => match (v.as_u64(), v.as_i64()) {
            (Some(s), _) => s,
            (None, Some(s)) => s as u64, // OpenAI's seeds are int64: the same bits
            _ => return Err(bad("seed", "must be an integer")),
        },
    };
    let steering = match o.get("steering") {
        None | Some(Value::Null) => None,
        Some(v) => Some(serde_json::from_value::<Steering>(v.clone()).map_err(|e| bad("steering", e))?),
    };
    Ok(Completion {
        model,
        prompts: prompts(o.get("prompt"))?,
        max_tokens,
        temperature,
        top_p,
        top_k: uint(&o, "top_k", 0)?,
        repetition_penalty: number(&o, "repetition_penalty", 1.0, f64::MIN_POSITIVE, 100.0, "(0, 100]")?,
        frequency_penalty: number(&o, "frequency_penalty", 0.0, -2.0, 2.0, "[-2, 2]")?,
        presence_penalty: number(&o, "presence_penalty", 0.0, -2.0, 2.0, "[-2, 2]")?,
        n,
        seed,
        stream,
        include_usage,
        echo,
        logprobs,
        stop: stop(o.get("stop"))?,
        ignore_eos: boolean(&o, "ignore_eos", false)?,
        steering,
    })
}

fn boolean(o: &Map<String, Value>, k: &str, default: bool) -> Result<bool, Status> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(bad(k, "must be true or false")),
    }
}

fn uint(o: &Map<String, Value>, k: &str, default: u32) -> Result<u32, Status> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v.as_u64().and_then(|x| u32::try_from(x).ok()).ok_or_else(|| bad(k, format!("{v}: must be a whole number >= 0"))),
    }
}

fn number(o: &Map<String, Value>, k: &str, default: f32, lo: f64, hi: f64, range: &str) -> Result<f32, Status> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => match v.as_f64() {
            Some(x) if x >= lo && x <= hi => Ok(x as f32),
            Some(x) => Err(bad(k, format!("{x}: must be in {range}"))),
            None => Err(bad(k, "must be a number")),
        },
    }
}

/// A string, a list of strings, a list of token ids, or a list of token-id lists.
fn prompts(v: Option<&Value>) -> Result<Vec<Prompt>, Status> {
    let ids = |v: &Value, field: &str| -> Result<Vec<u32>, Status> {
        let a = v.as_array().ok_or_else(|| bad(field, "must be a list of token ids"))?;
        if a.is_empty() {
            return Err(bad(field, "no tokens"));
        }
        a.iter()
            .enumerate()
            .map(|(i, t)| {
                t.as_u64().and_then(|x| u32::try_from(x).ok()).ok_or_else(|| bad(&format!("{field}[{i}]"), format!("{t} is not a token id")))
            })
            .collect()
    };
    let out = match v {
        None | Some(Value::Null) => return Err(bad("prompt", "required")),
        Some(Value::String(s)) => vec![Prompt::Text(s.clone())],
        Some(Value::Array(a)) if a.is_empty() => return Err(bad("prompt", "an empty list")),
        Some(Value::Array(a)) => match &a[0] {
            Value::Number(_) => vec![Prompt::Ids(ids(v.expect("present"), "prompt")?)],
            Value::String(_) => a
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    s.as_str().map(|s| Prompt::Text(s.to_string())).ok_or_else(|| bad(&format!("prompt[{i}]"), "a list of prompts is all strings"))
                })
                .collect::<Result<_, _>>()?,
            Value::Array(_) => a.iter().enumerate().map(|(i, p)| ids(p, &format!("prompt[{i}]")).map(Prompt::Ids)).collect::<Result<_, _>>()?,
            _ => return Err(bad("prompt", "a string, a list of strings, a list of token ids or a list of token-id lists")),
        },
        Some(_) => return Err(bad("prompt", "a string, a list of strings, a list of token ids or a list of token-id lists")),
    };
    if out.len() > MAX_PROMPTS {
        return Err(bad("prompt", format!("{} prompts: at most {MAX_PROMPTS}", out.len())));
    }
    Ok(out)
}

/// A string or up to [`MAX_STOP`] strings.
fn stop(v: Option<&Value>) -> Result<Vec<String>, Status> {
    let out: Vec<String> = match v {
        None | Some(Value::Null) => vec![],
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, s)| s.as_str().map(str::to_string).ok_or_else(|| bad(&format!("stop[{i}]"), "must be a string")))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad("stop", "a string or a list of strings")),
    };
    if out.len() > MAX_STOP {
        return Err(bad("stop", format!("{} stop strings: at most {MAX_STOP}", out.len())));
    }
    if let Some(i) = out.iter().position(String::is_empty) {
        return Err(bad(&format!("stop[{i}]"), "an empty stop string"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field_of(body: Value) -> String {
        let e = parse(body).unwrap_err();
        e.message().split(':').next().unwrap_or_default().to_string()
    }

    #[test]
    fn every_prompt_form_reads() {
        let p = |v: Value| parse(json!({"prompt": v})).unwrap().prompts;
        assert_eq!(p(json!("hi")), vec![Prompt::Text("hi".into())]);
        assert_eq!(p(json!(["a", "b"])), vec![Prompt::Text("a".into()), Prompt::Text("b".into())]);
        assert_eq!(p(json!([1, 2, 3])), vec![Prompt::Ids(vec![1, 2, 3])]);
        assert_eq!(p(json!([[1, 2], [3]])), vec![Prompt::Ids(vec![1, 2]), Prompt::Ids(vec![3])]);
    }

    #[test]
    fn out_of_range_unimplemented_and_unknown_fields_are_named() {
        for (body, field) in [
            (json!({"prompt": "x", "top_p": 7}), "top_p"),
            (json!({"prompt": "x", "top_p": 0}), "top_p"),
            (json!({"prompt": "x", "temperature": -0.5}), "temperature"),
            (json!({"prompt": "x", "logprobs": 21}), "logprobs"),
            (json!({"prompt": "x", "n": 0}), "n"),
            (json!({"prompt": "x", "max_tokens": 0}), "max_tokens"),
            (json!({"prompt": "x", "frequency_penalty": 3}), "frequency_penalty"),
            (json!({"prompt": "x", "suffix": "y"}), "suffix"),
            (json!({"prompt": "x", "best_of": 3}), "best_of"),
            (json!({"prompt": "x", "logit_bias": {"50256": -100}}), "logit_bias"),
            (json!({"prompt": "x", "colour": 1}), "colour"),
            (json!({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}), "stop"),
            (json!({"prompt": "x", "stop": ["a", ""]}), "stop[1]"),
            (json!({"prompt": [[1, 2], [3, -1]]}), "prompt[1][1]"),
            (json!({"prompt": []}), "prompt"),
            (json!({"max_tokens": 3}), "prompt"),
            (json!({"prompt": "x", "steering": {"addition": []}}), "steering"),
            (json!({"prompt": "x", "stream_options": {"include_usage": true}}), "stream_options"),
        ] {
            assert_eq!(field_of(body.clone()), field, "{body}");
        }
        let ok = parse(json!({"prompt": "x", "max_tokens": 0, "echo": true, "logprobs": 0, "best_of": 2, "n": 2,
                              "logit_bias": {}, "user": "me", "seed": -1, "stop": "\n"}))
        .unwrap();
        assert_eq!((ok.max_tokens, ok.logprobs, ok.n, ok.seed, ok.stop), (0, Some(0), 2, u64::MAX, vec!["\n".to_string()]));
    }
}
