//! The CLI as a new user meets it: presets on the tiny model from any directory, help that
//! states defaults, completions, and output fit for files (no carriage returns, no colour, no
//! debug formatting) when stdout and stderr are not terminals.

use std::process::Command;

fn steer(args: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    Command::new(env!("CARGO_BIN_EXE_steer")).args(args).current_dir(dir.path()).env("STEER_LOG", "info").output().expect("run steer")
}

#[test]
fn a_preset_runs_on_the_tiny_model_from_any_directory() {
    let out = steer(&["demo", "weddings", "--model", "fixtures/tiny-gpt2", "--scale-layers", "--tokens", "4", "--comparisons", "1"]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("Unsteered") && stdout.contains("Steered"), "{stdout}");
    assert!(stderr.contains("layers scaled from 48 to 4: 1, 1"), "{stderr}");
    for text in [&stdout, &stderr] {
        assert!(!text.contains('\r') && !text.contains("\x1b["), "terminal control codes in redirected output: {text:?}");
        assert!(!text.contains("Some(") && !text.contains(" { "), "debug formatting: {text}");
    }
}

#[test]
fn without_scaling_a_preset_says_why_it_fails_on_a_small_model() {
    let out = steer(&["demo", "weddings", "--model", "fixtures/tiny-gpt2", "--tokens", "2", "--comparisons", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("add --scale-layers"), "{stderr}");
}

#[test]
fn help_states_defaults_and_choices_and_completions_print() {
    let help = String::from_utf8(steer(&["run", "--help"]).stdout).unwrap();
    for want in
        ["[default: 0.3", "resid_pre", "block_output", "--presence-penalty", "--top-logprobs", "--ignore-eos", "--skip-unsteered", "STEER_TOKEN"]
    {
        assert!(help.contains(want), "{want} missing from steer run --help");
    }
    let serve = String::from_utf8(steer(&["serve", "--help"]).stdout).unwrap();
    for want in ["STEER_MODEL", "STEER_DTYPE", "STEER_MAX_INFLIGHT_BYTES", "STEER_AUTH_TOKENS", "bf16"] {
        assert!(serve.contains(want), "{want} missing from steer serve --help");
    }
    let bash = steer(&["completions", "bash"]);
    assert!(bash.status.success() && String::from_utf8_lossy(&bash.stdout).contains("_steer()"));
}

#[test]
fn a_missing_model_names_the_offline_alternatives() {
    let out = steer(&["generate", "--prompt", "Hi", "--model", "./no-such-dir", "--tokens", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("no-such-dir"), "{stderr}");
}

#[test]
fn errors_are_a_chain_of_causes_without_a_backtrace_even_when_rust_backtrace_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_steer"))
        .args(["generate", "--prompt", "Hi", "--model", "./no-such-dir", "--tokens", "1"])
        .current_dir(dir.path())
        .env("RUST_BACKTRACE", "1")
        .env_remove("RUST_LIB_BACKTRACE")
        .output()
        .expect("run steer");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let error = stderr.lines().find(|l| l.starts_with("Error: ")).unwrap_or_else(|| panic!("no Error: line in {stderr}"));
    assert!(error.contains("no-such-dir"), "{stderr}");
    assert!(!stderr.to_lowercase().contains("backtrace") && !stderr.contains("at /"), "a backtrace in user output: {stderr}");
}

/// The same request on 1 and 3 compute threads (`RAYON_NUM_THREADS`, and `--threads`) prints the
/// same log-probabilities to the last digit, f32 and q8_0: every reduction is split by the
/// shape alone, so a stream replayed on a pod with another CPU count gives the same bits.
#[test]
fn log_probabilities_are_the_same_bits_on_any_thread_count() {
    let run = |threads: &[(&str, &str)], extra: &[&str]| {
        let dir = tempfile::tempdir().unwrap();
        let mut args = vec![
            "run",
            "--model",
            "fixtures/tiny-gpt2",
            "--prompt",
            "I went up to my friend and said",
            "--add",
            "2:4:Love",
            "--add",
            "2:-4:Hate",
            "--tokens",
            "6",
            "--comparisons",
            "1",
            "--seed",
            "7",
            "--top-logprobs",
            "2",
            "--json",
        ];
        args.extend_from_slice(extra);
        let out =
            Command::new(env!("CARGO_BIN_EXE_steer")).args(&args).envs(threads.iter().copied()).current_dir(dir.path()).output().expect("run steer");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    for dtype in [&["--dtype", "f32"][..], &["--dtype", "q8_0"]] {
        let one = run(&[("RAYON_NUM_THREADS", "1")], dtype);
        assert!(one.contains("\"logprob\""), "{one}");
        assert_eq!(run(&[("RAYON_NUM_THREADS", "3")], dtype), one, "{dtype:?}");
        let mut flag = vec!["--threads", "2"];
        flag.extend_from_slice(dtype);
        assert_eq!(run(&[], &flag), one, "{dtype:?} --threads 2");
    }
}

#[test]
fn a_stop_string_ends_the_row_and_is_left_out_of_its_text() {
    let run = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec![
            "run",
            "--model",
            "fixtures/tiny-gpt2",
            "--prompt",
            "I hate you because",
            "--add",
            "1:4:Love",
            "--tokens",
            "8",
            "--comparisons",
            "1",
            "--temperature",
            "0",
            "--skip-unsteered",
            "--json",
        ];
        args.extend_from_slice(extra);
        let out = steer(&args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8(out.stdout).unwrap();
        serde_json::from_str(stdout.lines().last().expect("a row")).unwrap()
    };
    let full = run(&[]);
    let text = full["text"].as_str().unwrap().to_string();
    // A stop string from the middle of the text: the row ends before it.
    let words: Vec<&str> = text.split(' ').collect();
    let stop = format!(" {}", words[2]);
    let cut = &text[..text.find(&stop).unwrap()];
    let stopped = run(&["--stop", &stop, "--stop", "never written"]);
    assert_eq!(stopped["text"].as_str().unwrap(), cut, "{full} / {stopped}");
    assert_eq!(stopped["finish_reason"], "stop");
    assert!(stopped["token_ids"].as_array().unwrap().len() < 8);
    let five = steer(&[
        "run",
        "--model",
        "fixtures/tiny-gpt2",
        "--prompt",
        "Hi there",
        "--add",
        "1:4:Love",
        "--stop",
        "a",
        "--stop",
        "b",
        "--stop",
        "c",
        "--stop",
        "d",
        "--stop",
        "e",
    ]);
    assert!(!five.status.success() && String::from_utf8_lossy(&five.stderr).contains("setup.stop"), "{}", String::from_utf8_lossy(&five.stderr));
}

fn fixture(p: &str) -> String {
    format!("{}/../../fixtures/{p}", env!("CARGO_MANIFEST_DIR"))
}

/// `steer run ... --json` with greedy settings: the steered row's token ids.
fn greedy_ids(extra: &[&str]) -> Result<Vec<u64>, String> {
    let mut args = vec!["run", "--model", "fixtures/tiny-gpt2", "--prompt", "I hate you because", "--tokens", "20", "--comparisons", "1"];
    args.extend_from_slice(&["--temperature", "0", "--frequency-penalty", "0", "--skip-unsteered", "--ignore-eos", "--json"]);
    args.extend_from_slice(extra);
    let out = steer(&args);
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let stdout = String::from_utf8(out.stdout).unwrap();
    let row: serde_json::Value = serde_json::from_str(stdout.lines().last().expect("a row")).unwrap();
    Ok(row["token_ids"].as_array().expect("token ids").iter().map(|t| t.as_u64().unwrap()).collect())
}

#[test]
fn sae_features_ablation_clamping_and_windows_from_the_command_line() {
    let g: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("goldens/tiny-gpt2-ops.json")).unwrap()).unwrap();
    let want = |v: &serde_json::Value| -> Vec<u64> { v.as_array().unwrap().iter().map(|t| t.as_u64().unwrap()).collect() };
    let dir = tempfile::tempdir().unwrap();
    let f5 = dir.path().join("f5.safetensors").display().to_string();
    let sae = fixture("tiny-sae");
    let out = steer(&["vector", "from-sae", "--model", "fixtures/tiny-gpt2", "--sae", &sae, "--feature", "5", "--scale", "6", "--out", &f5]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let show = steer(&["vector", "show", &f5]);
    let shown = String::from_utf8_lossy(&show.stdout);
    assert!(shown.contains("origin    SAE") && shown.contains("features [5], scale 6") && shown.contains("op        add"), "{shown}");
    // Feature 5 at scale 6: the Hugging Face hook's tokens.
    assert_eq!(greedy_ids(&["--vector", &f5]).unwrap(), want(&g["sae"]["greedy"]));
    // Its direction ablated, or clamped, over windows: each steers, and differently.
    let plain = want(&g["unsteered_greedy"]);
    let ablated = greedy_ids(&["--ablate", &f5]).unwrap();
    let late = greedy_ids(&["--ablate", &f5, "--window", "generated"]).unwrap();
    let clamped = greedy_ids(&["--clamp", &format!("{f5}:8"), "--window", "3-"]).unwrap();
    assert!(ablated != plain || late != plain, "ablating feature 5's direction changes something");
    assert_ne!(clamped, plain);
    assert_ne!(clamped, ablated);
    // What it cannot read, it says.
    let e = greedy_ids(&["--clamp", &f5]).unwrap_err();
    assert!(e.contains("--clamp") && e.contains("FILE:VALUE"), "{e}");
    let e = greedy_ids(&["--ablate", &f5, "--window", "7-3"]).unwrap_err();
    assert!(e.contains("--window"), "{e}");
    // A clamp vector does not export to llama.cpp (which only adds).
    let c = dir.path().join("c.safetensors").display().to_string();
    let out = steer(&["vector", "from-sae", "--model", "fixtures/tiny-gpt2", "--sae", &sae, "--feature", "1,2", "--clamp", "3", "--out", &c]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = steer(&["vector", "export", &c, "--gguf", &dir.path().join("c.gguf").display().to_string()]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("only add"), "{}", String::from_utf8_lossy(&out.stderr));
}
