//! Client events per second per socket: a token bucket with bursts, a
//! 429 at most once a second, and a disconnect for a socket that keeps
//! flooding.

use std::sync::{Arc, Mutex};
use std::time::Instant;

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
}
