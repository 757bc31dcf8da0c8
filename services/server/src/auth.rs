//! Bearer-token authentication in front of every service: a call without
//! `authorization: Bearer TOKEN` naming one of the configured tokens is answered
//! UNAUTHENTICATED before it reaches a service. Tokens are compared in constant time. Health
//! (for probes) and the dashboard's static files (which hold nothing) stay open; with no tokens
//! configured the layer passes everything.

use subtle::ConstantTimeEq;
use tonic::codegen::http;
use tonic::Status;

use crate::answer_early::AnswerEarlyLayer;

/// Paths served without a token.
fn open(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/") || path.starts_with("/dashboard")
}

/// True when `presented` equals one of `tokens`; every token is compared, each in constant time.
fn accepted(tokens: &[Vec<u8>], presented: &[u8]) -> bool {
    tokens.iter().fold(0u8, |ok, t| ok | t.as_slice().ct_eq(presented).unwrap_u8()) == 1
}

/// Refuses calls without an accepted token; with no tokens configured, passes everything.
pub fn layer(tokens: &[String]) -> AnswerEarlyLayer {
    let tokens = Tokens::new(tokens);
    AnswerEarlyLayer::new(move |req| tokens.refuse(req))
}

/// The accepted tokens.
#[derive(Debug, Clone)]
pub struct Tokens(std::sync::Arc<[Vec<u8>]>);

impl Tokens {
    pub fn new(tokens: &[String]) -> Self {
        Self(tokens.iter().map(|t| t.as_bytes().to_vec()).collect())
    }

    /// UNAUTHENTICATED for a request that needs a token and has no accepted one.
    pub fn check(&self, req: &http::request::Parts) -> Result<(), Status> {
        if self.0.is_empty() || open(req.uri.path()) {
            return Ok(());
        }
        let presented = req.headers.get(http::header::AUTHORIZATION).and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
        let status = match presented {
            None => Status::unauthenticated("missing bearer token (authorization: Bearer TOKEN)"),
            Some(t) if !accepted(&self.0, t) => Status::unauthenticated("invalid bearer token"),
            Some(_) => return Ok(()),
        };
        tracing::warn!(path = req.uri.path(), "unauthenticated call refused");
        Err(status)
    }

    /// [`Tokens::check`] as a gRPC response, or None to pass the request on.
    pub fn refuse(&self, req: &http::request::Parts) -> Option<http::Response<tonic::body::Body>> {
        self.check(req).err().map(Status::into_http)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_configured_token_is_accepted() {
        let tokens = vec![b"0123456789abcdef".to_vec(), b"fedcba9876543210".to_vec()];
        assert!(accepted(&tokens, b"fedcba9876543210"));
        assert!(!accepted(&tokens, b"fedcba987654321"));
        assert!(!accepted(&tokens, b""));
        assert!(!accepted(&[], b"anything"));
        assert!(open("/grpc.health.v1.Health/Check") && !open("/steer.v1.GenerationService/Generate"));
    }
}
