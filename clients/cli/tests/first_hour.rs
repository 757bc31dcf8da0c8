//! A researcher's first hour, through the `steer` process: addresses in one form and fast
//! failure where nothing listens, one spelling of hooks and finish reasons, the options errors
//! suggest, vector identity by weights, readable errors, a closed pipe, library commands that
//! load no model, and warnings where steering cannot change anything.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const TINY: &str = "fixtures/tiny-gpt2";

fn steer_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_steer"))
        .args(args)
        .current_dir(dir)
        .env("STEER_LOG", "warn")
        .env_remove("STEER_URL")
        .env_remove("STEER_ACTIVATION_URL")
        .env_remove("STEER_MODEL")
        .output()
        .expect("run steer")
}

fn steer(args: &[&str]) -> Output {
    steer_in(tempfile::tempdir().unwrap().path(), args)
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `steer serve` on the tiny model, on a free loopback port; killed when dropped.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_steer"))
            .args(["serve", "--model", TINY, "--addr", &addr, "--vector-dir"])
            .arg(dir.path().join("vectors"))
            .env("STEER_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = Self { child, addr };
        // Polls health (the model loads in well under a second) until SERVING.
        for _ in 0..600 {
            if steer(&["health", "--url", &server.addr]).status.success() {
                return server;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("steer serve on {} never became SERVING", server.addr);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const QUICK: [&str; 6] = ["--tokens", "2", "--comparisons", "1", "--prompt", "I hate you because"];

#[test]
fn nothing_listening_fails_at_once_in_one_line_naming_the_address() {
    for url in ["http://127.0.0.1:1", "127.0.0.1:1"] {
        let t = Instant::now();
        let out = steer(&["run", "--url", url, "--add", "1:1:a", "--tokens", "2", "--prompt", "x"]);
        let elapsed = t.elapsed();
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(stderr.starts_with("Error: cannot reach http://127.0.0.1:1: connection refused"), "{stderr}");
        // A guard against retry loops (they took 30 s), not a benchmark.
        assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    }
    let (_, stderr) = text(&steer(&["run", "--url", "ftp://h:1", "--add", "1:1:a", "--prompt", "x"]));
    assert!(stderr.contains("address `ftp://h:1`") && stderr.contains("host:port"), "{stderr}");
}

#[test]
fn one_server_is_reached_by_every_address_form_and_one_url() {
    let s = Server::start();
    let http = format!("http://{}", s.addr);
    for flags in [vec!["--url", &s.addr], vec!["--url", &http], vec!["--activation-url", &s.addr]] {
        let mut args = vec!["run", "--add", "1:2:Love", "--json"];
        args.extend(&flags);
        args.extend(QUICK);
        let out = steer(&args);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{flags:?}: {stderr}");
        // Finish reasons read as everywhere else (OpenAI's words), never enum names.
        assert_eq!(stdout.lines().count(), 2, "{stdout}");
        assert!(stdout.contains(r#""finish_reason":"length""#) && !stdout.contains("FINISH_REASON"), "{stdout}");
    }
    // The options an error suggests exist: a short prompt is padded on request.
    let short = ["run", "--url", &s.addr, "--add", "1:5:I talk about weddings constantly", "--prompt", "Hi", "--tokens", "2", "--comparisons", "1"];
    let (_, stderr) = text(&steer(&short));
    assert!(stderr.contains("--pad-short-prompt") && !stderr.contains("short_prompt = PAD to pad"), "{stderr}");
    assert_eq!(stderr.matches("fewer than the steering").count(), 1, "the gRPC error is printed once: {stderr}");
    assert!(!stderr.contains("caused by"), "{stderr}");
    let mut padded = short.to_vec();
    padded.push("--pad-short-prompt");
    let out = steer(&padded);
    assert!(out.status.success(), "{}", text(&out).1);
    // top_logprobs carry their tokens' text.
    let (stdout, stderr) = text(&steer(&[
        "run",
        "--url",
        &s.addr,
        "--add",
        "1:2:Love",
        "--top-logprobs",
        "2",
        "--json",
        "--tokens",
        "1",
        "--comparisons",
        "1",
        "--prompt",
        "I hate you because",
    ]));
    let row: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap_or_default()).unwrap_or_else(|e| panic!("{e}: {stdout} {stderr}"));
    let alt = &row["tokens"][0]["top_logprobs"][0];
    assert!(alt["text"].is_string() && alt["token_id"].is_u64(), "{row}");
}

#[test]
fn hooks_take_both_spellings_and_layer_errors_read_as_ranges_of_layers() {
    for hook in ["resid-pre", "resid_pre", "block_output", "block-output"] {
        let mut args = vec!["run", "--model", TINY, "--hook", hook, "--add", "1:2:Love"];
        args.extend(QUICK);
        let out = steer(&args);
        assert!(out.status.success(), "{hook}: {}", text(&out).1);
    }
    let mut args = vec!["run", "--model", TINY, "--add", "4:2:Love"];
    args.extend(QUICK);
    let (_, stderr) = text(&steer(&args));
    assert!(stderr.contains("additions[0].layer: layer 4 does not exist (this model has 4 layers, 0 to 3)"), "{stderr}");
    assert!(!stderr.contains("0..4"), "{stderr}");
}

#[test]
fn steering_that_cannot_change_anything_is_warned_about() {
    let mut args = vec!["run", "--model", TINY, "--hook", "block_output", "--add", "3:5:Love"];
    args.extend(QUICK);
    let out = steer(&args);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("warning: block_output.3: no block reads the last block's output"), "{stderr}");
    let mut args = vec!["run", "--model", TINY, "--add", "2:0:Love"];
    args.extend(QUICK);
    let (_, stderr) = text(&steer(&args));
    assert!(stderr.contains("warning: resid_pre.2: the steering tensor is all zeros"), "{stderr}");
    let mut args = vec!["run", "--model", TINY, "--add", "2:3:Love"];
    args.extend(QUICK);
    let (_, stderr) = text(&steer(&args));
    assert!(!stderr.contains("warning"), "{stderr}");
}

#[test]
fn a_vector_follows_its_weights_not_its_file_name() {
    let dir = tempfile::tempdir().unwrap();
    let out = steer_in(dir.path(), &["vector", "save", "love.safetensors", "--add", "2:3:Love", "--model", TINY]);
    assert!(out.status.success(), "{}", text(&out).1);
    let run = |model: &str, force: bool| {
        let mut args = vec!["run", "--model", model, "--vector", "love.safetensors"];
        if force {
            args.push("--force-model");
        }
        args.extend(QUICK);
        steer_in(dir.path(), &args)
    };
    // The same weights in a GGUF file (f32 and f16 files store the embeddings as f32).
    for gguf in ["fixtures/tiny-gpt2-gguf/tiny-gpt2-f32.gguf", "fixtures/tiny-gpt2-gguf/tiny-gpt2-f16.gguf"] {
        let out = run(gguf, false);
        assert!(out.status.success(), "{gguf}: {}", text(&out).1);
    }
    // Other weights of the same shape: refused, naming the override; forced, applied.
    let other = dir.path().join("other");
    let out = steer(&["random-model", "--shape", "tiny", "--seed", "9", "--out", other.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out).1);
    let (_, stderr) = text(&run(other.to_str().unwrap(), false));
    assert!(stderr.contains("model.fingerprint") && stderr.contains("--force-model"), "{stderr}");
    let out = run(other.to_str().unwrap(), true);
    assert!(out.status.success(), "{}", text(&out).1);
    let (stdout, _) = text(&steer_in(dir.path(), &["vector", "show", "love.safetensors"]));
    assert!(stdout.contains("gpt2, d_model 64, 4 layers, weights "), "{stdout}");
}

#[test]
fn library_commands_need_no_model() {
    let dir = tempfile::tempdir().unwrap();
    let out = steer_in(dir.path(), &["vector", "save", "love.safetensors", "--add", "2:3:Love", "--model", TINY]);
    assert!(out.status.success(), "{}", text(&out).1);
    // A model that cannot load: put and list must not try.
    let lib = ["--vector-dir", "lib", "--model", "./no-such-model"];
    let mut put = vec!["vector", "put", "love.safetensors", "--name", "love"];
    put.extend(lib);
    let out = steer_in(dir.path(), &put);
    assert!(out.status.success(), "{}", text(&out).1);
    let mut list = vec!["vector", "list"];
    list.extend(lib);
    let (stdout, stderr) = text(&steer_in(dir.path(), &list));
    assert!(stdout.contains("love") && stderr.contains("1 vectors in lib"), "{stdout} {stderr}");
    assert!(!stderr.contains("loading"), "{stderr}");
}

#[test]
fn eval_defaults_fit_the_model_and_name_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let out = steer_in(dir.path(), &["eval", "perplexity", "--model", TINY, "--out", "out/"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.lines().all(|l| l.len() < 120), "a table a terminal shows: {stdout}");
    assert!(stderr.contains("wrote out/perplexity.{json,csv,svg}") && !stderr.contains("//"), "{stderr}");
    let (_, stderr) = text(&steer_in(dir.path(), &["eval", "perplexity", "--model", TINY, "--layers", "6"]));
    assert!(stderr.contains("--layers: layer 6 does not exist (this model has 4 layers, 0 to 3)"), "{stderr}");
    assert!(!stderr.contains("additions[0]"), "{stderr}");
    // Saved results print again, also into a pipe that closes early: no panic.
    let mut child = Command::new(env!("CARGO_BIN_EXE_steer"))
        .args(["eval", "show", "out/perplexity.json"])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let status = child.wait().unwrap();
    assert_ne!(status.code(), Some(101), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_closed_pipe_ends_the_output_quietly() {
    // 100 KB, more than a pipe holds: the writer meets the closed pipe.
    let mut child = Command::new(env!("CARGO_BIN_EXE_steer"))
        .args(["completions", "bash"])
        .env("RUST_BACKTRACE", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 1];
    child.stdout.as_mut().unwrap().read_exact(&mut first).unwrap();
    drop(child.stdout.take());
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let status = child.wait().unwrap();
    assert_ne!(status.code(), Some(101), "{err}");
    assert!(err.is_empty(), "nothing on stderr: {err}");
}

#[test]
fn a_quantized_checkpoint_serves_in_its_own_type_unless_converted_and_the_load_line_says_so() {
    let q8 = "fixtures/tiny-gpt2-gguf/tiny-gpt2-q8_0.gguf";
    let mut args = vec!["run", "--model", q8, "--add", "2:3:Love"];
    args.extend(QUICK);
    let out = steer(&args);
    let (_, stderr) = text(&out);
    assert!(out.status.success() && stderr.contains("weights q8_0 (as stored)"), "{stderr}");
    args.extend(["--dtype", "f32"]);
    let out = steer(&args);
    let (_, stderr) = text(&out);
    assert!(out.status.success() && stderr.contains("weights f32 (converted from q8_0) by --dtype"), "{stderr}");
}
