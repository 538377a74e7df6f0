//! Presence: a user is online while at least one of their `presence: true`
//! streams is open on any core sharing the database.
//!
//! This core counts its own streams per user, in memory. When a user's count
//! here goes from 0 to 1 or back, a background task writes the new count to
//! the store as this node's entry (batched, in order). The store decides
//! whether that made the user online or offline across every node, and
//! publishes the change once; the announcer below passes it to the room
//! peers' streams on this core.
//!
//! Entries are leases: the heartbeat extends this node's every third of the
//! TTL, and any node expires those past it, so a core that dies without a
//! goodbye still takes its users offline. A heartbeat that finds one of its
//! entries gone (another node expired it while this one stalled) writes it
//! again. A core that shuts down writes nothing more: its entries expire
//! after the TTL, so a user whose connection moves to another core (or to
//! this one, restarted) within it is announced to nobody.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify_store::{Store, User, new_object_id};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::hub::{Hub, HubEvent, PresenceChange};

/// How long a node's presence entries live without a heartbeat.
pub const DEFAULT_TTL: Duration = Duration::from_secs(15);

/// This core's presence streams, and the tasks that share them.
pub struct Presence {
    node: String,
    streams: Mutex<HashMap<User, u32>>,
    /// Users whose count here changed, for the writer.
    pending: mpsc::UnboundedSender<User>,
    /// The core's shutdown: from then on nothing is written.
    stop: CancellationToken,
}

impl Presence {
    /// Starts the writer, heartbeat and announcer tasks; the writer and the
    /// heartbeat stop with `stop`.
    pub fn start(
        store: Arc<dyn Store>,
        hub: Arc<Hub>,
        changes: mpsc::UnboundedReceiver<PresenceChange>,
        ttl: Duration,
        stop: CancellationToken,
    ) -> Arc<Presence> {
        let (pending, pending_rx) = mpsc::unbounded_channel();
        let presence = Arc::new(Presence {
            node: new_object_id(),
            streams: Mutex::new(HashMap::new()),
            pending,
            stop,
        });
        tokio::spawn(write_entries(
            presence.clone(),
            store.clone(),
            pending_rx,
            ttl,
        ));
        tokio::spawn(heartbeat(presence.clone(), store.clone(), ttl));
        tokio::spawn(announce(store, hub, changes));
        presence
    }

    /// A presence stream of `user` opened here.
    pub fn connect(&self, user: User) {
        let first = {
            let mut streams = lock(&self.streams);
            let count = streams.entry(user).or_insert(0);
            *count += 1;
            let first = *count == 1;
            metrics::gauge!("notify_online_users").set(streams.len() as f64);
            first
        };
        if first {
            let _ = self.pending.send(user);
        }
    }

    /// A presence stream of `user` closed here. Once the core is shutting
    /// down its entries are left to expire instead (see the module's doc).
    pub fn disconnect(&self, user: User) {
        if self.stop.is_cancelled() {
            return;
        }
        let last = {
            let mut streams = lock(&self.streams);
            match streams.get_mut(&user) {
                Some(count) if *count > 1 => {
                    *count -= 1;
                    false
                }
                Some(_) => {
                    streams.remove(&user);
                    metrics::gauge!("notify_online_users").set(streams.len() as f64);
                    true
                }
                None => false,
            }
        };
        if last {
            let _ = self.pending.send(user);
        }
    }

    fn count(&self, user: User) -> u32 {
        lock(&self.streams).get(&user).copied().unwrap_or(0)
    }

    /// Users with a stream here now.
    fn users(&self) -> Vec<User> {
        lock(&self.streams).keys().copied().collect()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Writes changed counts in batches, in order, until the core stops. Each
/// write carries the count as it is when written, so a quick close-and-
/// reopen ends in the right state whatever the interleaving.
async fn write_entries(
    presence: Arc<Presence>,
    store: Arc<dyn Store>,
    mut pending: mpsc::UnboundedReceiver<User>,
    ttl: Duration,
) {
    let stop = presence.stop.clone();
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            received = pending.recv_many(&mut batch, 1024) => if received == 0 { return },
        }
        let mut users: Vec<User> = Vec::with_capacity(batch.len());
        for user in batch.drain(..) {
            if !users.contains(&user) {
                users.push(user);
            }
        }
        let mut delay = Duration::from_millis(100);
        loop {
            let streams: Vec<(User, u32)> = users.iter().map(|&u| (u, presence.count(u))).collect();
            match store.set_presence(&presence.node, streams, ttl).await {
                Ok(()) => break,
                Err(error) => {
                    // Entries not written yet are retried; until then the
                    // user keeps their previous state.
                    tracing::warn!(%error, users = users.len(), "presence not stored; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// Refreshes this node's entries and expires everybody's stale ones, three
/// times per `ttl`; writes again the entries it finds gone.
async fn heartbeat(presence: Arc<Presence>, store: Arc<dyn Store>, ttl: Duration) {
    let mut tick = tokio::time::interval(ttl / 3);
    loop {
        tokio::select! {
            _ = presence.stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match store.refresh_presence(&presence.node, ttl).await {
            Ok(refreshed) => {
                for user in presence.users() {
                    if !refreshed.contains(&user) {
                        tracing::info!(%user, "presence entry expired by another node; writing it again");
                        let _ = presence.pending.send(user);
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "presence heartbeat failed"),
        }
        if let Err(error) = store.expire_presence().await {
            tracing::warn!(%error, "presence expiry failed");
        }
    }
}

/// Passes each presence change to the streams of the user's room peers on
/// this core, in the order the store published them.
async fn announce(
    store: Arc<dyn Store>,
    hub: Arc<Hub>,
    mut changes: mpsc::UnboundedReceiver<PresenceChange>,
) {
    while let Some(change) = changes.recv().await {
        metrics::counter!("notify_presence_changes_total", "online" => change.online.to_string())
            .increment(1);
        let peers = match store.room_peers(change.user).await {
            Ok(peers) => peers,
            Err(error) => {
                tracing::warn!(user = %change.user, %error, "room peers unreadable; presence change not announced");
                continue;
            }
        };
        let event = if change.online {
            HubEvent::PeerOnline { user: change.user }
        } else {
            HubEvent::PeerOffline {
                user: change.user,
                last_seen_at: change.at,
            }
        };
        for peer in peers {
            hub.send(peer, event.clone());
        }
    }
}
