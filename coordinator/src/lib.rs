//! The coordinator: takes findings from agents and alerts from
//! Alertmanager, keeps incidents, and (with the runbook engine) decides and
//! performs cluster-wide actions. `main.rs` wires these modules together.

#![forbid(unsafe_code)]

pub mod actuators;
pub mod admin_service;
pub mod agent_service;
pub mod alertmanager;
pub mod auth;
pub mod bans;
pub mod channels;
pub mod chatops;
pub mod clock;
pub mod config;
pub mod directives;
pub mod edge;
pub mod engine;
pub mod escalator;
pub mod http;
pub mod infrastructure;
pub mod leader;
pub mod listing;
pub mod metrics;
pub mod recorder;
pub mod registry;
pub mod reports;
pub mod runbooks;
pub mod store;
