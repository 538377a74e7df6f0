//! Limits a person can set on the bridge: sockets and requests per user,
//! client events per second per socket, the largest incoming packet, the
//! browser origins allowed, how long a connection may refuse to read or
//! take to send its headers, connections and pending handshakes. Each is
//! enforced where it applies: `rate` (events per second), `origin`
//! (origins and CORS), `stall` (the write deadline), `server`
//! (connections, headers), `handshake` (pending sessions), `feed` (sockets
//! and requests per user).

use std::time::Duration;

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

impl Limits {
    /// The defaults, stated once: the command line's and [`Default`]'s.
    pub const DEFAULT: Limits = Limits {
        sockets_per_user: 10,
        requests_in_flight_per_user: 4,
        events_per_second: 20,
        max_payload: 100_000,
        allowed_origins: Vec::new(),
        write_stall_timeout: Duration::from_secs(30),
        // When the open-files limit cannot be read.
        max_connections: 10_000,
        header_read_timeout: Duration::from_secs(10),
        max_pending_handshakes: 1_000,
        handshake_timeout: Duration::from_secs(10),
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}
