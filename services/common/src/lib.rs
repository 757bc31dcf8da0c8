//! `steer-common`: what the activation and generation workers share, so each concept has one
//! home: the conversions between the contract's types and the engine's ([`convert`]), the
//! limits shared by a worker's requests ([`budget`]), and the services' one error type with its
//! one mapping to `tonic::Status` ([`error`]).

pub mod budget;
pub mod convert;
pub mod error;
pub mod steering;

pub use budget::{Budget, Reservation};
pub use error::ServiceError;
