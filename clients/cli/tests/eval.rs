//! `steer eval` as a user runs it (embedded server, tiny model): a sweep's CSV has one row per
//! setting, the JSON lines carry layer, coeff and the measures, the SVG names its axes, and
//! `steer eval show` reads the results again.

use std::path::PathBuf;
use std::process::Command;

fn steer(args: &[&str], vector_dir: &std::path::Path) -> std::process::Output {
    let tiny = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny-gpt2");
    let out = Command::new(env!("CARGO_BIN_EXE_steer"))
        .args(args)
        .args(["--model", tiny.to_str().unwrap(), "--vector-dir", vector_dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

#[test]
fn a_perplexity_sweep_writes_one_csv_row_per_setting_and_a_plot_naming_its_axes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("results");
    let run = steer(&["eval", "perplexity", "--layers", "1-3", "--coeffs", "1,-2", "--json", "--out", out.to_str().unwrap()], dir.path());
    let lines: Vec<serde_json::Value> = String::from_utf8(run.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3 * 2 + 1, "six settings and prompting");
    for l in &lines[..6] {
        let w = &l["sets"]["wedding"];
        let ratio = w["perplexity_steered"].as_f64().unwrap() / w["perplexity_unsteered"].as_f64().unwrap();
        assert!((w["ratio"].as_f64().unwrap() - ratio).abs() < 1e-9);
        assert!(l["layer"].is_u64() && l["coeff"].is_f64());
    }
    assert_eq!(lines[6]["method"], "prompting");
    let csv = std::fs::read_to_string(out.join("perplexity.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 7, "a header and one row per setting");
    assert!(csv.starts_with("layer,coeff,"));
    let svg = std::fs::read_to_string(out.join("perplexity.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains(">layer</text>") && svg.contains(">perplexity ratio (steered / unsteered)</text>"));
    let shown = Command::new(env!("CARGO_BIN_EXE_steer")).args(["eval", "show", out.join("perplexity.json").to_str().unwrap()]).output().unwrap();
    assert_eq!(String::from_utf8(shown.stdout).unwrap().lines().count(), 1 + 7 * 2, "a line per setting and text set");
}

#[test]
fn kl_topic_words_and_norms_run_and_plot() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r");
    let o = out.to_str().unwrap();
    steer(&["eval", "kl", "--layers", "1", "--coeffs", "1,2,4", "--top", "3", "--out", o], dir.path());
    steer(
        &["eval", "topic-words", "--layers", "1", "--coeffs", "4", "--n", "3", "--tokens", "6", "--positions", "front,end", "--out", o],
        dir.path(),
    );
    steer(&["eval", "norms", "--layers", "0-3", "--coeffs", "10", "--out", o], dir.path());
    for (name, axis) in [("kl", ">coeff</text>"), ("topic-words", ">coeff</text>"), ("norms", ">layer</text>")] {
        let svg = std::fs::read_to_string(out.join(format!("{name}.svg"))).unwrap();
        assert!(svg.contains(axis), "{name}");
    }
    assert_eq!(std::fs::read_to_string(out.join("kl.csv")).unwrap().lines().count(), 1 + 3);
    assert_eq!(std::fs::read_to_string(out.join("topic-words.csv")).unwrap().lines().count(), 1 + 2, "one row per position");
    let norms: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("norms.json")).unwrap()).unwrap();
    for r in norms["rows"].as_array().unwrap() {
        assert!(r["resid_norm"].as_f64().unwrap() > 0.0 && r["kl_random"].as_f64().unwrap() >= 0.0);
    }
}

/// Ctrl-C (SIGINT) cancels a sweep: it exits non-zero and keeps the settings already finished,
/// which `steer eval show` reads again.
#[test]
fn a_cancelled_sweep_keeps_its_finished_settings() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r");
    let tiny = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny-gpt2");
    let mut child = Command::new(env!("CARGO_BIN_EXE_steer"))
        .args(["eval", "perplexity", "--layers", "0-3", "--coeffs", "1,2,3,4,5,6,7,8,9,10,11,12", "--out", out.to_str().unwrap()])
        .args(["--model", tiny.to_str().unwrap(), "--vector-dir", dir.path().to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let first = lines.by_ref().map(|l| l.unwrap()).find(|l| l.contains("/49 settings")).expect("a progress line");
    assert!(first.contains("1/49"), "{first}");
    assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    assert!(!child.wait().unwrap().success(), "a cancelled sweep exits non-zero");
    assert!(rest.iter().any(|l| l.contains("cancelled after")), "{rest:?}");
    let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("perplexity.json")).unwrap()).unwrap();
    let n = saved["rows"].as_array().unwrap().len();
    assert!((1..49).contains(&n), "{n} settings kept");
    assert_eq!(std::fs::read_to_string(out.join("perplexity.csv")).unwrap().lines().count(), 1 + n);
}
