//! `GET /`: the notification inbox, embedded in the binary with a pinned
//! socket.io-client browser bundle, so it needs no CDN and no build step.

use axum::Router;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
};
use axum::response::IntoResponse;
use axum::routing::get;

const INDEX: &str = include_str!("page/index.html");
const SCRIPT: &str = include_str!("page/inbox.js");
const STYLE: &str = include_str!("page/inbox.css");
/// socket.io-client 4.8.4, `dist/socket.io.min.js` from npm, unmodified.
const SOCKET_IO: &str = include_str!("page/socket.io-4.8.4.min.js");

/// Everything is served from this origin; the page's socket connects back to it.
const POLICY: &str = "default-src 'self'; connect-src 'self'; img-src 'self' data:; \
                      frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

fn asset(content_type: &'static str, cache: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, content_type),
            (CACHE_CONTROL, cache),
            (CONTENT_SECURITY_POLICY, POLICY),
            // Browsers take the type as given, and no link leaks the page's
            // address (or a token in it) to another site.
            (X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
}

/// The page and its assets.
pub fn routes() -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", "no-cache", INDEX) }),
        )
        .route(
            "/assets/inbox.js",
            get(|| async { asset("text/javascript; charset=utf-8", "no-cache", SCRIPT) }),
        )
        .route(
            "/assets/inbox.css",
            get(|| async { asset("text/css; charset=utf-8", "no-cache", STYLE) }),
        )
        .route(
            "/assets/socket.io-4.8.4.min.js",
            get(|| async {
                asset(
                    "text/javascript; charset=utf-8",
                    "public, max-age=31536000, immutable",
                    SOCKET_IO,
                )
            }),
        )
}
