//! `steer vector ...`: steering vectors as files (save, show, train, export/import GGUF) and
//! the activation service's library (put, get, list, delete), against running services or an
//! embedded server that keeps the library in --vector-dir.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use steer_client::steer_vector::{self, SteeringVector};
use steer_client::v1::{ContrastPair, ContrastPairs, Reduction, VectorFile, VectorInfo};
use steer_client::{AdditionSpec, RunOptions, SteerClient};

use crate::args::{parse_layers, HookArg, ServiceArgs};

#[derive(Subcommand)]
pub enum VectorCommand {
    /// Compute ActAdd's steering tensors of --add ... and write them as a vector file.
    Save(SaveArgs),
    /// Print a vector file's metadata and per-layer norms (.safetensors, or a llama.cpp .gguf).
    Show(ShowArgs),
    /// A dataset vector: mean difference of activations over contrast pairs (CAA).
    Train(TrainArgs),
    /// Write a vector file as a llama.cpp control vector (GGUF).
    Export(ExportArgs),
    /// Read a llama.cpp control vector (GGUF) into a vector file.
    Import(ImportArgs),
    /// Put a vector file in the activation service's library.
    Put(PutArgs),
    /// Fetch a library vector (by name, digest or digest prefix) into a file.
    Get(GetArgs),
    /// List the library.
    List(ServiceArgs),
    /// Delete a library vector.
    Delete(DeleteArgs),
    /// A vector from features of a sparse autoencoder (SAELens's layout: cfg.json,
    /// sae_weights.safetensors): ADD scale x W_dec[f] at every position, or with --clamp, CLAMP
    /// the features' direction to a value.
    FromSae(FromSaeArgs),
}

#[derive(Args)]
pub struct FromSaeArgs {
    /// The SAE's directory.
    #[arg(long)]
    sae: PathBuf,
    /// Feature indices: N or N,M,... (their decoder rows are summed).
    #[arg(long = "feature", value_delimiter = ',', required = true)]
    features: Vec<u32>,
    /// Multiplies the decoder rows [default: 1].
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Clamp the component along the features' direction to this value instead of adding.
    #[arg(long)]
    clamp: Option<f32>,
    /// The file to write.
    #[arg(long)]
    out: PathBuf,
    /// Name in the metadata [default: the file's stem].
    #[arg(long)]
    name: Option<String>,
    /// Also put it in the library.
    #[arg(long)]
    store: bool,
    #[command(flatten)]
    service: ServiceArgs,
}

#[derive(Args)]
pub struct SaveArgs {
    /// The file to write (NAME.safetensors).
    out: PathBuf,
    /// LAYER:COEFF:TEXT, repeatable (as for `steer run`).
    #[arg(long = "add", required = true)]
    add: Vec<AdditionSpec>,
    /// Contrast prompts at one layer must have equal token lengths (else they are space-padded).
    #[arg(long)]
    strict_lengths: bool,
    #[command(flatten)]
    made: MadeArgs,
    #[command(flatten)]
    service: ServiceArgs,
}

/// How a computed vector is read and kept.
#[derive(Args)]
pub struct MadeArgs {
    /// Where the activations are read (and the vector added).
    #[arg(long, value_enum, default_value_t = HookArg::ResidPre)]
    hook: HookArg,
    /// Do not prepend <|endoftext|> to the prompts.
    #[arg(long)]
    no_bos: bool,
    /// Name in the metadata [default: the file's stem].
    #[arg(long)]
    name: Option<String>,
    /// Also put it in the library.
    #[arg(long)]
    store: bool,
}

impl MadeArgs {
    fn name(&self, out: &Path) -> String {
        self.name.clone().unwrap_or_else(|| stem(out))
    }
}

#[derive(Args)]
pub struct ShowArgs {
    file: PathBuf,
    /// Print the metadata as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct TrainArgs {
    /// JSON lines, one pair each: {"positive": "...", "negative": "..."}.
    #[arg(long)]
    pairs: PathBuf,
    /// Layers: 10-20, 6 or 3,5,7.
    #[arg(long)]
    layers: String,
    /// The file to write.
    #[arg(long)]
    out: PathBuf,
    /// Which positions of each prompt are averaged.
    #[arg(long, value_enum, default_value_t = ReductionArg::LastToken)]
    reduction: ReductionArg,
    /// Pairs per forward [default: the worker's].
    #[arg(long)]
    batch_size: Option<u32>,
    #[command(flatten)]
    made: MadeArgs,
    #[command(flatten)]
    service: ServiceArgs,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ReductionArg {
    /// The last token's activation (CAA).
    LastToken,
    /// The mean over the prompt's positions (BOS excluded).
    Mean,
}

#[derive(Args)]
pub struct ExportArgs {
    /// A vector file (all_positions, as `steer vector train` writes).
    file: PathBuf,
    /// The control-vector GGUF to write.
    #[arg(long)]
    gguf: PathBuf,
    /// Only the tensors at these layers (A-B, inclusive).
    #[arg(long, value_name = "A-B")]
    layers: Option<String>,
}

#[derive(Args)]
pub struct ImportArgs {
    /// A llama.cpp control vector.
    gguf: PathBuf,
    /// The vector file to write.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
pub struct PutArgs {
    file: PathBuf,
    /// Library name [default: the file's own].
    #[arg(long)]
    name: Option<String>,
    /// Store a vector made on other weights of the same shape (d_model and layers must match).
    #[arg(long)]
    force_model: bool,
    #[command(flatten)]
    service: ServiceArgs,
}

#[derive(Args)]
pub struct GetArgs {
    /// Name, digest or digest prefix (8+ hex digits).
    reference: String,
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    service: ServiceArgs,
}

#[derive(Args)]
pub struct DeleteArgs {
    reference: String,
    #[command(flatten)]
    service: ServiceArgs,
}

pub async fn run(cmd: VectorCommand) -> Result<()> {
    match cmd {
        VectorCommand::Save(a) => save(a).await,
        VectorCommand::Show(a) => show(&a),
        VectorCommand::FromSae(a) => from_sae(a).await,
        VectorCommand::Train(a) => train(a).await,
        VectorCommand::Export(a) => {
            let mut v = SteeringVector::load(&a.file).with_context(|| format!("reading {}", a.file.display()))?;
            if let Some(l) = &a.layers {
                let tensors = v.applied(1.0, Some(crate::args::parse_range(l)?));
                if tensors.is_empty() {
                    bail!("--layers {l}: the vector has no tensor there");
                }
                v = SteeringVector::new(v.meta.name.clone(), v.meta.model.clone(), v.mode(), v.meta.origin.clone(), tensors)?;
            }
            let bytes = steer_vector::gguf::export(&v).with_context(|| format!("exporting {}", a.file.display()))?;
            write(&a.gguf, &bytes)?;
            eprintln!("wrote {} ({} directions, llama.cpp numbering)", a.gguf.display(), v.tensors.len());
            Ok(())
        }
        VectorCommand::Import(a) => {
            let v = SteeringVector::load(&a.gguf).with_context(|| format!("reading {}", a.gguf.display()))?;
            v.save(&a.out)?;
            eprintln!("wrote {} ({})", a.out.display(), v.digest());
            Ok(())
        }
        VectorCommand::Put(a) => {
            let data = std::fs::read(&a.file).with_context(|| format!("reading {}", a.file.display()))?;
            let data = if a.file.extension().is_some_and(|e| e == "gguf") { SteeringVector::load(&a.file)?.to_bytes() } else { data };
            if let Some(lib) = local_library(&a.service)? {
                let (info, replaced) = lib.put(&data, a.name.as_deref(), None, false)?;
                print_infos(std::slice::from_ref(&info));
                if let Some(r) = replaced {
                    eprintln!("replaced {r}");
                }
                eprintln!("stored in {} (checked against a model when a worker applies it)", lib.dir().display());
                return Ok(());
            }
            with_service(&a.service, |c| async move {
                let r = c.put_vector(data, a.name.as_deref().unwrap_or(""), a.force_model).await?;
                let info = r.info.unwrap_or_default();
                print_infos(std::slice::from_ref(&info));
                if !r.replaced.is_empty() {
                    eprintln!("replaced {}", r.replaced);
                }
                Ok(())
            })
            .await
        }
        VectorCommand::Get(a) => {
            if let Some(lib) = local_library(&a.service)? {
                let (v, bytes) = lib.get(&a.reference)?;
                write(&a.out, &bytes)?;
                eprintln!("wrote {} ({})", a.out.display(), v.digest());
                return Ok(());
            }
            with_service(&a.service, |c| async move {
                let f = c.get_vector(&a.reference).await?;
                write(&a.out, &f.data)?;
                eprintln!("wrote {} ({})", a.out.display(), f.info.unwrap_or_default().digest);
                Ok(())
            })
            .await
        }
        VectorCommand::List(a) => {
            if let Some(lib) = local_library(&a)? {
                let l = lib.list();
                print_infos(&l);
                let c = lib.config();
                eprintln!(
                    "{} vectors in {}, {} of {} bytes, at most {} vectors",
                    l.len(),
                    lib.dir().display(),
                    lib.bytes(),
                    c.max_bytes,
                    c.max_entries
                );
                return Ok(());
            }
            with_service(&a, |c| async move {
                let l = c.list_vectors().await?;
                print_infos(&l.vectors);
                eprintln!("{} vectors, {} of {} bytes, at most {} vectors", l.vectors.len(), l.bytes, l.capacity_bytes, l.max_entries);
                Ok(())
            })
            .await
        }
        VectorCommand::Delete(a) => {
            if let Some(lib) = local_library(&a.service)? {
                let info = lib.delete(&a.reference)?;
                eprintln!("deleted {} ({})", info.name, info.digest);
                return Ok(());
            }
            with_service(&a.service, |c| async move {
                let info = c.delete_vector(&a.reference).await?;
                eprintln!("deleted {} ({})", info.name, info.digest);
                Ok(())
            })
            .await
        }
    }
}

/// The library directory itself when no service is named: put, get, list and delete need no
/// model, so none is loaded.
fn local_library(s: &ServiceArgs) -> Result<Option<steer_vector::Library>> {
    if s.remote()?.is_some() {
        return Ok(None);
    }
    let cfg = steer_vector::LibraryConfig { dir: s.vector_dir(), ..Default::default() };
    Ok(Some(steer_vector::Library::open(cfg)?))
}

/// Runs `f` against the service, shutting an embedded one down after.
async fn with_service<F, Fut>(s: &ServiceArgs, f: F) -> Result<()>
where
    F: FnOnce(SteerClient) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let (client, local) = s.connect().await?;
    let r = f(client).await;
    if let Some(l) = local {
        l.shutdown().await;
    }
    r
}

fn stem(p: &Path) -> String {
    p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// Writes a computed vector and says what it holds.
fn written(out: &Path, f: &VectorFile) -> Result<()> {
    write(out, &f.data)?;
    let v = SteeringVector::from_bytes(&f.data)?;
    eprint!("{}", v.describe());
    eprintln!("wrote {}", out.display());
    Ok(())
}

async fn save(a: SaveArgs) -> Result<()> {
    let opts = RunOptions {
        hook: steer_client::v1::Hook::from(a.made.hook),
        use_bos: !a.made.no_bos,
        strict_lengths: a.strict_lengths,
        ..RunOptions::default()
    };
    let name = a.made.name(&a.out);
    with_service(&a.service, |c| async move {
        let f = c.save_vector(&name, &a.add, &opts, a.made.store).await?;
        written(&a.out, &f)
    })
    .await
}

/// Reads the SAE here, checks it against the served model, writes the vector file.
async fn from_sae(a: FromSaeArgs) -> Result<()> {
    let sae = steer_vector::Sae::open(&a.sae).with_context(|| format!("--sae {}", a.sae.display()))?;
    let name = a.name.clone().unwrap_or_else(|| stem(&a.out));
    with_service(&a.service, |c| async move {
        let info = c.generation_info().await?;
        let model = steer_client::model_ref(&info);
        let v = sae.vector(&name, &a.features, a.scale, a.clamp, model).with_context(|| format!("--sae {}", a.sae.display()))?;
        v.save(&a.out)?;
        eprint!("{}", v.describe());
        eprintln!("wrote {}", a.out.display());
        if a.store {
            let r = c.put_vector(v.to_bytes(), "", false).await?;
            print_infos(&[r.info.unwrap_or_default()]);
        }
        Ok(())
    })
    .await
}

fn show(a: &ShowArgs) -> Result<()> {
    let v = SteeringVector::load(&a.file).with_context(|| format!("reading {}", a.file.display()))?;
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&v.meta)?);
    } else {
        out!("{}", v.describe());
    }
    Ok(())
}

async fn train(a: TrainArgs) -> Result<()> {
    let text = std::fs::read_to_string(&a.pairs).with_context(|| format!("reading {}", a.pairs.display()))?;
    let pairs = parse_pairs(&text).with_context(|| format!("in {}", a.pairs.display()))?;
    let hook = steer_client::v1::Hook::from(a.made.hook) as i32;
    let points = parse_layers(&a.layers)?.into_iter().map(|layer| steer_client::v1::HookPoint { hook, layer }).collect();
    let reduction = match a.reduction {
        ReductionArg::LastToken => Reduction::LastToken,
        ReductionArg::Mean => Reduction::Mean,
    } as i32;
    let n = pairs.len();
    let req = ContrastPairs { pairs, points, reduction, use_bos: !a.made.no_bos, batch_size: a.batch_size.unwrap_or(0) };
    let name = a.made.name(&a.out);
    with_service(&a.service, |c| async move {
        let bar = crate::progress::Steps::new(n as u64);
        let mut bar = Some(bar);
        let f = c
            .train_vector(&name, req, a.made.store, |done, _| {
                if let Some(b) = bar.as_mut() {
                    b.update(done as u64, done as usize);
                }
            })
            .await?;
        if let Some(b) = bar {
            b.finish(n);
        }
        written(&a.out, &f)
    })
    .await
}

/// `{"positive": ..., "negative": ...}` per line (blank lines skipped).
pub fn parse_pairs(text: &str) -> Result<Vec<ContrastPair>> {
    #[derive(serde::Deserialize)]
    struct Pair {
        positive: String,
        negative: String,
    }
    let mut out = vec![];
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let p: Pair =
            serde_json::from_str(line).with_context(|| format!("line {}: expected {{\"positive\": \"...\", \"negative\": \"...\"}}", i + 1))?;
        out.push(ContrastPair { positive: p.positive, negative: p.negative });
    }
    if out.is_empty() {
        bail!("no pairs");
    }
    Ok(out)
}

fn print_infos(infos: &[VectorInfo]) {
    outln!("{:<24} {:<16} {:<14} {:<10} {:>4} {:>10}  points", "name", "digest", "mode", "op", "k", "bytes");
    for i in infos {
        let mode = steer_client::hooks::window(i.mode, i.window_start, i.window_end).map_or_else(|_| "?".to_string(), |m| m.to_string());
        let op = steer_client::hooks::op(i.op, i.clamp_value).map_or_else(|_| "?".to_string(), |o| o.to_string());
        let points: Vec<String> = i.points.iter().filter_map(|p| p.point()).map(|p| p.to_string()).collect();
        let digest = &i.digest[..i.digest.len().min(16)];
        outln!("{:<24} {digest:<16} {mode:<14} {op:<10} {:>4} {:>10}  {}", i.name, i.positions, i.bytes, points.join(" "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_parse() {
        let pairs = parse_pairs("{\"positive\": \"a\", \"negative\": \"b\"}\n\n{\"positive\": \"c\", \"negative\": \"d\"}\n").unwrap();
        assert_eq!(pairs.len(), 2);
        assert!(parse_pairs("{\"pos\": 1}").unwrap_err().to_string().contains("line 1"));
    }
}
