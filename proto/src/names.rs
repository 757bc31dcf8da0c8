//! The words every front end prints for the contract's enums (CLI tables and JSON, Python,
//! HTTP): OpenAI's for finish reasons. Hook points and modes are named by `steer-hooks`
//! (`resid_pre.6`, `prefix`); the gRPC JSON route keeps the proto3 JSON mapping.

use crate::v1::FinishReason;

impl FinishReason {
    /// `length` (the token budget), `stop` (the model wrote <|endoftext|>, or a stop string
    /// appeared), `cancelled`.
    pub fn name(self) -> &'static str {
        match self {
            FinishReason::Eos | FinishReason::Stop => "stop",
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
        let all = [FinishReason::Length, FinishReason::Eos, FinishReason::Cancelled, FinishReason::Stop];
        assert_eq!(all.map(FinishReason::name), ["length", "stop", "cancelled", "stop"]);
    }
}
