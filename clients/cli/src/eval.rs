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
use crate::plot::{line_chart, stack, Chart, Series, Style};

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
    /// Layers: 6, 0-47 or 2,6,16 [default: 6, the post's; the middle layer on a model of 6
    /// layers or fewer].
    #[arg(long)]
    layers: Option<String>,
    /// Coefficients, comma-separated.
    #[arg(long, default_value = "1", allow_hyphen_values = true)]
    coeffs: String,
    #[arg(long, value_enum, default_value_t = HookArg::ResidPre)]
    hook: HookArg,
    /// Do not prepend <|endoftext|>.
    #[arg(long)]
    no_bos: bool,
    /// Seed of the first completion (topic-words).
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
    /// The sweep on a model of `n_layer` layers (layers checked against it, naming `--layers`).
    fn sweep(&self, n_layer: u32) -> Result<Sweep> {
        let layers = match &self.layers {
            Some(l) => parse_layers(l)?,
            None if n_layer > 6 => vec![6],
            None => vec![n_layer / 2],
        };
        if let Some(l) = layers.iter().find(|&&l| l >= n_layer) {
            bail!("--layers: layer {l} does not exist (this model has {n_layer} layers, 0 to {})", n_layer.saturating_sub(1));
        }
        let coeffs = self.coeffs.split(',').map(|c| c.trim().parse::<f64>().with_context(|| format!("--coeffs {c}"))).collect::<Result<Vec<_>>>()?;
        if coeffs.iter().any(|c| !c.is_finite()) {
            bail!("--coeffs must be finite");
        }
        Ok(Sweep { plus: self.plus.clone(), minus: self.minus.clone(), layers, coeffs })
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
    let (name, args, setup, rows) = match cmd {
        EvalCommand::Show { file, svg } => {
            let saved: Value = serde_json::from_str(&std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?)?;
            let (name, rows) = (saved["eval"].as_str().unwrap_or("eval").to_string(), saved["rows"].as_array().cloned().unwrap_or_default());
            print_table(&rows);
            if let Some(svg) = svg {
                std::fs::write(&svg, plot(&name, &saved["setup"], &rows))?;
                eprintln!("wrote {}", svg.display());
            }
            return Ok(());
        }
        EvalCommand::Perplexity(a) => {
            let sets = text_sets(&a.sets)?;
            let setup = setup_of(&a.sweep, None);
            let rows = sweep_with(&a.sweep, "perplexity", &setup, |c, s, o, p| {
                Box::pin(async move { eval::perplexity_sweep(c.as_ref(), &s, &sets, &o, p).await })
            })
            .await?;
            ("perplexity", a.sweep, setup, rows)
        }
        EvalCommand::Kl(a) => {
            let (prompt, top) = (a.prompt.clone(), a.top);
            let setup = setup_of(&a.sweep, Some(&a.prompt));
            let rows =
                sweep_with(&a.sweep, "kl", &setup, |c, s, o, p| Box::pin(async move { eval::kl_sweep(c.as_ref(), &s, &prompt, top, &o, p).await }))
                    .await?;
            ("kl", a.sweep, setup, rows)
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
            let setup = setup_of(&a.sweep, Some(&a.prompt));
            let rows = sweep_with(&a.sweep, "topic-words", &setup, |c, s, o, p| {
                Box::pin(async move {
                    let o = RunOptions { n_tokens: tokens, ..o };
                    eval::topic_words(c.as_ref(), &s, &prompt, &words, n, &positions, &o, p).await
                })
            })
            .await?;
            ("topic-words", a.sweep, setup, rows)
        }
        EvalCommand::Norms(a) => {
            let prompt = a.prompt.clone();
            let setup = setup_of(&a.sweep, Some(&a.prompt));
            let rows = sweep_with(&a.sweep, "norms", &setup, |c, s, o, p| Box::pin(async move { eval::norms(c.as_ref(), &s, &prompt, &o, p).await }))
                .await?;
            ("norms", a.sweep, setup, rows)
        }
    };
    if args.json {
        for r in &rows {
            outln!("{r}");
        }
    } else {
        print_table(&rows);
    }
    if let Some(dir) = &args.out {
        write_results(dir, name, &setup, &rows)?;
    }
    Ok(())
}

type EvalFuture = std::pin::Pin<Box<dyn std::future::Future<Output = steer_client::Result<Vec<Value>>>>>;
type Progress = Box<dyn FnMut(usize, usize, &Value)>;

/// Connects, runs the eval with a progress line per setting, shuts an embedded server down.
/// Ctrl-C cancels: the calls in flight end (the workers free their rows), and the settings
/// already finished are kept (written with --out) before it exits non-zero.
async fn sweep_with<F>(a: &SweepArgs, name: &str, setup: &Value, f: F) -> Result<Vec<Value>>
where
    F: FnOnce(std::sync::Arc<steer_client::SteerClient>, Sweep, RunOptions, Progress) -> EvalFuture,
{
    let (client, local) = a.service.connect().await?;
    let sweep = match client.activation_info().await {
        Ok(info) => a.sweep(info.n_layer),
        Err(e) => Err(e.into()),
    };
    let sweep = match sweep {
        Ok(s) => s,
        Err(e) => {
            if let Some(l) = local {
                l.shutdown().await;
            }
            return Err(e);
        }
    };
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
                write_results(dir, name, setup, &rows)?;
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

/// `{"a": {"b": 1}}` as `a_b = 1`; a list of tokens (kl's `top`) as `" wedding" +0.1234; ...`,
/// other arrays as their JSON text (a CSV cell).
fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Array(items) if !items.is_empty() && items.iter().all(|i| i["text"].is_string()) => {
            let tokens: Vec<String> = items
                .iter()
                .map(|i| match i["contribution"].as_f64() {
                    Some(c) => format!("{:?} {c:+.4}", i["text"].as_str().unwrap_or_default()),
                    None => format!("{:?}", i["text"].as_str().unwrap_or_default()),
                })
                .collect();
            out.push((prefix.into(), tokens.join("; ")));
        }
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
    // The setting first (what varies), then the measures.
    let mut cols: Vec<String> = vec!["layer".into(), "coeff".into()];
    for key in ["method", "set", "position"] {
        if flat.iter().any(|r| r.iter().any(|(k, _)| k == key)) {
            cols.push(key.into());
        }
    }
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

/// Perplexity rows (one per setting, a column group per text set) as one row per setting and
/// set: a table a terminal can show.
fn long_rows(rows: &[Value]) -> Vec<Value> {
    let mut out = vec![];
    for r in rows {
        let Some(sets) = r["sets"].as_object() else {
            out.push(r.clone());
            continue;
        };
        for (set, m) in sets {
            let mut row = json!({"layer": r["layer"], "coeff": r["coeff"], "method": r["method"], "set": set});
            for (k, v) in m.as_object().into_iter().flatten() {
                row[k.as_str()] = v.clone();
            }
            if !r["prompt"].is_null() {
                row["prompt"] = r["prompt"].clone();
            }
            out.push(row);
        }
    }
    out
}

fn print_table(rows: &[Value]) {
    out!("{}", table(rows));
}

/// The rows as a table: one line per setting (and text set), the top tokens' first three.
fn table(rows: &[Value]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let rows = long_rows(rows);
    let (cols, flat) = columns(&rows);
    let short = |c: &str, v: &str| match v.parse::<f64>() {
        Ok(x) if x.fract() == 0.0 && x.abs() < 1e9 => format!("{x}"),
        Ok(x) if v.contains('.') => format!("{x:.4}"),
        // The top tokens: the first three.
        _ if c.ends_with("top") => v.split("; ").take(3).collect::<Vec<_>>().join("; "),
        _ => v.chars().take(24).collect(),
    };
    let widths: Vec<usize> = cols
        .iter()
        .map(|c| flat.iter().map(|r| r.iter().find(|(k, _)| k == c).map_or(0, |(_, v)| short(c, v).chars().count())).max().unwrap_or(0).max(c.len()))
        .collect();
    let _ = writeln!(out, "{}", cols.iter().zip(&widths).map(|(c, w)| format!("{c:>w$}")).collect::<Vec<_>>().join("  ").trim_end());
    for r in flat {
        let cells: Vec<String> =
            cols.iter().zip(&widths).map(|(c, w)| format!("{:>w$}", short(c, r.iter().find(|(k, _)| k == c).map_or("", |(_, v)| v)))).collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    out
}

/// What a sweep was (saved beside its rows, and the plots' subtitle): the vector's prompts, the
/// hook, and the prompt completed or scored, when there is one.
fn setup_of(a: &SweepArgs, prompt: Option<&str>) -> Value {
    json!({"plus": a.plus, "minus": a.minus, "hook": steer_model::HookKind::from(a.hook).name(), "use_bos": !a.no_bos, "prompt": prompt})
}

/// `+" wedding" -" " at resid_pre; prompt "I think you're"`.
fn subtitle(setup: &Value) -> String {
    let mut s = String::new();
    if let (Some(p), Some(m)) = (setup["plus"].as_str(), setup["minus"].as_str()) {
        s = format!("+{p:?} \u{2212}{m:?}");
    }
    if let Some(h) = setup["hook"].as_str() {
        s += &format!(" at {h}");
    }
    if let Some(p) = setup["prompt"].as_str() {
        s += &format!("; prompt {p:?}");
    }
    s
}

/// The eval's plot: its measure against the layer (or the coefficient, for one layer), a
/// line per coefficient (or layer) and text set or position; references (unsteered, the
/// prompting baseline, the random control) drawn apart from the measured lines. `norms` stacks
/// two charts: the norm ratio, and the KL of the steering against a random vector of its norms.
pub fn plot(name: &str, setup: &Value, rows: &[Value]) -> String {
    let layers: std::collections::BTreeSet<i64> = rows.iter().filter_map(|r| r["layer"].as_i64()).collect();
    let by_layer = layers.len() > 1;
    let (x_key, line_key) = if by_layer { ("layer", "coeff") } else { ("coeff", "layer") };
    let mut series: Vec<Series> = vec![];
    let mut kl: Vec<Series> = vec![];
    let push = |series: &mut Vec<Series>, name: String, style: Style, x: f64, y: f64| match series.iter_mut().find(|s| s.name == name) {
        Some(s) => s.points.push((x, y)),
        None => series.push(Series { name, points: vec![(x, y)], style }),
    };
    let xs: Vec<f64> = rows.iter().filter_map(|r| r[x_key].as_f64()).collect();
    let (lo, hi) = (xs.iter().copied().fold(f64::INFINITY, f64::min), xs.iter().copied().fold(f64::NEG_INFINITY, f64::max));
    let y_label = match name {
        "perplexity" => "perplexity ratio (steered / unsteered)",
        "kl" => "next-token KL (nats)",
        "topic-words" => "topic words per completion",
        _ => "steering norm / residual norm",
    };
    let num = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    for r in rows {
        let line = format!("{line_key} {}", r[line_key]);
        let x = r[x_key].as_f64();
        match name {
            "perplexity" => {
                for (set, m) in r["sets"].as_object().into_iter().flatten() {
                    let ratio = num(&m["ratio"]);
                    if r["method"] == "prompting" {
                        push(&mut series, format!("{set}, prompting"), Style::Baseline, lo, ratio);
                        push(&mut series, format!("{set}, prompting"), Style::Baseline, hi, ratio);
                    } else if let Some(x) = x {
                        push(&mut series, format!("{set}, {line}"), Style::Measured, x, ratio);
                    }
                }
            }
            "kl" => push(&mut series, line, Style::Measured, x.unwrap_or(0.0), num(&r["kl"])),
            "topic-words" => {
                let x = x.unwrap_or(0.0);
                let position = r["position"].as_str().unwrap_or("");
                push(&mut series, format!("steered, {position}, {line}"), Style::Measured, x, num(&r["mean_count_steered"]));
                push(&mut series, "unsteered".into(), Style::Reference, x, num(&r["mean_count_unsteered"]));
            }
            _ => {
                let x = x.unwrap_or(0.0);
                push(&mut series, line.clone(), Style::Measured, x, num(&r["ratio"]));
                push(&mut kl, format!("steering, {line}"), Style::Measured, x, num(&r["kl_steering"]));
                push(&mut kl, format!("random, {line}"), Style::Baseline, x, num(&r["kl_random"]));
            }
        }
    }
    for s in series.iter_mut().chain(kl.iter_mut()) {
        s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
        s.points.dedup_by(|a, b| a.0 == b.0);
    }
    let (title, sub) = (format!("steer eval {name}"), subtitle(setup));
    let chart = Chart { title: &title, subtitle: &sub, x_label: x_key, y_label, integer_x: x_key == "layer" };
    let main = line_chart(&chart, &series);
    if kl.is_empty() {
        return main;
    }
    let kl_title = format!("steer eval {name}: next-token KL, steering against a random vector of its norms");
    stack(&[main, line_chart(&Chart { title: &kl_title, y_label: "next-token KL (nats)", ..chart }, &kl)])
}

/// NAME.json (the setup and rows, reloadable by `steer eval show`), NAME.csv and NAME.svg.
pub fn write_results(dir: &Path, name: &str, setup: &Value, rows: &[Value]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let write = |ext: &str, body: String| {
        let p = dir.join(format!("{name}.{ext}"));
        std::fs::write(&p, body).with_context(|| format!("writing {}", p.display()))
    };
    write("json", serde_json::to_string_pretty(&json!({"eval": name, "setup": setup, "rows": rows}))?)?;
    write("csv", csv(rows))?;
    write("svg", plot(name, setup, rows))?;
    eprintln!("wrote {}", dir.join(format!("{name}.{{json,csv,svg}}")).display());
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
        let svg = plot("perplexity", &json!({"plus": " wedding", "minus": " ", "hook": "resid_pre"}), &rows);
        assert!(svg.contains(">layer</text>") && svg.contains("perplexity ratio"));
        assert_eq!(svg.matches("<polyline").count(), 4, "two sets x (ActAdd, prompting)");
        assert!(svg.contains("+&quot; wedding&quot;") && svg.contains("at resid_pre"), "the subtitle names the prompts and hook");
        assert_eq!(svg.matches(r#"stroke-dasharray="6 4" points"#).count(), 2, "the prompting baselines are dashed");
        // The table: one line per setting and set, no wider than a terminal.
        let t = table(&rows);
        assert_eq!(t.lines().count(), 1 + 6);
        assert!(t.lines().all(|l| l.len() < 120), "{t}");
        assert!(t.lines().next().unwrap().split_whitespace().collect::<Vec<_>>().starts_with(&["layer", "coeff", "method", "set"]), "{t}");
    }

    #[test]
    fn kl_keeps_its_top_tokens_readable_and_norms_plots_kl_against_the_random_control() {
        let rows = vec![json!({"layer": 2, "coeff": 4.0, "kl": 0.5, "top": [
            {"token_id": 1, "text": " wedding", "contribution": 0.25, "p_steered": 0.3, "p_unsteered": 0.1},
            {"token_id": 2, "text": " party", "contribution": -0.05, "p_steered": 0.1, "p_unsteered": 0.2}]})];
        let c = csv(&rows);
        assert!(c.lines().nth(1).unwrap().ends_with(r#""" wedding"" +0.2500; "" party"" -0.0500""#), "{c}");
        let t = table(&rows);
        assert!(t.contains(r#"" wedding" +0.2500"#), "{t}");
        let norms: Vec<Value> = (0..3)
            .map(|l| json!({"layer": l, "coeff": 1.0, "ratio": 0.1 * l as f64, "kl_steering": 0.2, "kl_random": 0.01, "resid_norm": 1.0}))
            .collect();
        let svg = plot("norms", &json!({"prompt": "I think you're"}), &norms);
        assert!(svg.contains("random, coeff 1.0") && svg.contains("steering, coeff 1.0"), "{svg}");
        assert!(!svg.contains(">0.5</text>") && !svg.contains(">1.5</text>"), "whole layer ticks only");
        let topic = vec![json!({"layer": 1, "coeff": 2.0, "position": "front", "mean_count_steered": 0.5, "mean_count_unsteered": 0.0})];
        let svg = plot("topic-words", &json!({}), &topic);
        let last = svg.rfind("<polyline").unwrap();
        assert!(svg[last..].contains(r##"stroke="#000""##), "the unsteered line is drawn on top");
    }
}
