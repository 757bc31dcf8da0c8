//! GGUF checkpoints (llama.cpp's format) of GPT-2: hyper-parameters and tokenizer from the
//! metadata, weights in f32, f16, bf16 or q8_0, read with candle's `gguf_file` and mapped to
//! the Hugging Face names the model loads (`blk.N.attn_qkv` -> `h.N.attn.c_attn`, ...).
//!
//! llama.cpp's converter (`convert_hf_to_gguf.py`, `GPT2Model`) transposes Conv1D weights to
//! `[out, in]` and writes `output.weight` as a copy of `token_embd.weight` (GPT-2 ties them);
//! the copy is checked equal and not loaded twice.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::GgmlDType;
use candle_core::Device;

use crate::config::Config;
use crate::dtype::HalfKind;
use crate::dtype::WeightDtype;
use crate::error::{ModelError, Result};
use crate::matrix::{Layout, Source};
use crate::tokenizer::Gpt2Tokenizer;
use crate::weights::{self, Params};

/// What a GGUF file holds.
pub struct GgufModel {
    pub config: Config,
    /// From `tokenizer.ggml.*`, when the file carries one.
    pub tokenizer: Option<Gpt2Tokenizer>,
    pub params: Params,
    /// The type the file stores its large matrices in ([`stored_dtype`]).
    pub stored: WeightDtype,
}

/// The Hugging Face name of a llama.cpp GPT-2 tensor (None: not a parameter we load).
pub fn hf_name(gguf: &str) -> Option<String> {
    let (stem, kind) = gguf.rsplit_once('.')?;
    let hf = match stem {
        "token_embd" => "wte".to_string(),
        "position_embd" => "wpe".to_string(),
        "output_norm" => "ln_f".to_string(),
        _ => {
            let rest = stem.strip_prefix("blk.")?;
            let (n, part) = rest.split_once('.')?;
            let part = match part {
                "attn_norm" => "ln_1",
                "attn_qkv" => "attn.c_attn",
                "attn_output" => "attn.c_proj",
                "ffn_norm" => "ln_2",
                "ffn_up" => "mlp.c_fc",
                "ffn_down" => "mlp.c_proj",
                _ => return None,
            };
            format!("h.{}.{part}", n.parse::<usize>().ok()?)
        }
    };
    Some(format!("{hf}.{kind}"))
}

/// Bytes a tensor's data takes in the file.
fn tensor_bytes(info: &candle_core::quantized::gguf_file::TensorInfo) -> usize {
    info.shape.elem_count() / info.ggml_dtype.block_size() * info.ggml_dtype.type_size()
}

/// The type a GGUF file stores its large matrices in: the one that holds most of their bytes
/// (llama.cpp keeps norms, biases and `position_embd` in F32 whatever the file's type). A type
/// this loader does not read is an error naming it.
fn stored_dtype(content: &Content) -> std::result::Result<WeightDtype, String> {
    let mut bytes: Vec<(GgmlDType, usize)> = vec![];
    for (name, info) in &content.tensor_infos {
        if info.shape.rank() != 2 || name == "position_embd.weight" || name == "output.weight" {
            continue;
        }
        let size = tensor_bytes(info);
        match bytes.iter_mut().find(|(d, _)| *d == info.ggml_dtype) {
            Some((_, b)) => *b += size,
            None => bytes.push((info.ggml_dtype, size)),
        }
    }
    let Some(&(most, _)) = bytes.iter().max_by_key(|(d, b)| (*b, *d == GgmlDType::F32)) else {
        return Ok(WeightDtype::F32);
    };
    match most {
        GgmlDType::F32 => Ok(WeightDtype::F32),
        GgmlDType::F16 => Ok(WeightDtype::F16),
        GgmlDType::BF16 => Ok(WeightDtype::Bf16),
        GgmlDType::Q8_0 => Ok(WeightDtype::Q8_0),
        other => Err(format!("the matrices are {other:?}; this loader reads F32, F16, BF16 and Q8_0")),
    }
}

/// [`stored_dtype`] of the file at `path` (its header only).
pub fn stored(path: &Path) -> Result<WeightDtype> {
    let bad = |message: String| ModelError::Weights { path: path.into(), message };
    let mut file = File::open(path).map_err(|e| ModelError::io(path, e))?;
    let content = Content::read(&mut file).map_err(|e| bad(format!("not a GGUF file: {e}")))?;
    stored_dtype(&content).map_err(bad)
}

/// Reads a GPT-2 GGUF: the large matrices as `dtype`, or as the file stores them when `None`.
pub fn load(path: &Path, dtype: Option<WeightDtype>, device: &Device) -> Result<GgufModel> {
    let bad = |message: String| ModelError::Weights { path: path.into(), message };
    let mut file = File::open(path).map_err(|e| ModelError::io(path, e))?;
    let file_len = file.metadata().map_err(|e| ModelError::io(path, e))?.len();
    let content = Content::read(&mut file).map_err(|e| bad(format!("not a GGUF file: {e}")))?;
    let meta = |key: &str| content.metadata.get(key);
    let arch = meta("general.architecture").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
    if arch != "gpt2" {
        return Err(bad(format!("general.architecture is `{arch}`; this server runs GPT-2 (`gpt2`)")));
    }
    let int = |key: &str| -> Result<usize> {
        let v = meta(key).ok_or_else(|| bad(format!("metadata {key} is missing")))?;
        v.to_u64().or_else(|_| v.to_u32().map(u64::from)).map(|x| x as usize).map_err(|e| bad(format!("{key}: {e}")))
    };
    let embd = content.tensor_infos.get("token_embd.weight").ok_or_else(|| bad("no token_embd.weight".into()))?;
    let mut config = Config::with_shape(int("gpt2.block_count")?, int("gpt2.embedding_length")?, int("gpt2.attention.head_count")?);
    config.n_positions = int("gpt2.context_length")?;
    config.n_inner = Some(int("gpt2.feed_forward_length")?);
    config.vocab_size = embd.shape.dims()[0];
    if let Some(eps) = meta("gpt2.attention.layer_norm_epsilon") {
        config.layer_norm_epsilon = eps.to_f32().map_err(|e| bad(format!("layer_norm_epsilon: {e}")))? as f64;
    }
    config.validate().map_err(|m| bad(format!("hyper-parameters: {m}")))?;
    let tokenizer = tokenizer(&content).map_err(|e| bad(format!("tokenizer.ggml.*: {e}")))?;
    let stored = stored_dtype(&content).map_err(bad)?;
    let dtype = dtype.unwrap_or(stored);

    let mut params = Params::new(path.into());
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort_by_key(|n| content.tensor_infos[*n].offset);
    for name in names {
        let info = &content.tensor_infos[name];
        let Some(hf) = hf_name(name) else {
            if name == "output.weight" {
                tied_copy(&mut file, &content, path)?;
                continue;
            }
            return Err(bad(format!("{name}: not a GPT-2 tensor")));
        };
        let shape = info.shape.dims().to_vec();
        let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).unwrap_or(usize::MAX);
        let bytes = match info.ggml_dtype {
            GgmlDType::F32 => n.saturating_mul(4),
            GgmlDType::F16 | GgmlDType::BF16 => n.saturating_mul(2),
            GgmlDType::Q8_0 if n % 32 == 0 => (n / 32).saturating_mul(34),
            other => return Err(bad(format!("{name}: tensor type {other:?}; this loader reads F32, F16, BF16 and Q8_0"))),
        };
        let at = content.tensor_data_offset.saturating_add(info.offset);
        if at.saturating_add(bytes as u64) > file_len {
            return Err(bad(format!("{name}: {shape:?} ({bytes} bytes at {at}) runs past the end of the {file_len}-byte file")));
        }
        let raw = read_at(&mut file, at, bytes).map_err(|e| ModelError::io(path, e))?;
        let src = match info.ggml_dtype {
            GgmlDType::F32 => Source::F32(raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()),
            GgmlDType::F16 => Source::Half(u16s(&raw), HalfKind::F16),
            GgmlDType::BF16 => Source::Half(u16s(&raw), HalfKind::Bf16),
            _ => Source::Q8(crate::quant::Q8Blocks::from_ggml(&raw).ok_or_else(|| bad(format!("{name}: truncated q8_0 data")))?),
        };
        // GGUF keeps every matrix [out, in] (rows of blocks along `in`).
        weights::insert(&mut params, hf, src, &shape, Layout::OutIn, dtype, device).map_err(|e| bad(format!("{name}: {e}")))?;
    }
    Ok(GgufModel { config, tokenizer, params, stored })
}

fn read_at(file: &mut File, at: u64, len: usize) -> std::io::Result<Vec<u8>> {
    file.seek(SeekFrom::Start(at))?;
    let mut buf = vec![0u8; len];
    file.read_exact(&mut buf)?;
    Ok(buf)
}

fn u16s(raw: &[u8]) -> Vec<u16> {
    raw.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect()
}

/// llama.cpp writes GPT-2's lm_head as `output.weight`, a copy of `token_embd.weight`: check
/// that it is one (the model ties them).
fn tied_copy(file: &mut File, content: &Content, path: &Path) -> Result<()> {
    let (out, embd) = (&content.tensor_infos["output.weight"], &content.tensor_infos["token_embd.weight"]);
    let same_kind = out.ggml_dtype == embd.ggml_dtype && out.shape == embd.shape;
    let size = tensor_bytes;
    let file_len = file.metadata().map_err(|e| ModelError::io(path, e))?.len();
    let fits = |i: &candle_core::quantized::gguf_file::TensorInfo| {
        content.tensor_data_offset.saturating_add(i.offset).saturating_add(size(i) as u64) <= file_len
    };
    let equal = same_kind && fits(out) && fits(embd) && {
        let base = content.tensor_data_offset;
        let a = read_at(file, base + out.offset, size(out)).map_err(|e| ModelError::io(path, e))?;
        let b = read_at(file, base + embd.offset, size(embd)).map_err(|e| ModelError::io(path, e))?;
        a == b
    };
    if equal {
        Ok(())
    } else {
        Err(ModelError::Weights {
            path: path.into(),
            message: "output.weight differs from token_embd.weight: GPT-2's lm_head is tied to its embeddings".into(),
        })
    }
}

/// The byte-level BPE tokenizer a GPT-2 GGUF carries (`tokenizer.ggml.model` = `gpt2`).
fn tokenizer(content: &Content) -> std::result::Result<Option<Gpt2Tokenizer>, String> {
    let Some(tokens) = content.metadata.get("tokenizer.ggml.tokens") else {
        return Ok(None);
    };
    let model = content.metadata.get("tokenizer.ggml.model").and_then(|v| v.to_string().ok()).map(String::as_str);
    if model != Some("gpt2") {
        return Err(format!("tokenizer.ggml.model is {model:?}, expected \"gpt2\" (byte-level BPE)"));
    }
    let strings = |v: &Value| -> std::result::Result<Vec<String>, String> {
        v.to_vec().map_err(|e| e.to_string())?.iter().map(|s| s.to_string().cloned().map_err(|e| e.to_string())).collect()
    };
    let tokens = strings(tokens)?;
    let merges = content.metadata.get("tokenizer.ggml.merges").map(strings).transpose()?.unwrap_or_default();
    let merges = merges
        .iter()
        .map(|m| m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())).ok_or_else(|| format!("merge `{m}` is not two tokens")))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Gpt2Tokenizer::from_tokens_and_merges(tokens, merges).map(Some).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_cpp_names_map_to_hugging_face_names() {
        assert_eq!(hf_name("token_embd.weight").unwrap(), "wte.weight");
        assert_eq!(hf_name("blk.11.attn_qkv.bias").unwrap(), "h.11.attn.c_attn.bias");
        assert_eq!(hf_name("blk.0.ffn_down.weight").unwrap(), "h.0.mlp.c_proj.weight");
        assert_eq!(hf_name("output_norm.bias").unwrap(), "ln_f.bias");
        assert!(hf_name("blk.x.attn_qkv.weight").is_none());
        assert!(hf_name("output.weight").is_none(), "the tied copy is checked, not loaded");
    }
}
