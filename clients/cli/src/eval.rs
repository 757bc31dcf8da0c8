//! `steer eval ...`: the post's measurements over a sweep of layers and coefficients
//! (`steer_client::eval`), printed as a table, with `--json` one object per setting, and with
//! `--out DIR` written as `NAME.json`, `NAME.csv` (one row per setting) and `NAME.svg` (a plot
//! naming its axes). `steer eval show DIR/NAME.json` prints and plots saved results again.
//! Ctrl-C cancels a sweep (its calls end, so the workers free their rows).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use steer_client::eval::{self, Position, Sweep, TextSet};
use steer_client::RunOptions;

use crate::args::{parse_layers, HookArg, ServiceArgs};
use crate::plot::{line_chart, Series};

#[derive(Subcommand)]
pub enum EvalCommand {
    /// Steered / unsteered perplexity on text sets per setting, and of prompting.
    Perplexity(PerplexityArgs),
    /// Next-token KL(steered || unsteered) after a prompt, with the tokens contributing most.
    Kl(KlArgs),
    /// Topic-word counts in steered and unsteered completions (front/middle/end placement).
    TopicWords(TopicArgs),
    /// Residual-stream norm per layer against the steering tensor's, with a random control.
    Norms(NormsArgs),
    /// Print and plot saved results (NAME.json from --out) again.
    Show {
        file: PathBuf,
        /// Also write the plot here.
        #[arg(long)]
        svg: Option<PathBuf>,
    },
}

/// The sweep and where results go.
#[derive(Args, Clone)]
pub struct SweepArgs {
    /// The steering vector is COEFF x (act(PLUS) - act(MINUS)).
    #[arg(long, default_value = " wedding")]
    plus: String,
    #[arg(long, default_value = " ")]
    minus: String,
    /// Layers: 6, 0-47 or 2,6,16.
    #[arg(long, default_value = "6")]
    layers: String,
    /// Coefficients, comma-separated.
    #[arg(long, default_value = "1", allow_hyphen_values = true)]
    coeffs: String,
    #[arg(long, value_enum, default_value_t = HookArg::ResidPre)]
    hook: HookArg,
    /// Do not prepend <|endoftext|>.
    #[arg(long)]
    no_bos: bool,
    /// Seed of the first completion (topic-words) [default: 0].
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write NAME.json, NAME.csv and NAME.svg into this directory.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print one JSON object per setting instead of the table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    service: ServiceArgs,
}

impl SweepArgs {
    fn sweep(&self) -> Result<Sweep> {
        let coeffs = self.coeffs.split(',').map(|c| c.trim().parse::<f64>().with_context(|| format!("--coeffs {c}"))).collect::<Result<Vec<_>>>()?;
        if coeffs.iter().any(|c| !c.is_finite()) {
            bail!("--coeffs must be finite");
        }
        Ok(Sweep { plus: self.plus.clone(), minus: self.minus.clone(), layers: parse_layers(&self.layers)?, coeffs })
    }

    fn opts(&self) -> RunOptions {
        RunOptions { hook: steer_client::v1::Hook::from(self.hook), use_bos: !self.no_bos, seed: self.seed, ..RunOptions::default() }
    }
}

#[derive(Args)]
pub struct PerplexityArgs {
    #[command(flatten)]
    sweep: SweepArgs,
    /// Text sets, NAME=FILE (one text per line), repeatable [default: fixtures/eval's wedding and unrelated].
    #[arg(long = "set")]
    sets: Vec<String>,
}

#[derive(Args)]
pub struct KlArgs {
    #[command(flatten)]
    sweep: SweepArgs,
    #[arg(long, default_value = "I'm excited because I'm going to a")]
    prompt: String,
    /// Tokens contributing most, per setting.
    #[arg(long, default_value_t = 10)]
    top: u32,
}

#[derive(Args)]
pub struct TopicArgs {
    #[command(flatten)]
    sweep: SweepArgs,
    #[arg(long, default_value = "I went up to my friend and said")]
    prompt: String,
    /// Completions per side and setting.
    #[arg(long, default_value_t = 20)]
    n: u32,
    /// New tokens per completion.
    #[arg(long, default_value_t = 40)]
    tokens: u32,
    /// Topic words, comma-separated [default: the post's wedding words].
    #[arg(long)]
    words: Option<String>,
    /// Where the steering sits in the prompt: front, middle, end (comma-separated).
    #[arg(long, default_value = "front")]
    positions: String,
}

#[derive(Args)]
pub struct NormsArgs {
    #[command(flatten)]
    sweep: SweepArgs,
    #[arg(long, default_value = "I think you're")]
    prompt: String,
}

pub async fn run(cmd: EvalCommand) -> Result<()> {
    let (name, args, rows) = match cmd {
        EvalCommand::Show { file, svg } => {
            let saved: Value = serde_json::from_str(&std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?)?;
            let (name, rows) = (saved["eval"].as_str().unwrap_or("eval").to_string(), saved["rows"].as_array().cloned().unwrap_or_default());
            print_table(&rows);
            if let Some(svg) = svg {
                std::fs::write(&svg, plot(&name, &rows))?;
                eprintln!("wrote {}", svg.display());
            }
            return Ok(());
        }
        EvalCommand::Perplexity(a) => {
            let sets = text_sets(&a.sets)?;
            let rows =
                sweep_with(&a.sweep, "perplexity", |c, s, o, p| Box::pin(async move { eval::perplexity_sweep(c.as_ref(), &s, &sets, &o, p).await }))
                    .await?;
            ("perplexity", a.sweep, rows)
        }
        EvalCommand::Kl(a) => {
            let (prompt, top) = (a.prompt.clone(), a.top);
            let rows =
                sweep_with(&a.sweep, "kl", |c, s, o, p| Box::pin(async move { eval::kl_sweep(c.as_ref(), &s, &prompt, top, &o, p).await })).await?;
            ("kl", a.sweep, rows)
        }
        EvalCommand::TopicWords(a) => {
            let words: Vec<String> = match &a.words {
                Some(w) => w.split(',').map(|w| w.trim().to_string()).filter(|w| !w.is_empty()).collect(),
                None => eval::WEDDING_WORDS.iter().map(|w| w.to_string()).collect(),
            };
            let positions = a
                .positions
                .split(',')
                .map(|p| match p.trim() {
                    "front" => Ok(Position::Front),
                    "middle" => Ok(Position::Middle),
                    "end" => Ok(Position::End),
                    other => bail!("--positions: `{other}` is not front, middle or end"),
                })
                .collect::<Result<Vec<_>>>()?;
            let (prompt, n, tokens) = (a.prompt.clone(), a.n, a.tokens);
            let rows = sweep_with(&a.sweep, "topic-words", |c, s, o, p| {
                Box::pin(async move {
                    let o = RunOptions { n_tokens: tokens, ..o };
                    eval::topic_words(c.as_ref(), &s, &prompt, &words, n, &positions, &o, p).await
                })
            })
            .await?;
            ("topic-words", a.sweep, rows)
        }
        EvalCommand::Norms(a) => {
            let prompt = a.prompt.clone();
            let rows = sweep_with(&a.sweep, "norms", |c, s, o, p| Box::pin(async move { eval::norms(c.as_ref(), &s, &prompt, &o, p).await })).await?;
            ("norms", a.sweep, rows)
        }
    };
    if args.json {
        for r in &rows {
            println!("{r}");
        }
    } else {
        print_table(&rows);
    }
    if let Some(dir) = &args.out {
        write_results(dir, name, &rows)?;
    }
    Ok(())
}

type EvalFuture = std::pin::Pin<Box<dyn std::future::Future<Output = steer_client::Result<Vec<Value>>>>>;
type Progress = Box<dyn FnMut(usize, usize, &Value)>;

/// Connects, runs the eval with a progress line per setting, shuts an embedded server down.
/// Ctrl-C cancels: the calls in flight end (the workers free their rows), and the settings
/// already finished are kept (written with --out) before it exits non-zero.
async fn sweep_with<F>(a: &SweepArgs, name: &str, f: F) -> Result<Vec<Value>>
where
    F: FnOnce(std::sync::Arc<steer_client::SteerClient>, Sweep, RunOptions, Progress) -> EvalFuture,
{
    let sweep = a.sweep()?;
    let (client, local) = a.service.connect().await?;
    let client = std::sync::Arc::new(client);
    let done = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    let seen = done.clone();
    let progress: Progress = Box::new(move |n, total, row| {
        eprintln!("  {n}/{total} settings");
        seen.lock().expect("rows").push(row.clone());
    });
    let result = tokio::select! {
        r = f(client.clone(), sweep, a.opts(), progress) => r.map_err(anyhow::Error::from),
        _ = tokio::signal::ctrl_c() => {
            let rows = done.lock().expect("rows").clone();
            if let Some(dir) = &a.out {
                write_results(dir, name, &rows)?;
            }
            Err(anyhow::anyhow!("cancelled after {} settings", rows.len()))
        }
    };
    if let Some(l) = local {
        l.shutdown().await;
    }
    result
}

fn text_sets(specs: &[String]) -> Result<Vec<TextSet>> {
    if specs.is_empty() {
        return Ok(eval::default_text_sets());
    }
    specs
        .iter()
        .map(|s| {
            let (name, file) = s.split_once('=').with_context(|| format!("--set {s}: expected NAME=FILE"))?;
            let text = std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?;
            Ok(TextSet { name: name.into(), texts: text.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect() })
        })
        .collect()
}

/// `{"a": {"b": 1}}` as `a_b = 1`; arrays as their JSON text (a CSV cell).
fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}_{k}") };
                flatten(&key, v, out);
            }
        }
        Value::String(s) => out.push((prefix.into(), s.clone())),
        Value::Null => out.push((prefix.into(), String::new())),
        other => out.push((prefix.into(), other.to_string())),
    }
}

fn columns(rows: &[Value]) -> (Vec<String>, Vec<Vec<(String, String)>>) {
    let flat: Vec<Vec<(String, String)>> = rows
        .iter()
        .map(|r| {
            let mut o = vec![];
            flatten("", r, &mut o);
            o
        })
        .collect();
    let mut cols: Vec<String> = vec!["layer".into(), "coeff".into()];
    for r in &flat {
        for (k, _) in r {
            if !cols.contains(k) {
                cols.push(k.clone());
            }
        }
    }
    (cols, flat)
}

fn csv_cell(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// One header line, then one line per setting.
pub fn csv(rows: &[Value]) -> String {
    let (cols, flat) = columns(rows);
    let mut s = cols.iter().map(|c| csv_cell(c)).collect::<Vec<_>>().join(",") + "\n";
    for r in flat {
        let cells: Vec<String> = cols.iter().map(|c| csv_cell(r.iter().find(|(k, _)| k == c).map_or("", |(_, v)| v))).collect();
        s += &(cells.join(",") + "\n");
    }
    s
}

fn print_table(rows: &[Value]) {
    let (cols, flat) = columns(rows);
    let cols: Vec<&String> = cols.iter().filter(|c| !c.ends_with("top")).collect();
    let short = |v: &str| match v.parse::<f64>() {
        Ok(x) if v.contains('.') => format!("{x:.4}"),
        _ => v.chars().take(24).collect(),
    };
    let widths: Vec<usize> = cols.iter().map(|c| c.len().max(8)).collect();
    println!("{}", cols.iter().zip(&widths).map(|(c, w)| format!("{c:>w$}")).collect::<Vec<_>>().join("  "));
    for r in flat {
        let cells: Vec<String> =
            cols.iter().zip(&widths).map(|(c, w)| format!("{:>w$}", short(r.iter().find(|(k, _)| k == *c).map_or("", |(_, v)| v)))).collect();
        println!("{}", cells.join("  "));
    }
}

/// The eval's plot: its measure against the layer (or the coefficient, for one layer), a
/// line per coefficient (or layer) and text set or position.
pub fn plot(name: &str, rows: &[Value]) -> String {
    let layers: std::collections::BTreeSet<i64> = rows.iter().filter_map(|r| r["layer"].as_i64()).collect();
    let by_layer = layers.len() > 1;
    let (x_key, line_key) = if by_layer { ("layer", "coeff") } else { ("coeff", "layer") };
    let mut series: Vec<Series> = vec![];
    let mut push = |name: String, x: f64, y: f64| match series.iter_mut().find(|s| s.name == name) {
        Some(s) => s.points.push((x, y)),
        None => series.push(Series { name, points: vec![(x, y)] }),
    };
    let xs: Vec<f64> = rows.iter().filter_map(|r| r[x_key].as_f64()).collect();
    let (lo, hi) = (xs.iter().copied().fold(f64::INFINITY, f64::min), xs.iter().copied().fold(f64::NEG_INFINITY, f64::max));
    let y_label = match name {
        "perplexity" => "perplexity ratio (steered / unsteered)",
        "kl" => "next-token KL (nats)",
        "topic-words" => "topic words per completion",
        _ => "steering norm / residual norm",
    };
    for r in rows {
        let line = format!("{line_key} {}", r[line_key]);
        match name {
            "perplexity" => {
                for (set, m) in r["sets"].as_object().into_iter().flatten() {
                    let ratio = m["ratio"].as_f64().unwrap_or(f64::NAN);
                    if r["method"] == "prompting" {
                        push(format!("{set}, prompting"), lo, ratio);
                        push(format!("{set}, prompting"), hi, ratio);
                    } else if let Some(x) = r[x_key].as_f64() {
                        push(format!("{set}, {line}"), x, ratio);
                    }
                }
            }
            "kl" => push(line, r[x_key].as_f64().unwrap_or(0.0), r["kl"].as_f64().unwrap_or(f64::NAN)),
            "topic-words" => {
                let x = r[x_key].as_f64().unwrap_or(0.0);
                push(format!("steered, {}, {line}", r["position"].as_str().unwrap_or("")), x, r["mean_count_steered"].as_f64().unwrap_or(f64::NAN));
                push("unsteered".into(), x, r["mean_count_unsteered"].as_f64().unwrap_or(f64::NAN));
            }
            _ => push(line, r[x_key].as_f64().unwrap_or(0.0), r["ratio"].as_f64().unwrap_or(f64::NAN)),
        }
    }
    for s in &mut series {
        s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
        s.points.dedup_by(|a, b| a.0 == b.0);
    }
    line_chart(&format!("steer eval {name}"), x_key, y_label, &series)
}

/// NAME.json (the rows, reloadable by `steer eval show`), NAME.csv and NAME.svg.
pub fn write_results(dir: &Path, name: &str, rows: &[Value]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let write = |ext: &str, body: String| {
        let p = dir.join(format!("{name}.{ext}"));
        std::fs::write(&p, body).with_context(|| format!("writing {}", p.display()))
    };
    write("json", serde_json::to_string_pretty(&json!({"eval": name, "rows": rows}))?)?;
    write("csv", csv(rows))?;
    write("svg", plot(name, rows))?;
    eprintln!("wrote {}/{name}.{{json,csv,svg}}", dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_has_one_row_per_setting_and_the_plot_names_its_axes() {
        let rows = vec![
            json!({"method": "actadd", "layer": 1, "coeff": 2.0, "sets": {"wedding": {"ratio": 0.9}, "unrelated": {"ratio": 1.01}}}),
            json!({"method": "actadd", "layer": 2, "coeff": 2.0, "sets": {"wedding": {"ratio": 0.8}, "unrelated": {"ratio": 1.02}}}),
            json!({"method": "prompting", "layer": null, "coeff": null, "prompt": "a, \"b\"",
                   "sets": {"wedding": {"ratio": 0.95}, "unrelated": {"ratio": 1.1}}}),
        ];
        let c = csv(&rows);
        let lines: Vec<&str> = c.lines().collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0], "layer,coeff,method,sets_unrelated_ratio,sets_wedding_ratio,prompt");
        assert!(lines[3].ends_with(",\"a, \"\"b\"\"\""), "{}", lines[3]);
        let svg = plot("perplexity", &rows);
        assert!(svg.contains(">layer</text>") && svg.contains("perplexity ratio"));
        assert_eq!(svg.matches("<polyline").count(), 4, "two sets x (ActAdd, prompting)");
    }
}
