//! Remedy's wire protocol, generated from `proto/remedy/v1/*.proto`.
//!
//! The protocol carries no behaviour: conversions between it and the
//! domain types live in [`convert`], one module beside the generated code,
//! so the protocol can evolve without touching the domain. Beside it are the runtime pieces the three
//! binaries share: TLS, tokens, the local PKI, how they log and how they
//! hear to stop.

/// Package `remedy.v1`.
pub mod v1 {
    #![allow(missing_docs, clippy::all, clippy::pedantic, missing_debug_implementations)]
    tonic::include_proto!("remedy.v1");
}

pub mod convert;
pub mod interfaces;
pub mod logging;
#[cfg(feature = "pki")]
pub mod pki;
pub mod shutdown;
pub mod tls;
pub mod tokens;

/// Largest gRPC message either side accepts, bytes. A finding batch above
/// it is refused with RESOURCE_EXHAUSTED, so one runaway agent cannot make
/// the coordinator buffer without bound.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
