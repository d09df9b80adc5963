//! The HTTP client for the control plane's JSON API (PROTOCOL.md §1): base
//! URL, headers, per-request timeouts, and errors classified so callers can
//! decide between retrying, backing off and giving up.
//!
//! There is no retry inside the client: the original agent's client-level
//! retries duplicated non-idempotent log lines and orphaned long-poll claims
//! (§13 items 2 and 16). Retry policy belongs to each caller.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use shared::api::ApiErrorBody;
use shared::identity::Identity;

/// What kind of transport failure happened, for logs and status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    Timeout,
    Dns,
    Connect,
    Tls,
    /// The connection broke mid-request or the response was malformed.
    Other,
}

impl std::fmt::Display for TransportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Timeout => "timeout",
            Self::Dns => "DNS",
            Self::Connect => "connection",
            Self::Tls => "TLS",
            Self::Other => "transport",
        })
    }
}

/// A failed call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error("{kind} error: {message}")]
    Transport {
        kind: TransportKind,
        message: String,
    },
    #[error("HTTP {status}: {message}")]
    Status {
        status: u16,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("unexpected response: {0}")]
    Decode(String),
}

impl CallError {
    /// The HTTP status, if the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Worth retrying later: transport failures, 429 and 5xx.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Transport { .. } => true,
            Self::Status { status, .. } => *status == 429 || *status >= 500,
            Self::Decode(_) => false,
        }
    }

    /// The server's `Retry-After`, if it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("could not build the HTTP client: {0}")]
    Build(String),
}

/// A client for `<api_url>/api/v1`.
#[derive(Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: Arc<str>,
    auth: Option<Arc<(String, String)>>,
    timeout: Duration,
}

impl ApiClient {
    /// `api_url` is the normalised origin (config `api_url`); `timeout` is
    /// the default per request (config `request_timeout`).
    pub fn new(
        api_url: &str,
        tls: Arc<rustls::ClientConfig>,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .user_agent(format!("noderax-agent/{}", shared::build_info::VERSION))
            .connect_timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .map_err(|e| ClientError::Build(e.to_string()))?;
        Ok(Self {
            http,
            base: format!("{api_url}{}", shared::api::route::PREFIX).into(),
            auth: None,
            timeout,
        })
    }

    /// The same client, authenticating as `identity` (§1.2).
    pub fn with_identity(&self, identity: &Identity) -> Self {
        Self {
            auth: Some(Arc::new((
                identity.node_id.clone(),
                identity.agent_token.clone(),
            ))),
            ..self.clone()
        }
    }

    /// `POST route` with a JSON body, default timeout.
    pub async fn post<B: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        route: &str,
        body: &B,
    ) -> Result<R, CallError> {
        self.post_with_timeout(route, body, self.timeout).await
    }

    /// `POST route` with a JSON body and an explicit timeout (long polls).
    pub async fn post_with_timeout<B: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        route: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<R, CallError> {
        let body = serde_json::to_vec(body).map_err(|e| CallError::Decode(e.to_string()))?;
        self.send(
            self.request(reqwest::Method::POST, route).body(body),
            timeout,
        )
        .await
    }

    /// `GET route`.
    pub async fn get<R: DeserializeOwned>(&self, route: &str) -> Result<R, CallError> {
        self.send(self.request(reqwest::Method::GET, route), self.timeout)
            .await
    }

    fn request(&self, method: reqwest::Method, route: &str) -> reqwest::RequestBuilder {
        let mut req = self
            .http
            .request(method, format!("{}{route}", self.base))
            .header("accept", "application/json")
            .header("content-type", "application/json");
        if let Some(auth) = &self.auth {
            req = req
                .header("authorization", format!("Bearer {}", auth.1))
                .header("x-agent-node-id", auth.0.as_str());
        }
        req
    }

    async fn send<R: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<R, CallError> {
        let resp = req.timeout(timeout).send().await.map_err(classify)?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let bytes = resp.bytes().await.map_err(classify)?;
        if !status.is_success() {
            let message = serde_json::from_slice::<ApiErrorBody>(&bytes)
                .ok()
                .and_then(|b| b.text())
                .unwrap_or_else(|| {
                    let raw = String::from_utf8_lossy(&bytes);
                    let raw = raw.trim();
                    if raw.is_empty() {
                        status.canonical_reason().unwrap_or("error").to_owned()
                    } else {
                        raw.chars().take(300).collect()
                    }
                });
            return Err(CallError::Status {
                status: status.as_u16(),
                message,
                retry_after,
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            CallError::Decode(format!(
                "{e} in {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            ))
        })
    }
}

/// A rustls error, possibly wrapped in (nested) io::Errors, whose `source()`
/// skips the error they wrap.
fn is_rustls_error(e: &(dyn std::error::Error + 'static)) -> bool {
    if e.is::<rustls::Error>() {
        return true;
    }
    match e
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
    {
        Some(inner) => is_rustls_error(inner),
        None => false,
    }
}

/// Sorts a reqwest error into a [`TransportKind`] by looking through its causes.
pub(crate) fn classify(e: reqwest::Error) -> CallError {
    let mut kind = if e.is_timeout() {
        TransportKind::Timeout
    } else if e.is_connect() {
        TransportKind::Connect
    } else {
        TransportKind::Other
    };
    let mut message = e.to_string();
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&e);
    while let Some(s) = source {
        if is_rustls_error(s) {
            kind = TransportKind::Tls;
        }
        let text = s.to_string();
        if kind == TransportKind::Connect && text.contains("dns error") {
            kind = TransportKind::Dns;
        }
        if !message.contains(&text) {
            message = format!("{message}: {text}");
        }
        source = s.source();
    }
    CallError::Transport { kind, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rustls_errors_are_found_inside_nested_io_errors() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let nested = std::io::Error::other(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            tls.clone(),
        ));
        assert!(is_rustls_error(&nested));
        assert!(is_rustls_error(&tls));
        assert!(!is_rustls_error(&std::io::Error::other("refused")));
    }
}
