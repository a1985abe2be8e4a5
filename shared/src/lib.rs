//! Remedy's domain.
//!
//! Everything here decides and nothing here does I/O: no network, no clock,
//! no files. Callers pass the current time and the inputs; functions return
//! what should happen. That keeps every decision testable without a
//! cluster, and keeps protobuf and Kubernetes types out of the core.

#![forbid(unsafe_code)]

pub mod alert;
pub mod audit;
pub mod auth;
pub mod backoff;
pub mod breaker;
pub mod budget;
pub mod catalog;
pub mod cleanup;
pub mod comms;
pub mod config;
pub mod connections;
pub mod detector;
pub mod escalation;
pub mod failover;
pub mod finding;
pub mod guard;
pub mod inbound;
pub mod incident;
pub mod limits;
pub mod logs;
pub mod oncall;
pub mod paging;
pub mod pgwire;
pub mod report;
pub mod review;
pub mod run;
pub mod runbook;
pub mod sequence;
pub mod signals;
pub mod spool;
pub mod sync;
pub mod text;
pub mod time;

pub use finding::{Finding, FindingKind, FindingState, Severity};
pub use time::Timestamp;
