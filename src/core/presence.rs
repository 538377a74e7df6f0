//! Who is online on this core: a user is online while at least one of their
//! `presence: true` streams is open.
//!
//! Going online (first stream) and offline (last stream closed) are
//! transitions. Each transition gets an epoch; its event goes out to room
//! peers only if it is still the user's latest transition once the peers
//! are known, so a quick close-and-reopen never tells peers "offline" after
//! the user is back, and each real offline is announced once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use notify_store::{Store, User, now_millis};

use super::hub::{Hub, HubEvent};

#[derive(Default)]
struct Entry {
    streams: usize,
    epoch: u64,
}

#[derive(Default)]
struct State {
    users: HashMap<User, Entry>,
    next_epoch: u64,
    online: usize,
}

/// Counts presence streams per user and announces transitions to room peers.
pub struct Presence {
    state: Mutex<State>,
    store: Arc<dyn Store>,
    hub: Arc<Hub>,
}

impl Presence {
    /// Presence announced through `hub`, room peers read from `store`.
    pub fn new(store: Arc<dyn Store>, hub: Arc<Hub>) -> Presence {
        Presence {
            state: Mutex::new(State::default()),
            store,
            hub,
        }
    }

    /// Whether the user has a presence stream open here.
    pub fn is_online(&self, user: User) -> bool {
        self.lock().users.get(&user).is_some_and(|e| e.streams > 0)
    }

    /// A presence stream of `user` opened.
    pub async fn connect(&self, user: User) {
        let epoch = {
            let mut state = self.lock();
            let epoch = state.next_epoch;
            state.next_epoch += 1;
            let entry = state.users.entry(user).or_default();
            entry.streams += 1;
            if entry.streams > 1 {
                return;
            }
            entry.epoch = epoch;
            state.online += 1;
            metrics::gauge!("notify_online_users").set(state.online as f64);
            epoch
        };
        self.announce(user, epoch, HubEvent::PeerOnline { user })
            .await;
    }

    /// A presence stream of `user` closed.
    pub async fn disconnect(&self, user: User) {
        let at = now_millis();
        let epoch = {
            let mut state = self.lock();
            let epoch = state.next_epoch;
            state.next_epoch += 1;
            let Some(entry) = state.users.get_mut(&user) else {
                return;
            };
            entry.streams = entry.streams.saturating_sub(1);
            if entry.streams > 0 {
                return;
            }
            entry.epoch = epoch;
            state.online = state.online.saturating_sub(1);
            metrics::gauge!("notify_online_users").set(state.online as f64);
            epoch
        };
        if let Err(error) = self.store.set_last_seen(user, at).await {
            tracing::warn!(%user, %error, "could not store last seen time");
        }
        self.announce(
            user,
            epoch,
            HubEvent::PeerOffline {
                user,
                last_seen_at: at,
            },
        )
        .await;
    }

    async fn announce(&self, user: User, epoch: u64, event: HubEvent) {
        let peers = match self.store.room_peers(user).await {
            Ok(peers) => peers,
            Err(error) => {
                tracing::warn!(%user, %error, "could not read room peers; presence change not announced");
                Vec::new()
            }
        };
        let mut state = self.lock();
        let Some(entry) = state.users.get(&user) else {
            return;
        };
        if entry.epoch != epoch {
            return; // a later transition superseded this one
        }
        // Sent under the lock so a later transition's event cannot overtake it.
        for peer in peers {
            self.hub.send(peer, event.clone());
        }
        if entry.streams == 0 {
            state.users.remove(&user);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
