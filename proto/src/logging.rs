//! How the binaries log: to stderr, filtered by `REMEDY_LOG` (default
//! `info`), as text or as one JSON object a line.

/// Installs the process's tracing subscriber: `format` `json` writes one
/// JSON object a line, anything else human-readable text, coloured only on
/// a terminal. Call once, first thing in `main`.
pub fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("REMEDY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A log sink that went away (a closed pipe) must not stop the
        // process: by default a failed write is reported with `eprintln!`,
        // which panics on that same closed stderr, in whichever task logged,
        // and the signal task that logs "stopping" was one of them.
        .log_internal_errors(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
