//! The in-process fan-out: every committed change goes to each open stream
//! of its user.
//!
//! Each stream has a bounded queue (the follows of one FollowUsers call
//! share one). Publishing never waits: when a queue is full the event is
//! dropped and the stream is flagged as lagging, and the stream then
//! catches up from the store by version. A slow reader therefore
//! costs its own queue and nothing else, and loses no notification.
//!
//! With a message bus, the hub also tells it ([`Interest`]) which users
//! this core holds streams of, so the bus brings only their changes here.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify_store::{ByCategory, Change, ChangeSink, Notification, Update, User};
use tokio::sync::{Notify, mpsc, oneshot};

/// Events one stream can queue before it is flagged as lagging.
pub const STREAM_QUEUE: usize = 256;

/// How long a stream opening waits for the bus to bring its user's changes
/// here before it reads the store. Past it (the bus is away) the stream
/// goes on: the bus's reconnect makes every stream catch up.
pub const BUS_PATIENCE: Duration = Duration::from_secs(2);

/// What the hub tells a message bus, in the order streams open and close,
/// so the bus subscribes to exactly the users this core holds streams of.
#[derive(Debug)]
pub enum Interest {
    /// The user's first stream here opened.
    Watch(User),
    /// The user's last stream here closed.
    Unwatch(User),
    /// Answer once every earlier `Watch` is in effect at the bus, so a
    /// change committed from then on reaches this core.
    Barrier(oneshot::Sender<()>),
}

/// What a stream hears about.
#[derive(Clone, Debug)]
pub enum HubEvent {
    /// A notification for the stream's user was committed.
    Created {
        /// The stored notification.
        notification: Arc<Notification>,
        /// The user's unread count right after it.
        unread: i64,
        /// The same by category.
        by_category: Arc<ByCategory>,
        /// The user's change version it took.
        version: i64,
        /// The unread ones it replaced (its collapse key's), in that version.
        replaced: Arc<[String]>,
    },
    /// Some of the user's notifications changed (status, archive).
    Updated {
        /// Which ones.
        ids: Arc<[String]>,
        /// What changed.
        update: Update,
        /// When (ms since the epoch).
        updated_at: i64,
        /// The user's unread count afterwards.
        unread: i64,
        /// The same by category; `None` when the change moved no count.
        by_category: Option<Arc<ByCategory>>,
        /// The user's change version it took.
        version: i64,
    },
    /// A room peer made their first connection.
    PeerOnline {
        /// Who.
        user: User,
    },
    /// A room peer closed their last connection.
    PeerOffline {
        /// Who.
        user: User,
        /// When (ms since the epoch).
        last_seen_at: i64,
    },
    /// The user's changes went up to `version`: a stream behind it missed
    /// one on the bus.
    HighWater {
        /// The user's latest version the sender knew of.
        version: i64,
    },
}

/// A user's presence across every node changed (from [`Change::Presence`]).
#[derive(Clone, Copy, Debug)]
pub struct PresenceChange {
    /// Who.
    pub user: User,
    /// Online now, or offline.
    pub online: bool,
    /// When (ms since the epoch).
    pub at: i64,
}

struct Subscriber {
    id: u64,
    sink: Sink,
}

/// Where a stream's events go.
enum Sink {
    /// A queue of its own (a StreamUserEvents call).
    Own {
        queue: mpsc::Sender<HubEvent>,
        lagged: Arc<Notify>,
    },
    /// The queue shared by the follows of one FollowUsers call, tagged
    /// with the follow's key on that call.
    Shared {
        follow: u64,
        inbox: Arc<FollowInbox>,
    },
}

impl Sink {
    /// Queues `event`, or flags the stream as lagging when it cannot.
    fn offer(&self, event: &HubEvent) {
        let queued = match self {
            Sink::Own { queue, .. } => queue.try_send(event.clone()).is_ok(),
            Sink::Shared { follow, inbox } => {
                inbox.queue.try_send((*follow, event.clone())).is_ok()
            }
        };
        if !queued {
            metrics::counter!("notify_stream_lagged_total").increment(1);
            self.lag();
        }
    }

    /// Makes the stream catch up from the store.
    fn lag(&self) {
        match self {
            Sink::Own { lagged, .. } => lagged.notify_one(),
            Sink::Shared { follow, inbox } => inbox.lag(*follow),
        }
    }
}

/// Events queued for the follows of one FollowUsers call: one bounded
/// queue for all of them, and the follows that missed an event because it
/// was full (each then catches up from the store, as a lagging stream does).
pub struct FollowInbox {
    queue: mpsc::Sender<(u64, HubEvent)>,
    lagged: Mutex<Vec<u64>>,
    /// Woken when a follow is added to `lagged`.
    pub wake: Notify,
}

impl FollowInbox {
    /// An inbox holding up to `capacity` events, and its receiving end.
    pub fn new(capacity: usize) -> (Arc<FollowInbox>, mpsc::Receiver<(u64, HubEvent)>) {
        let (queue, events) = mpsc::channel(capacity);
        let inbox = FollowInbox {
            queue,
            lagged: Mutex::new(Vec::new()),
            wake: Notify::new(),
        };
        (Arc::new(inbox), events)
    }

    fn lag(&self, follow: u64) {
        self.lagged
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(follow);
        self.wake.notify_one();
    }

    /// The follows flagged since the last call (possibly repeated).
    pub fn take_lagged(&self) -> Vec<u64> {
        std::mem::take(
            &mut *self
                .lagged
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }
}

/// The fan-out. Shared as `Arc<Hub>`; the store publishes into it.
pub struct Hub {
    // A plain mutex: every critical section is a map lookup and a few
    // non-blocking `try_send`s.
    subscribers: Mutex<HashMap<User, Vec<Subscriber>>>,
    next_id: AtomicU64,
    // Unbounded: presence changes come at the pace of connections opening
    // and closing, and the announcer only reads room peers for each.
    presence: mpsc::UnboundedSender<PresenceChange>,
    // Sent under the `subscribers` lock, so the bus hears each user's
    // first-open and last-close in the order they happened. Unbounded: one
    // message per stream opening or closing.
    interest: Option<mpsc::UnboundedSender<Interest>>,
}

/// A stream's place in the hub; unsubscribes when dropped.
pub struct Registration {
    hub: Arc<Hub>,
    user: User,
    id: u64,
    /// Answered when the bus brings the user's changes here.
    registered: Option<oneshot::Receiver<()>>,
}

/// One StreamUserEvents stream's end of the hub; unsubscribes when dropped.
pub struct Subscription {
    /// Its place in the hub.
    pub registration: Registration,
    /// Events in publish order.
    pub events: mpsc::Receiver<HubEvent>,
    /// Woken when an event was dropped because `events` was full.
    pub lagged: Arc<Notify>,
}

impl Hub {
    /// A hub, and the presence changes it receives, for the announcer.
    pub fn new() -> (Hub, mpsc::UnboundedReceiver<PresenceChange>) {
        Hub::with_interest(None)
    }

    /// [`Hub::new`], telling `interest` (a message bus) which users hold
    /// streams here.
    pub fn with_interest(
        interest: Option<mpsc::UnboundedSender<Interest>>,
    ) -> (Hub, mpsc::UnboundedReceiver<PresenceChange>) {
        let (presence, changes) = mpsc::unbounded_channel();
        let hub = Hub {
            subscribers: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            presence,
            interest,
        };
        (hub, changes)
    }

    fn tell_bus(&self, interest: Interest) {
        if let Some(bus) = &self.interest {
            // Fails only once the bus task has stopped, at shutdown.
            let _ = bus.send(interest);
        }
    }

    /// Makes every stream catch up from the store, as after an overflow.
    pub fn resync_all(&self) {
        for streams in self.lock().values() {
            for stream in streams {
                stream.sink.lag();
            }
        }
    }

    /// The users with streams here now.
    pub fn users(&self) -> Vec<User> {
        self.lock().keys().copied().collect()
    }

    /// Starts receiving the user's events. Register before reading the
    /// store (and, with a bus, await [`Registration::registered`]), so
    /// nothing committed afterwards can be missed.
    pub fn subscribe(self: &Arc<Self>, user: User) -> Subscription {
        let (queue, events) = mpsc::channel(STREAM_QUEUE);
        let lagged = Arc::new(Notify::new());
        let sink = Sink::Own {
            queue,
            lagged: lagged.clone(),
        };
        Subscription {
            registration: self.register(user, sink),
            events,
            lagged,
        }
    }

    /// [`Hub::subscribe`] for one follow of a FollowUsers call: its events
    /// go to the call's `inbox`, tagged with `follow` (the follow's key).
    pub fn follow(
        self: &Arc<Self>,
        user: User,
        follow: u64,
        inbox: Arc<FollowInbox>,
    ) -> Registration {
        self.register(user, Sink::Shared { follow, inbox })
    }

    fn register(self: &Arc<Self>, user: User, sink: Sink) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut registered = None;
        {
            let mut subscribers = self.lock();
            let streams = subscribers.entry(user).or_default();
            if streams.is_empty() {
                self.tell_bus(Interest::Watch(user));
            }
            streams.push(Subscriber { id, sink });
            if self.interest.is_some() {
                // Every stream waits, not only the first: the first's
                // `Watch` may still be on its way.
                let (answer, answered) = oneshot::channel();
                self.tell_bus(Interest::Barrier(answer));
                registered = Some(answered);
            }
        }
        Registration {
            hub: self.clone(),
            user,
            id,
            registered,
        }
    }

    /// Hands the event to every stream of `user`, never waiting.
    pub fn send(&self, user: User, event: HubEvent) {
        let subscribers = self.lock();
        let Some(streams) = subscribers.get(&user) else {
            return;
        };
        for stream in streams {
            stream.sink.offer(&event);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<User, Vec<Subscriber>>> {
        // A panic while holding this lock cannot leave the map half-updated
        // (each update is one push or retain), so a poisoned lock is usable.
        self.subscribers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl ChangeSink for Hub {
    fn publish(&self, change: Change) {
        match change {
            Change::Created {
                notification,
                unread,
                by_category,
                version,
                replaced,
            } => self.send(
                notification.recipient,
                HubEvent::Created {
                    notification: Arc::from(notification),
                    unread,
                    by_category: Arc::new(by_category),
                    version,
                    replaced: replaced.into(),
                },
            ),
            Change::Updated {
                user,
                ids,
                update,
                updated_at,
                unread,
                by_category,
                version,
            } => self.send(
                user,
                HubEvent::Updated {
                    ids: ids.into(),
                    update,
                    updated_at,
                    unread,
                    by_category: by_category.map(Arc::new),
                    version,
                },
            ),
            Change::Presence { user, online, at } => {
                let _ = self.presence.send(PresenceChange { user, online, at });
            }
            Change::HighWater { user, version } => self.send(user, HubEvent::HighWater { version }),
            Change::Resync => self.resync_all(),
        }
    }
}

impl Registration {
    /// Waits (at most [`BUS_PATIENCE`]) until the bus brings the user's
    /// changes here; at once without a bus.
    pub async fn registered(&mut self) {
        if let Some(registered) = self.take_barrier() {
            wait_registered(registered, self.user).await;
        }
    }

    /// What [`Registration::registered`] waits on, for a task to wait on
    /// while the registration stays with its owner.
    pub fn take_barrier(&mut self) -> Option<oneshot::Receiver<()>> {
        self.registered.take()
    }
}

/// Waits (at most [`BUS_PATIENCE`]) for the bus's answer to a registration.
pub async fn wait_registered(registered: oneshot::Receiver<()>, user: User) {
    if tokio::time::timeout(BUS_PATIENCE, registered)
        .await
        .is_err()
    {
        metrics::counter!("notify_bus_registration_timeouts_total").increment(1);
        tracing::warn!(%user, "the bus did not confirm this user's subscription in time; relying on its reconnect");
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut subscribers = self.hub.lock();
        if let Some(streams) = subscribers.get_mut(&self.user) {
            streams.retain(|stream| stream.id != self.id);
            if streams.is_empty() {
                subscribers.remove(&self.user);
                self.hub.tell_bus(Interest::Unwatch(self.user));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: i64) -> HubEvent {
        HubEvent::Updated {
            ids: vec![n.to_string()].into(),
            update: Update::status(notify_store::Status::Read),
            updated_at: 0,
            unread: 0,
            by_category: None,
            version: n,
        }
    }

    #[tokio::test]
    async fn a_full_queue_flags_only_that_stream() {
        let hub = Arc::new(Hub::new().0);
        let user = User::vendor(1);
        let slow = hub.subscribe(user);
        let mut fast = hub.subscribe(user);
        for n in 0..STREAM_QUEUE as i64 + 1 {
            hub.send(user, event(n));
            fast.events.recv().await.expect("fast stream keeps up");
        }
        // A flag is a stored permit: `notified()` is ready at its first
        // poll, which a zero timeout makes before it gives up.
        let flagged = |subscription: &Subscription| {
            let lagged = subscription.lagged.clone();
            async move {
                tokio::time::timeout(std::time::Duration::ZERO, lagged.notified())
                    .await
                    .is_ok()
            }
        };
        assert!(
            flagged(&slow).await,
            "the slow stream is flagged as lagging"
        );
        assert_eq!(slow.events.len(), STREAM_QUEUE);
        assert!(!flagged(&fast).await, "the fast stream is not flagged");
        assert!(fast.events.is_empty(), "the fast stream got every event");
    }

    #[test]
    fn dropping_a_subscription_unsubscribes() {
        let hub = Arc::new(Hub::new().0);
        let user = User::customer(7);
        let subscription = hub.subscribe(user);
        assert_eq!(hub.lock().get(&user).map(Vec::len), Some(1));
        drop(subscription);
        assert!(hub.lock().get(&user).is_none());
    }
}
