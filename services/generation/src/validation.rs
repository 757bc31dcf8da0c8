//! Turns a raw `Generate` request stream into a typed, valid job, once, at the edge (as TGI's
//! router does): the engine never sees a raw request.

use steer_activation::service::hook_point;
use steer_model::tokenizer::SPACE;
use steer_model::{Addition, Device, Engine, RowRequest, SamplingParams, Tensor};
use steer_proto::v1::{generate_request, GenerateRequest, GenerateSetup, ShortPrompt};
use steer_proto::wire::{self, TensorAssembler};
use tokio_stream::{Stream, StreamExt};
use tonic::Status;

use crate::config::GenerationConfig;
use crate::error::GenerationError;

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
}

pub fn sampling(setup: &GenerateSetup) -> Result<SamplingParams, GenerationError> {
    let s = setup.sampling.clone().unwrap_or_default();
    let p = SamplingParams {
        temperature: s.temperature,
        top_k: (s.top_k > 0).then_some(s.top_k as usize),
        top_p: s.top_p,
        repetition_penalty: if s.repetition_penalty == 0.0 { 1.0 } else { s.repetition_penalty },
        frequency_penalty: s.frequency_penalty,
        presence_penalty: s.presence_penalty,
    };
    p.validate()?;
    Ok(p)
}

/// Reads and checks the whole request stream: the setup, then `n_tensors` tensors.
pub async fn read_request<S>(engine: &Engine, cfg: &GenerationConfig, mut stream: S) -> Result<ValidRequest, GenerationError>
where
    S: Stream<Item = Result<GenerateRequest, Status>> + Unpin,
{
    let info = engine.info();
    let setup = match stream.next().await {
        Some(Ok(GenerateRequest { msg: Some(generate_request::Msg::Setup(s)) })) => s,
        Some(Ok(_)) => return Err(GenerationError::invalid("setup", "the first message must be a GenerateSetup")),
        Some(Err(s)) => return Err(GenerationError::Stream(s)),
        None => return Err(GenerationError::invalid("setup", "empty request stream")),
    };
    if setup.prompt.is_empty() {
        return Err(GenerationError::invalid("setup.prompt", "empty prompt"));
    }
    let n = setup.n_comparisons as usize;
    if n == 0 || n > cfg.max_comparisons {
        return Err(GenerationError::invalid("setup.n_comparisons", format!("{n}: must be in 1..={}", cfg.max_comparisons)));
    }
    let max_new = setup.max_new_tokens as usize;
    if max_new == 0 || max_new > cfg.max_new_tokens {
        return Err(GenerationError::invalid("setup.max_new_tokens", format!("{max_new}: must be in 1..={}", cfg.max_new_tokens)));
    }
    let sampling = sampling(&setup)?;
    let mut prompt = engine.encode(&setup.prompt, setup.use_bos)?;

    // The steering tensors.
    let model_dtype = wire::dtype_of_name(&info.dtype);
    let mut additions: Vec<Addition> = vec![];
    for i in 0..setup.n_tensors as usize {
        let field = format!("tensors[{i}]");
        let header = match stream.next().await {
            Some(Ok(GenerateRequest { msg: Some(generate_request::Msg::Tensor(h)) })) => h,
            Some(Ok(_)) => return Err(GenerationError::invalid(&field, "expected a TensorHeader")),
            Some(Err(s)) => return Err(GenerationError::Stream(s)),
            None => return Err(GenerationError::invalid(&field, format!("stream ended after {i} of {} tensors", setup.n_tensors))),
        };
        if header.dtype != model_dtype as i32 {
            return Err(GenerationError::invalid(
                format!("{field}.dtype"),
                format!("{:?}, the model runs in {}", steer_proto::v1::Dtype::try_from(header.dtype), info.dtype),
            ));
        }
        if header.shape.len() != 2 || header.shape[1] != info.d_model as u64 {
            return Err(GenerationError::invalid(
                format!("{field}.shape"),
                format!("{:?}: expected [k, {}] (d_model)", header.shape, info.d_model),
            ));
        }
        let point = header.point.clone().unwrap_or_default();
        let hook = hook_point(point.hook, point.layer, info.n_layer, &format!("{field}.point"))?;
        let mut asm = TensorAssembler::new(header).map_err(|e| GenerationError::invalid(&field, e.to_string()))?;
        while !asm.is_complete() {
            match stream.next().await {
                Some(Ok(GenerateRequest { msg: Some(generate_request::Msg::Chunk(c)) })) => {
                    asm.push(&c).map_err(|e| GenerationError::invalid(format!("{field}.chunks"), e.to_string()))?
                }
                Some(Ok(_)) => return Err(GenerationError::invalid(format!("{field}.chunks"), "chunks do not add up to the declared shape")),
                Some(Err(s)) => return Err(GenerationError::Stream(s)),
                None => return Err(GenerationError::invalid(format!("{field}.chunks"), "stream ended before the declared bytes")),
            }
        }
        let (h, _, values) = asm.finish_f32().map_err(|e| GenerationError::invalid(format!("{field}.chunks"), e.to_string()))?;
        if values.iter().any(|v| !v.is_finite()) {
            return Err(GenerationError::invalid(format!("{field}.data"), "NaN or Inf in the steering tensor"));
        }
        let k = h.shape[0] as usize;
        let tensor = Tensor::from_vec(values, (k, info.d_model), &Device::Cpu).map_err(steer_model::ModelError::from)?;
        additions.push(Addition { hook, tensor });
    }

    // A prompt shorter than the steering: error, or pad with spaces after BOS.
    let k_max = additions.iter().map(|a| a.tensor.dims()[0]).max().unwrap_or(0);
    if k_max > prompt.len() {
        if setup.short_prompt == ShortPrompt::Pad as i32 {
            let at = usize::from(setup.use_bos);
            let pad = k_max - prompt.len();
            prompt.splice(at..at, std::iter::repeat_n(SPACE, pad));
        } else {
            return Err(GenerationError::invalid(
                "setup.prompt",
                format!(
                    "the prompt ({} tokens) is shorter than the steering tensor ({k_max} positions); use short_prompt = PAD to pad it",
                    prompt.len()
                ),
            ));
        }
    }
    if prompt.len() + max_new > info.n_positions {
        return Err(GenerationError::invalid(
            "setup.max_new_tokens",
            format!("prompt ({}) + new tokens ({max_new}) exceed the model's {} positions", prompt.len(), info.n_positions),
        ));
    }
    for a in &additions {
        engine.check_addition(a, prompt.len())?;
    }

    let row = |seed: u64, additions: Vec<Addition>| RowRequest { prompt: prompt.clone(), additions, sampling: sampling.clone(), seed };
    let mut rows = vec![];
    if !setup.skip_unsteered {
        rows.extend((0..n).map(|i| row(setup.seed.wrapping_add(i as u64), vec![])));
    }
    let n_unsteered = rows.len();
    rows.extend((0..n).map(|i| row(setup.seed.wrapping_add(i as u64), additions.clone())));
    Ok(ValidRequest {
        rows,
        n_unsteered,
        max_new_tokens: max_new,
        stop_at_eos: !setup.ignore_eos,
        top_logprobs: setup.top_logprobs.min(20) as usize,
        prompt_tokens: prompt.len(),
    })
}
