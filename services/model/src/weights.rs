//! Reading `model.safetensors` (single file or sharded) into named tensors.
//!
//! Tensors are read with plain file reads, not memory-mapped: a mapping keeps the file's pages
//! resident next to the converted copy and doubles peak memory (12 GB instead of 6 for GPT-2-XL).

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use crate::error::{ModelError, Result};

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
    Err(ModelError::NotFound(format!(
        "no weights in {}: looked for model.safetensors and model.safetensors.index.json",
        dir.display()
    )))
}

/// Shard files listed in a `model.safetensors.index.json` (relative to its folder).
pub fn shards_of(index: &Path) -> Result<Vec<PathBuf>> {
    #[derive(Deserialize)]
    struct Index {
        weight_map: HashMap<String, String>,
    }
    let text = std::fs::read_to_string(index).map_err(|e| ModelError::io(index, e))?;
    let idx: Index = serde_json::from_str(&text).map_err(|e| ModelError::Weights {
        path: index.into(),
        message: e.to_string(),
    })?;
    let mut files: Vec<String> = idx.weight_map.into_values().collect();
    files.sort();
    files.dedup();
    let dir = index.parent().unwrap_or(Path::new("."));
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

/// Loads every parameter of `files` as `dtype` on `device`, keyed by canonical name.
pub fn load(files: &[PathBuf], dtype: DType, device: &Device) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    for path in files {
        load_file(path, dtype, device, &mut out)?;
    }
    Ok(out)
}

fn load_file(path: &Path, dtype: DType, device: &Device, out: &mut HashMap<String, Tensor>) -> Result<()> {
    let bad = |message: String| ModelError::Weights { path: path.into(), message };
    let mut file = File::open(path).map_err(|e| ModelError::io(path, e))?;
    let file_len = file.metadata().map_err(|e| ModelError::io(path, e))?.len();
    let mut len8 = [0u8; 8];
    file.read_exact(&mut len8).map_err(|e| ModelError::io(path, e))?;
    let header_len = u64::from_le_bytes(len8);
    if header_len > 100 << 20 || header_len + 8 > file_len {
        return Err(bad(format!("header length {header_len} does not fit a {file_len}-byte file")));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(|e| ModelError::io(path, e))?;
    let entries: HashMap<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| bad(format!("header: {e}")))?;
    let data_start = 8 + header_len;
    let mut named: Vec<(String, Entry)> = entries
        .into_iter()
        .filter(|(name, _)| name != "__metadata__" && !ignored(canonical(name)))
        .map(|(name, v)| {
            let e: Entry = serde_json::from_value(v).map_err(|e| bad(format!("{name}: {e}")))?;
            Ok((name, e))
        })
        .collect::<Result<_>>()?;
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
        let tensor = match elem {
            4 => {
                let mut v = vec![0f32; n];
                file.read_exact(bytemuck_f32(&mut v)).map_err(|e| ModelError::io(path, e))?;
                Tensor::from_vec(v, e.shape.as_slice(), device)?
            }
            _ => {
                let mut v = vec![0u16; n];
                file.read_exact(bytemuck_u16(&mut v)).map_err(|e| ModelError::io(path, e))?;
                if e.dtype == "F16" {
                    let v: Vec<half::f16> = v.into_iter().map(half::f16::from_bits).collect();
                    Tensor::from_vec(v, e.shape.as_slice(), device)?
                } else {
                    let v: Vec<half::bf16> = v.into_iter().map(half::bf16::from_bits).collect();
                    Tensor::from_vec(v, e.shape.as_slice(), device)?
                }
            }
        };
        let tensor = if tensor.dtype() == dtype { tensor } else { tensor.to_dtype(dtype)? };
        out.insert(canonical(&name).to_string(), tensor);
    }
    Ok(())
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
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, Vec<usize>)],
    mut fill: impl FnMut(&str, &mut [f32]),
) -> Result<()> {
    use std::io::{BufWriter, Write};
    let mut header = serde_json::Map::new();
    let mut offset = 0u64;
    for (name, shape) in tensors {
        let bytes = (shape.iter().product::<usize>() * 4) as u64;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut header = serde_json::to_vec(&header).expect("json");
    while header.len() % 8 != 0 {
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
