//! The connection to the coordinator and what its errors mean to the
//! person at the terminal.

use std::time::Duration;

use remedy_proto::MAX_MESSAGE_BYTES;
use remedy_proto::v1::admin_service_client::AdminServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::connection::Target;

/// Adds `authorization: Bearer ...` to every call when a token is given.
#[derive(Clone)]
pub struct BearerToken(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "BearerToken([redacted])" } else { "BearerToken(none)" })
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// The admin client remedyctl uses.
pub type Client = AdminServiceClient<InterceptedService<Channel, BearerToken>>;

use crate::output::Format;
use crate::who;

/// What every online command needs: the client, where it points, how to
/// print, and who gives commands that change something.
#[derive(Debug)]
pub struct Ctx {
    /// The admin API.
    pub client: Client,
    /// The coordinator's URL, for error messages.
    pub url: String,
    /// `-o`.
    pub fmt: Format,
    /// `--as`.
    pub as_user: Option<String>,
}

impl Ctx {
    /// Connects to `target`.
    pub async fn connect(target: &Target, fmt: Format, as_user: Option<String>) -> anyhow::Result<Ctx> {
        Ok(Ctx { client: connect(target).await?, url: target.url.clone(), fmt, as_user })
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
        tonic::Code::Unauthenticated => anyhow::anyhow!("not authenticated: {}", status.message()),
        tonic::Code::PermissionDenied => anyhow::anyhow!("permission denied: {}", status.message()),
        code => anyhow::anyhow!("the coordinator answered {code:?}: {}", status.message()),
    }
}

async fn connect(target: &Target) -> anyhow::Result<Client> {
    let coordinator = &target.url;
    let endpoint = Endpoint::from_shared(coordinator.to_owned())
        .map_err(|_| anyhow::anyhow!("`{coordinator}` is not a URL like https://127.0.0.1:7070"))?
        .connect_timeout(Duration::from_secs(5));
    let innermost = |e: &dyn std::error::Error| {
        // The innermost cause says what happened ("Connection refused").
        let mut cause = e;
        while let Some(next) = cause.source() {
            cause = next;
        }
        anyhow::anyhow!("cannot reach the coordinator at {coordinator}: {cause}")
    };
    let channel = match &target.tls {
        Some((files, server_name)) => {
            let tls = remedy_proto::tls::client(files.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
            // Connects on the first call; a refused handshake is reported
            // then, as UNAVAILABLE with the TLS alert.
            remedy_proto::tls::channel(endpoint, tls, server_name.clone()).map_err(|e| anyhow::anyhow!("{e}"))?
        }
        None => endpoint.connect().await.map_err(|e| innermost(&e))?,
    };
    let token = match &target.token_file {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read the token file {}: {e}", path.display()))?;
            let value = format!("Bearer {}", text.trim())
                .parse()
                .map_err(|_| anyhow::anyhow!("{}: the token holds characters a header cannot carry", path.display()))?;
            Some(value)
        }
    };
    Ok(AdminServiceClient::with_interceptor(channel, BearerToken(token)).max_decoding_message_size(MAX_MESSAGE_BYTES))
}
