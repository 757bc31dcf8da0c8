//! What a steering run is made of, shared by every caller of the services: the additions
//! ([`AdditionSpec`]), the settings ([`RunOptions`]), the tensors ([`SteeringTensor`]), the
//! result ([`Comparison`]), and the requests built from them.

use steer_proto::v1::{
    self, ActivationAddition, GenerateSetup, GetSteeringTensorsRequest, Hook, ModelInfo, SamplingParameters, TensorChunk, TensorHeader, VectorRef,
};
use steer_vector::{ModelRef, Op, SteeringVector, VectorTensor, Window};

use crate::error::{Error, Result};

/// One term of a steering vector: `coeff * activation(prompt)` at `layer`.
#[derive(Debug, Clone, PartialEq)]
pub struct AdditionSpec {
    pub layer: u32,
    pub coeff: f64,
    pub prompt: String,
}

impl AdditionSpec {
    pub fn new(layer: u32, coeff: f64, prompt: impl Into<String>) -> Self {
        Self { layer, coeff, prompt: prompt.into() }
    }
}

impl std::str::FromStr for AdditionSpec {
    type Err = Error;
    /// `LAYER:COEFF:TEXT` (the text may contain colons), e.g. `20:4:I talk about weddings`.
    fn from_str(spec: &str) -> Result<Self> {
        let bad = |what: &str| Error::Parse(format!("`{spec}`: {what}; expected LAYER:COEFF:TEXT"));
        let mut parts = spec.splitn(3, ':');
        let (Some(layer), Some(coeff), Some(text)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("missing fields"));
        };
        let layer = layer.trim().parse().map_err(|_| bad("LAYER is not a whole number"))?;
        let coeff: f64 = coeff.trim().parse().map_err(|_| bad("COEFF is not a number"))?;
        if !coeff.is_finite() {
            return Err(bad("COEFF must be finite"));
        }
        Ok(Self::new(layer, coeff, text))
    }
}

/// Everything about a run but the prompt and the additions. `Default` is the post's settings
/// (RESID_PRE, BOS, space padding, [`SamplingParameters::post`]); [`RunOptions::seed`] the ARENA
/// seed's.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub hook: Hook,
    pub use_bos: bool,
    pub n_tokens: u32,
    pub n_comparisons: u32,
    pub seed: u64,
    pub sampling: SamplingParameters,
    pub strict_lengths: bool,
    pub top_logprobs: u32,
    /// Only the steered rows.
    pub skip_unsteered: bool,
    /// Keep generating past <|endoftext|>.
    pub ignore_eos: bool,
    /// Pad a prompt shorter than the steering with spaces after BOS (else it is refused).
    pub pad_short_prompt: bool,
    /// Library vectors (by digest) the generation worker adds along with the tensors sent.
    pub vectors: Vec<VectorRef>,
    /// Stop strings: a row ends once its text contains one (left out of the text).
    pub stop: Vec<String>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            hook: Hook::ResidPre,
            use_bos: true,
            n_tokens: 50,
            n_comparisons: 3,
            seed: 0,
            sampling: SamplingParameters::post(),
            strict_lengths: false,
            top_logprobs: 0,
            skip_unsteered: false,
            ignore_eos: false,
            pad_short_prompt: false,
            vectors: vec![],
            stop: vec![],
        }
    }
}

impl RunOptions {
    /// The ARENA exercise: BLOCK_OUTPUT, the seed's sampling (top_p 0.3, repetition penalty
    /// 1.2), contrast prompts of equal token length (strict, as the seed asserts).
    pub fn seed(use_bos: bool) -> Self {
        Self { hook: Hook::BlockOutput, use_bos, sampling: SamplingParameters::seed(), strict_lengths: true, ..Self::default() }
    }

    /// The `GenerateSetup` of a generation of `prompt` with `n_tensors` steering tensors.
    pub fn setup(&self, prompt: &str, n_tensors: usize) -> GenerateSetup {
        GenerateSetup {
            prompt: prompt.to_string(),
            use_bos: self.use_bos,
            sampling: Some(self.sampling),
            n_comparisons: self.n_comparisons,
            max_new_tokens: self.n_tokens,
            seed: self.seed,
            n_tensors: n_tensors as u32,
            top_logprobs: self.top_logprobs,
            skip_unsteered: self.skip_unsteered,
            ignore_eos: self.ignore_eos,
            vectors: self.vectors.clone(),
            short_prompt: short_prompt(self.pad_short_prompt) as i32,
            stop: self.stop.clone(),
            ..Default::default()
        }
    }

    /// Rows a finished generation has.
    pub fn rows(&self) -> usize {
        self.n_comparisons as usize * if self.skip_unsteered { 1 } else { 2 }
    }
}

/// A steering tensor as received (or read from a vector file): its header (hook point, shape,
/// mode) and values.
#[derive(Debug, Clone)]
pub struct SteeringTensor {
    pub header: TensorHeader,
    pub values: Vec<f32>,
    pub(crate) chunks: Vec<TensorChunk>,
}

impl SteeringTensor {
    /// A tensor of a vector file, to add over `mode`'s positions.
    pub fn from_vector(t: &VectorTensor, mode: Window) -> Self {
        let (header, chunks) = steer_proto::wire::encode_f32(&t.values, &[t.k, t.d()], Some(t.point.into()), 0);
        Self { header, values: t.values.clone(), chunks }.in_window(mode)
    }

    /// The same tensor over `window`'s positions.
    pub fn in_window(mut self, window: Window) -> Self {
        (self.header.mode, self.header.window_start, self.header.window_end) = steer_proto::hooks::wire_window(window);
        self
    }

    /// The same tensor applied as `op` (ADD, ABLATE, CLAMP).
    pub fn with_op(mut self, op: Op) -> Self {
        (self.header.op, self.header.clamp_value) = steer_proto::hooks::wire_op(op);
        self
    }

    /// A prefix (ActAdd) tensor of `values.len() / d` positions at `point`.
    pub fn prefix(point: v1::HookPoint, values: Vec<f32>, d: usize) -> Self {
        let (header, chunks) = steer_proto::wire::encode_f32(&values, &[values.len() / d.max(1), d], Some(point), 0);
        Self { header, values, chunks }
    }

    /// The tensor in one piece (GenerateFromTensors, Score).
    pub fn inline(&self) -> v1::InlineTensor {
        v1::InlineTensor { header: Some(self.header.clone()), data: self.chunks.iter().flat_map(|c| c.data.iter().copied()).collect() }
    }

    /// The tensors to send for a vector file: checked against the model the services hold
    /// (`info`), scaled, narrowed to `layers` (inclusive).
    pub fn from_file(v: &SteeringVector, info: &ModelInfo, scale: f32, layers: Option<(u32, u32)>) -> Result<Vec<Self>> {
        Self::from_file_with(v, info, scale, layers, false)
    }

    /// [`SteeringTensor::from_file`]; `force_model` accepts a vector made on other weights of
    /// the same shape (`--force-model`).
    pub fn from_file_with(v: &SteeringVector, info: &ModelInfo, scale: f32, layers: Option<(u32, u32)>, force_model: bool) -> Result<Vec<Self>> {
        v.check_model_or_shape(&model_ref(info), force_model).map_err(|e| Error::Vector(e.to_string()))?;
        let tensors = v.applied(scale, layers);
        if tensors.is_empty() {
            let have: Vec<String> = v.tensors.iter().map(|t| t.point.to_string()).collect();
            let (a, b) = layers.unwrap_or((0, u32::MAX));
            return Err(Error::Parse(format!("vector {}: no tensor in layers {a}-{b} (it has {})", v.meta.name, have.join(", "))));
        }
        Ok(tensors.iter().map(|t| Self::from_vector(t, v.mode()).with_op(v.op())).collect())
    }

    /// The tensor as the chunks a streamed request sends after its header.
    pub fn chunks(&self) -> &[TensorChunk] {
        &self.chunks
    }

    /// L2 norm of each position's vector.
    pub fn position_norms(&self) -> Vec<f32> {
        let d = self.header.shape.get(1).copied().unwrap_or(1).max(1) as usize;
        self.values.chunks(d).map(|r| r.iter().map(|x| x * x).sum::<f32>().sqrt()).collect()
    }
}

/// One finished completion.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub row: u32,
    pub steered: bool,
    pub text: String,
    pub token_ids: Vec<u32>,
    pub finish_reason: v1::FinishReason,
    pub seed: u64,
    /// The generation worker that produced it.
    pub worker: String,
}

impl From<v1::RowFinished> for Completion {
    fn from(f: v1::RowFinished) -> Self {
        Self {
            row: f.row,
            steered: f.steered,
            text: f.text,
            token_ids: f.token_ids,
            finish_reason: v1::FinishReason::try_from(f.reason).unwrap_or_default(),
            seed: f.seed,
            worker: f.worker,
        }
    }
}

/// Why steering with `tensors` on a model of `n_layer` blocks cannot change a completion, one
/// line per tensor that cannot (empty when each can): a tensor of zeros (a coefficient of 0),
/// and a prefix at the last block's output, which no block reads and which moves only the
/// logits of the positions it covers (so a completion changes only when it covers the whole
/// prompt). The CLI prints these as warnings, and the HTTP route returns them.
pub fn no_op_warnings(tensors: &[SteeringTensor], n_layer: u32) -> Vec<String> {
    let mut out = vec![];
    for t in tensors {
        let point = t.header.point.unwrap_or_default();
        let name = point.point().map_or_else(|| format!("layer {}", point.layer), |p| p.to_string());
        if t.values.iter().all(|v| *v == 0.0) {
            out.push(format!("{name}: the steering tensor is all zeros (a coefficient of 0?): the steered rows will equal the unsteered"));
            continue;
        }
        let prefix = t.header.mode != v1::SteeringMode::AllPositions as i32;
        if prefix && point.point().is_some_and(|p| p.stream() == n_layer as usize) {
            out.push(format!(
                "{name}: no block reads the last block's output, so a prefix there changes only the logits of the {} positions it covers: \
                 the completion does not change unless it covers the whole prompt (steer an earlier layer, or use resid_pre)",
                t.header.shape.first().copied().unwrap_or(0)
            ));
        }
    }
    out
}

/// The result of `calculate_and_apply_steering_vector`.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub unsteered: Vec<Completion>,
    pub steered: Vec<Completion>,
}

/// The Score request of `texts` under `tensors` and `opts.vectors`.
pub fn score_request(
    texts: &[(String, String)],
    tensors: &[SteeringTensor],
    opts: &RunOptions,
    include_unsteered: bool,
    kl_top: u32,
) -> v1::ScoreRequest {
    v1::ScoreRequest {
        texts: texts.iter().map(|(p, c)| v1::ScoreText { prompt: p.clone(), continuation: c.clone(), ..Default::default() }).collect(),
        use_bos: opts.use_bos,
        tensors: tensors.iter().map(SteeringTensor::inline).collect(),
        vectors: opts.vectors.clone(),
        include_unsteered,
        short_prompt: short_prompt(opts.pad_short_prompt) as i32,
        kl_top,
        ..Default::default()
    }
}

fn short_prompt(pad: bool) -> v1::ShortPrompt {
    if pad {
        v1::ShortPrompt::Pad
    } else {
        v1::ShortPrompt::Error
    }
}

/// The request for the steering tensors of `additions`.
pub fn steering_request(additions: &[AdditionSpec], opts: &RunOptions) -> GetSteeringTensorsRequest {
    GetSteeringTensorsRequest {
        additions: additions.iter().map(|a| ActivationAddition { prompt: a.prompt.clone(), coeff: a.coeff, layer: a.layer }).collect(),
        hook: opts.hook as i32,
        use_bos: opts.use_bos,
        strict_lengths: opts.strict_lengths,
    }
}

/// The model a service reports, as vector files name models.
pub fn model_ref(info: &ModelInfo) -> ModelRef {
    ModelRef {
        name: info.name.clone(),
        revision: info.revision.clone(),
        d_model: info.d_model,
        n_layer: info.n_layer,
        architecture: info.architecture.clone(),
        fingerprint: info.weights_fingerprint.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addition_specs_parse_once_with_clear_errors() {
        let a: AdditionSpec = "20:4:I talk about weddings: constantly".parse().unwrap();
        assert_eq!(a, AdditionSpec::new(20, 4.0, "I talk about weddings: constantly"));
        assert_eq!("6:-8.5:".parse::<AdditionSpec>().unwrap(), AdditionSpec::new(6, -8.5, ""));
        for bad in ["20:4", "x:4:a", "20:y:a", "20:inf:a", "-1:2:a"] {
            let e = bad.parse::<AdditionSpec>().unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}");
            assert!(e.to_string().contains("LAYER:COEFF:TEXT"), "{e}");
        }
    }

    #[test]
    fn the_presets_come_from_the_named_sampling_settings() {
        assert_eq!(RunOptions::default().sampling, SamplingParameters::post());
        let s = RunOptions::seed(false);
        assert_eq!((s.sampling, s.hook, s.strict_lengths, s.use_bos), (SamplingParameters::seed(), Hook::BlockOutput, true, false));
        assert_eq!(RunOptions { skip_unsteered: true, ..RunOptions::default() }.rows(), 3);
    }
}
