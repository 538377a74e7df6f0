//! Fan-out between cores over NATS (`--bus nats://…`), instead of
//! PostgreSQL's LISTEN/NOTIFY.
//!
//! - Publishing ([`BusOutbox`]): after each commit the store hands the
//!   change's notice (ids, version, counts; never a payload) to one
//!   publisher task, which sends it on the user's subject
//!   (`notify.user.<role>.<id>`). A full queue drops the message and keeps
//!   the user's version for the next high-water mark.
//! - High-water marks: every [`HIGH_WATER_TICK`] the publisher sends, for
//!   each user it changed since the last tick, the latest version it knows.
//!   NATS core delivery is at most once; a stream that lost a message sees
//!   either the next change's gap or this mark, and catches up from the
//!   store. So a lost message delays a live delivery by at most one tick
//!   (plus the reconnect, when the bus itself was away).
//! - Receiving ([`watch`]): the hub tells the bus which users hold streams
//!   here ([`Interest`]); the bus subscribes to exactly those subjects, so a
//!   core receives its own users' traffic, not everyone's. What arrives
//!   goes, in order and in batches, to [`PgStore::deliver`], which reads the
//!   rows and publishes them to the hub.
//! - Losing the connection: the client reconnects by itself; then every
//!   stream here catches up from the store, and the publisher sends marks
//!   for every user it changed in the last [`RECENT`], since messages it
//!   handed the client before the drop may be gone.
//! - Losing the publisher: a core killed between a commit and its publish
//!   sends neither the notice nor its mark. So every [`VERSION_SWEEP`] each
//!   core also reads the versions of the users it holds streams of, and
//!   streams behind theirs catch up: the bound for that rare case.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::{Client, ConnectOptions, Event};
use notify_store::{Outbox, PgStore, Role, User, high_water_notice};
use tokio::sync::{Notify, mpsc};
use tokio::task::AbortHandle;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

use super::hub::{Hub, Interest};

/// How often the publisher sends high-water marks: the bound on how long a
/// lost bus message can hold back a live delivery.
pub const HIGH_WATER_TICK: Duration = Duration::from_secs(1);

/// How often a core reads the versions of the users it holds streams of.
pub const VERSION_SWEEP: Duration = Duration::from_secs(10);

/// Users whose versions one statement of the sweep reads.
const SWEEP_CHUNK: usize = 5_000;

/// How long a stopping core waits for the bus to take its last notices.
pub const FLUSH_GRACE: Duration = Duration::from_secs(2);

/// How far back the marks sent after a reconnect reach.
const RECENT: Duration = Duration::from_secs(60);

/// Notices waiting for the publisher before one is dropped (and covered by
/// the next mark).
const OUTBOX_QUEUE: usize = 65_536;

/// Received notices waiting to be read back before the subscriptions stop
/// reading (and NATS, past its own buffer, reports a slow consumer).
const DELIVER_QUEUE: usize = 16_384;

/// Notices read back in one go.
const DELIVER_BATCH: usize = 1_000;

/// The subject carrying a user's changes.
pub fn subject(user: User) -> String {
    let role = match user.role {
        Role::Vendor => "vendor",
        Role::Customer => "customer",
    };
    format!("notify.user.{role}.{}", user.id)
}

/// A connection to the bus and what happens when it drops and returns.
pub struct Bus {
    client: Client,
    /// Woken when the connection came back after a drop.
    reconnected: Arc<Notify>,
}

impl Bus {
    /// Connects to `url`; a bus that is away at start is an error, one that
    /// goes away later is waited for. Drops and returns make every stream
    /// in `hub` catch up.
    pub async fn connect(url: &str, hub: Arc<Hub>) -> anyhow::Result<Bus> {
        let reconnected = Arc::new(Notify::new());
        let on_event = {
            let reconnected = reconnected.clone();
            let was_connected = Arc::new(std::sync::atomic::AtomicBool::new(false));
            move |event: Event| {
                let hub = hub.clone();
                let reconnected = reconnected.clone();
                let was_connected = was_connected.clone();
                async move {
                    match event {
                        Event::Connected => {
                            if was_connected.swap(true, std::sync::atomic::Ordering::Relaxed) {
                                tracing::info!("bus connection back; resyncing open streams");
                                metrics::counter!("notify_bus_reconnects_total").increment(1);
                                hub.resync_all();
                                reconnected.notify_one();
                            }
                        }
                        Event::Disconnected => {
                            tracing::warn!("bus connection lost; reconnecting");
                        }
                        Event::SlowConsumer(_) => {
                            // NATS dropped messages for us: read them back.
                            metrics::counter!("notify_bus_slow_consumer_total").increment(1);
                            hub.resync_all();
                        }
                        // Each failed reconnect attempt: said once above.
                        Event::ClientError(error) => tracing::debug!(%error, "bus client error"),
                        other => tracing::warn!(event = %other, "bus event"),
                    }
                }
            }
        };
        let client = ConnectOptions::new()
            .name("notify core")
            .event_callback(on_event)
            // Back soon after the server is: a fixed short wait, not a
            // backoff that grows through a long outage.
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis(100 * attempts.min(5) as u64)
            })
            .connection_timeout(Duration::from_secs(2))
            .ping_interval(Duration::from_secs(5))
            .connect(url)
            .await
            .with_context(|| format!("cannot connect to --bus {url}"))?;
        Ok(Bus {
            client,
            reconnected,
        })
    }

    /// The store's side: where it hands notices after commit. Starts the
    /// publisher task, which on `token` sends what it holds and ends.
    pub fn outbox(
        &self,
        token: CancellationToken,
    ) -> (Arc<BusOutbox>, tokio::task::JoinHandle<()>) {
        let (queue, waiting) = mpsc::channel(OUTBOX_QUEUE);
        let outbox = Arc::new(BusOutbox {
            queue,
            dropped: Mutex::new(HashMap::new()),
        });
        let publisher = tokio::spawn(publish(
            self.client.clone(),
            outbox.clone(),
            waiting,
            self.reconnected.clone(),
            token,
        ));
        (outbox, publisher)
    }
}

/// The store's [`Outbox`] when a bus carries the fan-out.
pub struct BusOutbox {
    queue: mpsc::Sender<(User, i64, String)>,
    /// Users whose notices the full queue dropped, with the latest version:
    /// the next mark covers them.
    dropped: Mutex<HashMap<User, i64>>,
}

impl Outbox for BusOutbox {
    fn send(&self, user: User, version: i64, notice: String) {
        if self.queue.try_send((user, version, notice)).is_err() {
            metrics::counter!("notify_bus_dropped_total").increment(1);
            let mut dropped = self.dropped.lock().unwrap_or_else(|p| p.into_inner());
            raise(&mut dropped, user, version);
        }
    }
}

/// The publisher: notices as they come, marks every tick.
async fn publish(
    client: Client,
    outbox: Arc<BusOutbox>,
    mut waiting: mpsc::Receiver<(User, i64, String)>,
    reconnected: Arc<Notify>,
    token: CancellationToken,
) {
    // Changed since the last tick, and changed within `RECENT` (with when).
    let mut changed: HashMap<User, i64> = HashMap::new();
    let mut recent: HashMap<User, (i64, Instant)> = HashMap::new();
    let mut tick = tokio::time::interval(HIGH_WATER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = token.cancelled() => {
                while let Ok((user, version, notice)) = waiting.try_recv() {
                    send_notice(&client, &mut changed, user, version, notice).await;
                }
                send_marks(&client, &outbox, &mut changed, &mut recent).await;
                let _ = client.flush().await;
                return;
            }
            notice = waiting.recv() => {
                let Some((user, version, notice)) = notice else { return };
                send_notice(&client, &mut changed, user, version, notice).await;
            }
            _ = tick.tick() => send_marks(&client, &outbox, &mut changed, &mut recent).await,
            _ = reconnected.notified() => {
                // Whatever the client held when the connection dropped may
                // be gone: mark every recent user again at the next tick.
                for (user, (version, _)) in &recent {
                    raise(&mut changed, *user, *version);
                }
            }
        }
    }
}

async fn send_notice(
    client: &Client,
    changed: &mut HashMap<User, i64>,
    user: User,
    version: i64,
    notice: String,
) {
    raise(changed, user, version);
    if let Err(error) = client.publish(subject(user), notice.into()).await {
        tracing::warn!(%error, "cannot publish a change notice; the next mark covers it");
    }
}

/// A mark for each user changed since the last ones (or dropped from the
/// queue), remembered as recent.
async fn send_marks(
    client: &Client,
    outbox: &BusOutbox,
    changed: &mut HashMap<User, i64>,
    recent: &mut HashMap<User, (i64, Instant)>,
) {
    let dropped = std::mem::take(&mut *outbox.dropped.lock().unwrap_or_else(|p| p.into_inner()));
    for (user, version) in dropped {
        raise(changed, user, version);
    }
    let now = Instant::now();
    for (user, version) in changed.drain() {
        recent.insert(user, (version, now));
        let mark = high_water_notice(user, version);
        if let Err(error) = client.publish(subject(user), mark.into()).await {
            tracing::warn!(%error, "cannot publish a high-water mark");
        }
    }
    recent.retain(|_, (_, at)| now.duration_since(*at) < RECENT);
}

/// Keeps the higher of the user's versions.
fn raise(versions: &mut HashMap<User, i64>, user: User, version: i64) {
    let latest = versions.entry(user).or_insert(version);
    *latest = (*latest).max(version);
}

/// The receiving side: follows `interest` from the hub, subscribing to the
/// subjects of the users with streams here, and hands what arrives to
/// `store`. Stops with `token`.
pub fn watch(
    bus: &Bus,
    store: PgStore,
    hub: Arc<Hub>,
    interest: mpsc::UnboundedReceiver<Interest>,
    token: CancellationToken,
) {
    let (deliveries, delivering) = mpsc::channel(DELIVER_QUEUE);
    tokio::spawn(sweep_versions(store.clone(), hub.clone(), token.clone()));
    tokio::spawn(deliver(store, hub, delivering, token.clone()));
    tokio::spawn(follow_interest(
        bus.client.clone(),
        interest,
        deliveries,
        token,
    ));
}

/// One task owns the subscriptions, so a user's watch and unwatch apply in
/// the order the hub sent them.
async fn follow_interest(
    client: Client,
    mut interest: mpsc::UnboundedReceiver<Interest>,
    deliveries: mpsc::Sender<String>,
    token: CancellationToken,
) {
    let mut watching: HashMap<User, AbortHandle> = HashMap::new();
    let mut probe = Probe::new(&client).await;
    let mut commands = Vec::with_capacity(1024);
    loop {
        let received = tokio::select! {
            _ = token.cancelled() => break,
            received = interest.recv_many(&mut commands, 1024) => received,
        };
        if received == 0 {
            break;
        }
        let mut waiting = Vec::new();
        for command in commands.drain(..) {
            match command {
                Interest::Watch(user) => {
                    if watching.contains_key(&user) {
                        continue;
                    }
                    match client.subscribe(subject(user)).await {
                        Ok(subscriber) => {
                            let task = tokio::spawn(forward(subscriber, deliveries.clone()));
                            watching.insert(user, task.abort_handle());
                        }
                        Err(error) => {
                            tracing::warn!(%user, %error, "cannot subscribe on the bus")
                        }
                    }
                }
                Interest::Unwatch(user) => {
                    // Dropping the subscriber (with its task) unsubscribes.
                    if let Some(task) = watching.remove(&user) {
                        task.abort();
                    }
                }
                Interest::Barrier(answer) => waiting.push(answer),
            }
        }
        metrics::gauge!("notify_bus_subscriptions").set(watching.len() as f64);
        if !waiting.is_empty() {
            if let Some(probe) = probe.as_mut() {
                probe.round_trip(&client).await;
            }
            for answer in waiting {
                let _ = answer.send(());
            }
        }
    }
    for task in watching.into_values() {
        task.abort();
    }
}

/// Passes one user's messages on, in order, waiting when the readers are
/// behind (NATS buffers, then reports a slow consumer).
async fn forward(mut subscriber: async_nats::Subscriber, deliveries: mpsc::Sender<String>) {
    while let Some(message) = subscriber.next().await {
        let notice = match String::from_utf8(message.payload.to_vec()) {
            Ok(notice) => notice,
            Err(_) => {
                tracing::warn!(subject = %message.subject, "a bus message that is not UTF-8; skipped");
                continue;
            }
        };
        if deliveries.send(notice).await.is_err() {
            return;
        }
    }
}

/// Every [`VERSION_SWEEP`], a mark for each user with streams here from
/// the store itself: streams behind it missed a change whose notice and
/// mark never left their core.
async fn sweep_versions(store: PgStore, hub: Arc<Hub>, token: CancellationToken) {
    let mut tick = tokio::time::interval(VERSION_SWEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tick.tick() => {}
        }
        for users in hub.users().chunks(SWEEP_CHUNK) {
            match store.versions(users).await {
                Ok(versions) => {
                    for (user, version) in versions {
                        hub.send(user, super::hub::HubEvent::HighWater { version });
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot read the versions of this core's users")
                }
            }
        }
    }
}

/// Reads back received notices in batches and publishes them to the hub;
/// a batch that cannot be read makes every stream catch up instead.
async fn deliver(
    store: PgStore,
    hub: Arc<Hub>,
    mut delivering: mpsc::Receiver<String>,
    token: CancellationToken,
) {
    let mut batch = Vec::with_capacity(DELIVER_BATCH);
    loop {
        let received = tokio::select! {
            _ = token.cancelled() => return,
            received = delivering.recv_many(&mut batch, DELIVER_BATCH) => received,
        };
        if received == 0 {
            return;
        }
        if let Err(error) = store.deliver(&batch).await {
            tracing::warn!(%error, "could not read the rows bus notices name; resyncing");
            hub.resync_all();
        }
        batch.clear();
    }
}

/// A round trip through the server on a subject only this core uses: once
/// its message comes back, the server has applied every subscription sent
/// before it (a connection's commands are applied in order).
struct Probe {
    subject: String,
    replies: async_nats::Subscriber,
    sent: u64,
}

impl Probe {
    async fn new(client: &Client) -> Option<Probe> {
        let subject = format!("notify.probe.{}", notify_store::new_object_id());
        match client.subscribe(subject.clone()).await {
            Ok(replies) => Some(Probe {
                subject,
                replies,
                sent: 0,
            }),
            Err(error) => {
                tracing::warn!(%error, "cannot subscribe the bus probe; streams will not wait for their subscriptions");
                None
            }
        }
    }

    /// Sends a numbered probe and waits (at most the hub's patience, the
    /// send included: it waits too while the bus is away) for it to come
    /// back, skipping stale ones from rounds that timed out.
    async fn round_trip(&mut self, client: &Client) {
        self.sent += 1;
        let number = self.sent.to_string();
        let (subject, replies) = (&self.subject, &mut self.replies);
        let back = async {
            if client
                .publish(subject.clone(), number.clone().into())
                .await
                .is_err()
            {
                return;
            }
            while let Some(message) = replies.next().await {
                if message.payload.as_ref() == number.as_bytes() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(super::hub::BUS_PATIENCE, back).await;
    }
}
