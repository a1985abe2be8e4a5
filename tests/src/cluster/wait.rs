//! Waiting for conditions with a deadline, by polling.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};

/// Polls `check` until it yields `Some`, for at most `timeout`.
///
/// `check` returning `Ok(None)` means "not yet"; an `Err` is remembered and
/// polling goes on (API calls can fail while a component starts). On timeout
/// the error names `what` and carries the last error seen. The interval grows
/// from 20 ms to 500 ms.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let start = Instant::now();
    let deadline = start + timeout;
    let mut interval = Duration::from_millis(20);
    let mut last_error: Option<anyhow::Error> = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        let now = Instant::now();
        if now >= deadline {
            let waited = now - start;
            return Err(match last_error {
                Some(e) => e.context(format!("timed out after {waited:?} waiting for {what}")),
                None => anyhow!("timed out after {waited:?} waiting for {what}"),
            });
        }
        tokio::time::sleep(interval.min(deadline - now)).await;
        interval = (interval * 2).min(Duration::from_millis(500));
    }
}

/// Like [`wait_for`] for a condition that is simply true or false.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    wait_for(what, timeout, || {
        let fut = check();
        async move { Ok(fut.await?.then_some(())) }
    })
    .await
}
