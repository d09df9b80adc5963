//! The listening socket and its connections, served with hyper so faults can
//! act on the transport: a connection can be dropped mid-request, and during
//! an outage the listening socket is closed (new connections are refused)
//! and every open connection is cut.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::AbortHandle;
use tower::ServiceExt as _;

use crate::Inner;

/// Lets a request handler cut its own connection
/// ([`crate::faults::FaultAction::DropConnection`]).
#[derive(Clone, Default)]
pub struct ConnHandle(Arc<Mutex<Option<AbortHandle>>>);

impl ConnHandle {
    /// Closes the connection without a response.
    pub fn kill(&self) {
        if let Some(h) = self.0.lock().expect("conn lock").as_ref() {
            h.abort();
        }
    }
}

/// The client address of a request.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub SocketAddr);

/// Open connections, so an outage can cut them all.
#[derive(Default)]
pub struct Connections(Mutex<Vec<AbortHandle>>);

impl Connections {
    fn add(&self, h: AbortHandle) {
        let mut v = self.0.lock().expect("conns lock");
        v.retain(|h| !h.is_finished());
        v.push(h);
    }

    pub fn cut_all(&self) {
        for h in self.0.lock().expect("conns lock").drain(..) {
            h.abort();
        }
    }
}

/// Accepts connections on `listener` until the process ends, closing and
/// re-binding the port around outages.
pub async fn run(inner: Arc<Inner>, mut listener: TcpListener, app: Router) {
    let addr = listener.local_addr().expect("bound listener");
    loop {
        if let Some(until) = inner.outage_until() {
            drop(listener);
            inner.connections.cut_all();
            inner.disconnect_all_sockets();
            tokio::time::sleep_until(until.into()).await;
            listener = rebind(addr).await;
            continue;
        }
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = inner.outage_started.notified() => continue,
        };
        let Ok((stream, peer)) = accepted else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let handle = ConnHandle::default();
        let app = app.clone();
        let svc_handle = handle.clone();
        let svc = tower::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(svc_handle.clone());
            req.extensions_mut().insert(ClientAddr(peer));
            app.clone().oneshot(req.map(axum::body::Body::new))
        });
        let task = tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc))
                .with_upgrades()
                .await;
        });
        *handle.0.lock().expect("conn lock") = Some(task.abort_handle());
        inner.connections.add(task.abort_handle());
    }
}

async fn rebind(addr: SocketAddr) -> TcpListener {
    // The old socket may linger briefly; retry until the port is ours again.
    let start = Instant::now();
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) if start.elapsed().as_secs() < 10 => {
                let _ = e;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => panic!("testbed could not re-bind {addr} after an outage: {e}"),
        }
    }
}
