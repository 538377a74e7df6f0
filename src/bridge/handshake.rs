//! Socket.IO keeps each connection's handshake request (its URI and
//! headers) for as long as the socket lives. hyper parses those as slices
//! of the connection's read buffer (8–16 KiB), so keeping them keeps that
//! whole buffer alive: measured with massif, a third of an idle socket's
//! heap. Copying them out before Socket.IO sees the request lets the buffer
//! go; the copies take a few hundred bytes.

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Uri};
use axum::middleware::Next;
use axum::response::Response;

/// Middleware: hands Socket.IO handshakes on with their URI and headers in
/// allocations of their own.
pub async fn copy_out_of_read_buffer(request: Request, next: Next) -> Response {
    let request = if opens_a_session(request.uri()) {
        detached(request)
    } else {
        request
    };
    next.run(request).await
}

/// A Socket.IO request without a session id opens a session, whose request
/// is the one kept; later polls and the upgrade of a polling session carry
/// `sid=` and are not kept, so copying them would be work for nothing.
fn opens_a_session(uri: &Uri) -> bool {
    uri.path().starts_with("/socket.io")
        && !uri
            .query()
            .is_some_and(|query| query.split('&').any(|pair| pair.starts_with("sid=")))
}

/// The same request, its URI and headers copied (body and extensions, such
/// as the pending WebSocket upgrade, move over unchanged).
fn detached(request: Request) -> Request {
    let (mut parts, body) = request.into_parts();
    if let Ok(uri) = Uri::try_from(parts.uri.to_string()) {
        parts.uri = uri;
    }
    let mut headers = HeaderMap::with_capacity(parts.headers.len());
    for (name, value) in &parts.headers {
        // `clone` would share the buffer; these copy.
        let name =
            HeaderName::from_bytes(name.as_str().as_bytes()).unwrap_or_else(|_| name.clone());
        let value = HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
        headers.append(name, value);
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
    fn only_requests_that_open_a_session_are_copied() {
        let opens = |uri: &str| opens_a_session(&uri.parse().unwrap());
        assert!(opens("/socket.io/?EIO=4&transport=websocket"));
        assert!(opens("/socket.io/?EIO=4&transport=polling&t=abc"));
        assert!(!opens("/socket.io/?EIO=4&transport=polling&sid=xyz"));
        assert!(!opens("/socket.io/?EIO=4&transport=websocket&sid=xyz"));
        assert!(!opens("/metrics"));
    }

    #[test]
    fn nothing_in_the_copy_points_into_the_read_buffer() {
        let buffer = Bytes::from(
            "/socket.io/?EIO=4&transport=websocket x-custom-header some value".to_owned(),
        );
        let range = buffer.as_ptr() as usize..buffer.as_ptr() as usize + buffer.len();
        let inside = |bytes: &[u8]| range.contains(&(bytes.as_ptr() as usize));
        let uri = Uri::from_maybe_shared(buffer.slice(0..37)).unwrap();
        let name = HeaderName::from_bytes(&buffer[38..53]).unwrap();
        let value = HeaderValue::from_maybe_shared(buffer.slice(54..)).unwrap();
        assert!(
            inside(value.as_bytes()),
            "the test's value starts as a slice"
        );
        let mut request = Request::builder().uri(uri).body(Body::empty()).unwrap();
        request.headers_mut().append(name.clone(), value);

        let copy = detached(request);
        assert_eq!(copy.uri(), "/socket.io/?EIO=4&transport=websocket");
        assert!(!inside(copy.uri().path().as_bytes()));
        let copied = &copy.headers()[&name];
        assert_eq!(copied, "some value");
        assert!(!inside(copied.as_bytes()));
        let (copied_name, _) = copy.headers().iter().next().unwrap();
        assert!(!inside(copied_name.as_str().as_bytes()));
    }
}
