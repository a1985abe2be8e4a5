//! Bearer tokens at the edges: read from a file (mounted from a Secret),
//! kept only as SHA-256 digests, and looked up from a request's
//! `authorization: Bearer ...` header.

use std::path::Path;

use remedy_shared::auth::{Identity, Tokens};

/// The digest tokens are kept and compared by.
pub fn digest(token: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Reads a tokens file; the error names the file, never a token.
pub fn load(path: &Path) -> Result<Tokens, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Tokens::parse(&text, digest).map_err(|e| format!("{}: {e}", path.display()))
}

/// What an `authorization` header value says.
#[derive(Debug, PartialEq, Eq)]
pub enum Bearer<'a> {
    /// No header.
    Absent,
    /// A header that is not `Bearer TOKEN`.
    Malformed,
    /// The token.
    Token(&'a str),
}

/// Reads an `authorization` header value.
pub fn bearer(header: Option<&str>) -> Bearer<'_> {
    match header {
        None => Bearer::Absent,
        Some(value) => match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => {
                Bearer::Token(token.trim())
            }
            _ => Bearer::Malformed,
        },
    }
}

/// Who a token names, if anyone.
pub fn identify<'a>(tokens: &'a Tokens, token: &str) -> Option<&'a Identity> {
    tokens.identify(&digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_headers_are_read_strictly() {
        assert_eq!(bearer(None), Bearer::Absent);
        assert_eq!(bearer(Some("Bearer abc")), Bearer::Token("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Bearer::Token("abc"));
        assert_eq!(bearer(Some("Basic abc")), Bearer::Malformed);
        assert_eq!(bearer(Some("Bearer ")), Bearer::Malformed);
    }

    #[test]
    fn a_file_of_tokens_identifies_users_by_digest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.yaml");
        std::fs::write(&path, "- user: ci\n  token: 0123456789abcdef-ci\n").unwrap();
        let tokens = load(&path).unwrap();
        assert_eq!(identify(&tokens, "0123456789abcdef-ci"), Some(&Identity::User { name: "ci".into() }));
        assert_eq!(identify(&tokens, "0123456789abcdef-cj"), None);
        let err = load(&dir.path().join("missing.yaml")).unwrap_err();
        assert!(err.contains("missing.yaml"), "{err}");
    }
}
