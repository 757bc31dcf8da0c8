//! Reading a generation request off the wire, apart from validating it: a `Generate` stream (the
//! setup, then each tensor's header and chunks) or a `GenerateFromTensors` message (tensors
//! inline) both become one [`RawRequest`], which `validation` checks. Reading checks only what
//! the wire itself promises (headers that add up, chunks in order) and charges memory before
//! anything is reserved: each header against the per-tensor and per-request caps (INVALID_ARGUMENT)
//! and the worker's in-flight byte budget (RESOURCE_EXHAUSTED), whose reservation the request
//! then holds until it leaves the worker.

use std::time::Duration;

use steer_common::{Budget, Reservation, ServiceError};
use steer_proto::v1::{generate_request, GenerateFromTensorsRequest, GenerateRequest, GenerateSetup, TensorHeader};
use steer_proto::wire::{TensorAssembler, WireError};
use tokio_stream::{Stream, StreamExt};
use tonic::Status;

/// Most bytes of steering tensors inline in one GenerateFromTensors request.
pub const MAX_INLINE_BYTES: usize = 3 << 20;

/// A request as received: not yet validated.
#[derive(Debug)]
pub struct RawRequest {
    pub setup: GenerateSetup,
    pub tensors: Vec<WireTensor>,
    /// Its share of the worker's in-flight byte budget.
    pub memory: Reservation,
}

/// A steering tensor as received, its values widened to f32 (its wire dtype in the header).
#[derive(Debug, Clone)]
pub struct WireTensor {
    pub header: TensorHeader,
    pub values: Vec<f32>,
}

/// What reading refuses before allocating.
#[derive(Debug, Clone)]
pub struct ReadLimits {
    pub max_tensors: usize,
    /// Bytes one tensor may declare (a `[n_positions, d_model]` f32 tensor is the largest useful).
    pub max_tensor_bytes: u64,
    /// Bytes all tensors of one request may hold (read, then widened to f32).
    pub max_request_bytes: u64,
    /// Longest wait for the next message of a request stream.
    pub read_timeout: Duration,
    /// Bytes all requests of the worker may hold at once.
    pub inflight: Budget,
}

impl ReadLimits {
    /// Charges a tensor with this header to the request and the worker before it is allocated.
    fn charge(&self, header: &TensorHeader, field: &str, memory: &mut Reservation, held: &mut u64) -> Result<(), ServiceError> {
        let (dtype, bytes) = TensorAssembler::check(header, self.max_tensor_bytes).map_err(|e| wire_error(field, e))?;
        *held += TensorAssembler::held_bytes(dtype, bytes);
        if *held > self.max_request_bytes {
            let max = self.max_request_bytes;
            return Err(ServiceError::invalid(
                format!("{field}.shape"),
                format!("the request's tensors would hold {held} bytes; at most {max} per request (--max-request-bytes)"),
            ));
        }
        memory.merge(self.inflight.try_take(TensorAssembler::held_bytes(dtype, bytes))?);
        Ok(())
    }
}

fn wire_error(field: &str, e: WireError) -> ServiceError {
    let part = match e {
        WireError::TooLarge { .. } => "shape",
        WireError::Dtype(_) => "dtype",
        WireError::HeaderBytes { .. } => "total_bytes",
        _ => "chunks",
    };
    ServiceError::invalid(format!("{field}.{part}"), e.to_string())
}

/// The next message, or DEADLINE_EXCEEDED when none comes within the read timeout (a client
/// that opens a stream and sends nothing holds nothing for long).
async fn next<S>(stream: &mut S, limits: &ReadLimits) -> Result<Option<Result<GenerateRequest, Status>>, ServiceError>
where
    S: Stream<Item = Result<GenerateRequest, Status>> + Unpin,
{
    tokio::time::timeout(limits.read_timeout, stream.next()).await.map_err(|_| {
        let secs = limits.read_timeout.as_secs_f64();
        ServiceError::DeadlineExceeded(format!("request stream: nothing received for {secs:.0} s (--read-timeout-secs)"))
    })
}

/// Reads the setup, then `setup.n_tensors` tensors, from a `Generate` request stream.
pub async fn from_stream<S>(mut stream: S, limits: &ReadLimits) -> Result<RawRequest, ServiceError>
where
    S: Stream<Item = Result<GenerateRequest, Status>> + Unpin,
{
    let setup = match next(&mut stream, limits).await? {
        Some(Ok(GenerateRequest { msg: Some(generate_request::Msg::Setup(s)) })) => s,
        Some(Ok(_)) => return Err(ServiceError::invalid("setup", "the first message must be a GenerateSetup")),
        Some(Err(s)) => return Err(ServiceError::Stream(s)),
        None => return Err(ServiceError::invalid("setup", "empty request stream")),
    };
    let n = tensor_count(&setup, limits)?;
    let mut tensors = Vec::with_capacity(n);
    let (mut memory, mut held) = (Reservation::default(), 0);
    for i in 0..n {
        let field = format!("tensors[{i}]");
        let header = match next(&mut stream, limits).await? {
            Some(Ok(GenerateRequest { msg: Some(generate_request::Msg::Tensor(h)) })) => h,
            Some(Ok(_)) => return Err(ServiceError::invalid(&field, "expected a TensorHeader")),
            Some(Err(s)) => return Err(ServiceError::Stream(s)),
            None => return Err(ServiceError::invalid(&field, format!("stream ended after {i} of {n} tensors"))),
        };
        limits.charge(&header, &field, &mut memory, &mut held)?;
        let mut asm = TensorAssembler::new(header, limits.max_tensor_bytes).map_err(|e| wire_error(&field, e))?;
        while !asm.is_complete() {
            match next(&mut stream, limits).await? {
                Some(Ok(GenerateRequest { msg: Some(generate_request::Msg::Chunk(c)) })) => asm.push(&c).map_err(|e| wire_error(&field, e))?,
                Some(Ok(_)) => return Err(ServiceError::invalid(format!("{field}.chunks"), "chunks do not add up to the declared shape")),
                Some(Err(s)) => return Err(ServiceError::Stream(s)),
                None => return Err(ServiceError::invalid(format!("{field}.chunks"), "stream ended before the declared bytes")),
            }
        }
        let (header, _, values) = asm.finish_f32().map_err(|e| wire_error(&field, e))?;
        tensors.push(WireTensor { header, values });
    }
    Ok(RawRequest { setup, tensors, memory })
}

/// A `GenerateFromTensors` request: the same checks, no re-chunking.
pub fn from_inline(req: GenerateFromTensorsRequest, limits: &ReadLimits) -> Result<RawRequest, ServiceError> {
    let setup = req.setup.ok_or_else(|| ServiceError::invalid("setup", "missing"))?;
    let total: usize = req.tensors.iter().map(|t| t.data.len()).sum();
    if total > MAX_INLINE_BYTES {
        return Err(ServiceError::invalid("tensors", format!("{total} bytes inline; at most {MAX_INLINE_BYTES} (use Generate)")));
    }
    let n = tensor_count(&setup, limits)?;
    if req.tensors.len() != n {
        return Err(ServiceError::invalid("tensors", format!("{} tensors inline, setup.n_tensors says {n}", req.tensors.len())));
    }
    let mut tensors = Vec::with_capacity(n);
    let (mut memory, mut held) = (Reservation::default(), 0);
    for (i, t) in req.tensors.into_iter().enumerate() {
        let field = format!("tensors[{i}]");
        let header = t.header.ok_or_else(|| ServiceError::invalid(format!("{field}.header"), "missing"))?;
        limits.charge(&header, &field, &mut memory, &mut held)?;
        let (header, _, values) = TensorAssembler::whole(header, &t.data, limits.max_tensor_bytes).map_err(|e| wire_error(&field, e))?;
        tensors.push(WireTensor { header, values });
    }
    Ok(RawRequest { setup, tensors, memory })
}

fn tensor_count(setup: &GenerateSetup, limits: &ReadLimits) -> Result<usize, ServiceError> {
    let n = setup.n_tensors as usize;
    if n > limits.max_tensors {
        return Err(ServiceError::invalid("setup.n_tensors", format!("{n}: at most {} steering tensors", limits.max_tensors)));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use steer_proto::v1::InlineTensor;
    use steer_proto::wire;

    fn limits() -> ReadLimits {
        ReadLimits {
            max_tensors: 4,
            max_tensor_bytes: 1 << 20,
            max_request_bytes: 2 << 20,
            read_timeout: Duration::from_secs(5),
            inflight: Budget::new("--max-inflight-bytes", "tensor bytes in flight", 4 << 20, 1024),
        }
    }

    fn setup(n: u32) -> GenerateSetup {
        GenerateSetup { prompt: "x".into(), n_tensors: n, ..Default::default() }
    }

    fn msgs(values: &[f32], shape: &[usize]) -> Vec<GenerateRequest> {
        let (h, chunks) = wire::encode_f32(values, shape, None, 0);
        let mut v = vec![GenerateRequest { msg: Some(generate_request::Msg::Setup(setup(1))) }];
        v.push(GenerateRequest { msg: Some(generate_request::Msg::Tensor(h)) });
        v.extend(chunks.into_iter().map(|c| GenerateRequest { msg: Some(generate_request::Msg::Chunk(c)) }));
        v
    }

    #[tokio::test]
    async fn stream_and_inline_read_to_the_same_request() {
        let values: Vec<f32> = (0..8).map(|i| i as f32).collect();
        let streamed = from_stream(tokio_stream::iter(msgs(&values, &[2, 4]).into_iter().map(Ok)), &limits()).await.unwrap();
        let (header, chunks) = wire::encode_f32(&values, &[2, 4], None, 0);
        let inline =
            GenerateFromTensorsRequest { setup: Some(setup(1)), tensors: vec![InlineTensor { header: Some(header), data: chunks[0].data.clone() }] };
        let inline = from_inline(inline, &limits()).unwrap();
        assert_eq!(streamed.tensors[0].values, values);
        assert_eq!(inline.tensors[0].values, values);
        assert_eq!(streamed.tensors[0].header, inline.tensors[0].header);
    }

    #[tokio::test]
    async fn a_huge_header_is_refused_before_any_byte() {
        let mut m = msgs(&[0.0; 4], &[1, 4]);
        if let Some(generate_request::Msg::Tensor(h)) = &mut m[1].msg {
            h.shape = vec![67_108_864, 64];
            h.total_bytes = 67_108_864 * 64 * 4;
        }
        m.truncate(2);
        let err = from_stream(tokio_stream::iter(m.into_iter().map(Ok)), &limits()).await.unwrap_err();
        assert!(err.to_string().starts_with("tensors[0].shape"), "{err}");
    }

    fn header(shape: &[u64]) -> TensorHeader {
        let (mut h, _) = wire::encode_f32(&[0.0; 4], &[1, 4], None, 0);
        h.shape = shape.to_vec();
        h.total_bytes = shape.iter().product::<u64>() * 4;
        h
    }

    #[tokio::test]
    async fn bytes_are_charged_per_request_and_to_the_worker_while_held() {
        let l = limits();
        // 256 Ki f32 = 1 MiB on the wire, 2 MiB held: within one request's cap...
        let head = |shape: &[u64]| {
            let mut m = vec![GenerateRequest { msg: Some(generate_request::Msg::Setup(setup(2))) }];
            m.push(GenerateRequest { msg: Some(generate_request::Msg::Tensor(header(shape))) });
            m
        };
        // ... a second such tensor in the same request passes the per-request cap, before any byte.
        let mut two = head(&[1024, 256]);
        two.push(GenerateRequest { msg: Some(generate_request::Msg::Chunk(steer_proto::v1::TensorChunk { offset: 0, data: vec![0; 1 << 20] })) });
        two.push(GenerateRequest { msg: Some(generate_request::Msg::Tensor(header(&[1024, 256]))) });
        let err = from_stream(tokio_stream::iter(two.into_iter().map(Ok)), &l).await.unwrap_err();
        assert!(err.to_string().starts_with("tensors[1].shape") && err.to_string().contains("--max-request-bytes"), "{err}");
        assert_eq!(l.inflight.in_use(), 0, "a failed read gives its bytes back");
        // Two requests each holding 2 MiB of the 4 MiB budget: a third waits for none and is refused.
        let full = |n| {
            let values = vec![0.5f32; 1024 * 256];
            let (h, chunks) = wire::encode_f32(&values, &[1024, 256], None, 0);
            let mut m = vec![GenerateRequest { msg: Some(generate_request::Msg::Setup(setup(n))) }];
            m.push(GenerateRequest { msg: Some(generate_request::Msg::Tensor(h)) });
            m.extend(chunks.into_iter().map(|c| GenerateRequest { msg: Some(generate_request::Msg::Chunk(c)) }));
            m
        };
        let a = from_stream(tokio_stream::iter(full(1).into_iter().map(Ok)), &l).await.unwrap();
        let b = from_stream(tokio_stream::iter(full(1).into_iter().map(Ok)), &l).await.unwrap();
        let err = from_stream(tokio_stream::iter(head(&[4, 4]).into_iter().map(Ok)), &l).await.unwrap_err();
        assert!(matches!(err, ServiceError::ResourceExhausted(_)) && err.to_string().contains("--max-inflight-bytes"), "{err}");
        drop((a, b));
        assert_eq!(l.inflight.in_use(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_stream_times_out() {
        let first = tokio_stream::iter(msgs(&[0.0; 4], &[1, 4]).into_iter().take(1).map(Ok));
        let silent = first.chain(tokio_stream::pending());
        let err = from_stream(silent, &limits()).await.unwrap_err();
        assert!(matches!(err, ServiceError::DeadlineExceeded(_)), "{err}");
    }

    #[test]
    fn inline_tensors_must_match_n_tensors() {
        let extra = GenerateFromTensorsRequest { setup: Some(setup(0)), tensors: vec![InlineTensor::default()] };
        assert!(from_inline(extra, &limits()).unwrap_err().to_string().starts_with("tensors:"));
        let many = GenerateFromTensorsRequest { setup: Some(setup(5)), tensors: vec![] };
        assert!(from_inline(many, &limits()).unwrap_err().to_string().starts_with("setup.n_tensors"));
    }
}
