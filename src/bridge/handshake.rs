//! Requests that open a Socket.IO session. Socket.IO keeps each session's
//! opening request (its URI, headers and extensions) for as long as the
//! session lives, authenticated or not; this middleware decides what that
//! may cost:
//!
//! - Only the headers the bridge reads are kept ([`KEPT`]), each copied out
//!   of the connection's read buffer. hyper parses headers as slices of that
//!   buffer (8–16 KiB, more for large headers), so keeping one keeps all of
//!   it: measured with massif, a third of an idle socket's heap, and with
//!   300 KB headers, 625 MiB for 2,000 tokenless sessions.
//! - A URI longer than [`MAX_URI_BYTES`] gets 414 (socket.io-client's are
//!   under 100 bytes).
//! - At most `--max-pending-handshakes` sessions may be open and not yet
//!   authenticated: each takes a [`PendingHandshake`] slot, given back when
//!   its token is accepted or its session ends (Socket.IO closes a session
//!   without a namespace CONNECT after `--handshake-timeout`). Past the cap,
//!   503 with `Retry-After`.

use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, CONNECTION, HOST, RETRY_AFTER, UPGRADE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::payload::AppError;

/// Longest URI a session may open with.
pub const MAX_URI_BYTES: usize = 1024;

/// The headers a session keeps: the token's header, and what Engine.IO
/// reads to upgrade to a WebSocket.
const KEPT: [HeaderName; 6] = [
    AUTHORIZATION,
    HOST,
    UPGRADE,
    CONNECTION,
    HeaderName::from_static("sec-websocket-key"),
    HeaderName::from_static("sec-websocket-version"),
];

/// The slots of sessions not yet authenticated.
pub struct Handshakes {
    pending: Arc<Semaphore>,
    max: usize,
}

impl Handshakes {
    /// At most `max` sessions pending at once.
    pub fn new(max: usize) -> Handshakes {
        Handshakes {
            pending: Arc::new(Semaphore::new(max)),
            max,
        }
    }
}

/// A pending session's slot, in its opening request's extensions (which
/// the session keeps): released by [`PendingHandshake::authenticated`], or
/// when the session and its request are dropped.
#[derive(Clone)]
pub struct PendingHandshake(Arc<Mutex<Option<OwnedSemaphorePermit>>>);

impl PendingHandshake {
    /// The session's token was accepted: it no longer counts as pending.
    pub fn authenticated(&self) {
        let _ = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
    }
}

/// Middleware: requests that open a session take a pending slot and are
/// handed on with only the headers kept, in allocations of their own.
pub async fn open_session(
    State(handshakes): State<Arc<Handshakes>>,
    request: Request,
    next: Next,
) -> Response {
    if !opens_a_session(request.uri()) {
        return next.run(request).await;
    }
    if request.uri().to_string().len() > MAX_URI_BYTES {
        return refusal(
            StatusCode::URI_TOO_LONG,
            AppError::uri_too_long(format!("the URI is longer than {MAX_URI_BYTES} bytes")),
        );
    }
    let Ok(slot) = handshakes.pending.clone().try_acquire_owned() else {
        metrics::counter!("notify_bridge_handshakes_refused_total").increment(1);
        let mut response = refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            AppError::busy(format!(
                "too many handshakes in progress (at most {}); retry shortly",
                handshakes.max
            )),
        );
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    };
    let mut request = detached(request);
    request
        .extensions_mut()
        .insert(PendingHandshake(Arc::new(Mutex::new(Some(slot)))));
    next.run(request).await
}

fn refusal(status: StatusCode, error: AppError) -> Response {
    (
        status,
        [("content-type", "application/json")],
        error.to_string(),
    )
        .into_response()
}

/// A Socket.IO request without a session id opens a session, whose request
/// is the one kept; later polls and the upgrade of a polling session carry
/// `sid=` and are not kept.
fn opens_a_session(uri: &Uri) -> bool {
    uri.path().starts_with("/socket.io")
        && !uri
            .query()
            .is_some_and(|query| query.split('&').any(|pair| pair.starts_with("sid=")))
}

/// The same request with only the [`KEPT`] headers, its URI and those
/// copied (body and extensions, such as the pending WebSocket upgrade, move
/// over unchanged).
fn detached(request: Request) -> Request {
    let (mut parts, body) = request.into_parts();
    if let Ok(uri) = Uri::try_from(parts.uri.to_string()) {
        parts.uri = uri;
    }
    let mut headers = HeaderMap::with_capacity(KEPT.len());
    for name in &KEPT {
        for value in parts.headers.get_all(name) {
            // `clone` would share the buffer; this copies.
            if let Ok(value) = HeaderValue::from_bytes(value.as_bytes()) {
                headers.append(name.clone(), value);
            }
        }
    }
    parts.headers = headers;
    Request::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use bytes::Bytes;

    #[test]
    fn only_requests_that_open_a_session_are_kept_lean() {
        let opens = |uri: &str| opens_a_session(&uri.parse().unwrap());
        assert!(opens("/socket.io/?EIO=4&transport=websocket"));
        assert!(opens("/socket.io/?EIO=4&transport=polling&t=abc"));
        assert!(!opens("/socket.io/?EIO=4&transport=polling&sid=xyz"));
        assert!(!opens("/socket.io/?EIO=4&transport=websocket&sid=xyz"));
        assert!(!opens("/metrics"));
    }

    #[test]
    fn the_copy_keeps_only_the_headers_read_and_nothing_points_into_the_read_buffer() {
        let buffer =
            Bytes::from("/socket.io/?EIO=4&transport=websocket Bearer abc.def.ghi".to_owned());
        let range = buffer.as_ptr() as usize..buffer.as_ptr() as usize + buffer.len();
        let inside = |bytes: &[u8]| range.contains(&(bytes.as_ptr() as usize));
        let uri = Uri::from_maybe_shared(buffer.slice(0..37)).unwrap();
        let token = HeaderValue::from_maybe_shared(buffer.slice(38..)).unwrap();
        assert!(
            inside(token.as_bytes()),
            "the test's value starts as a slice"
        );
        let mut request = Request::builder().uri(uri).body(Body::empty()).unwrap();
        request.headers_mut().append(AUTHORIZATION, token);
        request
            .headers_mut()
            .append("cookie", HeaderValue::from_static("a=1; b=2"));
        request.headers_mut().append(
            "x-padding",
            HeaderValue::from_static("xxxxxxxxxxxxxxxxxxxx"),
        );

        let copy = detached(request);
        assert_eq!(copy.uri(), "/socket.io/?EIO=4&transport=websocket");
        assert!(!inside(copy.uri().path().as_bytes()));
        assert_eq!(copy.headers().len(), 1, "{:?}", copy.headers());
        let copied = &copy.headers()[AUTHORIZATION];
        assert_eq!(copied, "Bearer abc.def.ghi");
        assert!(!inside(copied.as_bytes()));
    }

    #[test]
    fn a_pending_slot_is_given_back_once_authenticated_or_dropped() {
        let handshakes = Handshakes::new(2);
        let take = || {
            PendingHandshake(Arc::new(Mutex::new(Some(
                handshakes.pending.clone().try_acquire_owned().unwrap(),
            ))))
        };
        let first = take();
        let second = take();
        assert!(handshakes.pending.clone().try_acquire_owned().is_err());
        first.authenticated();
        first.authenticated();
        assert_eq!(handshakes.pending.available_permits(), 1);
        drop(second);
        assert_eq!(handshakes.pending.available_permits(), 2);
    }
}
