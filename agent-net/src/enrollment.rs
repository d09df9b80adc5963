//! Obtaining the node identity (PROTOCOL.md §2.2, §2.3): consuming a
//! bootstrap token from the one-line installer, or e-mail enrollment with
//! administrator approval.
//!
//! Every failure the control plane reports as final (unknown, used or
//! expired token, revoked enrollment) ends the attempt with a message that
//! says what to do; nothing here loops on a dead token (§13 item 49). A
//! pending e-mail enrollment is kept in the state directory, not in the
//! config, so an interrupted `enroll` resumes and a dead one is forgotten.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use shared::api::enrollment::{
    ConsumeBootstrapToken, EnrollmentState, EnrollmentStatus, EnrollmentTicket, InitiateEnrollment,
    IssuedCredentials,
};
use shared::identity::Identity;
use shared::timestamp::Timestamp;

use crate::api_client::{ApiClient, CallError};
use crate::backoff::Backoff;
use crate::host_facts::Host;

/// Why enrollment did not produce an identity.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error(
        "the bootstrap token was not found: it was mistyped or belongs to another control plane; generate a new install command in the web UI"
    )]
    TokenNotFound,
    #[error(
        "the control plane refused the bootstrap token: {0}; generate a new install command in the web UI"
    )]
    TokenConflict(String),
    #[error(
        "the bootstrap token has expired (install commands are valid for 15 minutes); generate a new install command in the web UI"
    )]
    TokenExpired,
    #[error("the control plane rejected the request: {0}")]
    Rejected(String),
    #[error(
        "the enrollment was revoked or expired before an administrator approved it; run `noderax-agent enroll` again"
    )]
    Revoked,
    #[error(
        "the enrollment is unknown to the control plane (expired or replaced); run `noderax-agent enroll` again"
    )]
    EnrollmentNotFound,
    #[error("no administrator approved the enrollment within {} minutes; run `noderax-agent enroll` again to resume", .0.as_secs() / 60)]
    TimedOut(Duration),
    #[error("the control plane answered with incomplete credentials")]
    Incomplete,
    #[error("could not reach the control plane: {0}")]
    Unreachable(CallError),
    #[error("could not store the enrollment: {0}")]
    Storage(String),
}

/// How many times a transient failure is retried before giving up.
const BOOTSTRAP_ATTEMPTS: u32 = 5;

/// Consumes a bootstrap token (§2.3) and returns the issued identity.
/// Transient failures (network, 429, 5xx) are retried a few times with
/// back-off; 400/404/409/410 are final.
pub async fn bootstrap(
    client: &ApiClient,
    host: &Host,
    token: &str,
) -> Result<Identity, EnrollError> {
    let body = ConsumeBootstrapToken {
        token: token.trim().to_owned(),
        hostname: host.hostname.clone(),
        additional_info: Some(host.facts()),
    };
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(15));
    loop {
        match client
            .post::<_, IssuedCredentials>(shared::api::route::NODE_INSTALL_CONSUME, &body)
            .await
        {
            Ok(creds) => return complete(creds.node_id, creds.agent_token),
            Err(e) if e.is_transient() && backoff.attempts() + 1 < BOOTSTRAP_ATTEMPTS => {
                tokio::time::sleep(backoff.next_delay(e.retry_after())).await;
            }
            Err(e) => {
                return Err(match (e.status(), &e) {
                    (Some(404), _) => EnrollError::TokenNotFound,
                    (Some(409), CallError::Status { message, .. }) => {
                        EnrollError::TokenConflict(message.clone())
                    }
                    (Some(410), _) => EnrollError::TokenExpired,
                    (Some(_), CallError::Status { message, .. }) => {
                        EnrollError::Rejected(message.clone())
                    }
                    _ => EnrollError::Unreachable(e),
                });
            }
        }
    }
}

fn complete(node_id: String, agent_token: String) -> Result<Identity, EnrollError> {
    if shared::validate::uuid(&node_id).is_err() || agent_token.trim().is_empty() {
        return Err(EnrollError::Incomplete);
    }
    Ok(Identity {
        node_id,
        agent_token,
    })
}

/// A pending e-mail enrollment, kept so `enroll` can resume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pending {
    pub token: String,
    pub expires_at: Timestamp,
    pub email: String,
    pub hostname: String,
}

/// Where the pending enrollment is stored: beside the identity state file.
pub fn pending_path(state_file: &Path) -> PathBuf {
    state_file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join("pending_enrollment.json")
}

/// Reads a pending enrollment that has not expired yet.
pub fn load_pending(path: &Path) -> Option<Pending> {
    let text = std::fs::read(path).ok()?;
    let p: Pending = serde_json::from_slice(&text).ok()?;
    (p.expires_at > Timestamp::now()).then_some(p)
}

pub fn save_pending(path: &Path, p: &Pending) -> Result<(), EnrollError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| EnrollError::Storage(e.to_string()))?;
    }
    let text = serde_json::to_vec_pretty(p).expect("serializable");
    shared::atomic_file::write(path, &text, 0o600).map_err(|e| EnrollError::Storage(e.to_string()))
}

pub fn forget_pending(path: &Path) {
    let _ = std::fs::remove_file(path);
}

/// Starts an e-mail enrollment (§2.2 step 2).
pub async fn initiate(
    client: &ApiClient,
    host: &Host,
    email: &str,
) -> Result<Pending, EnrollError> {
    let body = InitiateEnrollment {
        email: email.trim().to_owned(),
        hostname: host.hostname.clone(),
        additional_info: Some(host.facts()),
    };
    let ticket: EnrollmentTicket = client
        .post(shared::api::route::ENROLLMENT_INITIATE, &body)
        .await
        .map_err(|e| match &e {
            CallError::Status {
                status, message, ..
            } if *status < 500 && *status != 429 => EnrollError::Rejected(message.clone()),
            _ => EnrollError::Unreachable(e),
        })?;
    Ok(Pending {
        token: ticket.token,
        expires_at: ticket.expires_at,
        email: email.trim().to_lowercase(),
        hostname: host.hostname.clone(),
    })
}

/// Progress reported while waiting for approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waiting {
    /// The enrollment is still pending.
    Pending,
    /// A poll failed; it is retried. The message says why.
    Retrying(String),
}

/// Polls until the enrollment is decided (§2.2 step 4): first poll at once,
/// then every `interval`, giving up after `limit`. Network errors and 5xx
/// are retried; 404, `revoked` and anything unexpected are final.
pub async fn wait_for_approval(
    client: &ApiClient,
    token: &str,
    interval: Duration,
    limit: Duration,
    mut progress: impl FnMut(Waiting),
) -> Result<Identity, EnrollError> {
    let deadline = Instant::now() + limit;
    let route = format!("{}/{token}", shared::api::route::ENROLLMENTS);
    loop {
        match client.get::<EnrollmentStatus>(&route).await {
            Ok(s) => match s.status {
                EnrollmentState::Approved => {
                    return complete(
                        s.node_id.unwrap_or_default(),
                        s.agent_token.unwrap_or_default(),
                    );
                }
                EnrollmentState::Pending => progress(Waiting::Pending),
                EnrollmentState::Revoked | EnrollmentState::Unknown => {
                    return Err(EnrollError::Revoked);
                }
            },
            Err(e) if e.status() == Some(404) => return Err(EnrollError::EnrollmentNotFound),
            Err(e) => progress(Waiting::Retrying(e.to_string())),
        }
        if Instant::now() + interval > deadline {
            return Err(EnrollError::TimedOut(limit));
        }
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_file_lives_beside_the_state_file_and_expires() {
        assert_eq!(
            pending_path(Path::new("/var/lib/noderax-agent/agent_identity.json")),
            Path::new("/var/lib/noderax-agent/pending_enrollment.json")
        );
        assert_eq!(
            pending_path(Path::new("agent_identity.json")),
            Path::new("./pending_enrollment.json")
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pending_enrollment.json");
        let live = Pending {
            token: "t".into(),
            expires_at: Timestamp::from_unix_millis(Timestamp::now().unix_millis() + 60_000),
            email: "a@b.c".into(),
            hostname: "h".into(),
        };
        save_pending(&path, &live).unwrap();
        assert_eq!(load_pending(&path), Some(live.clone()));
        let dead = Pending {
            expires_at: Timestamp::from_unix_millis(0),
            ..live
        };
        save_pending(&path, &dead).unwrap();
        assert_eq!(load_pending(&path), None);
    }
}
