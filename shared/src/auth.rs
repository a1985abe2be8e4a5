//! Who is calling, and what they may do.
//!
//! Identities come from client certificates (a URI subject alternative
//! name, `remedy://agent/NODE` or `remedy://user/NAME`) or from bearer
//! tokens (each token names a user). Roles are bound to identities in the
//! coordinator's configuration; nothing is granted by default. The table
//! of which admin call needs which role is [`required_role`], the one place
//! that says it.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

/// What an identity may do on the admin API, weakest first: each role may
/// do everything the roles before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read incidents, findings, agents, runbooks, approvals and bans.
    Viewer,
    /// Also acknowledge and resolve incidents, answer approvals, run
    /// runbooks in dry-run, lift bans.
    Operator,
    /// Also run runbooks for real, pause and resume automation, reset
    /// breakers, read the audit log.
    Admin,
}

impl Role {
    /// Every role, weakest first.
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Operator, Role::Admin];

    /// The lowercase name used in configuration and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The URI scheme of Remedy identities in certificates.
pub const URI_SCHEME: &str = "remedy://";

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Identity {
    /// An agent, allowed to speak only for its own node.
    Agent {
        /// The node it runs on.
        node: String,
    },
    /// A person or a tool acting for one.
    User {
        /// The user's name.
        name: String,
    },
}

impl Identity {
    /// Reads an identity from a certificate's URI name; `None` for a URI
    /// that is not a Remedy identity (certificates may carry others).
    pub fn from_uri(uri: &str) -> Option<Identity> {
        let rest = uri.strip_prefix(URI_SCHEME)?;
        let (kind, name) = rest.split_once('/')?;
        if !valid_name(name) {
            return None;
        }
        match kind {
            "agent" => Some(Identity::Agent { node: name.to_owned() }),
            "user" => Some(Identity::User { name: name.to_owned() }),
            _ => None,
        }
    }

    /// The URI a certificate carries for this identity.
    pub fn to_uri(&self) -> String {
        match self {
            Identity::Agent { node } => format!("{URI_SCHEME}agent/{node}"),
            Identity::User { name } => format!("{URI_SCHEME}user/{name}"),
        }
    }

    /// Parses the `kind:name` form used in configuration (`user:alice`,
    /// `agent:node-1`).
    pub fn parse(text: &str) -> Result<Identity, String> {
        let (kind, name) = text
            .split_once(':')
            .ok_or_else(|| format!("`{text}` is not an identity: write `user:NAME` or `agent:NODE`"))?;
        if !valid_name(name) {
            return Err(format!("`{text}`: a name is 1 to 253 letters, digits, `.`, `-`, `_` or `@`"));
        }
        match kind {
            "user" => Ok(Identity::User { name: name.to_owned() }),
            "agent" => Ok(Identity::Agent { node: name.to_owned() }),
            _ => Err(format!("`{text}`: the kind is `user` or `agent`, not `{kind}`")),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Agent { node } => write!(f, "agent:{node}"),
            Identity::User { name } => write!(f, "user:{name}"),
        }
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'@'))
}

/// An admin API call, with what of its arguments changes the role it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AdminCall {
    /// `ListAgents`.
    ListAgents,
    /// `GetAgent`.
    GetAgent,
    /// `ListFindings`.
    ListFindings,
    /// `GetFinding`.
    GetFinding,
    /// `ListIncidents`.
    ListIncidents,
    /// `GetIncident`.
    GetIncident,
    /// `WatchIncidents`.
    WatchIncidents,
    /// `AcknowledgeIncident`.
    AcknowledgeIncident,
    /// `ResolveIncident`.
    ResolveIncident,
    /// `ListRunbooks`.
    ListRunbooks,
    /// `GetRunbook`.
    GetRunbook,
    /// `RunRunbook`, in dry-run or for real.
    RunRunbook {
        /// Rehearse only.
        dry_run: bool,
    },
    /// `ListApprovals`.
    ListApprovals,
    /// `AnswerApproval`.
    AnswerApproval,
    /// `GetAutomation`.
    GetAutomation,
    /// `PauseAutomation`.
    PauseAutomation,
    /// `ResumeAutomation`.
    ResumeAutomation,
    /// `ResetBreaker`.
    ResetBreaker,
    /// `ListBans`.
    ListBans,
    /// `Unblock`.
    Unblock,
    /// `ListAudit`.
    ListAudit,
    /// `ReviewIncident`.
    ReviewIncident,
    /// `GetReport`.
    GetReport,
}

impl AdminCall {
    /// Every call, with both forms of `RunRunbook`.
    pub const ALL: [AdminCall; 24] = [
        AdminCall::ListAgents,
        AdminCall::GetAgent,
        AdminCall::ListFindings,
        AdminCall::GetFinding,
        AdminCall::ListIncidents,
        AdminCall::GetIncident,
        AdminCall::WatchIncidents,
        AdminCall::AcknowledgeIncident,
        AdminCall::ResolveIncident,
        AdminCall::ListRunbooks,
        AdminCall::GetRunbook,
        AdminCall::RunRunbook { dry_run: true },
        AdminCall::RunRunbook { dry_run: false },
        AdminCall::ListApprovals,
        AdminCall::AnswerApproval,
        AdminCall::GetAutomation,
        AdminCall::PauseAutomation,
        AdminCall::ResumeAutomation,
        AdminCall::ResetBreaker,
        AdminCall::ListBans,
        AdminCall::Unblock,
        AdminCall::ListAudit,
        AdminCall::ReviewIncident,
        AdminCall::GetReport,
    ];

    /// The gRPC method name.
    pub fn method(self) -> &'static str {
        match self {
            AdminCall::ListAgents => "ListAgents",
            AdminCall::GetAgent => "GetAgent",
            AdminCall::ListFindings => "ListFindings",
            AdminCall::GetFinding => "GetFinding",
            AdminCall::ListIncidents => "ListIncidents",
            AdminCall::GetIncident => "GetIncident",
            AdminCall::WatchIncidents => "WatchIncidents",
            AdminCall::AcknowledgeIncident => "AcknowledgeIncident",
            AdminCall::ResolveIncident => "ResolveIncident",
            AdminCall::ListRunbooks => "ListRunbooks",
            AdminCall::GetRunbook => "GetRunbook",
            AdminCall::RunRunbook { .. } => "RunRunbook",
            AdminCall::ListApprovals => "ListApprovals",
            AdminCall::AnswerApproval => "AnswerApproval",
            AdminCall::GetAutomation => "GetAutomation",
            AdminCall::PauseAutomation => "PauseAutomation",
            AdminCall::ResumeAutomation => "ResumeAutomation",
            AdminCall::ResetBreaker => "ResetBreaker",
            AdminCall::ListBans => "ListBans",
            AdminCall::Unblock => "Unblock",
            AdminCall::ListAudit => "ListAudit",
            AdminCall::ReviewIncident => "ReviewIncident",
            AdminCall::GetReport => "GetReport",
        }
    }
}

/// The role each admin call needs: the whole authorization table.
pub fn required_role(call: AdminCall) -> Role {
    use AdminCall::*;
    match call {
        ListAgents | GetAgent | ListFindings | GetFinding | ListIncidents | GetIncident | WatchIncidents
        | ListRunbooks | GetRunbook | ListApprovals | GetAutomation | ListBans | ReviewIncident | GetReport => {
            Role::Viewer
        }
        AcknowledgeIncident | ResolveIncident | AnswerApproval | Unblock | RunRunbook { dry_run: true } => {
            Role::Operator
        }
        RunRunbook { dry_run: false } | PauseAutomation | ResumeAutomation | ResetBreaker | ListAudit => Role::Admin,
    }
}

/// Why a caller was turned away.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// Nobody we know: no certificate with a Remedy identity, no valid token.
    #[error("{0}")]
    Unauthenticated(String),
    /// Known, but not allowed to do this.
    #[error("{0}")]
    Forbidden(String),
}

/// Roles bound to identities.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bindings {
    roles: BTreeMap<Identity, Role>,
}

impl Bindings {
    /// Binds `identity` to `role`; an identity bound twice keeps the
    /// stronger role.
    pub fn bind(&mut self, identity: Identity, role: Role) {
        let entry = self.roles.entry(identity).or_insert(role);
        *entry = (*entry).max(role);
    }

    /// The role of `identity`, if bound.
    pub fn role_of(&self, identity: &Identity) -> Option<Role> {
        self.roles.get(identity).copied()
    }

    /// Decides whether `identity` may make `call`; returns the role it
    /// acted with.
    pub fn authorize(&self, identity: &Identity, call: AdminCall) -> Result<Role, Denied> {
        if let Identity::Agent { node } = identity {
            return Err(Denied::Forbidden(format!(
                "agent certificates may not use the admin API (agent:{node} called {})",
                call.method()
            )));
        }
        let needed = required_role(call);
        match self.role_of(identity) {
            None => Err(Denied::Forbidden(format!(
                "{identity} has no role: bind it under authorization.roles to call {}",
                call.method()
            ))),
            Some(role) if role < needed => {
                Err(Denied::Forbidden(format!("{identity} is {role}; {} needs {needed}", describe(call))))
            }
            Some(role) => Ok(role),
        }
    }
}

fn describe(call: AdminCall) -> String {
    match call {
        AdminCall::RunRunbook { dry_run: true } => "RunRunbook in dry-run".to_owned(),
        AdminCall::RunRunbook { dry_run: false } => "RunRunbook for real".to_owned(),
        other => other.method().to_owned(),
    }
}

/// The two-person rule: whoever started a run may not approve its steps.
pub fn may_approve(approver: &str, started_by: &str) -> Result<(), Denied> {
    if approver == started_by {
        return Err(Denied::Forbidden(format!(
            "{approver} started this run and may not approve it too (two-person rule): ask someone else"
        )));
    }
    Ok(())
}

/// One entry of a tokens file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    user: String,
    token: String,
}

/// Bearer tokens, each naming a user. Only a digest of each token is kept,
/// so a token never sits in memory where a debug print could show it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Tokens {
    by_digest: BTreeMap<[u8; 32], Identity>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tokens({} users)", self.by_digest.len())
    }
}

/// Shortest token accepted: shorter ones can be guessed.
pub const MIN_TOKEN_LEN: usize = 16;

impl Tokens {
    /// Parses a tokens file: a YAML list of `{user, token}`. `digest` is
    /// the hash the caller uses (SHA-256 at the edges; the domain has no
    /// crypto of its own). Errors name the entry, never the token.
    pub fn parse(text: &str, digest: impl Fn(&[u8]) -> [u8; 32]) -> Result<Tokens, String> {
        let entries: Vec<TokenEntry> = serde_saphyr::from_str(text).map_err(|e| {
            // The parser's message may quote the offending text, which may
            // be a token: say where only.
            let message = e.to_string();
            let line = message
                .find("line ")
                .map(|at| message[at..].chars().take_while(|c| *c != ',' && *c != ')').collect::<String>());
            match line {
                Some(line) => format!("not a list of {{user, token}} entries (at {line})"),
                None => "not a list of {user, token} entries".to_owned(),
            }
        })?;
        let mut tokens = Tokens::default();
        for (i, entry) in entries.into_iter().enumerate() {
            let identity = Identity::parse(&format!("user:{}", entry.user)).map_err(|e| format!("entry {i}: {e}"))?;
            if entry.token.len() < MIN_TOKEN_LEN {
                return Err(format!("entry {i} ({identity}): a token has at least {MIN_TOKEN_LEN} characters"));
            }
            if tokens.by_digest.insert(digest(entry.token.as_bytes()), identity.clone()).is_some() {
                return Err(format!("entry {i} ({identity}): the same token is given twice"));
            }
        }
        Ok(tokens)
    }

    /// Who `token` names, given its digest.
    pub fn identify(&self, token_digest: &[u8; 32]) -> Option<&Identity> {
        self.by_digest.get(token_digest)
    }

    /// How many tokens are known.
    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    /// Whether no token is known.
    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }
}

/// Which runbooks each Alertmanager sender's alerts may start
/// (`alertmanager.may_start` in the coordinator's configuration): sender
/// user name -> runbook ids, each exact or a prefix ending in `*`. A
/// sender not listed may start every runbook an alert triggers (the
/// catalog's alert triggers); one listed may start only what its list
/// names. An unauthenticated caller never reaches this: it starts nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct SenderScopes(BTreeMap<String, Vec<String>>);

impl SenderScopes {
    /// Whether `sender` (a user name, as its token names it) may start
    /// `runbook_id`.
    pub fn may_start(&self, sender: &str, runbook_id: &str) -> bool {
        let Some(allowed) = self.0.get(sender) else { return true };
        allowed.iter().any(|pattern| match pattern.strip_suffix('*') {
            Some(prefix) => runbook_id.starts_with(prefix),
            None => pattern == runbook_id,
        })
    }

    /// Names the first entry that is empty or a bare `*` with others.
    pub fn validate(&self) -> Result<(), String> {
        for (sender, patterns) in &self.0 {
            if let Some(bad) = patterns.iter().find(|p| p.trim().is_empty()) {
                return Err(format!("{sender}: `{bad}` is not a runbook id or prefix*"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> Identity {
        Identity::User { name: name.into() }
    }

    #[test]
    fn identities_read_from_certificate_uris_and_configuration() {
        assert_eq!(Identity::from_uri("remedy://agent/node-1"), Some(Identity::Agent { node: "node-1".into() }));
        assert_eq!(Identity::from_uri("remedy://user/alice@example.com"), Some(user("alice@example.com")));
        assert_eq!(Identity::from_uri("spiffe://cluster/ns/x"), None);
        assert_eq!(Identity::from_uri("remedy://robot/x"), None);
        assert_eq!(Identity::from_uri("remedy://user/"), None);
        assert_eq!(Identity::from_uri("remedy://user/a/b"), None, "a slash is not part of a name");
        assert_eq!(Identity::parse("user:bob"), Ok(user("bob")));
        assert!(Identity::parse("bob").unwrap_err().contains("user:NAME"));
        assert!(Identity::parse("group:x").unwrap_err().contains("`group`"));
        let agent = Identity::Agent { node: "n".into() };
        assert_eq!(Identity::from_uri(&agent.to_uri()), Some(agent));
    }

    #[test]
    fn each_role_may_do_what_the_roles_below_it_may() {
        for call in AdminCall::ALL {
            let needed = required_role(call);
            for role in Role::ALL {
                let mut b = Bindings::default();
                b.bind(user("x"), role);
                assert_eq!(b.authorize(&user("x"), call).is_ok(), role >= needed, "{role} on {call:?}");
            }
        }
    }

    #[test]
    fn the_table_matches_what_each_role_is_for() {
        let op = |c| required_role(c) == Role::Operator;
        assert!(op(AdminCall::AcknowledgeIncident) && op(AdminCall::AnswerApproval) && op(AdminCall::Unblock));
        assert!(op(AdminCall::RunRunbook { dry_run: true }));
        assert_eq!(required_role(AdminCall::RunRunbook { dry_run: false }), Role::Admin);
        assert_eq!(required_role(AdminCall::PauseAutomation), Role::Admin);
        assert_eq!(required_role(AdminCall::ResetBreaker), Role::Admin);
        assert_eq!(required_role(AdminCall::ListIncidents), Role::Viewer);
    }

    #[test]
    fn unbound_identities_and_agents_are_refused_with_the_reason() {
        let mut b = Bindings::default();
        b.bind(Identity::Agent { node: "n1".into() }, Role::Admin);
        let err = b.authorize(&Identity::Agent { node: "n1".into() }, AdminCall::ListAgents).unwrap_err();
        assert!(err.to_string().contains("agent certificates may not use the admin API"), "{err}");
        let err = b.authorize(&user("eve"), AdminCall::ListAgents).unwrap_err();
        assert!(err.to_string().contains("user:eve has no role"), "{err}");
        b.bind(user("v"), Role::Viewer);
        b.bind(user("v"), Role::Operator);
        b.bind(user("v"), Role::Viewer);
        assert_eq!(b.role_of(&user("v")), Some(Role::Operator), "the stronger binding wins");
        let err = b.authorize(&user("v"), AdminCall::RunRunbook { dry_run: false }).unwrap_err();
        assert_eq!(err, Denied::Forbidden("user:v is operator; RunRunbook for real needs admin".into()));
    }

    #[test]
    fn the_two_person_rule_refuses_self_approval() {
        assert!(may_approve("user:a", "user:b").is_ok());
        assert!(may_approve("user:a", "user:a").unwrap_err().to_string().contains("two-person rule"));
    }

    fn fake_digest(b: &[u8]) -> [u8; 32] {
        let mut d = [0u8; 32];
        for (i, x) in b.iter().enumerate() {
            d[i % 32] ^= x.wrapping_add(i as u8);
        }
        d
    }

    #[test]
    fn tokens_name_users_and_errors_never_show_a_token() {
        let text =
            "- user: ci-bot\n  token: aaaaaaaaaaaaaaaa-secret\n- user: alice\n  token: bbbbbbbbbbbbbbbb-secret\n";
        let tokens = Tokens::parse(text, fake_digest).unwrap();
        assert_eq!(tokens.len(), 2);
        assert_eq!(tokens.identify(&fake_digest(b"aaaaaaaaaaaaaaaa-secret")), Some(&user("ci-bot")));
        assert_eq!(tokens.identify(&fake_digest(b"nope")), None);
        assert!(!format!("{tokens:?}").contains("secret"));

        let short = Tokens::parse("- user: a\n  token: tooshort-secret\n", fake_digest).unwrap_err();
        assert!(short.contains("at least 16") && !short.contains("tooshort"), "{short}");
        let dup = Tokens::parse(
            "- user: a\n  token: cccccccccccccccc-secret\n- user: b\n  token: cccccccccccccccc-secret\n",
            fake_digest,
        )
        .unwrap_err();
        assert!(dup.contains("entry 1 (user:b)") && !dup.contains("cccc"), "{dup}");
        let bad = Tokens::parse("- user: a\n  token: dddddddddddddddd-secret\n  extra: x\n", fake_digest).unwrap_err();
        assert!(!bad.contains("dddd"), "{bad}");
    }

    #[test]
    fn a_listed_sender_starts_only_what_its_list_names() {
        let scopes: SenderScopes =
            crate::config::parse_yaml("c.yaml", "monitoring: [SEC-001, 'P0-*']\nstaging-am: []\n")
                .unwrap_or_else(|e| panic!("{e}"));
        assert!(scopes.may_start("monitoring", "SEC-001"));
        assert!(scopes.may_start("monitoring", "P0-002"));
        assert!(!scopes.may_start("monitoring", "P2-001"));
        assert!(!scopes.may_start("staging-am", "SEC-001"), "an empty list starts nothing");
        assert!(scopes.may_start("someone-else", "P2-001"), "not listed: the catalog's alert triggers");
        assert!(scopes.validate().is_ok());
        let blank: SenderScopes = crate::config::parse_yaml("c.yaml", "x: ['']\n").unwrap_or_else(|e| panic!("{e}"));
        assert!(blank.validate().is_err());
    }
}
