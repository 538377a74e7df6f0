//! The two halves of the load: Socket.IO clients held open against a
//! bridge, and gRPC clients creating notifications against the core.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use notify::contract::proto;
use notify_store::User;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::sio::{self, Shared};
use crate::stack::{Core, SECRET};
use crate::stats::{Latency, Recorder, now_micros};

/// How fast sockets are opened: a production bridge meets reconnect storms,
/// but a benchmark should measure the steady state, not its own stampede.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct Ramp {
    /// New connections per second at most.
    #[arg(long, default_value_t = 2_000)]
    pub connects_per_second: u32,
    /// Handshakes in flight at most.
    #[arg(long, default_value_t = 200)]
    pub in_flight: usize,
}

/// Socket.IO clients, one per user (vendor 1, 2, …), each with its own token.
pub struct Sockets {
    tasks: JoinSet<()>,
    shared: Shared,
    stop: watch::Sender<bool>,
    opened: usize,
}

impl Default for Sockets {
    fn default() -> Sockets {
        Sockets {
            tasks: JoinSet::new(),
            shared: Shared::default(),
            stop: watch::Sender::new(false),
            opened: 0,
        }
    }
}

impl Sockets {
    /// Sockets that have connected and had their first `unreadCount`.
    pub fn ready(&self) -> usize {
        self.shared.ready.load(Ordering::Relaxed)
    }

    /// Sockets refused or failed.
    pub fn failed(&self) -> usize {
        self.shared.failed.load(Ordering::Relaxed)
    }

    /// The latencies the sockets record.
    pub fn latency(&self) -> &Recorder {
        &self.shared.latency
    }

    /// Opens sockets until `total` are open (users `opened+1 ..= total`),
    /// at the ramp's pace, and waits until each is ready or failed. Fails
    /// if any socket could not connect.
    pub async fn open_until(&mut self, http: &str, total: usize, ramp: Ramp) -> anyhow::Result<()> {
        let url = format!("ws://{http}/socket.io/?EIO=4&transport=websocket");
        let jwt = notify::bridge::auth::Jwt::new(SECRET.as_bytes());
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut pace = tokio::time::interval(Duration::from_secs_f64(
            1.0 / f64::from(ramp.connects_per_second.max(1)),
        ));
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        while self.opened < total {
            pace.tick().await;
            while self.opened.saturating_sub(self.ready() + self.failed()) >= ramp.in_flight {
                if Instant::now() > deadline {
                    bail!("sockets did not connect within 300 s");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            self.opened += 1;
            let token = jwt.issue(
                User::vendor(self.opened as i64),
                Duration::from_secs(24 * 3600),
            );
            self.tasks.spawn(sio::run_socket(
                url.clone(),
                token,
                self.shared.clone(),
                self.stop.subscribe(),
            ));
        }
        while self.ready() + self.failed() < self.opened {
            if Instant::now() > deadline {
                bail!(
                    "only {} of {} sockets ready within 300 s",
                    self.ready(),
                    self.opened
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if self.failed() > 0 {
            bail!(
                "{} of {} sockets failed to connect",
                self.failed(),
                self.opened
            );
        }
        Ok(())
    }

    /// Closes every socket and waits for their tasks.
    pub async fn close(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

/// How the gRPC side creates notifications.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Offer {
    /// gRPC clients, each on its own HTTP/2 connection, one call in flight.
    pub clients: usize,
    /// Notifications per second in all; 0 = as fast as the core answers.
    pub rate: u64,
    /// Recipients per call: 1 = CreateNotification, more = CreateNotifications.
    pub batch: usize,
    /// Recipients are users 1 ..= `users`, round robin.
    pub users: u64,
    /// How long to keep creating.
    pub seconds: f64,
}

/// What the gRPC side did.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Created {
    /// Notifications acknowledged by the core.
    pub created: u64,
    /// Calls that failed.
    pub errors: u64,
    /// Wall time of the sending phase.
    pub elapsed_seconds: f64,
    /// Notifications acknowledged per second.
    pub per_second: f64,
    /// Per-call latency as the caller saw it.
    pub call_latency: Latency,
}

/// The recipients of call `n` of a run: `batch` consecutive users
/// (wrapping), never the same user twice in one call.
pub fn recipients(first: u64, batch: usize, users: u64) -> Vec<u64> {
    let batch = (batch as u64).min(users);
    (0..batch).map(|i| (first + i) % users + 1).collect()
}

/// The content every benchmark notification carries, stamped now.
fn content() -> prost_types::Struct {
    notify_testkit::requests::to_struct(json!({
        "message": "Product has been uploaded successfully",
        "data": {"id": 42, "price": "22"},
        "sentAt": now_micros(),
    }))
}

type Client = notify::contract::proto::notification_service_client::NotificationServiceClient<
    tonic::transport::Channel,
>;

/// One create call to `batch` users starting after `first`; the number of
/// notifications the core acknowledged.
async fn call(client: &mut Client, first: u64, offer: &Offer) -> Result<u64, tonic::Status> {
    let users = recipients(first, offer.batch, offer.users);
    if offer.batch == 1 {
        client
            .create_notification(proto::CreateNotificationRequest {
                vendor_id: Some(users[0] as i64),
                r#type: "bench:load".into(),
                content: Some(content()),
                ..Default::default()
            })
            .await
            .map(|_| 1)
    } else {
        client
            .create_notifications(proto::CreateNotificationsRequest {
                recipients: users
                    .iter()
                    .map(|&id| proto::Recipient {
                        vendor_id: Some(id as i64),
                        customer_id: None,
                    })
                    .collect(),
                r#type: "bench:load".into(),
                content: Some(content()),
                ..Default::default()
            })
            .await
            .map(|reply| reply.into_inner().items.len() as u64)
    }
}

/// One connection per client, made before any timing starts, the clients
/// dealt round the cores.
async fn connect(cores: &[&Core], clients: usize) -> anyhow::Result<Vec<Client>> {
    let mut connected = Vec::with_capacity(clients);
    for core in cores.iter().cycle().take(clients) {
        connected.push(core.client().await?);
    }
    Ok(connected)
}

/// Creates notifications as `offer` says, its clients dealt round `cores`
/// (one or several sharing a database), and reports what they took.
pub async fn create(cores: &[&Core], offer: Offer) -> anyhow::Result<Created> {
    let clients = connect(cores, offer.clients).await?;
    let next = Arc::new(AtomicU64::new(0));
    let calls = Recorder::default();
    let interval = (offer.rate > 0)
        .then(|| Duration::from_secs_f64((offer.batch * offer.clients) as f64 / offer.rate as f64));
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(offer.seconds);
    let mut senders = JoinSet::new();
    for (index, mut client) in clients.into_iter().enumerate() {
        let (next, calls) = (next.clone(), calls.clone());
        // Clients start spread over one interval so the offer is smooth:
        // `seconds` of it make `rate × seconds` notifications.
        let start = interval.map(|every| {
            tokio::time::Instant::from_std(started)
                + every.mul_f64(index as f64 / offer.clients as f64)
        });
        senders.spawn(async move {
            let mut pace = start
                .zip(interval)
                .map(|(at, every)| tokio::time::interval_at(at, every));
            if let Some(pace) = &mut pace {
                pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            }
            let (mut created, mut errors) = (0u64, 0u64);
            while Instant::now() < until {
                if let Some(pace) = &mut pace {
                    let deadline = tokio::time::Instant::from_std(until);
                    if tokio::time::timeout_at(deadline, pace.tick())
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                let first = next.fetch_add(offer.batch as u64, Ordering::Relaxed);
                let call_started = Instant::now();
                let result = call(&mut client, first, &offer).await;
                calls.record(call_started.elapsed().as_micros() as u64);
                match result {
                    Ok(n) => created += n,
                    Err(_) => errors += 1,
                }
            }
            (created, errors)
        });
    }
    finish(senders, started, calls).await
}

/// Exactly one call per client, all at once (a broadcast).
pub async fn create_once(core: &Core, offer: Offer) -> anyhow::Result<Created> {
    let clients = connect(&[core], offer.clients).await?;
    let calls = Recorder::default();
    let started = Instant::now();
    let mut senders = JoinSet::new();
    for (index, mut client) in clients.into_iter().enumerate() {
        let calls = calls.clone();
        senders.spawn(async move {
            let first = (index * offer.batch) as u64;
            let result = call(&mut client, first, &offer).await;
            calls.record(started.elapsed().as_micros() as u64);
            match result {
                Ok(n) => (n, 0),
                Err(_) => (0, 1),
            }
        });
    }
    finish(senders, started, calls).await
}

async fn finish(
    mut senders: JoinSet<(u64, u64)>,
    started: Instant,
    calls: Recorder,
) -> anyhow::Result<Created> {
    let (mut created, mut errors) = (0, 0);
    while let Some(joined) = senders.join_next().await {
        let (c, e) = joined.context("a sender task failed")?;
        created += c;
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(Created {
        created,
        errors,
        elapsed_seconds: elapsed,
        per_second: created as f64 / elapsed,
        call_latency: calls.take(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_wrap_and_never_repeat_in_a_call() {
        assert_eq!(recipients(0, 3, 10), vec![1, 2, 3]);
        assert_eq!(recipients(8, 4, 10), vec![9, 10, 1, 2]);
        // A batch larger than the users is cut to the users.
        let mut users = recipients(5, 50, 7);
        assert_eq!(users.len(), 7);
        users.sort();
        users.dedup();
        assert_eq!(users.len(), 7);
    }

    #[test]
    fn consecutive_calls_cover_users_evenly() {
        let mut seen = vec![0u32; 100];
        for call in 0..50u64 {
            for user in recipients(call * 10, 10, 100) {
                seen[(user - 1) as usize] += 1;
            }
        }
        assert!(seen.iter().all(|&n| n == 5), "{seen:?}");
    }
}
