//! The words every front end prints for the contract's enums (CLI tables and JSON, Python,
//! HTTP): OpenAI's for finish reasons. Hook points and modes are named by `steer-hooks`
//! (`resid_pre.6`, `prefix`); the gRPC JSON route keeps the proto3 JSON mapping.

use crate::v1::FinishReason;

impl FinishReason {
    /// `length` (the token budget), `stop` (the model wrote <|endoftext|>), `cancelled`.
    pub fn name(self) -> &'static str {
        match self {
            FinishReason::Eos => "stop",
            FinishReason::Cancelled => "cancelled",
            FinishReason::Length | FinishReason::Unspecified => "length",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finish_reasons_read_as_openai_writes_them() {
        assert_eq!([FinishReason::Length, FinishReason::Eos, FinishReason::Cancelled].map(FinishReason::name), ["length", "stop", "cancelled"]);
    }
}
