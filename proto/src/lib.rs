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
pub mod listen;
pub mod logging;
#[cfg(feature = "pki")]
pub mod pki;
pub mod selfmetrics;
pub mod shutdown;
pub mod tls;
pub mod tokens;
pub mod watch;

/// Largest gRPC message either side accepts, bytes. A finding batch above
/// it is refused with RESOURCE_EXHAUSTED, so one runaway agent cannot make
/// the coordinator buffer without bound.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Largest finding the agent takes, encoded on the wire, bytes. A finding
/// above it could never be delivered, so it is refused when submitted
/// rather than spooled to block delivery; it fits a batch of its own.
pub const MAX_FINDING_BYTES: usize = 1024 * 1024;

/// The most one finding batch carries, encoded, bytes (a batch holds at
/// least one finding, which [`MAX_FINDING_BYTES`] keeps below it). Half of
/// [`MAX_MESSAGE_BYTES`]: however large the findings a spool holds, a
/// batch never reaches the limit that would make the coordinator refuse
/// it and the stream break on every reconnection.
pub const MAX_BATCH_BYTES: usize = MAX_MESSAGE_BYTES / 2;

/// The most one page of an admin listing carries, encoded, bytes: half of
/// [`MAX_MESSAGE_BYTES`], so that no content, however large, makes a list
/// answer pass the limit; the caller follows the page token for the rest.
pub const MAX_PAGE_BYTES: usize = MAX_MESSAGE_BYTES / 2;

/// The largest item a listing serves as it is, encoded, bytes: alone on its
/// page it still leaves room below [`MAX_MESSAGE_BYTES`] for the answer's
/// other fields. A larger item is listed in a reduced form.
pub const MAX_LISTED_ITEM_BYTES: usize = MAX_MESSAGE_BYTES - 64 * 1024;

/// Bytes a message takes as one item of a repeated field numbered below 16
/// (every listing's items are field 1): the message with its tag and
/// length prefix.
pub fn list_entry_len<M: prost::Message>(item: &M) -> usize {
    let len = item.encoded_len();
    1 + prost::length_delimiter_len(len) + len
}

/// Bytes a finding takes in a `FindingBatch`: the message with its field
/// tag and length prefix.
pub fn batch_entry_len(finding: &v1::SequencedFinding) -> usize {
    list_entry_len(finding)
}
