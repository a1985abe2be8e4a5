//! How the binaries hear that they should stop: SIGTERM (Kubernetes, a
//! service manager) or SIGINT (Ctrl-C).

use std::future::Future;

use tokio::signal::unix::{SignalKind, signal};

/// Starts listening for SIGTERM and SIGINT now, and resolves at the first
/// one. Called first thing, before the process serves anything: a signal
/// that arrives while it is still starting then stops it cleanly, instead
/// of the default action killing it mid-way. Needs a Tokio runtime.
pub fn listen() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}
