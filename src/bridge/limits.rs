//! Limits a person can set on the bridge, and their enforcement: sockets
//! per user, client events per second per socket, the largest incoming
//! packet, and the browser origins allowed to load the page and connect.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::header::{HOST, ORIGIN};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::payload::AppError;

/// What one user and one socket may do.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Connected sockets per user on this bridge; more are refused (429).
    pub sockets_per_user: usize,
    /// Client events per second per socket (bursts of twice that pass).
    pub events_per_second: u32,
    /// Largest incoming Socket.IO packet, in bytes.
    pub max_payload: u64,
    /// Origins (`https://shop.example`) besides the bridge's own that browsers
    /// may use; `*` allows any. Clients without an Origin header (servers,
    /// native apps) are not affected.
    pub allowed_origins: Vec<String>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            sockets_per_user: 10,
            events_per_second: 20,
            max_payload: 100_000,
            allowed_origins: Vec::new(),
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
    if let Some(origin) = request.headers().get(ORIGIN)
        && !origin_allowed(origin, request.headers().get(HOST), &allowed)
    {
        let refusal = AppError::new(403, "this origin is not allowed (see --allowed-origins)");
        return (
            StatusCode::FORBIDDEN,
            [("content-type", "application/json")],
            refusal.to_string(),
        )
            .into_response();
    }
    next.run(request).await
}

fn origin_allowed(origin: &HeaderValue, host: Option<&HeaderValue>, allowed: &[String]) -> bool {
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    // Same origin: the Origin's authority is the Host the request went to.
    let authority = origin
        .split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or(origin);
    host.and_then(|h| h.to_str().ok())
        .is_some_and(|host| host.eq_ignore_ascii_case(authority))
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

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
        let host = HeaderValue::from_static("127.0.0.1:3000");
        let allowed = vec!["https://shop.example".to_owned()];
        let check = |origin: &'static str| {
            origin_allowed(&HeaderValue::from_static(origin), Some(&host), &allowed)
        };
        assert!(check("http://127.0.0.1:3000"));
        assert!(check("https://shop.example"));
        assert!(!check("https://evil.example"));
        assert!(origin_allowed(
            &HeaderValue::from_static("https://evil.example"),
            Some(&host),
            &["*".to_owned()]
        ));
    }
}
