//! The agent's identity: configured, or generated once and kept in the
//! state directory.
//!
//! Sequences are numbered per agent id, so the id must change exactly when
//! the numbering restarts: a wiped state directory gives a new id; a
//! restart keeps the old one.

use std::path::Path;

/// The id to use: `configured` if given, else the one in `state_dir`, else a
/// new `<node>-<random>` written there.
pub fn agent_id(configured: Option<&str>, state_dir: &Path, node: &str) -> std::io::Result<String> {
    if let Some(id) = configured {
        return Ok(id.to_owned());
    }
    let path = state_dir.join("agent-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(state_dir)?;
    let id = format!("{node}-{:08x}", rand::random::<u32>());
    let tmp = state_dir.join("agent-id.tmp");
    std::fs::write(&tmp, format!("{id}\n"))?;
    std::fs::rename(&tmp, &path)?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_id_is_kept_across_restarts_and_a_wipe_gives_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let first = agent_id(None, dir.path(), "n1").unwrap();
        assert!(first.starts_with("n1-"));
        assert_eq!(agent_id(None, dir.path(), "n1").unwrap(), first);
        assert_eq!(agent_id(Some("fixed"), dir.path(), "n1").unwrap(), "fixed");
        std::fs::remove_file(dir.path().join("agent-id")).unwrap();
        assert_ne!(agent_id(None, dir.path(), "n1").unwrap(), first);
    }
}
