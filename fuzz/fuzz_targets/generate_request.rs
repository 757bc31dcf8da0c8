//! A `Generate` request stream decoded from arbitrary protobuf bytes, read and validated against
//! the tiny model exactly as the worker does: an error names a field, never a panic, and nothing
//! past the byte budgets is reserved.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use prost::Message;
use steer_common::Budget;
use steer_generation::read::{self, ReadLimits};
use steer_generation::{validation, GenerationConfig};
use steer_model::{Engine, LoadOptions, ModelSource};
use steer_proto::v1::GenerateRequest;

fn engine() -> &'static Arc<Engine> {
    static E: OnceLock<Arc<Engine>> = OnceLock::new();
    E.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/tiny-gpt2");
        Arc::new(Engine::load(&ModelSource::Dir(dir), &LoadOptions::default()).expect("tiny fixture"))
    })
}

fuzz_target!(|messages: Vec<Vec<u8>>| {
    let msgs: Vec<_> = messages.iter().filter_map(|m| GenerateRequest::decode(m.as_slice()).ok()).map(Ok).collect();
    let limits = ReadLimits {
        max_tensors: 8,
        max_tensor_bytes: 1024 * 64 * 4,
        max_request_bytes: 4 << 20,
        read_timeout: Duration::from_secs(1),
        inflight: Budget::new("--max-inflight-bytes", "bytes", 8 << 20, 1024),
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let raw = rt.block_on(read::from_stream(tokio_stream::iter(msgs), &limits));
    if let Ok(raw) = raw {
        let cfg = GenerationConfig::default();
        if let Ok(valid) = validation::validate(raw, vec![], engine(), &cfg) {
            assert!(valid.kv_positions() <= cfg.max_batch_tokens);
        }
    }
    assert_eq!(limits.inflight.in_use(), 0, "every byte given back");
});
