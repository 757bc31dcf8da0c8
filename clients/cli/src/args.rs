//! The arguments several commands share, and their parsers: which model to load
//! ([`ModelArgs`]), how to reach running services ([`ConnectArgs`], [`ServiceArgs`]), the hook
//! flag ([`HookArg`]), layer lists and `FILE:SCALE` specs.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use steer_client::SteerClient;
use steer_model::{Engine, HookKind, LoadOptions, ModelSource, WeightDtype};
use steer_server::{LocalServer, ServeConfig, VectorsConfig};

use crate::progress;

/// The runtime every async command runs on.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

#[derive(Args, Clone)]
pub struct ModelArgs {
    /// Hub repo id, or a local directory (config.json, model.safetensors, tokenizer); offline,
    /// use a directory (e.g. fixtures/tiny-gpt2 in this repository) or HF_HUB_OFFLINE=1 with a filled cache.
    #[arg(long, env = "STEER_MODEL", default_value = steer_model::source::DEFAULT_REPO)]
    pub model: String,
    /// Hub revision (branch, tag or commit) [default: main].
    #[arg(long, env = "STEER_REVISION")]
    pub revision: Option<String>,
    /// Convert the weights to this precision at load [default: the type the checkpoint stores
    /// them in: f32 for GPT-2-XL from the hub, q8_0 for a q8_0 GGUF]. Activations, steering and
    /// sampling stay f32.
    #[arg(long, env = "STEER_DTYPE", value_enum)]
    pub dtype: Option<DtypeArg>,
}

/// Weights' precision (activations, steering and sampling stay f32).
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum DtypeArg {
    /// The post's precision: 4 bytes per weight.
    F32,
    /// IEEE half: 2 bytes per weight.
    F16,
    /// bfloat16 (as the seed loads GPT-2-XL): 2 bytes per weight.
    Bf16,
    /// llama.cpp's 8-bit blocks (quantized at load unless the GGUF stores them): 1.06 bytes per weight.
    #[value(name = "q8_0", alias = "q8")]
    Q8_0,
}

impl From<DtypeArg> for WeightDtype {
    fn from(d: DtypeArg) -> Self {
        match d {
            DtypeArg::F32 => WeightDtype::F32,
            DtypeArg::F16 => WeightDtype::F16,
            DtypeArg::Bf16 => WeightDtype::Bf16,
            DtypeArg::Q8_0 => WeightDtype::Q8_0,
        }
    }
}

impl ModelArgs {
    /// The model to load. A relative directory that is not under the current directory but is
    /// in the source tree this binary was built from (`fixtures/tiny-gpt2`) is taken from there,
    /// so the README's commands work from any directory.
    pub fn source(&self) -> ModelSource {
        let here = std::path::Path::new(&self.model);
        let tree = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(&self.model);
        if here.is_relative() && !here.exists() && (tree.join("config.json").is_file() || tree.is_file()) {
            eprintln!("using {} from the source tree ({})", self.model, tree.display());
            return ModelSource::Dir(tree);
        }
        ModelSource::parse(&self.model, self.revision.as_deref())
    }

    pub fn load(&self) -> Result<Engine> {
        let source = self.source();
        let mut opts = LoadOptions { dtype: self.dtype.map(Into::into), ..Default::default() };
        // hf-hub's download bars on a terminal only; off one, the spinner's line says it.
        opts.hub.progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let what = match source {
            ModelSource::Hub { .. } => format!("loading {} (downloading what the cache lacks)", source.name()),
            ModelSource::Dir(_) => format!("loading {}", source.name()),
        };
        let spinner = progress::spinner(&what);
        let t = std::time::Instant::now();
        let engine = Engine::load(&source, &opts).with_context(|| format!("loading {}", source.name()));
        if let Some(s) = spinner {
            s.finish_and_clear();
        }
        let engine = engine?;
        let i = engine.info();
        eprintln!(
            "loaded {} in {:.1}s: {} layers, d_model {}, {} heads, {} positions, weights {}{}",
            i.name,
            t.elapsed().as_secs_f64(),
            i.n_layer,
            i.d_model,
            i.n_head,
            i.n_positions,
            i.precision(),
            if i.dtype == i.stored_dtype { "" } else { " by --dtype" }
        );
        Ok(engine)
    }
}

/// Where steering is added (see the README's "ActAdd, as implemented"). Spelled as everywhere
/// else (`resid_pre`, `block_output`); the dashed forms are accepted too.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum HookArg {
    /// The stream entering block L (TransformerLens hook_resid_pre; the post's convention).
    #[value(name = "resid_pre", alias = "resid-pre")]
    ResidPre,
    /// The stream leaving block L (nnsight transformer.h[L].output[0]; the ARENA seed's).
    #[value(name = "block_output", alias = "block-output")]
    BlockOutput,
}

impl From<HookArg> for HookKind {
    fn from(h: HookArg) -> Self {
        match h {
            HookArg::ResidPre => HookKind::ResidPre,
            HookArg::BlockOutput => HookKind::BlockOutput,
        }
    }
}

impl From<HookArg> for steer_client::v1::Hook {
    fn from(h: HookArg) -> Self {
        HookKind::from(h).into()
    }
}

/// How to reach running services: TLS, token, deadline.
#[derive(Args, Clone)]
#[command(next_help_heading = "Connection")]
pub struct ConnectArgs {
    /// Trust this CA (PEM) for https:// URLs (default: the system's roots).
    #[arg(long, env = "STEER_TLS_CA")]
    tls_ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for mutual TLS; needs --tls-client-key.
    #[arg(long, env = "STEER_TLS_CLIENT_CERT", requires = "tls_client_key")]
    tls_client_cert: Option<std::path::PathBuf>,
    #[arg(long, env = "STEER_TLS_CLIENT_KEY", requires = "tls_client_cert")]
    tls_client_key: Option<std::path::PathBuf>,
    /// The name the server's certificate must carry, when not the URL's host.
    #[arg(long, env = "STEER_TLS_DOMAIN")]
    tls_domain: Option<String>,
    /// Bearer token for servers started with --auth-tokens.
    #[arg(long, env = "STEER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Deadline of each call in seconds, a whole generation included.
    #[arg(long, default_value_t = 600.0, env = "STEER_TIMEOUT_SECS")]
    timeout_secs: f64,
}

impl ConnectArgs {
    pub fn options(&self) -> Result<steer_client::ConnectOptions> {
        let read = |p: &std::path::Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        let mut o = steer_client::ConnectOptions {
            deadline: std::time::Duration::from_secs_f64(self.timeout_secs.clamp(0.001, 1e7)),
            token: self.token.clone(),
            tls_domain: self.tls_domain.clone(),
            ..Default::default()
        };
        o.tls_ca_pem = self.tls_ca.as_deref().map(read).transpose()?;
        if let (Some(c), Some(k)) = (&self.tls_client_cert, &self.tls_client_key) {
            o.tls_identity = Some((read(c)?, read(k)?));
        }
        Ok(o)
    }
}

/// Which services: running ones (`--url` for one `steer serve`, or `--activation-url` and
/// `--generation-url` for separate workers), else both embedded in this process (loading
/// `--model`) with the library in `--vector-dir`.
#[derive(Args, Clone)]
#[command(next_help_heading = "Services")]
pub struct ServiceArgs {
    /// A running server doing both jobs (`steer serve`): host:port, http://host:port or
    /// https://host:port [default: embed the services, loading --model].
    #[arg(long, env = "STEER_URL")]
    url: Option<String>,
    /// A running activation worker's address [default: --url].
    #[arg(long, env = "STEER_ACTIVATION_URL")]
    activation_url: Option<String>,
    /// Generation workers' addresses, repeatable; dns:host:port for every address of a name
    /// [default: --url, else --activation-url].
    #[arg(long)]
    generation_url: Vec<String>,
    /// Library directory of the embedded server [default: as `steer serve`].
    #[arg(long, env = "STEER_VECTOR_DIR")]
    vector_dir: Option<PathBuf>,
    /// The embedded server's prefix cache, MiB (as `steer serve --prefix-cache-mib`; 0: off).
    #[arg(long, default_value_t = 1024, env = "STEER_PREFIX_CACHE_MIB")]
    prefix_cache_mib: usize,
    #[command(flatten)]
    pub conn: ConnectArgs,
    #[command(flatten)]
    pub model: ModelArgs,
}

impl ServiceArgs {
    /// The running services' addresses (activation, generation), or `None` to embed them.
    pub fn remote(&self) -> Result<Option<(String, Vec<String>)>> {
        let Some(act) = self.activation_url.clone().or_else(|| self.url.clone()) else {
            if !self.generation_url.is_empty() {
                bail!("--generation-url needs --activation-url or --url (the activation worker's address)");
            }
            return Ok(None);
        };
        let gen = match (&self.generation_url[..], &self.url) {
            ([], Some(u)) => vec![u.clone()],
            ([], None) => vec![act.clone()],
            (g, _) => g.to_vec(),
        };
        Ok(Some((act, gen)))
    }

    /// The library directory an embedded server would use.
    pub fn vector_dir(&self) -> PathBuf {
        self.vector_dir.clone().unwrap_or_else(default_vector_dir)
    }

    pub async fn connect(&self) -> Result<(SteerClient, Option<LocalServer>)> {
        if let Some((act, gen)) = self.remote()? {
            let client = SteerClient::connect_with(&act, &gen, self.conn.options()?).await?;
            // One call now: a wrong address fails here, in one line, before any work starts.
            client.activation_info().await?;
            return Ok((client, None));
        }
        let model = self.model.clone();
        let engine = Arc::new(tokio::task::spawn_blocking(move || model.load()).await??);
        let mut cfg = embedded_config(self.vector_dir.clone());
        cfg.generation.prefix_cache_bytes = self.prefix_cache_mib << 20;
        let local = LocalServer::start(engine, cfg).await?;
        Ok((SteerClient::connect(&local.url(), &[local.url()]).await?, Some(local)))
    }
}

/// An embedded server's configuration: the defaults, with the library in `dir` (or the default
/// library directory).
pub fn embedded_config(dir: Option<PathBuf>) -> ServeConfig {
    let library = steer_vector::LibraryConfig { dir: dir.unwrap_or_else(default_vector_dir), ..Default::default() };
    ServeConfig { vectors: VectorsConfig { library: Some(library), ..Default::default() }, ..Default::default() }
}

/// `$XDG_DATA_HOME/steer/vectors`, else `~/.local/share/steer/vectors`, else `./steer-vectors`.
pub fn default_vector_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("steer/vectors");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(h) => PathBuf::from(h).join(".local/share/steer/vectors"),
        None => PathBuf::from("steer-vectors"),
    }
}

/// `10-20` (inclusive), `6`, or `3,5,7`.
pub fn parse_layers(s: &str) -> Result<Vec<u32>> {
    let mut out = vec![];
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || anyhow::anyhow!("`{s}`: layers are A-B, L or L,M,...");
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?);
                if a > b {
                    return Err(bad());
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().map_err(|_| bad())?),
        }
    }
    if out.is_empty() {
        bail!("no layers in `{s}`");
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// A layer range `A-B` (inclusive) or one layer.
pub fn parse_range(s: &str) -> Result<(u32, u32)> {
    let layers = parse_layers(s)?;
    let (a, b) = (layers[0], *layers.last().unwrap());
    if layers.len() as u32 != b - a + 1 {
        bail!("`{s}`: a layer range is A-B");
    }
    Ok((a, b))
}

/// `FILE[:SCALE]` (a trailing `:number` is the scale; 1 otherwise).
pub fn parse_scaled(s: &str) -> (String, f32) {
    match s.rsplit_once(':') {
        Some((f, scale)) if !f.is_empty() => match scale.parse::<f32>() {
            Ok(x) if x.is_finite() => (f.to_string(), x),
            _ => (s.to_string(), 1.0),
        },
        _ => (s.to_string(), 1.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        assert_eq!(parse_layers("10-12").unwrap(), vec![10, 11, 12]);
        assert_eq!(parse_layers("3,5, 4").unwrap(), vec![3, 4, 5]);
        assert!(parse_layers("5-3").is_err() && parse_layers("x").is_err());
        assert_eq!(parse_range("2-4").unwrap(), (2, 4));
        assert!(parse_range("2,4").is_err());
        assert_eq!(parse_scaled("v.safetensors:-2.5"), ("v.safetensors".into(), -2.5));
        assert_eq!(parse_scaled("v.safetensors"), ("v.safetensors".into(), 1.0));
        assert_eq!(parse_scaled("C:/dir/v.gguf"), ("C:/dir/v.gguf".into(), 1.0));
    }

    #[test]
    fn the_hook_flag_names_the_shared_hook_kinds() {
        assert_eq!(HookKind::from(HookArg::BlockOutput), HookKind::BlockOutput);
        assert_eq!(steer_client::v1::Hook::from(HookArg::ResidPre), steer_client::v1::Hook::ResidPre);
    }
}
