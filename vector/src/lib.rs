//! `steer-vector`: steering vectors as artifacts, shared by the services and the clients.
//!
//! - [`format`]: a vector file is safetensors with one `[k, d_model]` f32 tensor per hook point
//!   (named `resid_pre.6`, `block_output.20`) and JSON metadata (model, mode, where it came
//!   from: additions with prompts, token ids, coefficients, padding and BOS, or contrast
//!   pairs), and a content digest over what steers (mode, points, values), checked on load.
//! - [`gguf`]: llama.cpp control vectors (`direction.N`, `controlvector.*`), both ways;
//!   [`file`]: reading and writing either kind by path.
//! - Hook points, windows and ops are `steer-hooks`' types, re-exported here.
//! - [`sae`]: vectors from a sparse autoencoder's decoder rows (SAELens's on-disk layout).
//! - [`library`]: a bounded on-disk store of vector files by name and digest.

pub mod error;
pub mod file;
pub mod format;
pub mod gguf;
pub mod library;
pub mod sae;

pub use error::{Result, VectorError};
pub use format::{AdditionMeta, Metadata, ModelRef, Origin, SteeringVector, VectorTensor, FORMAT};
pub use library::{Library, LibraryConfig};
pub use sae::{Sae, SaeConfig};
pub use steer_hooks::{HookKind, HookPoint, Op, Window};
