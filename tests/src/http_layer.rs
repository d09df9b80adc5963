//! What happens around every HTTP request: recording, the throttle, fault
//! injection, and filling the route path into error bodies.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use serde_json::Value;

use crate::Inner;
use crate::error::ApiError;
use crate::faults::{self, FaultAction};
use crate::recorder::RecordedRequest;
use crate::server::{ClientAddr, ConnHandle};

/// Largest request body accepted (the server's body parser allows 50 MB).
const MAX_BODY: usize = 50 << 20;

pub async fn around(State(inner): State<Arc<Inner>>, req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let conn = req.extensions().get::<ConnHandle>().cloned();
    let client = req.extensions().get::<ClientAddr>().copied();
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            let err = ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "request entity too large");
            return finish(
                &inner,
                &method,
                &path,
                Value::Null,
                err.into_response(),
                None,
            );
        }
    };
    let json: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let is_api = path.starts_with(shared::api::route::PREFIX);

    // Fault rules, in the order they were added.
    let actions = if is_api {
        inner.faults().take(&path, faults::random_unit)
    } else {
        Vec::new()
    };
    let mut slow = None;
    for action in &actions {
        match action {
            FaultAction::Latency(d) => exact_delay(*d).await,
            FaultAction::DropConnection => {
                inner.recorder.request(RecordedRequest {
                    at_ms: inner.recorder.now_ms(),
                    method,
                    path,
                    body: json,
                    status: 0,
                    fault: Some("dropped connection".into()),
                });
                if let Some(conn) = conn {
                    conn.kill();
                    // The abort lands at this await: the connection task is
                    // dropped with the request unanswered.
                    std::future::pending::<()>().await;
                }
                return StatusCode::INTERNAL_SERVER_ERROR.into_response();
            }
            FaultAction::Status { code, retry_after } => {
                let status =
                    StatusCode::from_u16(*code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let message = if status.is_server_error() {
                    "Internal server error".to_owned()
                } else {
                    format!(
                        "ThrottlerException: {}",
                        status.canonical_reason().unwrap_or("")
                    )
                };
                let mut resp = ApiError::new(status, message).into_response();
                if let Some(secs) = retry_after {
                    resp.headers_mut()
                        .insert("retry-after", HeaderValue::from(*secs));
                }
                return finish(
                    &inner,
                    &method,
                    &path,
                    json,
                    resp,
                    Some(format!("status {code}")),
                );
            }
            FaultAction::SlowResponse { chunk, delay } => slow = Some((*chunk, *delay)),
        }
    }

    // The throttle applies per client IP to the non-task routes (§0.3 rule 7).
    if is_api
        && !crate::agent_api::throttle_exempt(&path)
        && let (Some((limit, window)), Some(ClientAddr(addr))) = (inner.config.throttle, client)
    {
        let mut hits = inner.throttle_hits.lock().expect("throttle lock");
        let q = hits.entry(addr.ip()).or_default();
        let now = Instant::now();
        q.retain(|t| now.duration_since(*t) < window);
        if q.len() as u32 >= limit {
            let resp = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "ThrottlerException: Too Many Requests",
            )
            .into_response();
            drop(hits);
            return finish(&inner, &method, &path, json, resp, None);
        }
        q.push_back(now);
    }

    let req = Request::from_parts(parts, Body::from(bytes));
    let resp = next.run(req).await;
    let fault = slow.map(|(chunk, delay)| format!("slow response {chunk} B / {delay:?}"));
    let resp = finish(&inner, &method, &path, json, resp, fault);
    match slow {
        Some((chunk, delay)) => trickle(resp, chunk.max(1), delay).await,
        None => resp,
    }
}

/// Records the exchange and puts the request path into error bodies.
fn finish(
    inner: &Inner,
    method: &str,
    path: &str,
    body: Value,
    mut resp: Response,
    fault: Option<String>,
) -> Response {
    if let Some(err) = resp.extensions_mut().remove::<ApiError>() {
        let headers = resp.headers().clone();
        resp = (err.status, axum::Json(err.body(path))).into_response();
        for (k, v) in headers.iter().filter(|(k, _)| *k == "retry-after") {
            resp.headers_mut().insert(k, v.clone());
        }
    }
    inner.recorder.request(RecordedRequest {
        at_ms: inner.recorder.now_ms(),
        method: method.to_owned(),
        path: path.to_owned(),
        body,
        status: resp.status().as_u16(),
        fault,
    });
    resp
}

/// Sends the body in small pieces with a pause between them.
async fn trickle(resp: Response, chunk: usize, delay: Duration) -> Response {
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let pieces: Vec<Bytes> = bytes.chunks(chunk).map(Bytes::copy_from_slice).collect();
    let stream = futures_util::stream::iter(pieces).then(move |p| async move {
        tokio::time::sleep(delay).await;
        Ok::<_, std::convert::Infallible>(p)
    });
    let mut resp = Response::from_parts(parts, Body::from_stream(stream));
    resp.headers_mut().remove("content-length");
    resp
}

/// Waits `d` as exactly as an injected fault should: Tokio's timer fires on
/// the next millisecond tick after its deadline (a "2 ms" sleep lasted about
/// 3.1 ms), so the last millisecond is waited out by yielding.
async fn exact_delay(d: Duration) {
    let deadline = tokio::time::Instant::now() + d;
    if let Some(coarse) = d.checked_sub(Duration::from_millis(1)) {
        tokio::time::sleep(coarse).await;
    }
    while tokio::time::Instant::now() < deadline {
        tokio::task::yield_now().await;
    }
}
