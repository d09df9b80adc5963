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
    let mut injected: Option<Duration> = None;
    for action in &actions {
        match action {
            FaultAction::Latency(d) => {
                let waited = exact_delay(*d).await;
                injected = Some(injected.unwrap_or_default() + waited);
            }
            FaultAction::DropConnection => {
                inner.recorder.request(RecordedRequest {
                    at_ms: inner.recorder.now_ms(),
                    method,
                    path,
                    body: json,
                    status: 0,
                    fault: Some("dropped connection".into()),
                    injected_latency_us: injected.map(|d| d.as_micros() as u64),
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
                    injected,
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
            return finish(&inner, &method, &path, json, resp, None, injected);
        }
        q.push_back(now);
    }

    let req = Request::from_parts(parts, Body::from(bytes));
    let resp = next.run(req).await;
    let fault = slow.map(|(chunk, delay)| format!("slow response {chunk} B / {delay:?}"));
    let resp = finish(&inner, &method, &path, json, resp, fault, injected);
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
    injected_latency: Option<Duration>,
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
        injected_latency_us: injected_latency.map(|d| d.as_micros() as u64),
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

/// Waits `d` as exactly as an injected fault should (never less), and
/// returns how long it really waited.
///
/// A Tokio sleep is too coarse for a few milliseconds: its timer fires on
/// the first 1 ms tick after the deadline, and its `epoll_wait` timeout is
/// rounded up to whole milliseconds on top, so a "1 ms" sleep lasted up to
/// 2.2 ms here and a "2 ms" one about 3.1 ms. So only what lies more than
/// [`TOKIO_TIMER_SLOP`] before the deadline is slept on Tokio's timer; the
/// rest is a `nanosleep` to the deadline on a blocking thread, whose timer
/// slack is lowered to 1 µs. Nothing spins: a spinning testbed would take a
/// CPU from the agent it measures.
async fn exact_delay(d: Duration) -> Duration {
    let start = Instant::now();
    let deadline = start + d;
    if let Some(coarse) = d.checked_sub(TOKIO_TIMER_SLOP) {
        tokio::time::sleep(coarse).await;
    }
    if Instant::now() < deadline {
        let fine = tokio::task::spawn_blocking(move || {
            // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this thread's
            // timer slack; it takes no pointers.
            unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
            let left = deadline.saturating_duration_since(Instant::now());
            if !left.is_zero() {
                std::thread::sleep(left);
            }
        });
        if fine.await.is_err() {
            // The blocking pool is shutting down: wait the coarse way.
            tokio::time::sleep_until(deadline.into()).await;
        }
    }
    start.elapsed()
}

/// How far past its deadline a Tokio sleep can end (1 ms tick plus the
/// rounded-up `epoll_wait` timeout), with a margin.
const TOKIO_TIMER_SLOP: Duration = Duration::from_millis(3);
