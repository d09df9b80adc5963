//! The HTTP heartbeat (PROTOCOL.md §4.3): keeps the node online while the
//! realtime socket is not authenticated (a proxy that blocks WebSocket
//! upgrades, a server restart), as long as HTTP still works. The original
//! agent had the setting but never sent it (§13 item 31).

use std::time::Duration;

use shared::api::enrollment::{Heartbeat, HeartbeatAck};
use shared::identity::Identity;
use shared::timestamp::Timestamp;
use tokio::sync::watch;

use crate::api_client::ApiClient;
use crate::host_facts::Host;

/// Sends a heartbeat every `interval` while `socket_up` is false; stops when
/// `shutdown` becomes true. The route is throttled per client IP, so the
/// interval (30 s by default) stays well under 100 requests per minute.
pub async fn run(
    client: ApiClient,
    identity: Identity,
    host: Host,
    interval: Duration,
    socket_up: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let body = |now| Heartbeat {
        node_id: identity.node_id.clone(),
        agent_token: identity.agent_token.clone(),
        agent_version: Some(shared::build_info::VERSION.to_owned()),
        platform_version: Some(host.platform_version.clone()).filter(|v| !v.is_empty()),
        kernel_version: Some(host.kernel_version.clone()).filter(|v| !v.is_empty()),
        sent_at: Some(now),
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
        if !*socket_up.borrow() {
            let _ = client
                .post::<_, HeartbeatAck>(shared::api::route::HEARTBEAT, &body(Timestamp::now()))
                .await;
        }
    }
}
