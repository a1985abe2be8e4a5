//! The connection to the coordinator and what its errors mean to the
//! person at the terminal.

use std::time::Duration;

use remedy_proto::MAX_MESSAGE_BYTES;
use remedy_proto::v1::admin_service_client::AdminServiceClient;
use tonic::transport::{Channel, Endpoint};

use crate::output::Format;
use crate::who;

/// What every online command needs: the client, where it points, how to
/// print, and who gives commands that change something.
#[derive(Debug)]
pub struct Ctx {
    /// The admin API.
    pub client: AdminServiceClient<Channel>,
    /// The coordinator's URL, for error messages.
    pub url: String,
    /// `-o`.
    pub fmt: Format,
    /// `--as`.
    pub as_user: Option<String>,
}

impl Ctx {
    /// Connects to `url`.
    pub async fn connect(url: &str, fmt: Format, as_user: Option<String>) -> anyhow::Result<Ctx> {
        Ok(Ctx { client: connect(url).await?, url: url.to_owned(), fmt, as_user })
    }

    /// `requested_by` for a command that changes something; settled before
    /// anything is sent.
    pub fn who(&self) -> anyhow::Result<String> {
        who::requested_by(self.as_user.as_deref())
    }

    /// A gRPC error worded for people.
    pub fn explain(&self, status: tonic::Status) -> anyhow::Error {
        explain(&self.url, status)
    }
}

/// Errors worded for the person at the terminal: no stack traces. The
/// server's own words for "no such thing", "bad input" and "does not apply
/// now" are the clearest there are, so they are shown as they are.
pub fn explain(coordinator: &str, status: tonic::Status) -> anyhow::Error {
    match status.code() {
        tonic::Code::Unavailable => {
            anyhow::anyhow!("cannot reach the coordinator at {coordinator}: {}", status.message())
        }
        tonic::Code::NotFound | tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => {
            anyhow::anyhow!("{}", status.message())
        }
        code => anyhow::anyhow!("the coordinator answered {code:?}: {}", status.message()),
    }
}

async fn connect(coordinator: &str) -> anyhow::Result<AdminServiceClient<Channel>> {
    let endpoint = Endpoint::from_shared(coordinator.to_owned())
        .map_err(|_| anyhow::anyhow!("`{coordinator}` is not a URL like http://127.0.0.1:7070"))?
        .connect_timeout(Duration::from_secs(5));
    let channel = endpoint.connect().await.map_err(|e| {
        // The innermost cause says what happened ("Connection refused").
        let mut cause: &dyn std::error::Error = &e;
        while let Some(next) = cause.source() {
            cause = next;
        }
        anyhow::anyhow!("cannot reach the coordinator at {coordinator}: {cause}")
    })?;
    Ok(AdminServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES))
}
