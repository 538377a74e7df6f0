//! Limits a person can set on the bridge, and their enforcement: sockets
//! per user, client events per second per socket, the largest incoming
//! packet, the browser origins allowed to load the page and connect, and
//! how long a connection may refuse to read.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::header::{HOST, ORIGIN};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Sleep;
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::payload::AppError;

/// What one user and one socket may do.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Connected sockets per user on this bridge; more are refused (429).
    pub sockets_per_user: usize,
    /// Client requests (`offlineNotifications`, `markAsRead`) one user may
    /// have waiting on the core at once, across all their sockets here;
    /// more get 429 at once. Keeps one user from filling the core's queue.
    pub requests_in_flight_per_user: usize,
    /// Client events per second per socket (bursts of twice that pass).
    pub events_per_second: u32,
    /// Largest incoming Socket.IO packet, in bytes.
    pub max_payload: u64,
    /// Origins (`https://shop.example`) besides the bridge's own that browsers
    /// may use; `*` allows any. Clients without an Origin header (servers,
    /// native apps) are not affected.
    pub allowed_origins: Vec<String>,
    /// A connection whose writes make no progress for this long (the client
    /// reads nothing and its TCP window is full) is closed.
    pub write_stall_timeout: Duration,
    /// Open connections (HTTP and WebSocket); more are closed on accept.
    pub max_connections: usize,
    /// How long a connection may take to send a request's headers, and may
    /// sit idle between requests.
    pub header_read_timeout: Duration,
    /// Socket.IO sessions opened and not yet authenticated; more handshakes
    /// get 503 until some finish.
    pub max_pending_handshakes: usize,
    /// How long a session may stay without a namespace CONNECT (the token)
    /// before it is closed.
    pub handshake_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            sockets_per_user: 10,
            requests_in_flight_per_user: 4,
            events_per_second: 20,
            max_payload: 100_000,
            allowed_origins: Vec::new(),
            write_stall_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
            max_pending_handshakes: 1_000,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Dropped events, past the burst, after which a flooding socket is
/// disconnected: five bursts' worth.
const DISCONNECT_AFTER_BURSTS: f64 = 5.0;

/// What to do with one client event.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Handle it.
    Allow,
    /// Drop it; `warn` says whether to tell the client (at most once a second).
    Drop {
        /// Send `appError` 429 now.
        warn: bool,
    },
    /// Drop it and disconnect the socket.
    Disconnect,
}

/// A token bucket per socket.
pub struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    dropped: f64,
    warned: Option<Instant>,
    disconnecting: bool,
}

impl RateLimit {
    /// `per_second` events, bursts of twice that.
    pub fn new(per_second: u32) -> RateLimit {
        let rate = f64::from(per_second.max(1));
        RateLimit {
            rate,
            burst: rate * 2.0,
            tokens: rate * 2.0,
            last: Instant::now(),
            dropped: 0.0,
            warned: None,
            disconnecting: false,
        }
    }

    /// Counts one event arriving at `now`.
    pub fn check(&mut self, now: Instant) -> Verdict {
        if self.disconnecting {
            return Verdict::Drop { warn: false };
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.dropped = 0.0;
            return Verdict::Allow;
        }
        self.dropped += 1.0;
        if self.dropped > self.burst * DISCONNECT_AFTER_BURSTS {
            self.disconnecting = true;
            return Verdict::Disconnect;
        }
        let warn = self
            .warned
            .is_none_or(|at| now.saturating_duration_since(at).as_secs_f64() >= 1.0);
        if warn {
            self.warned = Some(now);
        }
        Verdict::Drop { warn }
    }
}

/// The per-socket bucket, kept in the socket's extensions.
pub type SharedRateLimit = Arc<Mutex<RateLimit>>;

/// Refuses browser requests from origins that are neither the bridge's own
/// nor allowed, before they reach the page or the Socket.IO handshake.
pub async fn check_origin(
    State(allowed): State<Arc<Vec<String>>>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    if let Some(origin) = headers.get(ORIGIN)
        && !origin_allowed(origin, &own_origin(headers), &allowed)
    {
        let refusal = AppError::forbidden("this origin is not allowed (see --allowed-origins)");
        return (
            StatusCode::FORBIDDEN,
            [("content-type", "application/json")],
            refusal.to_string(),
        )
            .into_response();
    }
    next.run(request).await
}

/// The origin the request was sent to: `http://` and its Host (`https://`
/// when a TLS-terminating proxy says so in `X-Forwarded-Proto`); `None`
/// without a readable Host.
fn own_origin(headers: &axum::http::HeaderMap) -> Option<String> {
    let host = headers.get(HOST)?.to_str().ok()?;
    let scheme = headers
        .get("x-forwarded-proto")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(',').next())
        .map(str::trim)
        .filter(|scheme| scheme.eq_ignore_ascii_case("https"))
        .unwrap_or("http");
    Some(format!("{scheme}://{host}"))
}

/// Same origin (scheme and authority both), or one allowed.
fn origin_allowed(origin: &HeaderValue, own: &Option<String>, allowed: &[String]) -> bool {
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
        || own
            .as_deref()
            .is_some_and(|own| own.eq_ignore_ascii_case(origin))
}

/// CORS headers for the allowed cross-origin browsers (the polling
/// transport's requests need them).
pub fn cors(allowed: &[String]) -> CorsLayer {
    let origins = if allowed.iter().any(|a| a == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(allowed.iter().filter_map(|a| a.parse().ok()))
    };
    CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([axum::http::Method::GET, axum::http::Method::POST])
        .allow_headers([
            axum::http::header::CONTENT_TYPE,
            axum::http::header::AUTHORIZATION,
        ])
}

/// A TCP connection that is shut down when a write (or flush) has waited
/// `timeout` without progress. From then on every read and write fails at
/// once, so whoever holds it — hyper, or the WebSocket writer with its
/// queue of packets — lets go of it instead of waiting for each packet in
/// turn.
///
/// Why: a socket that reads nothing first fills its send buffer, then is
/// marked stalled and skipped (see `feed`), and its Socket.IO session ends
/// at the next heartbeat. But the task writing to its WebSocket stays
/// blocked on the full TCP window, holding the connection and every queued
/// packet, until the client reads. The deadline ends that.
pub struct StallLimited {
    stream: TcpStream,
    timeout: Duration,
    deadline: Option<Pin<Box<Sleep>>>,
    stalled: bool,
    /// Its place under the connection cap, given back when it closes.
    _slot: Option<OwnedSemaphorePermit>,
}

impl StallLimited {
    /// Wraps an accepted connection.
    pub fn new(stream: TcpStream, timeout: Duration) -> StallLimited {
        StallLimited {
            stream,
            timeout,
            deadline: None,
            stalled: false,
            _slot: None,
        }
    }

    /// The connection holds `slot` for as long as it lives.
    pub fn holding(mut self, slot: OwnedSemaphorePermit) -> StallLimited {
        self._slot = Some(slot);
        self
    }

    fn stalled_error() -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            "the client read nothing for the write-stall timeout",
        )
    }

    /// Passes a write-side poll through, starting the deadline when it
    /// waits and clearing it when it makes progress.
    fn watch<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.deadline = None;
            return poll;
        }
        let timeout = self.timeout;
        let deadline = self
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if deadline.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.stalled = true;
        metrics::counter!("notify_bridge_write_stall_closes_total").increment(1);
        tracing::info!("closing a connection that read nothing for {timeout:?}");
        // Readers waiting on it see the end at once, not at the heartbeat.
        let _ = socket2::SockRef::from(&self.stream).shutdown(std::net::Shutdown::Both);
        Poll::Ready(Err(Self::stalled_error()))
    }
}

impl AsyncRead for StallLimited {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.stalled {
            return Poll::Ready(Err(Self::stalled_error()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for StallLimited {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.stalled {
            return Poll::Ready(Err(Self::stalled_error()));
        }
        let poll = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.watch(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.stalled {
            return Poll::Ready(Err(Self::stalled_error()));
        }
        let poll = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.stalled {
            return Poll::Ready(Err(Self::stalled_error()));
        }
        let poll = Pin::new(&mut self.stream).poll_flush(cx);
        self.watch(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.stalled {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::net::TcpListener;

    use super::*;

    #[tokio::test]
    async fn a_connection_that_reads_nothing_is_shut_down_after_the_stall_timeout() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let mut server = StallLimited::new(accepted, Duration::from_millis(300));
        // The client never reads: writes succeed until both buffers are
        // full, then one waits out the timeout and fails.
        let chunk = vec![7u8; 64 * 1024];
        let started = Instant::now();
        let error = loop {
            match server.write(&chunk).await {
                Ok(_) => assert!(started.elapsed() < Duration::from_secs(30), "never stalled"),
                Err(error) => break error,
            }
        };
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        // Everything after fails at once.
        assert!(server.write(b"x").await.is_err());
        let mut byte = [0u8; 1];
        assert!(server.read(&mut byte).await.is_err());
        drop(client);
    }

    #[tokio::test]
    async fn a_reader_that_keeps_up_is_never_cut_off() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let mut server = StallLimited::new(accepted, Duration::from_millis(300));
        let reader = tokio::spawn(async move {
            let mut total = 0usize;
            let mut buf = vec![0u8; 64 * 1024];
            while total < 64 * 1024 * 1024 {
                // A slow but steady reader: pauses shorter than the timeout.
                tokio::time::sleep(Duration::from_millis(1)).await;
                total += client.read(&mut buf).await.unwrap();
            }
            total
        });
        let chunk = vec![7u8; 64 * 1024];
        for _ in 0..1024 {
            server.write_all(&chunk).await.unwrap();
        }
        assert_eq!(reader.await.unwrap(), 64 * 1024 * 1024);
    }

    #[test]
    fn a_flood_is_dropped_warned_once_a_second_then_disconnected() {
        let mut limit = RateLimit::new(20);
        let start = Instant::now();
        let verdicts: Vec<Verdict> = (0..400).map(|_| limit.check(start)).collect();
        assert!(
            verdicts[..40].iter().all(|v| *v == Verdict::Allow),
            "the burst passes"
        );
        assert_eq!(verdicts[40], Verdict::Drop { warn: true });
        assert_eq!(verdicts[41], Verdict::Drop { warn: false });
        assert_eq!(verdicts[40 + 200], Verdict::Disconnect);
        assert_eq!(
            verdicts[40 + 201],
            Verdict::Drop { warn: false },
            "disconnects once"
        );
    }

    #[test]
    fn a_steady_client_is_never_limited() {
        let mut limit = RateLimit::new(20);
        let start = Instant::now();
        for n in 0..1000 {
            let at = start + Duration::from_millis(n * 60);
            assert_eq!(limit.check(at), Verdict::Allow);
        }
    }

    #[test]
    fn origins() {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(HOST, HeaderValue::from_static("127.0.0.1:3000"));
        let own = own_origin(&headers);
        let allowed = vec!["https://shop.example".to_owned()];
        let check = |origin: &'static str| {
            origin_allowed(&HeaderValue::from_static(origin), &own, &allowed)
        };
        assert!(check("http://127.0.0.1:3000"));
        assert!(check("https://shop.example"));
        assert!(!check("https://evil.example"));
        // The scheme is part of the origin.
        assert!(!check("https://127.0.0.1:3000"));
        assert!(!check("ws://127.0.0.1:3000"));
        assert!(!check("127.0.0.1:3000"));
        assert!(origin_allowed(
            &HeaderValue::from_static("https://evil.example"),
            &own,
            &["*".to_owned()]
        ));
        // Behind a TLS-terminating proxy.
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let proxied = own_origin(&headers);
        assert!(origin_allowed(
            &HeaderValue::from_static("https://127.0.0.1:3000"),
            &proxied,
            &[]
        ));
        assert!(!origin_allowed(
            &HeaderValue::from_static("http://127.0.0.1:3000"),
            &proxied,
            &[]
        ));
        assert!(!origin_allowed(
            &HeaderValue::from_static("http://x"),
            &None,
            &[]
        ));
    }
}
