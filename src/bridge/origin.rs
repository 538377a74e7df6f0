//! Which browser origins may load the page and connect: the bridge's own
//! (scheme included) and those allowed with `--allowed-origins`, with CORS
//! headers for the allowed cross-origin ones.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{HOST, ORIGIN};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::payload::AppError;

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

#[cfg(test)]
mod tests {
    use super::*;

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
