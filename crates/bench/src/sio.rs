//! A minimal Socket.IO v5 client (Engine.IO v4 over WebSocket only), enough
//! to load a bridge the way browsers do: it connects to `/notification`
//! with a token, answers pings, acknowledges what the server asks it to, and
//! times each `notification` from its `content.sentAt`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::stats::Recorder;

/// The namespace every event of the contract lives in.
pub const NAMESPACE: &str = "/notification";

/// One Engine.IO / Socket.IO packet as the client needs to tell it apart.
#[derive(Debug, PartialEq)]
pub enum Packet {
    /// Engine.IO OPEN: the handshake; answer with a namespace CONNECT.
    Open,
    /// Engine.IO PING: answer with PONG or the server drops the socket.
    Ping,
    /// Socket.IO CONNECT accepted for the namespace.
    Connected,
    /// Socket.IO CONNECT_ERROR: the handshake was refused (message text).
    Refused(String),
    /// Socket.IO EVENT: name, data (first argument) and ack id if asked.
    Event {
        /// The event name.
        name: String,
        /// The first argument, `null` when there is none.
        data: Value,
        /// Present when the server waits for an acknowledgement.
        ack: Option<u64>,
    },
    /// Anything else (other namespaces, NOOP, acks to us): ignored.
    Other,
}

/// Tells apart one WebSocket text frame.
pub fn parse(text: &str) -> Packet {
    match text.as_bytes().first() {
        Some(b'0') => return Packet::Open,
        Some(b'2') if text.len() == 1 => return Packet::Ping,
        Some(b'4') => {}
        _ => return Packet::Other,
    }
    let socket_io = &text[1..];
    let kind = socket_io.as_bytes().first().copied();
    let Some(rest) = socket_io[1..].strip_prefix(NAMESPACE) else {
        return Packet::Other;
    };
    // After the namespace comes ',' unless the packet ends there.
    let rest = rest.strip_prefix(',').unwrap_or(rest);
    match kind {
        Some(b'0') => Packet::Connected,
        Some(b'4') => Packet::Refused(
            serde_json::from_str::<Value>(rest)
                .ok()
                .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_else(|| rest.to_owned()),
        ),
        Some(b'2') => {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            let ack = rest[..digits].parse().ok();
            let Ok(Value::Array(mut parts)) = serde_json::from_str(&rest[digits..]) else {
                return Packet::Other;
            };
            if parts.is_empty() {
                return Packet::Other;
            }
            let data = if parts.len() > 1 {
                parts.swap_remove(1)
            } else {
                Value::Null
            };
            match parts.swap_remove(0) {
                Value::String(name) => Packet::Event { name, data, ack },
                _ => Packet::Other,
            }
        }
        _ => Packet::Other,
    }
}

/// The namespace CONNECT carrying the token, as socket.io-client sends it.
pub fn connect_frame(token: &str) -> String {
    format!("40{NAMESPACE},{}", json!({ "token": token }))
}

/// An empty acknowledgement for ack id `id`.
pub fn ack_frame(id: u64) -> String {
    format!("43{NAMESPACE},{id}[]")
}

/// Counters the socket tasks share with the run that owns them.
#[derive(Default, Clone)]
pub struct Shared {
    /// Sockets that have had their connect-time `unreadCount`.
    pub ready: Arc<AtomicUsize>,
    /// Sockets whose handshake was refused or whose connection failed.
    pub failed: Arc<AtomicUsize>,
    /// Create→receive latencies of `notification` events.
    pub latency: Recorder,
}

/// One client socket, until `stop` turns true or the server closes it.
pub async fn run_socket(
    url: String,
    token: String,
    shared: Shared,
    mut stop: watch::Receiver<bool>,
) {
    let connected = tokio::time::timeout(
        Duration::from_secs(30),
        tokio_tungstenite::connect_async(&url),
    )
    .await;
    let Ok(Ok((mut ws, _))) = connected else {
        shared.failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let mut counted = false;
    loop {
        let message = tokio::select! {
            _ = stop.changed() => break,
            message = ws.next() => message,
        };
        let Some(Ok(message)) = message else { break };
        let Message::Text(text) = message else {
            continue;
        };
        let reply = match parse(text.as_str()) {
            Packet::Open => Some(connect_frame(&token)),
            Packet::Ping => Some("3".to_owned()),
            Packet::Refused(_) => {
                shared.failed.fetch_add(1, Ordering::Relaxed);
                break;
            }
            Packet::Event { name, data, ack } => {
                if name == "notification"
                    && let Some(sent_at) = data["content"]["sentAt"].as_u64()
                {
                    shared.latency.record_since(sent_at);
                }
                if name == "unreadCount" && !counted {
                    counted = true;
                    shared.ready.fetch_add(1, Ordering::Relaxed);
                }
                ack.map(ack_frame)
            }
            Packet::Connected | Packet::Other => None,
        };
        if let Some(reply) = reply
            && ws.send(Message::text(reply)).await.is_err()
        {
            break;
        }
    }
    let _ = ws.close(None).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_io_open_and_ping() {
        assert_eq!(
            parse(r#"0{"sid":"x","pingInterval":25000,"pingTimeout":20000}"#),
            Packet::Open
        );
        assert_eq!(parse("2"), Packet::Ping);
        assert_eq!(parse("3"), Packet::Other);
        assert_eq!(parse(""), Packet::Other);
    }

    #[test]
    fn namespace_connect_and_refusal() {
        assert_eq!(parse(r#"40/notification,{"sid":"abc"}"#), Packet::Connected);
        assert_eq!(
            parse(r#"44/notification,{"message":"{\"statusCode\":401}"}"#),
            Packet::Refused(r#"{"statusCode":401}"#.into())
        );
        // Another namespace is not ours.
        assert_eq!(parse(r#"40/other,{"sid":"abc"}"#), Packet::Other);
    }

    #[test]
    fn events_with_and_without_ack() {
        assert_eq!(
            parse(r#"42/notification,17["notification",{"content":{"sentAt":5}}]"#),
            Packet::Event {
                name: "notification".into(),
                data: json!({"content": {"sentAt": 5}}),
                ack: Some(17)
            }
        );
        assert_eq!(
            parse(r#"42/notification,["userIsOffline"]"#),
            Packet::Event {
                name: "userIsOffline".into(),
                data: Value::Null,
                ack: None
            }
        );
    }

    #[test]
    fn malformed_events_are_ignored() {
        for text in [
            "42/notification,",
            "42/notification,[]",
            "42/notification,[1,2]",
            "42/notification,17{",
            "42/notification,{\"a\":1}",
        ] {
            assert_eq!(parse(text), Packet::Other, "{text}");
        }
    }

    #[test]
    fn frames_the_client_sends() {
        assert_eq!(
            connect_frame("t.k.n"),
            r#"40/notification,{"token":"t.k.n"}"#
        );
        assert_eq!(ack_frame(9), "43/notification,9[]");
        // What we send, we also parse back as the same packet kind.
        assert_eq!(parse(&connect_frame("x")), Packet::Connected);
    }
}
