//! Reading `model.safetensors` (single file or sharded) into [`Params`]: the large matrices in
//! the dtype asked for ([`Matrix`]), everything else f32.
//!
//! Tensors are read with plain file reads, not memory-mapped, and each is converted as soon as
//! it is read: a mapping keeps the file's pages resident next to the converted copy, and
//! converting after loading everything holds both; either way peak memory would be the
//! checkpoint plus the model (12 GB instead of 6 for GPT-2-XL in f32; 9 instead of 3 in bf16).

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::Deserialize;

use crate::dtype::HalfKind;
use crate::dtype::WeightDtype;
use crate::error::{ModelError, Result};
use crate::matrix::{Layout, Matrix, Role, Source};

/// A checkpoint's parameters as the model holds them, by canonical name (`h.0.attn.c_attn.weight`).
pub struct Params {
    pub dense: HashMap<String, Tensor>,
    pub matrices: HashMap<String, Matrix>,
    /// Where they came from, for error messages.
    pub origin: PathBuf,
}

impl Params {
    pub fn new(origin: PathBuf) -> Self {
        Self { dense: HashMap::new(), matrices: HashMap::new(), origin }
    }

    fn missing(&self, name: &str, what: String) -> ModelError {
        ModelError::Weights { path: self.origin.clone(), message: format!("{name}: {what}") }
    }

    /// An f32 tensor of exactly `shape`.
    pub fn tensor(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.dense.remove(name).ok_or_else(|| self.missing(name, "missing".into()))?;
        if t.dims() != shape {
            return Err(self.missing(name, format!("shape {:?}, expected {shape:?}", t.dims())));
        }
        Ok(t)
    }

    /// A matrix mapping `n_in` to `n_out` features (a table: `n_in` = d, `n_out` = rows).
    pub fn matrix(&mut self, name: &str, n_in: usize, n_out: usize) -> Result<Matrix> {
        let m = self.matrices.remove(name).ok_or_else(|| self.missing(name, "missing".into()))?;
        if (m.n_in(), m.n_out()) != (n_in, n_out) {
            return Err(self.missing(name, format!("maps {} to {} features, expected {n_in} to {n_out}", m.n_in(), m.n_out())));
        }
        Ok(m)
    }
}

/// Which parameters are the large matrices (held in the asked dtype), and what for.
pub fn matrix_role(name: &str) -> Option<Role> {
    const LINEARS: [&str; 4] = [".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight"];
    if name == "wte.weight" {
        Some(Role::Table)
    } else if LINEARS.iter().any(|s| name.ends_with(s)) {
        Some(Role::Linear)
    } else {
        None
    }
}

/// Buffers the hub checkpoints carry that are not parameters (causal-mask constants), and the
/// lm_head, which GPT-2 ties to `wte`.
fn ignored(name: &str) -> bool {
    name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias") || name.starts_with("lm_head.")
}

/// Parameter name without the `transformer.` prefix that `save_pretrained` writes.
fn canonical(name: &str) -> &str {
    name.strip_prefix("transformer.").unwrap_or(name)
}

#[derive(Debug, Deserialize)]
struct Entry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: (u64, u64),
}

/// The weight files of a checkpoint in `dir`: `model.safetensors`, or the shards named by
/// `model.safetensors.index.json`.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        return shards_of(&index);
    }
    Err(ModelError::NotFound(format!("no weights in {}: looked for model.safetensors and model.safetensors.index.json", dir.display())))
}

/// Shard files listed in a `model.safetensors.index.json` (relative to its folder).
pub fn shards_of(index: &Path) -> Result<Vec<PathBuf>> {
    #[derive(Deserialize)]
    struct Index {
        weight_map: HashMap<String, String>,
    }
    let text = std::fs::read_to_string(index).map_err(|e| ModelError::io(index, e))?;
    let idx: Index = serde_json::from_str(&text).map_err(|e| ModelError::Weights { path: index.into(), message: e.to_string() })?;
    let mut files: Vec<String> = idx.weight_map.into_values().collect();
    files.sort();
    files.dedup();
    let dir = index.parent().unwrap_or(Path::new("."));
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

/// The type the checkpoint stores its large matrices in (the one that holds most of their
/// bytes, from the files' headers only): what the weights are held in unless `--dtype` says
/// otherwise.
pub fn stored_dtype(files: &[PathBuf]) -> Result<WeightDtype> {
    let mut bytes: HashMap<WeightDtype, u64> = HashMap::new();
    for path in files {
        let mut file = File::open(path).map_err(|e| ModelError::io(path, e))?;
        for (name, e) in header(&mut file, path)?.0 {
            let Some(dtype) = WeightDtype::from_safetensors(&e.dtype) else { continue };
            if matrix_role(canonical(&name)).is_some() {
                *bytes.entry(dtype).or_default() += e.data_offsets.1.saturating_sub(e.data_offsets.0);
            }
        }
    }
    Ok(bytes.into_iter().max_by_key(|&(d, b)| (b, d == WeightDtype::F32)).map_or(WeightDtype::F32, |(d, _)| d))
}

/// A safetensors file's tensor entries and where its data starts (the header only, read from
/// the start of `file`).
fn header(file: &mut File, path: &Path) -> Result<(Vec<(String, Entry)>, u64)> {
    let bad = |message: String| ModelError::Weights { path: path.into(), message };
    let file_len = file.metadata().map_err(|e| ModelError::io(path, e))?.len();
    let mut len8 = [0u8; 8];
    file.read_exact(&mut len8).map_err(|e| ModelError::io(path, e))?;
    let header_len = u64::from_le_bytes(len8);
    if header_len > 100 << 20 || header_len + 8 > file_len {
        return Err(bad(format!("header length {header_len} does not fit a {file_len}-byte file")));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(|e| ModelError::io(path, e))?;
    let entries: HashMap<String, serde_json::Value> = serde_json::from_slice(&header).map_err(|e| bad(format!("header: {e}")))?;
    let named = entries
        .into_iter()
        .filter(|(name, _)| name != "__metadata__" && !ignored(canonical(name)))
        .map(|(name, v)| {
            let e: Entry = serde_json::from_value(v).map_err(|e| bad(format!("{name}: {e}")))?;
            Ok((name, e))
        })
        .collect::<Result<_>>()?;
    Ok((named, 8 + header_len))
}

/// Loads every parameter of `files`: the large matrices as `dtype`, the rest as f32.
pub fn load(files: &[PathBuf], dtype: WeightDtype, device: &Device) -> Result<Params> {
    let mut out = Params::new(files.first().cloned().unwrap_or_default());
    for path in files {
        load_file(path, dtype, device, &mut out)?;
    }
    Ok(out)
}

fn load_file(path: &Path, dtype: WeightDtype, device: &Device, out: &mut Params) -> Result<()> {
    let bad = |message: String| ModelError::Weights { path: path.into(), message };
    let mut file = File::open(path).map_err(|e| ModelError::io(path, e))?;
    let file_len = file.metadata().map_err(|e| ModelError::io(path, e))?.len();
    let (mut named, data_start) = header(&mut file, path)?;
    named.sort_by_key(|(_, e)| e.data_offsets.0);
    for (name, e) in named {
        let (s, t) = e.data_offsets;
        let n: usize = e.shape.iter().product();
        let elem = match e.dtype.as_str() {
            "F32" => 4,
            "F16" | "BF16" => 2,
            other => return Err(bad(format!("{name}: unsupported dtype {other}"))),
        };
        if t < s || t - s != (n * elem) as u64 || data_start + t > file_len {
            return Err(bad(format!("{name}: data offsets {s}..{t} do not match shape {:?}", e.shape)));
        }
        file.seek(SeekFrom::Start(data_start + s)).map_err(|e| ModelError::io(path, e))?;
        let src = match elem {
            4 => {
                let mut v = vec![0f32; n];
                file.read_exact(bytemuck_f32(&mut v)).map_err(|e| ModelError::io(path, e))?;
                Source::F32(v)
            }
            _ => {
                let mut v = vec![0u16; n];
                file.read_exact(bytemuck_u16(&mut v)).map_err(|e| ModelError::io(path, e))?;
                Source::Half(v, if e.dtype == "F16" { HalfKind::F16 } else { HalfKind::Bf16 })
            }
        };
        let name = canonical(&name).to_string();
        insert(out, name, src, &e.shape, Layout::InOut, dtype, device).map_err(|err| bad(err.to_string()))?;
    }
    Ok(())
}

/// Adds one parameter read from a checkpoint, by canonical name: a matrix converted to `dtype`
/// (linears stored as `linear`: Hugging Face's Conv1D `[in, out]`, GGUF's `[out, in]`; tables
/// `[rows, d]` in both), or a dense f32 tensor.
pub(crate) fn insert(
    out: &mut Params,
    name: String,
    src: Source,
    shape: &[usize],
    linear: Layout,
    dtype: WeightDtype,
    device: &Device,
) -> Result<()> {
    match (matrix_role(&name), shape) {
        (Some(Role::Linear), &[rows, cols]) => {
            let (n_in, n_out) = if linear == Layout::InOut { (rows, cols) } else { (cols, rows) };
            let m = Matrix::new(src, linear, n_in, n_out, Role::Linear, dtype, device)?;
            out.matrices.insert(name, m);
        }
        (Some(Role::Table), &[rows, d]) => {
            let m = Matrix::new(src, Layout::OutIn, d, rows, Role::Table, dtype, device)?;
            out.matrices.insert(name, m);
        }
        _ => {
            out.dense.insert(name, dense(src, shape, device)?);
        }
    }
    Ok(())
}

/// A non-matrix parameter as an f32 tensor.
fn dense(src: Source, shape: &[usize], device: &Device) -> Result<Tensor> {
    Ok(Tensor::from_vec(src.into_f32(), shape, device)?)
}

// Safetensors data is little-endian; so is every target we build for.
#[cfg(target_endian = "little")]
fn bytemuck_f32(v: &mut [f32]) -> &mut [u8] {
    // SAFETY: any byte pattern is a valid f32; the length is scaled by size_of::<f32>().
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

#[cfg(target_endian = "little")]
fn bytemuck_u16(v: &mut [u16]) -> &mut [u8] {
    // SAFETY: any byte pattern is a valid u16; the length is scaled by size_of::<u16>().
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

/// Writes tensors (given in order) as one safetensors file, streaming each tensor's data from
/// `fill` so that a 6 GB checkpoint never sits in memory whole.
pub fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>)], mut fill: impl FnMut(&str, &mut [f32])) -> Result<()> {
    use std::io::{BufWriter, Write};
    let mut header = serde_json::Map::new();
    let mut offset = 0u64;
    for (name, shape) in tensors {
        let bytes = (shape.iter().product::<usize>() * 4) as u64;
        header.insert(name.clone(), serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + bytes]}));
        offset += bytes;
    }
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut header = serde_json::to_vec(&header).expect("json");
    while !header.len().is_multiple_of(8) {
        header.push(b' ');
    }
    let f = File::create(path).map_err(|e| ModelError::io(path, e))?;
    let mut w = BufWriter::with_capacity(8 << 20, f);
    let io = |e| ModelError::io(path, e);
    w.write_all(&(header.len() as u64).to_le_bytes()).map_err(io)?;
    w.write_all(&header).map_err(io)?;
    for (name, shape) in tensors {
        let mut data = vec![0f32; shape.iter().product()];
        fill(name, &mut data);
        w.write_all(bytemuck_f32(&mut data)).map_err(io)?;
    }
    w.flush().map_err(io)?;
    Ok(())
}
