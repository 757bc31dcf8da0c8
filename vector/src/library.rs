//! A library of vector files on disk: `DIR/<digest>.safetensors`, found again at start-up, so
//! it survives restarts. Each vector has a name (unique: putting a name again replaces the
//! vector it pointed to) and is found by name, digest or a digest prefix of at least 8 hex
//! digits. Bounded by entries and bytes: a put past either is refused (RESOURCE_EXHAUSTED),
//! never an eviction of someone's vector.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use steer_proto::v1::VectorInfo;

use crate::error::{Result, VectorError};
use crate::format::{ModelRef, SteeringVector};

#[derive(Debug, Clone)]
pub struct LibraryConfig {
    pub dir: PathBuf,
    pub max_entries: usize,
    pub max_bytes: u64,
    /// Largest file one put may bring (within the servers' 8 MiB message limit).
    pub max_file_bytes: u64,
}

impl Default for LibraryConfig {
    fn default() -> Self {
        Self { dir: PathBuf::from("vectors"), max_entries: 1024, max_bytes: 2 << 30, max_file_bytes: 7 << 20 }
    }
}

/// Shortest digest prefix a lookup accepts.
pub const MIN_PREFIX: usize = 8;
const MAX_NAME: usize = 200;

pub struct Library {
    cfg: LibraryConfig,
    entries: Mutex<BTreeMap<String, VectorInfo>>,
}

impl Library {
    /// Opens (creating) the directory and indexes the vector files in it; a file that does not
    /// read as a vector, or whose name is not its digest, is skipped with a warning.
    pub fn open(cfg: LibraryConfig) -> Result<Self> {
        std::fs::create_dir_all(&cfg.dir).map_err(|e| VectorError::io(&cfg.dir, e))?;
        let mut entries = BTreeMap::new();
        let dir = std::fs::read_dir(&cfg.dir).map_err(|e| VectorError::io(&cfg.dir, e))?;
        for f in dir.flatten() {
            let path = f.path();
            if path.extension().is_none_or(|e| e != "safetensors") {
                continue;
            }
            match std::fs::read(&path).map_err(|e| VectorError::io(&path, e)).and_then(|b| Ok((SteeringVector::from_bytes(&b)?, b.len()))) {
                Ok((v, n)) if path.file_stem().is_some_and(|s| s == v.digest()) => {
                    entries.insert(v.digest().to_string(), v.info(n as u64));
                }
                Ok(_) => tracing::warn!(path = %path.display(), "vector library: file name is not its digest; skipped"),
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "vector library: unreadable file skipped"),
            }
        }
        tracing::info!(dir = %cfg.dir.display(), vectors = entries.len(), "vector library opened");
        Ok(Self { cfg, entries: Mutex::new(entries) })
    }

    pub fn config(&self) -> &LibraryConfig {
        &self.cfg
    }

    fn path(&self, digest: &str) -> PathBuf {
        self.cfg.dir.join(format!("{digest}.safetensors"))
    }

    /// Stores a vector file under `name` (its own name when `None`), after checking it against
    /// `model` (only its shape when `force_model`; not at all without a model, as `steer vector
    /// put` into a directory does: the worker that applies it checks it then). Returns its info
    /// and the digest the name pointed to before, when that was another vector (now deleted).
    pub fn put(&self, bytes: &[u8], name: Option<&str>, model: Option<&ModelRef>, force_model: bool) -> Result<(VectorInfo, Option<String>)> {
        if bytes.len() as u64 > self.cfg.max_file_bytes {
            return Err(VectorError::invalid("data", format!("{} bytes; a library vector is at most {}", bytes.len(), self.cfg.max_file_bytes)));
        }
        let mut v = SteeringVector::from_bytes(bytes).map_err(|e| e.within("data"))?;
        if let Some(model) = model {
            v.check_model_or_shape(model, force_model).map_err(|e| e.within("data"))?;
        }
        let name = name.filter(|n| !n.is_empty()).map(str::to_string).unwrap_or_else(|| v.meta.name.clone());
        let name = if name.is_empty() { v.digest()[..12].to_string() } else { name };
        if name.len() > MAX_NAME || name.chars().any(char::is_control) {
            return Err(VectorError::invalid("name", format!("at most {MAX_NAME} characters, none of them control characters")));
        }
        v = v.renamed(name.clone());
        let data = v.to_bytes();
        let digest = v.digest().to_string();
        let mut entries = self.entries.lock().expect("library lock");
        let replaced = entries.values().find(|e| e.name == name && e.digest != digest).map(|e| e.digest.clone());
        let freed = replaced.as_ref().map_or(0, |d| entries[d].bytes) + entries.get(&digest).map_or(0, |e| e.bytes);
        let count = entries.len() + usize::from(!entries.contains_key(&digest)) - usize::from(replaced.is_some());
        let used: u64 = entries.values().map(|e| e.bytes).sum::<u64>() - freed + data.len() as u64;
        if count > self.cfg.max_entries {
            return Err(VectorError::Full(format!("{} vectors already (--vector-library-max-entries); delete some", entries.len())));
        }
        if used > self.cfg.max_bytes {
            return Err(VectorError::Full(format!("{used} bytes would pass the {} byte bound (--vector-library-max-bytes)", self.cfg.max_bytes)));
        }
        let tmp = self.cfg.dir.join(format!(".{digest}.tmp"));
        std::fs::write(&tmp, &data).map_err(|e| VectorError::io(&tmp, e))?;
        std::fs::rename(&tmp, self.path(&digest)).map_err(|e| VectorError::io(self.path(&digest), e))?;
        if let Some(old) = &replaced {
            let _ = std::fs::remove_file(self.path(old));
            entries.remove(old);
        }
        let info = v.info(data.len() as u64);
        entries.insert(digest, info.clone());
        Ok((info, replaced))
    }

    /// The digest `r` names: a digest, a name, or a unique digest prefix of 8+ hex digits.
    pub fn resolve(&self, r: &str) -> Result<String> {
        let entries = self.entries.lock().expect("library lock");
        if entries.contains_key(r) {
            return Ok(r.to_string());
        }
        if let Some(e) = entries.values().find(|e| e.name == r) {
            return Ok(e.digest.clone());
        }
        if r.len() >= MIN_PREFIX && r.bytes().all(|b| b.is_ascii_hexdigit()) {
            let hits: Vec<&String> = entries.keys().filter(|d| d.starts_with(r)).collect();
            match hits.as_slice() {
                [one] => return Ok((*one).clone()),
                [] => {}
                _ => return Err(VectorError::invalid("ref", format!("`{r}` is a prefix of {} digests; give more digits", hits.len()))),
            }
        }
        Err(VectorError::NotFound(r.to_string()))
    }

    /// The vector `r` names, and its file's bytes.
    pub fn get(&self, r: &str) -> Result<(SteeringVector, Vec<u8>)> {
        let digest = self.resolve(r)?;
        let path = self.path(&digest);
        let bytes = std::fs::read(&path).map_err(|e| VectorError::io(&path, e))?;
        Ok((SteeringVector::from_bytes(&bytes)?, bytes))
    }

    /// Every vector, by name (without `metadata_json`, which `get` has: a list stays small).
    pub fn list(&self) -> Vec<VectorInfo> {
        let mut all: Vec<VectorInfo> =
            self.entries.lock().expect("library lock").values().map(|e| VectorInfo { metadata_json: String::new(), ..e.clone() }).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    pub fn delete(&self, r: &str) -> Result<VectorInfo> {
        let digest = self.resolve(r)?;
        let mut entries = self.entries.lock().expect("library lock");
        let info = entries.remove(&digest).ok_or_else(|| VectorError::NotFound(r.to_string()))?;
        let path = self.path(&digest);
        std::fs::remove_file(&path).map_err(|e| VectorError::io(&path, e))?;
        Ok(info)
    }

    /// Bytes held now.
    pub fn bytes(&self) -> u64 {
        self.entries.lock().expect("library lock").values().map(|e| e.bytes).sum()
    }

    pub fn dir(&self) -> &Path {
        &self.cfg.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::tests::{actadd, model};

    fn lib(dir: &Path, max_entries: usize) -> Library {
        Library::open(LibraryConfig { dir: dir.to_path_buf(), max_entries, ..Default::default() }).unwrap()
    }

    #[test]
    fn put_get_list_delete_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let l = lib(dir.path(), 2);
        let v = actadd();
        let (info, replaced) = l.put(&v.to_bytes(), None, Some(&model()), false).unwrap();
        assert_eq!((info.name.as_str(), replaced), ("love", None));
        assert_eq!(info.digest, v.digest());
        // By name, digest and prefix.
        for r in ["love", v.digest(), &v.digest()[..8]] {
            assert_eq!(l.get(r).unwrap().0.tensors, v.tensors, "{r}");
        }
        assert!(matches!(l.get(&v.digest()[..7]), Err(VectorError::NotFound(_))));
        // Reopened from disk: the same entries.
        drop(l);
        let l = lib(dir.path(), 2);
        assert_eq!(l.list().len(), 1);
        assert_eq!(l.get("love").unwrap().0.digest(), v.digest());
        // The same name with other values replaces; a third vector is past the bound.
        let mut t = v.tensors.clone();
        t[0].values[0] = 9.0;
        let w = SteeringVector::new("love", model(), v.mode(), v.meta.origin.clone(), t).unwrap();
        let (_, replaced) = l.put(&w.to_bytes(), None, Some(&model()), false).unwrap();
        assert_eq!(replaced.as_deref(), Some(v.digest()));
        assert!(!dir.path().join(format!("{}.safetensors", v.digest())).exists());
        l.put(&v.to_bytes(), Some("hate"), Some(&model()), false).unwrap();
        let mut t = v.tensors.clone();
        t[0].values[1] = 7.0;
        let x = SteeringVector::new("third", model(), v.mode(), v.meta.origin.clone(), t).unwrap();
        assert!(matches!(l.put(&x.to_bytes(), None, Some(&model()), false), Err(VectorError::Full(_))));
        assert_eq!(l.delete("hate").unwrap().digest, v.digest());
        assert_eq!(l.list().len(), 1);
        l.put(&x.to_bytes(), None, Some(&model()), false).unwrap();
    }

    #[test]
    fn other_models_and_bad_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let l = lib(dir.path(), 8);
        let err = l.put(&actadd().to_bytes(), None, Some(&ModelRef { d_model: 8, ..model() }), false).unwrap_err();
        assert!(matches!(&err, VectorError::WrongModel { field, .. } if field == "data.model.d_model"), "{err}");
        assert!(l.put(b"junk", None, Some(&model()), false).unwrap_err().to_string().starts_with("data.file"));
        std::fs::write(dir.path().join("junk.safetensors"), b"junk").unwrap();
        assert_eq!(lib(dir.path(), 8).list().len(), 0);
    }
}
