//! Where a model comes from: a local directory, or a Hugging Face hub repository through
//! `hf-hub`, honouring `HF_HOME` (cache location) and `HF_HUB_OFFLINE` (cache only, no network).

use std::path::{Path, PathBuf};

use hf_hub::{Repo, RepoType};

use crate::error::{ModelError, Result};
use crate::weights;

pub const DEFAULT_REPO: &str = "openai-community/gpt2-xl";
pub const DEFAULT_REVISION: &str = "main";

/// A model to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A directory with config.json, model.safetensors and the tokenizer files, or with one
    /// GGUF file; or a GGUF file itself.
    Dir(PathBuf),
    /// A hub repository at a revision (branch, tag or commit); `file` names a GGUF file in it
    /// (`org/name/file.gguf`), otherwise the repository's safetensors checkpoint is loaded.
    Hub { repo: String, revision: String, file: Option<String> },
}

impl Default for ModelSource {
    fn default() -> Self {
        ModelSource::Hub { repo: DEFAULT_REPO.into(), revision: DEFAULT_REVISION.into(), file: None }
    }
}

impl ModelSource {
    /// An existing directory or file (or anything that looks like a path) is a `Dir`; anything
    /// else a hub repo id, `org/name` or `org/name/file.gguf`.
    pub fn parse(spec: &str, revision: Option<&str>) -> Self {
        let p = Path::new(spec);
        if p.exists() || spec.starts_with('.') || spec.starts_with('/') || spec.starts_with('~') {
            return ModelSource::Dir(p.to_path_buf());
        }
        let revision = revision.unwrap_or(DEFAULT_REVISION).to_string();
        let parts: Vec<&str> = spec.splitn(3, '/').collect();
        match parts.as_slice() {
            [org, name, file] if file.ends_with(".gguf") => {
                ModelSource::Hub { repo: format!("{org}/{name}"), revision, file: Some(file.to_string()) }
            }
            _ => ModelSource::Hub { repo: spec.to_string(), revision, file: None },
        }
    }

    /// A short name for logs and model info: the repo id, or the directory.
    pub fn name(&self) -> String {
        match self {
            ModelSource::Dir(d) => d.display().to_string(),
            ModelSource::Hub { repo, file: None, .. } => repo.clone(),
            ModelSource::Hub { repo, file: Some(f), .. } => format!("{repo}/{f}"),
        }
    }

    pub fn revision(&self) -> String {
        match self {
            ModelSource::Dir(_) => "local".into(),
            ModelSource::Hub { revision, .. } => revision.clone(),
        }
    }

    /// Finds (downloading if allowed) the checkpoint's files.
    pub fn resolve(&self, opts: &HubOptions) -> Result<ModelFiles> {
        match self {
            ModelSource::Dir(dir) => ModelFiles::in_dir(dir),
            ModelSource::Hub { repo, revision, file } => {
                if opts.offline {
                    resolve_from_cache(&opts.cache_dir(), repo, revision, file.as_deref())
                } else {
                    resolve_watched(opts, repo, revision, file.as_deref())
                }
            }
        }
    }
}

/// How to reach the hub.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// Only read the local cache (`HF_HUB_OFFLINE=1`).
    pub offline: bool,
    /// The hub cache (`$HF_HOME/hub`, default `~/.cache/huggingface/hub`).
    pub cache_dir: Option<PathBuf>,
    /// Show download progress bars.
    pub progress: bool,
    /// Retries of a failed download (with exponential backoff, resuming the part file).
    pub retries: usize,
    /// How long to wait for another process (a worker beside this one) that holds a file's
    /// download lock, before giving up.
    pub lock_wait: std::time::Duration,
    /// A download during which no byte arrives for this long has stalled: loading fails (the
    /// part file stays, and the next start resumes it).
    pub stall_timeout: std::time::Duration,
}

impl Default for HubOptions {
    fn default() -> Self {
        Self::from_env()
    }
}

impl HubOptions {
    pub fn from_env() -> Self {
        let offline =
            std::env::var("HF_HUB_OFFLINE").map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")).unwrap_or(false);
        Self {
            offline,
            cache_dir: None,
            progress: false,
            retries: 5,
            lock_wait: std::time::Duration::from_secs(3600),
            stall_timeout: std::time::Duration::from_secs(120),
        }
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.cache_dir.clone().unwrap_or_else(|| hf_hub::Cache::from_env().path().clone())
    }
}

/// The files of one checkpoint, all in `dir`.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub dir: PathBuf,
    pub format: Format,
    /// `config.json`; for GGUF, the GGUF file (its metadata holds the hyper-parameters).
    pub config: PathBuf,
    pub weights: Vec<PathBuf>,
}

/// How a checkpoint is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Hugging Face: config.json, model.safetensors (or shards), tokenizer files.
    Safetensors,
    /// One llama.cpp GGUF file.
    Gguf,
}

impl ModelFiles {
    /// A GGUF file, a directory holding a Hugging Face checkpoint, or one holding one GGUF file.
    pub fn in_dir(path: &Path) -> Result<Self> {
        if path.is_file() && path.extension().is_some_and(|e| e == "gguf") {
            return Ok(Self::gguf(path.to_path_buf()));
        }
        if !path.is_dir() {
            return Err(ModelError::NotFound(format!("model directory or .gguf file {} does not exist", path.display())));
        }
        let config = path.join("config.json");
        if !config.exists() {
            let mut ggufs: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| ModelError::io(path, e))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
                .collect();
            ggufs.sort();
            return match ggufs.len() {
                0 => Err(ModelError::NotFound(format!("no config.json and no .gguf file in {}", path.display()))),
                1 => Ok(Self::gguf(ggufs.remove(0))),
                _ => Err(ModelError::NotFound(format!(
                    "{} holds several GGUF files; name one: {}",
                    path.display(),
                    ggufs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
                ))),
            };
        }
        Ok(Self { dir: path.to_path_buf(), format: Format::Safetensors, config, weights: weights::weight_files(path)? })
    }

    fn gguf(file: PathBuf) -> Self {
        let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
        Self { dir, format: Format::Gguf, config: file.clone(), weights: vec![file] }
    }
}

/// Hub cache layout: `models--ORG--NAME/refs/REV` holds a commit, `snapshots/COMMIT/FILE`.
fn resolve_from_cache(cache: &Path, repo: &str, revision: &str, file: Option<&str>) -> Result<ModelFiles> {
    let hub_repo = Repo::with_revision(repo.to_string(), RepoType::Model, revision.to_string());
    let repo_dir = cache.join(hub_repo.folder_name());
    let not_found = |what: String| {
        ModelError::NotFound(format!(
            "{repo}@{revision}: {what} in the Hugging Face cache {} (HF_HUB_OFFLINE is set, so nothing is downloaded)",
            repo_dir.display()
        ))
    };
    let commit = match std::fs::read_to_string(repo_dir.join("refs").join(revision)) {
        Ok(c) => c.trim().to_string(),
        Err(_) if repo_dir.join("snapshots").join(revision).is_dir() => revision.to_string(),
        Err(_) => return Err(not_found(format!("no refs/{revision} and no snapshots/{revision}"))),
    };
    let snapshot = repo_dir.join("snapshots").join(&commit);
    if let Some(file) = file {
        let path = snapshot.join(file);
        return if path.is_file() { Ok(ModelFiles::gguf(path)) } else { Err(not_found(format!("no snapshots/{commit}/{file}"))) };
    }
    if !snapshot.is_dir() {
        return Err(not_found(format!("no snapshots/{commit}")));
    }
    // config.json and safetensors, or one GGUF file
    ModelFiles::in_dir(&snapshot).map_err(|e| not_found(e.to_string()))
}

/// A hub repository whose downloads wait for another process's lock on the same file (workers
/// started together on an empty shared cache) instead of failing after hf-hub's 5 s.
struct Locked<'a> {
    repo: &'a hf_hub::api::sync::ApiRepo,
    wait: std::time::Duration,
}

impl Locked<'_> {
    fn get(&self, file: &str) -> std::result::Result<PathBuf, hf_hub::api::sync::ApiError> {
        wait_for_lock(self.wait, std::time::Duration::from_secs(5), || self.repo.get(file))
    }
}

/// Runs `get` again, every `every`, while it fails because another process holds the file's
/// download lock, for at most `wait` in all.
fn wait_for_lock<T>(
    wait: std::time::Duration,
    every: std::time::Duration,
    mut get: impl FnMut() -> std::result::Result<T, hf_hub::api::sync::ApiError>,
) -> std::result::Result<T, hf_hub::api::sync::ApiError> {
    let started = std::time::Instant::now();
    loop {
        match get() {
            Err(hf_hub::api::sync::ApiError::LockAcquisition(path)) if started.elapsed() + every <= wait => {
                tracing::info!(lock = %path.display(), "another process is downloading this file; waiting for it");
                std::thread::sleep(every);
            }
            other => return other,
        }
    }
}

/// What to try when the hub cannot be reached: the offline alternatives, and, when `repo` reads
/// like a relative path, that no such directory exists here.
pub fn offline_hint(repo: &str) -> String {
    let mut hint = String::from(
        "no network? give a local directory (--model DIR; in this repository, --model fixtures/tiny-gpt2), or set \
         HF_HUB_OFFLINE=1 to read only the Hugging Face cache ($HF_HOME/hub)",
    );
    if let Ok(cwd) = std::env::current_dir() {
        if !Path::new(repo).exists() {
            hint.push_str(&format!("; there is no directory {repo} under {}, so it was taken for a hub repo id", cwd.display()));
        }
    }
    hint
}

/// [`resolve_online`] on its own thread, watched: hf-hub 0.5 sets no timeouts, so a download
/// whose repo cache stops growing for `stall_timeout` fails here instead of hanging the load.
fn resolve_watched(opts: &HubOptions, repo: &str, revision: &str, file: Option<&str>) -> Result<ModelFiles> {
    let blobs = opts.cache_dir().join(Repo::model(repo.to_string()).folder_name()).join("blobs");
    let (tx, rx) = std::sync::mpsc::channel();
    let (o, r, v, f) = (opts.clone(), repo.to_string(), revision.to_string(), file.map(str::to_string));
    std::thread::Builder::new()
        .name("hub-download".into())
        .spawn(move || {
            let _ = tx.send(resolve_online(&o, &r, &v, f.as_deref()));
        })
        .map_err(|e| ModelError::Io { path: blobs.clone(), source: e })?;
    let size = || -> u64 { std::fs::read_dir(&blobs).map(|d| d.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum()).unwrap_or(0) };
    watch(&rx, size, opts.stall_timeout, std::time::Duration::from_secs(2)).unwrap_or_else(|stalled| {
        Err(ModelError::Hub {
            repo: repo.into(),
            revision: revision.into(),
            file: "(download)".into(),
            message: format!("no byte arrived for {stalled:.0?}: the download stalled (the next start resumes it)\n  {}", offline_hint(repo)),
        })
    })
}

/// Waits for `rx`'s answer while `progress()` keeps changing; Err(the stall) once it has not
/// changed for `stall`.
fn watch<T>(
    rx: &std::sync::mpsc::Receiver<T>,
    progress: impl Fn() -> u64,
    stall: std::time::Duration,
    every: std::time::Duration,
) -> std::result::Result<T, std::time::Duration> {
    let (mut seen, mut since) = (progress(), std::time::Instant::now());
    loop {
        match rx.recv_timeout(every) {
            Ok(v) => return Ok(v),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Err(since.elapsed()),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let now = progress();
                if now != seen {
                    (seen, since) = (now, std::time::Instant::now());
                } else if since.elapsed() >= stall {
                    return Err(since.elapsed());
                }
            }
        }
    }
}

fn resolve_online(opts: &HubOptions, repo: &str, revision: &str, file: Option<&str>) -> Result<ModelFiles> {
    let hub_err = |file: &str, e: hf_hub::api::sync::ApiError| ModelError::Hub {
        repo: repo.into(),
        revision: revision.into(),
        file: file.into(),
        message: format!("{e}\n  {}", offline_hint(repo)),
    };
    let mut builder = hf_hub::api::sync::ApiBuilder::from_env().with_progress(opts.progress).with_retries(opts.retries);
    if let Some(dir) = &opts.cache_dir {
        builder = builder.with_cache_dir(dir.clone());
    }
    let api = builder.build().map_err(|e| hub_err("(api)", e))?;
    let api_repo = api.repo(Repo::with_revision(repo.into(), RepoType::Model, revision.into()));
    let r = Locked { repo: &api_repo, wait: opts.lock_wait };
    if let Some(file) = file {
        return Ok(ModelFiles::gguf(r.get(file).map_err(|e| hub_err(file, e))?));
    }
    let config = match r.get("config.json") {
        Ok(c) => c,
        Err(e) => {
            // A GGUF repository has no config.json: its one .gguf file is the model.
            let ggufs: Vec<String> = match api_repo.info() {
                Ok(info) => info.siblings.into_iter().map(|s| s.rfilename).filter(|f| f.ends_with(".gguf")).collect(),
                Err(_) => vec![],
            };
            return match ggufs.as_slice() {
                [] => Err(hub_err("config.json", e)),
                [one] => Ok(ModelFiles::gguf(r.get(one).map_err(|e| hub_err(one, e))?)),
                several => {
                    Err(ModelError::NotFound(format!("{repo}@{revision} holds several GGUF files; name one as {repo}/FILE: {}", several.join(", "))))
                }
            };
        }
    };
    let weights = match r.get("model.safetensors") {
        Ok(p) => vec![p],
        Err(single) => {
            let index = r.get("model.safetensors.index.json").map_err(|_| hub_err("model.safetensors", single))?;
            let shards = weights::shards_of(&index)?;
            for s in &shards {
                let name = s.file_name().unwrap().to_string_lossy().to_string();
                r.get(&name).map_err(|e| hub_err(&name, e))?;
            }
            shards
        }
    };
    if r.get("tokenizer.json").is_err() {
        r.get("vocab.json").map_err(|e| hub_err("vocab.json", e))?;
        r.get("merges.txt").map_err(|e| hub_err("merges.txt", e))?;
    }
    let dir = config.parent().unwrap().to_path_buf();
    Ok(ModelFiles { dir, format: Format::Safetensors, config, weights })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_download_that_stops_growing_has_stalled_one_that_grows_has_not() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let tick = std::time::Duration::from_millis(2);
        let (_tx, rx) = std::sync::mpsc::channel::<u32>();
        assert!(watch(&rx, || 7, tick * 10, tick).is_err(), "no growth: stalled");
        let (tx, rx) = std::sync::mpsc::channel::<u32>();
        let grown = AtomicU64::new(0);
        let t = std::thread::spawn(move || {
            std::thread::sleep(tick * 40);
            tx.send(1).unwrap();
        });
        let got = watch(&rx, || grown.fetch_add(1, Ordering::Relaxed), tick * 10, tick);
        assert_eq!(got, Ok(1), "growing past the stall time is fine");
        t.join().unwrap();
    }

    #[test]
    fn a_held_download_lock_is_waited_for_then_given_up() {
        use hf_hub::api::sync::ApiError;
        let tick = std::time::Duration::from_millis(1);
        let mut calls = 0;
        let got = wait_for_lock(tick * 100, tick, || {
            calls += 1;
            if calls < 3 {
                Err(ApiError::LockAcquisition("x.lock".into()))
            } else {
                Ok(calls)
            }
        });
        assert_eq!(got.unwrap(), 3, "waited through two held locks");
        let held = wait_for_lock(tick * 3, tick, || Err::<(), _>(ApiError::LockAcquisition("x.lock".into())));
        assert!(matches!(held, Err(ApiError::LockAcquisition(_))), "gives up after the wait");
    }

    #[test]
    fn a_hub_failure_names_the_offline_alternatives() {
        let h = offline_hint("fixtures/no-such-model");
        assert!(h.contains("HF_HUB_OFFLINE=1") && h.contains("--model DIR"), "{h}");
        assert!(h.contains("no directory fixtures/no-such-model under"), "{h}");
    }

    #[test]
    fn parse_tells_paths_from_repo_ids() {
        assert_eq!(
            ModelSource::parse("openai-community/gpt2-xl", None),
            ModelSource::Hub { repo: "openai-community/gpt2-xl".into(), revision: "main".into(), file: None }
        );
        assert_eq!(
            ModelSource::parse("ggml-org/gpt2-GGUF/gpt2-q8_0.gguf", Some("v1")),
            ModelSource::Hub { repo: "ggml-org/gpt2-GGUF".into(), revision: "v1".into(), file: Some("gpt2-q8_0.gguf".into()) }
        );
        assert_eq!(ModelSource::parse("./m", None), ModelSource::Dir("./m".into()));
        let t = tempfile::tempdir().unwrap();
        let s = t.path().to_string_lossy().to_string();
        assert_eq!(ModelSource::parse(&s, None), ModelSource::Dir(t.path().into()));
    }

    #[test]
    fn offline_miss_names_what_and_where() {
        let t = tempfile::tempdir().unwrap();
        let err = resolve_from_cache(t.path(), "openai-community/gpt2-xl", "main", None).unwrap_err().to_string();
        assert!(err.contains("openai-community/gpt2-xl@main"), "{err}");
        assert!(err.contains("models--openai-community--gpt2-xl"), "{err}");
        assert!(err.contains("HF_HUB_OFFLINE"), "{err}");
    }
}
