//! Remedy's node agent as a library: every part of `remedy-agent`, so that
//! each can be built and tested on its own; `main.rs` wires them together.
//!
//! The modules form layers, and imports only go down:
//!
//! - leaves, which import nothing of the agent: [`clock`], [`handler`]
//!   (a directive's request, reply and outcome, and the table of who runs
//!   which), [`published`] (a status one task keeps and others read),
//!   [`infrastructure`] (the addresses never reported nor blocked),
//!   [`spool`];
//! - [`outbox`] (the spool and its wake-up), [`detectors`], [`signals`];
//! - the features, each owning its configuration section, status and
//!   metrics: [`logs`], [`pods`], [`nft`], [`local`], [`procsig`],
//!   [`reach`], [`snapshot`];
//! - what joins them: [`config`] (the file and flags, into each feature's
//!   section), [`metrics`] (one registry), [`directives`] (the executor),
//!   [`stream`] (the link to the coordinator) and [`diagnostics`] (the
//!   local endpoint).

#![forbid(unsafe_code)]

pub mod clock;
pub mod config;
pub mod detectors;
pub mod diagnostics;
pub mod directives;
pub mod handler;
pub mod identity;
pub mod infrastructure;
pub mod local;
pub mod logs;
pub mod metrics;
pub mod nft;
pub mod outbox;
pub mod pods;
pub mod procsig;
pub mod published;
pub mod reach;
pub mod signals;
pub mod snapshot;
pub mod spool;
pub mod stream;
