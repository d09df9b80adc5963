//! The server's validation pipe (PROTOCOL.md §0.3): whitelist with
//! forbidNonWhitelisted, then per-field class-validator rules. Messages
//! follow class-validator's wording so tests read like the real server.

use serde_json::{Map, Value};
use shared::api::Schema;

use crate::error::ApiError;

/// Collects validation errors for one JSON object.
pub struct Check<'a> {
    obj: &'a Map<String, Value>,
    errors: Vec<String>,
}

/// Parses the body as a JSON object and applies the whitelist of `S`.
pub fn body<S: Schema>(value: &Value) -> Result<Check<'_>, ApiError> {
    whitelist(value, S::ACCEPTED)
}

/// Parses the body as an object and rejects keys outside `accepted`.
pub fn whitelist<'a>(value: &'a Value, accepted: &[&str]) -> Result<Check<'a>, ApiError> {
    let Value::Object(obj) = value else {
        return Err(ApiError::bad_request("request body must be a JSON object"));
    };
    let errors: Vec<String> = obj
        .keys()
        .filter(|k| !accepted.contains(&k.as_str()))
        .map(|k| format!("property {k} should not exist"))
        .collect();
    Ok(Check { obj, errors })
}

fn chars(s: &str) -> usize {
    s.chars().count()
}

impl<'a> Check<'a> {
    /// The object being checked.
    pub fn object(&self) -> &'a Map<String, Value> {
        self.obj
    }

    pub fn fail(&mut self, msg: impl Into<String>) {
        self.errors.push(msg.into());
    }

    fn present(&self, key: &str) -> Option<&'a Value> {
        // class-validator's IsOptional treats null like absent.
        self.obj.get(key).filter(|v| !v.is_null())
    }

    fn require(&mut self, key: &str, required: bool) -> bool {
        if self.present(key).is_none() && required {
            self.errors.push(format!("{key} should not be empty"));
        }
        self.present(key).is_some()
    }

    /// A string of `min..=max` code points (after trimming when `trim`).
    pub fn string(&mut self, key: &str, required: bool, min: usize, max: usize) -> Option<&'a str> {
        if !self.require(key, required) {
            return None;
        }
        match self.present(key) {
            Some(Value::String(s)) => {
                let n = chars(s);
                if n < min {
                    self.errors.push(format!(
                        "{key} must be longer than or equal to {min} characters"
                    ));
                    None
                } else if n > max {
                    self.errors.push(format!(
                        "{key} must be shorter than or equal to {max} characters"
                    ));
                    None
                } else {
                    Some(s.as_str())
                }
            }
            _ => {
                self.errors.push(format!("{key} must be a string"));
                None
            }
        }
    }

    pub fn uuid(&mut self, key: &str, required: bool) -> Option<&'a str> {
        if !self.require(key, required) {
            return None;
        }
        match self.present(key) {
            Some(Value::String(s)) if shared::validate::uuid(s).is_ok() => Some(s.as_str()),
            _ => {
                self.errors.push(format!("{key} must be a UUID"));
                None
            }
        }
    }

    pub fn iso_date(&mut self, key: &str, required: bool) -> Option<&'a str> {
        if !self.require(key, required) {
            return None;
        }
        match self.present(key) {
            Some(Value::String(s)) if shared::timestamp::Timestamp::parse(s).is_ok() => {
                Some(s.as_str())
            }
            _ => {
                self.errors
                    .push(format!("{key} must be a valid ISO 8601 date string"));
                None
            }
        }
    }

    pub fn integer(&mut self, key: &str, required: bool, min: i64, max: i64) -> Option<i64> {
        if !self.require(key, required) {
            return None;
        }
        match self.present(key).and_then(Value::as_i64) {
            Some(n) if n < min => {
                self.errors
                    .push(format!("{key} must not be less than {min}"));
                None
            }
            Some(n) if n > max => {
                self.errors
                    .push(format!("{key} must not be greater than {max}"));
                None
            }
            Some(n) => Some(n),
            None => {
                self.errors.push(format!("{key} must be an integer number"));
                None
            }
        }
    }

    pub fn number(&mut self, key: &str, required: bool, min: f64, max: f64) -> Option<f64> {
        if !self.require(key, required) {
            return None;
        }
        match self.present(key).and_then(Value::as_f64) {
            Some(n) if n < min => {
                self.errors
                    .push(format!("{key} must not be less than {min}"));
                None
            }
            Some(n) if n > max => {
                self.errors
                    .push(format!("{key} must not be greater than {max}"));
                None
            }
            Some(n) => Some(n),
            None => {
                self.errors.push(format!(
                    "{key} must be a number conforming to the specified constraints"
                ));
                None
            }
        }
    }

    pub fn boolean(&mut self, key: &str, required: bool) -> Option<bool> {
        if !self.require(key, required) {
            return None;
        }
        match self.present(key) {
            Some(Value::Bool(b)) => Some(*b),
            _ => {
                self.errors.push(format!("{key} must be a boolean value"));
                None
            }
        }
    }

    pub fn one_of(&mut self, key: &str, required: bool, allowed: &[&str]) -> Option<&'a str> {
        if !self.require(key, required) {
            return None;
        }
        match self.present(key) {
            Some(Value::String(s)) if allowed.contains(&s.as_str()) => Some(s.as_str()),
            _ => {
                self.errors.push(format!(
                    "{key} must be one of the following values: {}",
                    allowed.join(", ")
                ));
                None
            }
        }
    }

    /// A plain JSON object (not an array).
    pub fn json_object(&mut self, key: &str, required: bool) -> Option<&'a Map<String, Value>> {
        if !self.require(key, required) {
            return None;
        }
        match self.present(key) {
            Some(Value::Object(m)) => Some(m),
            _ => {
                self.errors.push(format!("{key} must be an object"));
                None
            }
        }
    }

    /// A nested object validated as a class: whitelist plus `rules`.
    pub fn nested<S: Schema>(&mut self, key: &str, rules: impl FnOnce(&mut Check<'a>)) {
        let Some(value) = self.present(key) else {
            return;
        };
        match whitelist(value, S::ACCEPTED) {
            Ok(mut inner) => {
                rules(&mut inner);
                self.errors
                    .extend(inner.errors.into_iter().map(|e| format!("{key}.{e}")));
            }
            Err(_) => self.errors.push(format!("{key} must be an object")),
        }
    }

    /// The request is valid, or a 400 with every message.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::validation(self.errors))
        }
    }

    /// The collected messages (socket handlers report them differently).
    pub fn into_errors(self) -> Vec<String> {
        self.errors
    }
}

/// The root-access report rules shared by `agent.auth` and claims (§11.2).
pub fn root_access_rules(c: &mut Check<'_>) {
    let profiles: Vec<&str> = shared::api::RootProfile::ALL
        .iter()
        .map(|p| p.as_str())
        .collect();
    c.one_of("appliedProfile", false, &profiles);
    c.iso_date("lastAppliedAt", false);
    c.string("lastError", false, 0, usize::MAX);
}
