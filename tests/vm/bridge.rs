//! The host end of the guest's only network path. A guest program that
//! connects to vsock CID 2 (the host) port P reaches, through
//! vhost-device-vsock, the unix socket `<uds-path>_P`; this forwards every
//! such connection to a TCP address on the host's loopback (the testbed).
//! In the guest, `noderax-vm-bridge.service` (socat) turns 127.0.0.1:P into
//! that vsock port, so the agent reaches the testbed as `http://127.0.0.1:P`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tokio::net::{TcpStream, UnixListener};
use tokio::task::{JoinHandle, JoinSet};

/// A running forwarder; dropping it stops it and cuts its connections.
pub struct Bridge {
    task: JoinHandle<()>,
    path: PathBuf,
}

impl Bridge {
    /// Listens on `<uds_path>_<port>` and forwards to `target`.
    pub fn start(uds_path: &Path, port: u16, target: SocketAddr) -> anyhow::Result<Self> {
        let path = PathBuf::from(format!("{}_{port}", uds_path.display()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)
            .with_context(|| format!("listening on {} for the guest", path.display()))?;
        let task = tokio::spawn(async move {
            // Owned here: aborting the accept loop drops (aborts) every
            // connection's copy task too.
            let mut conns = JoinSet::new();
            loop {
                let Ok((mut guest, _)) = listener.accept().await else {
                    return;
                };
                conns.spawn(async move {
                    if let Ok(mut host) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut guest, &mut host).await;
                    }
                });
                // Reap finished connections as we go.
                while conns.try_join_next().is_some() {}
            }
        });
        Ok(Self { task, path })
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}
