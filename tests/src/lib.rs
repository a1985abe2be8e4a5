//! Support for tests that start real processes: Remedy's own binaries and
//! a real Kubernetes control plane.

#![forbid(unsafe_code)]

pub mod cluster;
pub mod datastores;
pub mod fault_proxy;
pub mod findings;

pub mod in_process;
pub mod net_tools;
pub mod procs;
pub mod runs;
pub mod smtp;
pub mod world;
