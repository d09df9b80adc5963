//! Root-access negotiation (PROTOCOL.md §11.2, ARCHITECTURE.md §9).
//!
//! The control plane sends a *desired* profile; the agent reports what it
//! *applied*: the largest profile within the desired one, the host owner's
//! ceiling (`root_access_ceiling`, which the control plane can never raise)
//! and what this agent implements — only `operational` (package changes,
//! `apt-get update`, agent restart, reboot through the root helper). Root
//! shells and root terminals are not implemented, so `task` and `terminal`
//! are never reported as applied. The helper re-checks the ceiling itself.

use shared::api::{RootAccessReport, RootProfile};
use shared::timestamp::Timestamp;

/// The surfaces this agent can honour.
pub const IMPLEMENTED: RootProfile = RootProfile::Operational;

/// What to apply for a desired profile under a ceiling.
pub fn applied(desired: RootProfile, ceiling: RootProfile) -> RootProfile {
    desired.intersect(ceiling).intersect(IMPLEMENTED)
}

/// The applied state and when it last changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootAccess {
    ceiling: RootProfile,
    applied: RootProfile,
    applied_at: Option<Timestamp>,
    /// Why the desired profile was not applied in full, if it was not.
    note: Option<String>,
}

impl RootAccess {
    /// Nothing applied yet (`off`) under `ceiling`.
    pub fn new(ceiling: RootProfile) -> Self {
        Self {
            ceiling,
            applied: RootProfile::Off,
            applied_at: None,
            note: None,
        }
    }

    /// Applies a desired profile; returns whether the applied one changed
    /// (then the agent re-sends `agent.auth` so the server sees it at once).
    pub fn apply(&mut self, desired: RootProfile) -> bool {
        let applied = applied(desired, self.ceiling);
        self.note = (applied != desired).then(|| {
            format!(
                "desired {desired}, applied {applied}: the host's root_access_ceiling is {} and this agent implements only {IMPLEMENTED}",
                self.ceiling
            )
        });
        let changed = applied != self.applied || self.applied_at.is_none();
        if changed {
            self.applied = applied;
            self.applied_at = Some(Timestamp::now());
        }
        changed
    }

    pub fn applied_profile(&self) -> RootProfile {
        self.applied
    }

    /// Why the desired profile was narrowed, for logs and `status`.
    pub fn note(&self) -> Option<&str> {
        self.note.as_deref()
    }

    /// The report for `agent.auth` and claims. `lastError` stays empty: a
    /// narrowed profile is policy, not a failure, and a non-empty error
    /// would mark the node's sync status as failed.
    pub fn report(&self) -> RootAccessReport {
        RootAccessReport {
            applied_profile: Some(self.applied),
            last_applied_at: self.applied_at,
            last_error: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RootProfile::*;

    #[test]
    fn applied_is_within_desired_ceiling_and_implemented() {
        for desired in RootProfile::ALL {
            for ceiling in RootProfile::ALL {
                let a = applied(desired, ceiling);
                let (s, d, c) = (a.scopes(), desired.scopes(), ceiling.scopes());
                assert!(
                    !s.task && !s.terminal,
                    "{desired}/{ceiling}: never task or terminal"
                );
                assert_eq!(
                    s.operational,
                    d.operational && c.operational,
                    "{desired}/{ceiling}"
                );
            }
        }
        assert_eq!(applied(All, Operational), Operational);
        assert_eq!(applied(OperationalTerminal, All), Operational);
        assert_eq!(applied(Operational, Off), Off);
        assert_eq!(applied(Terminal, All), Off);
    }

    #[test]
    fn apply_reports_changes_and_why() {
        let mut r = RootAccess::new(Operational);
        assert!(r.apply(Off), "the first application is a change");
        assert!(!r.apply(Off));
        assert!(r.apply(All));
        assert_eq!(r.applied_profile(), Operational);
        assert!(r.note().unwrap().contains("implements only operational"));
        let report = r.report();
        assert_eq!(report.applied_profile, Some(Operational));
        assert!(report.last_applied_at.is_some());
        assert_eq!(report.last_error, None);
        assert!(!r.apply(OperationalTask), "still operational: no change");
    }
}
