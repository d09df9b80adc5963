//! Fault injection, changeable while the testbed runs: per-route latency,
//! scripted or random error statuses (with `Retry-After`), connections
//! dropped mid-request, slow (trickled) responses, and full outages during
//! which connections are refused. Forced Socket.IO disconnects are on
//! [`crate::Testbed::disconnect_node`].

use std::time::{Duration, Instant};

/// Which requests a rule applies to: a path under `/api/v1` where `*`
/// matches one segment (`/agent/tasks/*/logs`), or `*` alone for all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch(String);

impl RouteMatch {
    pub fn new(pattern: &str) -> Self {
        Self(pattern.trim_end_matches('/').to_owned())
    }

    /// Whether `path` (with or without the `/api/v1` prefix) matches.
    pub fn matches(&self, path: &str) -> bool {
        if self.0 == "*" {
            return true;
        }
        let path = path
            .strip_prefix(shared::api::route::PREFIX)
            .unwrap_or(path);
        let a: Vec<&str> = self.0.split('/').collect();
        let b: Vec<&str> = path.trim_end_matches('/').split('/').collect();
        a.len() == b.len() && a.iter().zip(&b).all(|(p, s)| *p == "*" || p == s)
    }
}

/// What a rule does to a matching request.
#[derive(Debug, Clone, PartialEq)]
pub enum FaultAction {
    /// Wait before handling the request.
    Latency(Duration),
    /// Answer with this status instead of handling the request;
    /// `retry_after` seconds go into a `Retry-After` header.
    Status { code: u16, retry_after: Option<u64> },
    /// Read the request, then close the connection without answering.
    DropConnection,
    /// Handle the request, then send the response body in `chunk`-byte
    /// pieces with `delay` between them.
    SlowResponse { chunk: usize, delay: Duration },
}

/// One fault rule.
#[derive(Debug, Clone)]
pub struct FaultRule {
    pub route: RouteMatch,
    pub action: FaultAction,
    /// How many more requests it applies to; `None` for every request.
    pub remaining: Option<u32>,
    /// Chance of applying to a matching request (1.0 = always).
    pub probability: f64,
}

/// The active faults.
#[derive(Debug, Default)]
pub struct Faults {
    rules: Vec<FaultRule>,
    outage_until: Option<Instant>,
}

impl Faults {
    pub fn add(&mut self, rule: FaultRule) {
        self.rules.push(rule);
    }

    pub fn clear(&mut self) {
        self.rules.clear();
        self.outage_until = None;
    }

    pub fn start_outage(&mut self, duration: Duration) {
        self.outage_until = Some(Instant::now() + duration);
    }

    /// When the current outage ends, if one is active.
    pub fn outage_until(&self) -> Option<Instant> {
        self.outage_until.filter(|t| *t > Instant::now())
    }

    /// The actions that apply to this request, consuming counted rules.
    /// `roll` gives a uniform number in [0, 1) per rule.
    pub fn take(&mut self, path: &str, mut roll: impl FnMut() -> f64) -> Vec<FaultAction> {
        let mut actions = Vec::new();
        for rule in &mut self.rules {
            if !rule.route.matches(path) || rule.remaining == Some(0) {
                continue;
            }
            if rule.probability < 1.0 && roll() >= rule.probability {
                continue;
            }
            if let Some(n) = &mut rule.remaining {
                *n -= 1;
            }
            actions.push(rule.action.clone());
        }
        self.rules.retain(|r| r.remaining != Some(0));
        actions
    }
}

/// A uniform random number in [0, 1).
pub fn random_unit() -> f64 {
    (uuid::Uuid::new_v4().as_u128() >> 75) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_patterns() {
        let m = RouteMatch::new("/agent/tasks/*/logs");
        assert!(m.matches("/api/v1/agent/tasks/abc/logs"));
        assert!(m.matches("/agent/tasks/abc/logs"));
        assert!(!m.matches("/api/v1/agent/tasks/abc/completed"));
        assert!(!m.matches("/api/v1/agent/tasks/claim"));
        assert!(RouteMatch::new("*").matches("/anything"));
    }

    #[test]
    fn counted_rules_expire() {
        let mut f = Faults::default();
        f.add(FaultRule {
            route: RouteMatch::new("/agent/tasks/claim"),
            action: FaultAction::Status {
                code: 503,
                retry_after: None,
            },
            remaining: Some(2),
            probability: 1.0,
        });
        assert_eq!(f.take("/api/v1/agent/tasks/claim", random_unit).len(), 1);
        assert_eq!(f.take("/api/v1/agent/tasks/other", random_unit).len(), 0);
        assert_eq!(f.take("/api/v1/agent/tasks/claim", random_unit).len(), 1);
        assert_eq!(f.take("/api/v1/agent/tasks/claim", random_unit).len(), 0);
        for _ in 0..1000 {
            let r = random_unit();
            assert!((0.0..1.0).contains(&r));
        }
    }
}
