//! Who is calling the coordinator, and whether they may.
//!
//! With TLS (the default), an agent is known by its client certificate and
//! may speak only for the node the certificate names; a person or a tool is
//! known by a client certificate or a bearer token, and acts with the role
//! bound to that identity. With `--insecure` there is no TLS: nobody can be
//! authenticated by certificate, and a caller without a token acts with the
//! `authorization.insecure_role` (admin unless configured).

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use remedy_proto::tls::PeerInfo;
use remedy_proto::tokens::{self, Bearer};
use remedy_shared::auth::{AdminCall, Bindings, Denied, Identity, Role, Tokens};
use remedy_shared::sync;
use tonic::{Request, Status};

/// How the gRPC port is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Mutual TLS.
    Tls,
    /// Plaintext, asked for with `--insecure`.
    Insecure,
}

/// The caller of an admin call, once admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Who, when known (`None`: anonymous, insecure mode only).
    pub identity: Option<Identity>,
    /// The role they act with.
    pub role: Role,
}

impl Caller {
    /// The name commands are recorded with: the authenticated identity, or
    /// in insecure mode the `requested_by` the caller gave (required).
    pub fn by(&self, requested_by: &str) -> Result<String, Status> {
        if let Some(identity) = &self.identity {
            return Ok(identity.to_string());
        }
        let given = requested_by.trim();
        if given.is_empty() {
            return Err(Status::invalid_argument("requested_by is required: commands are recorded with who gave them"));
        }
        Ok(given.to_owned())
    }

    /// The name on the audit log.
    pub fn actor(&self) -> String {
        self.identity.as_ref().map(Identity::to_string).unwrap_or_else(|| "anonymous".to_owned())
    }
}

/// Decides who may call what.
#[derive(Debug, Clone)]
pub struct Authenticator {
    transport: Transport,
    bindings: Bindings,
    insecure_role: Option<Role>,
    two_person_approvals: bool,
    tokens: TokenFile,
}

/// Bearer tokens read from a file (mounted from a Secret) and reread while
/// the process runs, so a rotated Secret takes effect. Cheap to clone:
/// clones share the tokens.
#[derive(Debug, Clone, Default)]
pub struct TokenFile {
    path: Option<PathBuf>,
    tokens: Arc<RwLock<Tokens>>,
}

impl TokenFile {
    /// Reads `path` now; no path is a file with no tokens, which admits
    /// nobody.
    pub fn load(path: Option<&std::path::Path>) -> Result<TokenFile, String> {
        let tokens = match path {
            Some(path) => tokens::load(path)?,
            None => Tokens::default(),
        };
        Ok(TokenFile { path: path.map(std::path::Path::to_path_buf), tokens: Arc::new(RwLock::new(tokens)) })
    }

    /// Whether a file was configured.
    pub fn is_configured(&self) -> bool {
        self.path.is_some()
    }

    /// Who `token` names, if anyone.
    pub fn identify(&self, token: &str) -> Option<Identity> {
        tokens::identify(&sync::read(&self.tokens), token).cloned()
    }

    /// Rereads the file every `every`; a file that cannot be used keeps the
    /// previous tokens.
    pub async fn keep_reloading(self, every: Duration, stop: impl std::future::Future<Output = ()>) {
        let Some(path) = self.path.clone() else { return };
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tick.tick() => match tokens::load(&path) {
                    Ok(fresh) => {
                        let mut current = sync::write(&self.tokens);
                        if *current != fresh {
                            tracing::info!(file = %path.display(), users = fresh.len(), "bearer tokens reloaded");
                            *current = fresh;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "tokens file cannot be used; keeping the previous tokens"),
                },
            }
        }
    }
}

/// The `authorization:` section, validated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuthorizationConfig {
    /// Roles bound to identities.
    pub bindings: Bindings,
    /// Where bearer tokens are (reread when it changes).
    pub tokens_file: Option<PathBuf>,
    /// The role of a caller without credentials under `--insecure`;
    /// `None`: refused.
    pub insecure_role: Option<Role>,
    /// Whoever started a run may not approve its steps.
    pub two_person_approvals: bool,
}

impl Authenticator {
    /// An authenticator for `transport`; reads the tokens file now.
    pub fn new(transport: Transport, config: &AuthorizationConfig) -> Result<Authenticator, String> {
        Ok(Authenticator {
            transport,
            bindings: config.bindings.clone(),
            insecure_role: config.insecure_role,
            two_person_approvals: config.two_person_approvals,
            tokens: TokenFile::load(config.tokens_file.as_deref())?,
        })
    }

    /// Whether approvals follow the two-person rule.
    pub fn two_person_approvals(&self) -> bool {
        self.two_person_approvals
    }

    /// Checks that the caller of the agent stream is the agent of
    /// `node_name`.
    pub fn agent<T>(&self, request: &Request<T>, node_name: &str) -> Result<(), Status> {
        if self.transport == Transport::Insecure {
            return Ok(());
        }
        let peer = request.extensions().get::<PeerInfo>();
        if let Some(why) = peer.and_then(|p| p.refused.as_ref()) {
            return Err(Status::unauthenticated(why.clone()));
        }
        match peer.and_then(|p| p.identity.as_ref()) {
            Some(Identity::Agent { node }) if node == node_name => Ok(()),
            Some(Identity::Agent { node }) => Err(Status::permission_denied(format!(
                "this certificate is for node {node}; it may not speak for node {node_name}"
            ))),
            Some(other) => Err(Status::permission_denied(format!(
                "{other} is not an agent: the agent stream needs an agent certificate"
            ))),
            None if peer.is_some_and(|p| p.presented_certificate) => {
                Err(Status::unauthenticated("the client certificate carries no remedy://agent/NODE identity"))
            }
            None => Err(Status::unauthenticated("agents must present a client certificate")),
        }
    }

    /// Admits an admin call or says why not: UNAUTHENTICATED when the
    /// caller cannot be identified, PERMISSION_DENIED when their role does
    /// not allow `call`.
    pub fn admin<T>(&self, request: &Request<T>, call: AdminCall) -> Result<Caller, Status> {
        let identity = self.identify(request)?;
        match identity {
            Some(identity) => match self.bindings.authorize(&identity, call) {
                Ok(role) => Ok(Caller { identity: Some(identity), role }),
                Err(denied) => Err(denied_status(denied)),
            },
            None => match (self.transport, self.insecure_role) {
                (Transport::Insecure, Some(role)) if role >= remedy_shared::auth::required_role(call) => {
                    Ok(Caller { identity: None, role })
                }
                (Transport::Insecure, Some(role)) => Err(Status::permission_denied(format!(
                    "anonymous callers act as {role} (authorization.insecure_role); {} needs {}",
                    call.method(),
                    remedy_shared::auth::required_role(call)
                ))),
                (Transport::Insecure, None) => {
                    Err(Status::unauthenticated("a bearer token is required (authorization.insecure_role is none)"))
                }
                (Transport::Tls, _) => {
                    let presented = request.extensions().get::<PeerInfo>().is_some_and(|p| p.presented_certificate);
                    Err(Status::unauthenticated(if presented {
                        "the client certificate carries no remedy://user/NAME identity"
                    } else {
                        "a client certificate or a bearer token is required"
                    }))
                }
            },
        }
    }

    /// Who `request` says it is, whatever it may do: for the audit of a
    /// refused call: a known token names its user.
    pub fn claimed<T>(&self, request: &Request<T>) -> Option<Identity> {
        self.identify(request).ok().flatten()
    }

    fn identify<T>(&self, request: &Request<T>) -> Result<Option<Identity>, Status> {
        // A certificate naming more than one identity is refused, not
        // passed over for a bearer token: whoever holds it is not anonymous.
        if let Some(why) = request.extensions().get::<PeerInfo>().and_then(|p| p.refused.as_ref()) {
            return Err(Status::unauthenticated(why.clone()));
        }
        if let Some(identity) = request.extensions().get::<PeerInfo>().and_then(|p| p.identity.clone()) {
            return Ok(Some(identity));
        }
        let header = request.metadata().get("authorization").map(|v| v.to_str().unwrap_or(""));
        match tokens::bearer(header) {
            Bearer::Absent => Ok(None),
            Bearer::Malformed => Err(Status::unauthenticated("the authorization header is not `Bearer TOKEN`")),
            Bearer::Token(token) => match self.tokens.identify(token) {
                Some(identity) => Ok(Some(identity)),
                None => Err(Status::unauthenticated("the bearer token is not known")),
            },
        }
    }

    /// Rereads the tokens file every `every` so a rotated Secret takes
    /// effect; a file that cannot be used keeps the previous tokens.
    pub async fn keep_reloading_tokens(self, every: Duration, stop: impl std::future::Future<Output = ()>) {
        self.tokens.keep_reloading(every, stop).await;
    }
}

/// The gRPC status of a refusal.
pub fn denied_status(denied: Denied) -> Status {
    match denied {
        Denied::Unauthenticated(m) => Status::unauthenticated(m),
        Denied::Forbidden(m) => Status::permission_denied(m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_peer(identity: Option<Identity>) -> Request<()> {
        let mut r = Request::new(());
        r.extensions_mut().insert(PeerInfo {
            remote: None,
            presented_certificate: identity.is_some(),
            identity,
            refused: None,
            activity: Default::default(),
        });
        r
    }

    fn tls(bindings: Bindings) -> Authenticator {
        Authenticator::new(Transport::Tls, &AuthorizationConfig { bindings, ..Default::default() }).unwrap()
    }

    #[test]
    fn agents_speak_only_for_their_own_node() {
        let auth = tls(Bindings::default());
        let agent = Some(Identity::Agent { node: "n1".into() });
        assert!(auth.agent(&with_peer(agent.clone()), "n1").is_ok());
        let other = auth.agent(&with_peer(agent), "n2").unwrap_err();
        assert_eq!(other.code(), tonic::Code::PermissionDenied);
        assert!(other.message().contains("may not speak for node n2"), "{}", other.message());
        let user = auth.agent(&with_peer(Some(Identity::User { name: "u".into() })), "n1").unwrap_err();
        assert_eq!(user.code(), tonic::Code::PermissionDenied);
        assert_eq!(auth.agent(&with_peer(None), "n1").unwrap_err().code(), tonic::Code::Unauthenticated);
        assert_eq!(auth.agent(&Request::new(()), "n1").unwrap_err().code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn a_certificate_naming_two_identities_is_refused_with_the_reason() {
        let mut bindings = Bindings::default();
        bindings.bind(Identity::User { name: "op".into() }, Role::Operator);
        let auth = tls(bindings);
        let mut r = Request::new(());
        r.extensions_mut().insert(PeerInfo {
            remote: None,
            presented_certificate: true,
            identity: None,
            refused: Some("the client certificate carries 2 remedy:// URI names".into()),
            activity: Default::default(),
        });
        for status in [auth.agent(&r, "n1").unwrap_err(), auth.admin(&r, AdminCall::ListAgents).unwrap_err()] {
            assert_eq!(status.code(), tonic::Code::Unauthenticated);
            assert_eq!(status.message(), "the client certificate carries 2 remedy:// URI names");
        }
    }

    #[test]
    fn admin_calls_need_an_identity_with_a_role() {
        let mut bindings = Bindings::default();
        bindings.bind(Identity::User { name: "op".into() }, Role::Operator);
        let auth = tls(bindings);
        let op = with_peer(Some(Identity::User { name: "op".into() }));
        let caller = auth.admin(&op, AdminCall::AcknowledgeIncident).unwrap();
        assert_eq!(caller.by("ignored").unwrap(), "user:op", "the certificate, not the request, says who");
        assert_eq!(auth.admin(&op, AdminCall::PauseAutomation).unwrap_err().code(), tonic::Code::PermissionDenied);
        let none = auth.admin(&Request::new(()), AdminCall::ListAgents).unwrap_err();
        assert_eq!(none.code(), tonic::Code::Unauthenticated);
        let agent = with_peer(Some(Identity::Agent { node: "n".into() }));
        assert_eq!(auth.admin(&agent, AdminCall::ListAgents).unwrap_err().code(), tonic::Code::PermissionDenied);
        let mut bad = Request::new(());
        bad.metadata_mut().insert("authorization", "Bearer nope-nope-nope-nope".parse().unwrap());
        assert_eq!(auth.admin(&bad, AdminCall::ListAgents).unwrap_err().message(), "the bearer token is not known");
    }

    #[test]
    fn insecure_mode_gives_anonymous_callers_the_configured_role_only() {
        let config = AuthorizationConfig { insecure_role: Some(Role::Viewer), ..Default::default() };
        let auth = Authenticator::new(Transport::Insecure, &config).unwrap();
        let caller = auth.admin(&Request::new(()), AdminCall::ListIncidents).unwrap();
        assert_eq!(caller.identity, None);
        assert!(caller.by("").is_err(), "anonymous commands still say who gave them");
        assert_eq!(caller.by("alice").unwrap(), "alice");
        let denied = auth.admin(&Request::new(()), AdminCall::Unblock).unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        let closed = AuthorizationConfig { insecure_role: None, ..Default::default() };
        let auth = Authenticator::new(Transport::Insecure, &closed).unwrap();
        assert_eq!(
            auth.admin(&Request::new(()), AdminCall::ListAgents).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }
}
