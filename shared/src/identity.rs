//! The node identity (node id + agent token) and its state file
//! (PROTOCOL.md §2.6).
//!
//! The state file is the identity's home: owned by the network user, mode
//! 0600, written atomically, never readable by the executor or task
//! processes. A missing file means "not enrolled"; a file that cannot be read
//! or decoded is an error naming the file — never a silent re-enrollment.
//!
//! `node_id`/`agent_token` in the config file or environment are still read
//! (older installs have them there). [`resolve`] picks one source with the
//! precedence environment > state file > config file and reports every
//! disagreement, so a stale copy never silently wins (§13 item 27).

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::atomic_file::{self, FileError};
use crate::config::{self, Origin};
use crate::timestamp::Timestamp;

/// Mode of the state file.
pub const FILE_MODE: u32 = 0o600;

/// The credentials the control plane issued to this node.
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    pub node_id: String,
    pub agent_token: String,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("node_id", &self.node_id)
            .field("agent_token", &"<redacted>")
            .finish()
    }
}

/// The state file's JSON.
#[derive(Serialize, Deserialize)]
struct StateFile {
    node_id: String,
    agent_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    registered_at: Option<String>,
}

/// A state-file problem, naming the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("could not read identity file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "identity file {} is corrupt ({reason}); the agent will not re-enroll on its own: restore the file from a backup, or remove it and enroll again (`noderax-agent bootstrap` or `noderax-agent enroll`)",
        path.display()
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error(transparent)]
    Write(#[from] FileError),
}

/// Reads the state file. `Ok(None)` when it does not exist.
pub fn load(path: &Path) -> Result<Option<Identity>, IdentityError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(IdentityError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    let corrupt = |reason: String| IdentityError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let state: StateFile = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    crate::validate::uuid(state.node_id.trim()).map_err(|e| corrupt(format!("node_id: {e}")))?;
    if state.agent_token.trim().is_empty() {
        return Err(corrupt("agent_token is empty".into()));
    }
    Ok(Some(Identity {
        node_id: state.node_id.trim().to_owned(),
        agent_token: state.agent_token.trim().to_owned(),
    }))
}

/// Writes the state file atomically with mode 0600.
pub fn save(
    path: &Path,
    identity: &Identity,
    registered_at: Timestamp,
) -> Result<(), IdentityError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| FileError::new("create directory", dir, e))?;
    }
    let state = StateFile {
        node_id: identity.node_id.clone(),
        agent_token: identity.agent_token.clone(),
        registered_at: Some(registered_at.to_string()),
    };
    let mut text = serde_json::to_string_pretty(&state).expect("serializing strings cannot fail");
    text.push('\n');
    atomic_file::write(path, text.as_bytes(), FILE_MODE)?;
    Ok(())
}

/// Where the identity in use came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Environment,
    StateFile(PathBuf),
    ConfigFile(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Environment => f.write_str("environment (NODE_ID/AGENT_TOKEN)"),
            Source::StateFile(p) => write!(f, "state file {}", p.display()),
            Source::ConfigFile(p) => write!(f, "config file {}", p.display()),
        }
    }
}

/// The identity chosen at start-up, where it came from, and any disagreement
/// between sources (to be logged as warnings).
#[derive(Debug, Clone)]
pub struct Resolved {
    pub identity: Identity,
    pub source: Source,
    pub warnings: Vec<String>,
}

/// Chooses the identity: environment > state file > config file. A source
/// counts only when it has both the node id and the token. `state` is the
/// state file's content ([`load`]).
pub fn resolve(loaded: &config::Loaded, state: Option<Identity>) -> Option<Resolved> {
    let cfg = &loaded.config;
    let state_path = cfg.state_file.clone();
    let mut candidates: Vec<(Source, Identity)> = Vec::new();
    let configured = (!cfg.node_id.is_empty() && !cfg.agent_token.is_empty()).then(|| Identity {
        node_id: cfg.node_id.clone(),
        agent_token: cfg.agent_token.clone(),
    });
    let from_env = matches!(loaded.origin("node_id"), Origin::Env(_))
        && matches!(loaded.origin("agent_token"), Origin::Env(_));
    if let (true, Some(id)) = (from_env, configured.clone()) {
        candidates.push((Source::Environment, id));
    }
    if let Some(id) = state {
        candidates.push((Source::StateFile(state_path), id));
    }
    if let (false, Some(id), Some(path)) = (from_env, configured, loaded.path.clone()) {
        candidates.push((Source::ConfigFile(path), id));
    }
    let mut iter = candidates.into_iter();
    let (source, identity) = iter.next()?;
    let warnings = iter
        .filter(|(_, other)| *other != identity)
        .map(|(other_source, other)| {
            let what = if other.node_id != identity.node_id {
                format!("node id {} vs {}", identity.node_id, other.node_id)
            } else {
                "the agent token differs".to_owned()
            };
            format!(
                "identity in {source} disagrees with {other_source} ({what}); using {source}. Remove the stale copy to silence this warning."
            )
        })
        .collect();
    Some(Resolved {
        identity,
        source,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Location, load as load_config};
    use std::collections::BTreeMap;
    use std::os::unix::fs::PermissionsExt;

    const NODE: &str = "b7f88611-b63e-4c95-9f37-4afb5c0cf275";
    const OTHER: &str = "0f0e4b57-3b6e-4d7e-8a39-0a2d3a4f5e61";

    fn id(node: &str, token: &str) -> Identity {
        Identity {
            node_id: node.into(),
            agent_token: token.into(),
        }
    }

    #[test]
    fn write_then_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data/agent_identity.json");
        assert!(load(&path).unwrap().is_none());
        save(&path, &id(NODE, "tok"), Timestamp::from_unix_millis(0)).unwrap();
        assert_eq!(load(&path).unwrap(), Some(id(NODE, "tok")));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("\"registered_at\": \"1970-01-01T00:00:00.000Z\""),
            "{text}"
        );
    }

    #[test]
    fn reads_the_original_agents_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent_identity.json");
        std::fs::write(
            &path,
            r#"{
  "node_id": "b7f88611-b63e-4c95-9f37-4afb5c0cf275",
  "agent_token": "af0fe67dfb6d233db5462db4b8f19f65aa84fb304e2955546554a938d2f2b84f",
  "registered_at": "2026-04-02T17:26:11.123456789Z"
}"#,
        )
        .unwrap();
        assert_eq!(load(&path).unwrap().unwrap().node_id, NODE);
    }

    #[test]
    fn corrupt_files_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent_identity.json");
        for text in [
            "",
            "{",
            "null",
            "[]",
            r#"{"node_id":"x","agent_token":"t"}"#,
            r#"{"node_id":"b7f88611-b63e-4c95-9f37-4afb5c0cf275","agent_token":""}"#,
            r#"{"node_id":"b7f88611-b63e-4c95-9f37-4afb5c0cf275"}"#,
        ] {
            std::fs::write(&path, text).unwrap();
            let err = load(&path).unwrap_err();
            assert!(matches!(err, IdentityError::Corrupt { .. }), "{text}");
            let msg = err.to_string();
            assert!(
                msg.contains("agent_identity.json") && msg.contains("will not re-enroll"),
                "{msg}"
            );
        }
        std::fs::write(&path, b"\xff\xfe").unwrap();
        assert!(load(&path).is_err());
    }

    fn loaded(file: Option<&str>, env: &[(&str, &str)]) -> config::Loaded {
        let dir = tempfile::tempdir().unwrap().keep();
        let location = match file {
            Some(text) => {
                let p = dir.join("config.json");
                std::fs::write(&p, text).unwrap();
                Location::Found(p)
            }
            None => Location::NotFound,
        };
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        load_config(&location, &env).unwrap()
    }

    #[test]
    fn precedence_is_env_then_state_then_config() {
        let cfg_file = format!(r#"{{"node_id":"{OTHER}","agent_token":"old"}}"#);

        // Only the config file: used, no warning.
        let r = resolve(&loaded(Some(&cfg_file), &[]), None).unwrap();
        assert!(matches!(r.source, Source::ConfigFile(_)));
        assert!(r.warnings.is_empty());

        // State file and a stale config copy: state wins, and it is said.
        let r = resolve(&loaded(Some(&cfg_file), &[]), Some(id(NODE, "new"))).unwrap();
        assert!(matches!(r.source, Source::StateFile(_)));
        assert_eq!(r.identity, id(NODE, "new"));
        assert_eq!(r.warnings.len(), 1);
        assert!(
            r.warnings[0].contains(OTHER) && r.warnings[0].contains("config file"),
            "{:?}",
            r.warnings
        );

        // Same node, different token: warned without printing tokens.
        let same_node = format!(r#"{{"node_id":"{NODE}","agent_token":"old-secret"}}"#);
        let r = resolve(&loaded(Some(&same_node), &[]), Some(id(NODE, "new"))).unwrap();
        assert!(r.warnings[0].contains("token differs"));
        assert!(!r.warnings[0].contains("old-secret"));

        // Environment wins over both.
        let r = resolve(
            &loaded(
                Some(&cfg_file),
                &[("NODE_ID", NODE), ("AGENT_TOKEN", "envtok")],
            ),
            Some(id(NODE, "new")),
        )
        .unwrap();
        assert_eq!(r.source, Source::Environment);
        assert_eq!(r.identity.agent_token, "envtok");
        assert_eq!(r.warnings.len(), 1);

        // Agreeing sources: no warning.
        let agree = format!(r#"{{"node_id":"{NODE}","agent_token":"new"}}"#);
        let r = resolve(&loaded(Some(&agree), &[]), Some(id(NODE, "new"))).unwrap();
        assert!(r.warnings.is_empty());

        // Nothing anywhere.
        assert!(resolve(&loaded(None, &[]), None).is_none());
        // Half an identity does not count.
        assert!(resolve(&loaded(None, &[("NODE_ID", NODE)]), None).is_none());
    }
}
