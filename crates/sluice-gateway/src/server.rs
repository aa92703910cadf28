//! Accepting connections: HTTP/1.1 with the timeouts and caps a public
//! endpoint needs, so slow or idle clients cannot hold the gateway's sockets.
//!
//! - **Headers** must arrive within `header_timeout` of the connection being
//!   ready for a request: a silent socket, one trickling headers, and an idle
//!   keep-alive connection are all closed after it.
//! - **Bodies** must arrive within `body_timeout` (a stalled upload is
//!   answered 408 and the connection closed): [`body_timeout`].
//! - **Connections** are capped in all (`max_connections`: beyond it new
//!   connections wait in the listen backlog) and per client (`per_ip`, with
//!   IPv6 counted per /64): one more from a client at its cap is answered 503
//!   and closed. (Behind a reverse proxy every client is the proxy: raise the
//!   per-client cap to the global one there.)
//!
//! Shutdown stops accepting, lets every connection finish the response it is
//! sending (for at most [`DRAIN`]), then returns.

use std::{
    collections::HashMap,
    future::Future,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, extract::ConnectInfo};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;
use tower::ServiceExt;

use crate::limiter::client_key;

pub use crate::state::Limits;

/// Open connections per client.
#[derive(Default)]
struct PerClient(Mutex<HashMap<IpAddr, usize>>);

/// One connection's place in [`PerClient`], given back when it closes.
struct Slot {
    clients: Arc<PerClient>,
    key: IpAddr,
}

impl PerClient {
    fn take(self: &Arc<Self>, key: IpAddr, cap: usize) -> Option<Slot> {
        let mut m = self.0.lock().ok()?;
        let n = m.entry(key).or_insert(0);
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(Slot {
            clients: Arc::clone(self),
            key,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut m) = self.clients.0.lock()
            && let Some(n) = m.get_mut(&self.key)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

/// Answer a connection over its client's cap with a 503 in the API's error
/// shape, then close it (within a second: a client that does not read is dropped).
async fn refuse(mut stream: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let body = crate::error::ApiError::unavailable(
        "too_many_connections",
        "too many open connections from this client; close some and retry",
    )
    .body()
    .to_string();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Serve `router` on `listener` until `shutdown` resolves.
pub async fn run(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_buffer.max(8192));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    // Every connection's task (the graceful drain below waits for the served
    // connections themselves, not for these tasks).
    let connections = tokio_util::task::TaskTracker::new();
    let open = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let clients = Arc::new(PerClient::default());
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = Arc::clone(&open).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, addr) = tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off, do not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(slot) = clients.take(client_key(addr.ip()), limits.per_ip.max(1)) else {
            tracing::debug!(client = %client_key(addr.ip()), "too many connections from one client; refused");
            connections.spawn(refuse(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo::<SocketAddr>(addr));
                router.clone().oneshot(req)
            });
        let conn = http.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        connections.spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection closed with an error");
            }
            drop((permit, slot));
        });
    }
    drop(listener);
    // Let open connections finish what they are sending (streams included),
    // for a while: a client that stops reading must not hold shutdown forever.
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "connections still open {} s after shutdown began; leaving them",
            DRAIN.as_secs()
        );
    }
    Ok(())
}

/// How long shutdown waits for open connections to finish their responses.
pub const DRAIN: Duration = Duration::from_secs(30);
