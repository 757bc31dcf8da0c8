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
