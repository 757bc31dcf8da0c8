//! Library vectors in generation requests (`GenerateSetup.vectors`): each referenced by its
//! content digest, fetched once from the vector library (in this process, or the activation
//! worker's over gRPC) and cached by digest, so a cached vector is never stale: a digest names
//! one content forever. Each reference is checked against this worker's model, scaled and
//! narrowed to its layer range here; validation then treats its tensors like streamed ones.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use steer_common::convert;
use steer_common::ServiceError;
use steer_proto::v1::activation_service_client::ActivationServiceClient;
use steer_proto::v1::{GetVectorRequest, VectorRef};
use steer_vector::{Library, ModelRef, Op, SteeringVector, VectorError, VectorTensor, Window};
use tonic::transport::Channel;

/// Where a worker finds library vectors.
#[derive(Clone, Default)]
pub enum VectorSource {
    /// None: a request that references one gets FAILED_PRECONDITION.
    #[default]
    None,
    /// The library of this process (both services embedded).
    Local(Arc<Library>),
    /// An activation worker's library, over gRPC (`token`: its bearer token, if it wants one).
    Remote { client: ActivationServiceClient<Channel>, token: Option<String> },
}

impl VectorSource {
    /// An activation worker at `url` (`http://`, or `https://` trusting `ca_pem` or else the
    /// system's roots), dialled on first use.
    pub fn remote(url: &str, token: Option<String>, ca_pem: Option<&[u8]>) -> Result<Self, String> {
        let mut ep = tonic::transport::Endpoint::from_shared(url.to_string()).map_err(|e| format!("{url}: {e}"))?;
        if url.starts_with("https://") {
            let tls = match ca_pem {
                Some(pem) => tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(pem)),
                None => tonic::transport::ClientTlsConfig::new().with_native_roots(),
            };
            ep = ep.tls_config(tls).map_err(|e| format!("{url}: {e}"))?;
        }
        let ep = ep.connect_timeout(std::time::Duration::from_secs(5)).timeout(std::time::Duration::from_secs(60));
        Ok(Self::Remote { client: ActivationServiceClient::new(ep.connect_lazy()).max_decoding_message_size(64 << 20), token })
    }
}

/// One tensor a reference contributes, ready for validation.
#[derive(Debug, Clone)]
pub struct RefTensor {
    /// `setup.vectors[i]`.
    pub field: String,
    pub mode: Window,
    pub op: Op,
    pub tensor: VectorTensor,
}

/// Fetched vectors by digest, bounded by bytes (cleared when full: they are fetched again).
pub struct VectorCache {
    source: VectorSource,
    cached: DashMap<String, Arc<SteeringVector>>,
    bytes: AtomicU64,
    max_bytes: u64,
}

impl VectorCache {
    pub fn new(source: VectorSource, max_bytes: u64) -> Self {
        Self { source, cached: DashMap::new(), bytes: AtomicU64::new(0), max_bytes }
    }

    /// Vectors held now.
    pub fn len(&self) -> usize {
        self.cached.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cached.is_empty()
    }

    async fn fetch(&self, digest: &str, field: &str) -> Result<Arc<SteeringVector>, ServiceError> {
        if let Some(v) = self.cached.get(digest) {
            return Ok(v.clone());
        }
        let v = match &self.source {
            VectorSource::None => {
                return Err(ServiceError::FailedPrecondition(format!("{field}: this generation worker has no vector library (--vector-source)")))
            }
            VectorSource::Local(lib) => lib.get(digest).map_err(|e| not_found(e, field))?.0,
            VectorSource::Remote { client, token } => {
                let mut req = tonic::Request::new(GetVectorRequest { r#ref: digest.to_string() });
                steer_telemetry::inject_current(req.metadata_mut());
                if let Some(t) = token {
                    if let Ok(v) = format!("Bearer {t}").parse() {
                        req.metadata_mut().insert("authorization", v);
                    }
                }
                let resp = client.clone().get_vector(req).await.map_err(|s| match s.code() {
                    tonic::Code::NotFound => ServiceError::invalid(format!("{field}.digest"), format!("{digest}: no such vector in the library")),
                    _ => ServiceError::Unavailable(format!("{field}: fetching the vector from the library failed: {}", s.message())),
                })?;
                let data = resp.into_inner().vector.map(|f| f.data).unwrap_or_default();
                SteeringVector::from_bytes(&data)?
            }
        };
        if v.digest() != digest {
            return Err(ServiceError::Internal(format!("{field}: the library answered {} for {digest}", v.digest())));
        }
        let v = Arc::new(v);
        let size = v.tensors.iter().map(|t| t.values.len() as u64 * 4).sum::<u64>();
        if self.bytes.fetch_add(size, Ordering::Relaxed) + size > self.max_bytes {
            self.cached.clear();
            self.bytes.store(size, Ordering::Relaxed);
        }
        self.cached.insert(digest.to_string(), v.clone());
        Ok(v)
    }

    /// The tensors of every reference: fetched, checked against `model`, narrowed to the
    /// reference's layers and scaled.
    pub async fn resolve(&self, refs: &[VectorRef], model: &ModelRef) -> Result<Vec<RefTensor>, ServiceError> {
        let mut out = vec![];
        for (i, r) in refs.iter().enumerate() {
            let field = format!("setup.vectors[{i}]");
            if r.digest.len() != 64 || !r.digest.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ServiceError::invalid(format!("{field}.digest"), format!("`{}`: a vector's digest is 64 hex digits", r.digest)));
            }
            let scale = r.scale.unwrap_or(1.0);
            if !scale.is_finite() {
                return Err(ServiceError::invalid(format!("{field}.scale"), "must be finite"));
            }
            let layers = match (r.first_layer, r.last_layer) {
                (None, None) => None,
                (a, b) => Some((a.unwrap_or(0), b.unwrap_or(u32::MAX))),
            };
            if let Some((a, b)) = layers.filter(|(a, b)| a > b) {
                return Err(ServiceError::invalid(format!("{field}.first_layer"), format!("{a} > last_layer {b}")));
            }
            let v = self.fetch(&r.digest.to_ascii_lowercase(), &field).await?;
            v.check_model_or_shape(model, r.force_model).map_err(|e| e.within(&field))?;
            let tensors = v.applied(scale as f32, layers);
            if tensors.is_empty() {
                return Err(ServiceError::invalid(format!("{field}.first_layer"), "no tensor of the vector is in the layer range"));
            }
            let (mode, op) = steering(r, &v, &field)?;
            out.extend(tensors.into_iter().map(|tensor| RefTensor { field: field.clone(), mode, op, tensor }));
        }
        Ok(out)
    }
}

/// The window and op a reference applies its vector with: the file's, unless it says others.
fn steering(r: &VectorRef, v: &SteeringVector, field: &str) -> Result<(Window, Op), ServiceError> {
    let mode = match r.mode {
        0 => v.mode(),
        m => convert::window(m, r.window_start, r.window_end, field)?,
    };
    let filed = match v.op() {
        Op::Clamp { value } => Some(value),
        _ => None,
    };
    let op = match (r.op, r.clamp_value) {
        (0, None) => v.op(),
        (0, Some(c)) if filed.is_some() => convert::op(steer_proto::v1::SteeringOp::Clamp as i32, c, field)?,
        (0, Some(_)) => {
            return Err(ServiceError::invalid(
                format!("{field}.clamp_value"),
                format!("the vector is {}, not clamp; set op CLAMP too", v.op().name()),
            ))
        }
        (o, c) if o == steer_proto::v1::SteeringOp::Clamp as i32 => match c.or(filed) {
            Some(c) => convert::op(o, c, field)?,
            None => return Err(ServiceError::invalid(format!("{field}.clamp_value"), "CLAMP needs a value (the vector records none)")),
        },
        (o, _) => convert::op(o, 0.0, field)?,
    };
    Ok((mode, op))
}

fn not_found(e: VectorError, field: &str) -> ServiceError {
    match e {
        VectorError::NotFound(d) => ServiceError::invalid(format!("{field}.digest"), format!("{d}: no such vector in the library")),
        other => other.into(),
    }
}
