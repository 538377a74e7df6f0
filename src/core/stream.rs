//! One `StreamUserEvents` call: bring the reader up to date, then follow
//! the user's changes live, with no gap and no duplicate between the two.
//!
//! Every committed change to a user's notifications (a create, a status
//! change) takes the user's next version, and the hub hands the changes to
//! the stream in version order. The stream remembers the last version it
//! passed on: a live change at or below it was already sent and is
//! skipped; one past the next means changes were missed (a full queue, a
//! lost database notice), and the stream reads what changed since from the
//! store ([`Stream::catch_up`]). The same read brings the reader up to date
//! when the stream opens. Changes are committed before they are published,
//! so the store always has what the hub announces.
//!
//! After a catch-up the reader also hears the unread count as it is now
//! (on the last event sent) and its room peers' presence as it is now (the
//! changes it missed, through a [`PeerView`]). A reader that asks for
//! `sync` also gets a `state` event then: the epoch, where to resume from,
//! the count and the peers online.
//!
//! A resume that does not fit the database (another epoch, an afterSeq or
//! afterVersion past what it holds, another notification at afterSeq: a
//! restored backup) resets: nothing is replayed, the stream goes on live,
//! and `state.reset` tells the reader to reload from the list.

use std::sync::Arc;
use std::time::{Duration, Instant};

use notify_store::{
    ByCategory, ChangePosition, Notification, PeerView, Status, Store, StoreError, Update, User,
    UserState,
};
use tokio::sync::mpsc;

use super::command::OpenStream;
use super::error::CoreError;
use super::hub::{HubEvent, Subscription};
use super::notifications::Notifications;

/// Notifications read from the store per query while catching up.
const CATCH_UP_BATCH: u32 = 500;
/// Events buffered towards the client before the stream waits for it.
const OUTBOUND_QUEUE: usize = 64;
/// Ids in one `notificationUpdated` event of a catch-up.
const IDS_PER_UPDATE: usize = 1000;
/// How long a live stream waits for the database to come back before it
/// gives up with UNAVAILABLE.
const STORE_PATIENCE: Duration = Duration::from_secs(30);

type Outbound = mpsc::Sender<Result<StreamEvent, CoreError>>;

/// One event of a stream, with the user's unread count when it changed.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamEvent {
    /// What happened.
    pub event: Event,
    /// The count after it, and the version it was read at.
    pub count: Option<UnreadCount>,
}

/// A user's unread count at one version of their notifications.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnreadCount {
    /// Notifications in the unread inbox.
    pub unread: i64,
    /// The same by category.
    pub by_category: Arc<ByCategory>,
    /// The change version the count belongs to: a reader keeps the newest.
    pub version: i64,
}

/// What a stream tells its reader.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A notification the reader did not have.
    Notification(Arc<Notification>),
    /// Some of the reader's notifications changed (status, archive).
    Updated {
        /// Which ones.
        ids: Vec<String>,
        /// What changed (after a catch-up: every field, as they are now).
        update: Update,
        /// When (ms since the epoch).
        updated_at: i64,
    },
    /// A room peer came online.
    PeerOnline(User),
    /// A room peer went offline.
    PeerOffline {
        /// Who.
        user: User,
        /// When their last connection closed, if known.
        last_seen_at: Option<i64>,
    },
    /// Where the reader stands (for readers that asked for `sync`).
    State(StreamState),
}

/// A reader's position after a catch-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamState {
    /// The database's epoch the positions belong to.
    pub epoch: String,
    /// The highest seq passed on.
    pub last_seq: i64,
    /// That notification's id, if there is one.
    pub last_id: Option<String>,
    /// Every change up to this version was passed on.
    pub version: i64,
    /// Room peers online now.
    pub online_peers: Vec<User>,
    /// The resume did not fit this database: reload from the list.
    pub reset: bool,
}

/// Starts the stream's task and returns what the gRPC layer sends out.
pub(super) async fn open(
    core: Arc<Notifications>,
    request: OpenStream,
) -> Result<mpsc::Receiver<Result<StreamEvent, CoreError>>, CoreError> {
    // The counters before subscribing: whatever commits after this read is
    // either queued by the hub or read back by the first catch-up, so a
    // live-only stream misses nothing committed once it has answered.
    let start = core.store.user_state(request.user).await?;
    let mut subscription = core.hub.subscribe(request.user);
    subscription.registration.registered().await;
    let (out, receiver) = mpsc::channel(OUTBOUND_QUEUE);
    tokio::spawn(async move {
        metrics::gauge!("notify_open_streams").increment(1.0);
        let user = request.user;
        let presence = request.presence;
        if presence {
            core.presence.connect(user);
        }
        let outcome = Stream::new(core.clone(), request, Out::Call(out.clone()))
            .run(start, subscription)
            .await;
        if presence {
            core.presence.disconnect(user);
        }
        metrics::gauge!("notify_open_streams").decrement(1.0);
        match outcome {
            Ok(()) => tracing::debug!(%user, "stream ended"),
            Err(error) => {
                tracing::warn!(%user, %error, "stream ended by an error");
                let _ = out.send(Err(error.into())).await;
            }
        }
    });
    Ok(receiver)
}

/// One event of a follow, tagged with the follow's id (see `follow`).
pub(super) type Followed = (u64, Result<StreamEvent, CoreError>);

/// Where a stream's events go.
pub(super) enum Out {
    /// A StreamUserEvents call of its own.
    Call(Outbound),
    /// The queue of a FollowUsers call, shared by its follows.
    Follow {
        /// The follow's id on that call.
        id: u64,
        queue: mpsc::Sender<Followed>,
    },
}

impl Out {
    async fn send(&self, event: StreamEvent) -> Step {
        let sent = match self {
            Out::Call(queue) => queue.send(Ok(event)).await.is_ok(),
            Out::Follow { id, queue } => queue.send((*id, Ok(event))).await.is_ok(),
        };
        if sent { Ok(()) } else { Err(Stop::ClientGone) }
    }

    async fn closed(&self) {
        match self {
            Out::Call(queue) => queue.closed().await,
            Out::Follow { queue, .. } => queue.closed().await,
        }
    }
}

/// Why the stream stopped early: the client left (not an error) or the store failed.
pub(super) enum Stop {
    ClientGone,
    Failed(StoreError),
}

pub(super) type Step = Result<(), Stop>;

impl From<StoreError> for Stop {
    fn from(error: StoreError) -> Stop {
        Stop::Failed(error)
    }
}

/// One stream and what its reader has been told. It owns all it needs, so
/// a follow's stream can move to a task of its own for a catch-up and back.
pub(super) struct Stream {
    core: Arc<Notifications>,
    request: OpenStream,
    out: Out,
    /// The highest seq the reader has, and that notification's id if known.
    last_seq: i64,
    last_id: Option<String>,
    /// Every change up to this version has been passed on.
    version: i64,
    peers: PeerView,
    /// The last event of a catch-up, held back so the count can ride on it.
    held: Option<StreamEvent>,
    /// The last count sent: a change that moves no count (a receipt)
    /// carries it on, when it is the count of the version just before.
    counted: Option<UnreadCount>,
}

impl Stream {
    pub(super) fn new(core: Arc<Notifications>, request: OpenStream, out: Out) -> Stream {
        Stream {
            core,
            request,
            out,
            last_seq: 0,
            last_id: None,
            version: 0,
            peers: PeerView::default(),
            held: None,
            counted: None,
        }
    }

    fn store(&self) -> &dyn Store {
        self.core.store.as_ref()
    }

    pub(super) fn user(&self) -> User {
        self.request.user
    }

    async fn run(
        mut self,
        start: UserState,
        mut subscription: Subscription,
    ) -> Result<(), StoreError> {
        let result = async {
            self.begin(start).await?;
            loop {
                tokio::select! {
                    _ = self.out.closed() => return Err(Stop::ClientGone),
                    _ = self.core.shutdown.cancelled() => return Ok(()),
                    _ = subscription.lagged.notified() => self.resync().await?,
                    event = subscription.events.recv() => {
                        let Some(event) = event else { return Ok(()) };
                        self.live(event).await?;
                    }
                }
            }
        }
        .await;
        match result {
            Ok(()) | Err(Stop::ClientGone) => Ok(()),
            Err(Stop::Failed(error)) => Err(error),
        }
    }

    /// A follow's opening: the counters now, then [`Self::begin`]. (Its
    /// hub registration came first; what commits in between is in both the
    /// counters and its queue, and the queue's copy is skipped by version.)
    pub(super) async fn open_follow(&mut self) -> Step {
        let start = self.store().user_state(self.user()).await?;
        self.begin(start).await
    }

    /// Positions the stream where the reader stands (or, for a resume that
    /// does not fit, where the database does), catches it up, and sends the
    /// state to readers that asked for it.
    async fn begin(&mut self, start: UserState) -> Step {
        let reset = !self.resume_fits(&start).await?;
        let from = match (reset, self.request.after_seq, self.request.after_version) {
            (false, Some(seq), Some(version)) => (seq, version),
            (false, Some(seq), None) => (seq, start.version),
            _ => (start.last_seq, start.version),
        };
        (self.last_seq, self.version) = from;
        let online = self.store().online_peers(self.user()).await?;
        self.peers.start(&online);
        self.catch_up().await?;
        self.send_state(reset, &online).await
    }

    /// Whether `event` shows that changes were missed, so that
    /// [`Self::live`] would read the store: a follow does that in a task of
    /// its own, so the other follows of its call do not wait.
    pub(super) fn gap_before(&self, event: &HubEvent) -> bool {
        match event {
            HubEvent::Created { version, .. } | HubEvent::Updated { version, .. } => {
                !self.next_in_line(*version) && *version > self.version
            }
            HubEvent::HighWater { version } => *version > self.version,
            HubEvent::PeerOnline { .. } | HubEvent::PeerOffline { .. } => false,
        }
    }

    /// Whether the reader's positions belong to this database.
    async fn resume_fits(&self, start: &UserState) -> Result<bool, Stop> {
        let request = &self.request;
        if let Some(epoch) = &request.epoch
            && epoch != self.store().epoch()
        {
            return Ok(false);
        }
        if request.after_seq.is_some_and(|seq| seq > start.last_seq)
            || request.after_version.is_some_and(|v| v > start.version)
        {
            return Ok(false);
        }
        if let (Some(id), Some(seq)) = (&request.after_id, request.after_seq)
            && seq > 0
        {
            let held = self.store().id_at(self.user(), seq).await?;
            return Ok(held.as_ref() == Some(id));
        }
        Ok(true)
    }

    /// Brings the reader up to date: first the status changes after
    /// `version` of the notifications it has (seq ≤ `last_seq`), in change
    /// order, then the notifications it lacks, in seq order, up to the
    /// snapshot the changes were read with. Every change up to that
    /// snapshot's version is then passed on, and its unread count rides on
    /// the last event sent.
    async fn catch_up(&mut self) -> Step {
        let known = self.last_seq;
        let mut after = ChangePosition::after(self.version);
        let (state, by_category) = loop {
            let page = self
                .store()
                .changed_after(self.user(), after, CATCH_UP_BATCH)
                .await?;
            let full = page.items.len() == CATCH_UP_BATCH as usize;
            for notification in page.items {
                after = ChangePosition {
                    version: notification.version,
                    seq: notification.seq,
                };
                // Those past `known` are new to the reader: sent whole below.
                if notification.seq <= known && changed_since_created(&notification) {
                    self.hold_update(&notification).await?;
                }
            }
            if !full {
                break (page.state, page.by_category);
            }
        };
        'replay: while self.last_seq < state.last_seq {
            let batch = self
                .store()
                .after_seq(self.user(), self.last_seq, CATCH_UP_BATCH)
                .await?;
            let full = batch.len() == CATCH_UP_BATCH as usize;
            for notification in batch {
                // Later ones come live, with versions past the snapshot's.
                if notification.seq > state.last_seq {
                    break 'replay;
                }
                self.last_seq = notification.seq;
                self.last_id = Some(notification.id.clone());
                // An expired or replaced one is never delivered (its seq
                // is passed all the same).
                if notification.expired(notify_store::now_millis())
                    || notification.replaced_by.is_some()
                {
                    continue;
                }
                self.hold(Event::Notification(Arc::new(notification)))
                    .await?;
            }
            if !full {
                break;
            }
        }
        self.version = self.version.max(state.version);
        if let Some(last) = self.held.take() {
            let count = UnreadCount {
                unread: state.unread,
                by_category: Arc::new(by_category),
                version: state.version,
            };
            self.send_event(last.event, Some(count)).await?;
        }
        Ok(())
    }

    /// [`Self::catch_up`] after events were missed, riding out a short
    /// database outage (a restart, a failover) instead of ending the stream;
    /// then the peers' presence as it is now, and the state.
    pub(super) async fn resync(&mut self) -> Step {
        let started = Instant::now();
        let mut delay = Duration::from_millis(100);
        let online = loop {
            let attempt = async {
                self.catch_up().await?;
                self.store()
                    .online_peers(self.user())
                    .await
                    .map_err(Stop::from)
            };
            match attempt.await {
                Err(Stop::Failed(error))
                    if error.is_transient() && started.elapsed() < STORE_PATIENCE =>
                {
                    tokio::select! {
                        _ = self.out.closed() => return Err(Stop::ClientGone),
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                other => break other?,
            }
        };
        for (peer, now_online) in self.peers.snapshot(&online) {
            let event = if now_online {
                Event::PeerOnline(peer)
            } else {
                let last_seen_at = self.store().last_seen(peer).await?;
                Event::PeerOffline {
                    user: peer,
                    last_seen_at,
                }
            };
            self.send_event(event, None).await?;
        }
        self.send_state(false, &online).await
    }

    pub(super) async fn live(&mut self, event: HubEvent) -> Step {
        match event {
            HubEvent::Created {
                notification,
                unread,
                by_category,
                version,
                replaced,
            } => {
                if !self.next_in_line(version) {
                    return self.resync_if_ahead(version).await;
                }
                self.version = version;
                self.last_seq = self.last_seq.max(notification.seq);
                self.last_id = Some(notification.id.clone());
                let count = UnreadCount {
                    unread,
                    by_category,
                    version,
                };
                // Past its expiry before it got here: never delivered, but
                // the count (which still has it until the sweep) goes on.
                let event = if notification.expired(notify_store::now_millis()) {
                    Event::Updated {
                        ids: vec![notification.id.clone()],
                        update: Update {
                            expired: Some(true),
                            ..Update::default()
                        },
                        updated_at: notification.updated_at,
                    }
                } else {
                    Event::Notification(notification.clone())
                };
                if replaced.is_empty() {
                    return self.send_event(event, Some(count)).await;
                }
                // The new one first (a reader can put it in the old one's
                // place, which `replaces` names), then the ones it replaced
                // leave, with the count.
                self.send_event(event, None).await?;
                let gone = Event::Updated {
                    ids: replaced.to_vec(),
                    update: Update {
                        replaced_by: Some(notification.id.clone()),
                        ..Update::default()
                    },
                    updated_at: notification.updated_at,
                };
                self.send_event(gone, Some(count)).await
            }
            HubEvent::Updated {
                ids,
                update,
                updated_at,
                unread,
                by_category,
                version,
            } => {
                if !self.next_in_line(version) {
                    return self.resync_if_ahead(version).await;
                }
                self.version = version;
                // A change that moved no count leaves the categories as the
                // last count had them, if that was the version before.
                let by_category = by_category.or_else(|| {
                    self.counted
                        .as_ref()
                        .filter(|c| c.version == version - 1)
                        .map(|c| c.by_category.clone())
                });
                let count = by_category.map(|by_category| UnreadCount {
                    unread,
                    by_category,
                    version,
                });
                // One message of a mark of many stays small: the ids go in
                // parts, the count on the last.
                let parts: Vec<&[String]> = ids.chunks(IDS_PER_UPDATE).collect();
                let last = parts.len().saturating_sub(1);
                for (n, part) in parts.into_iter().enumerate() {
                    let updated = Event::Updated {
                        ids: part.to_vec(),
                        update: update.clone(),
                        updated_at,
                    };
                    let count = if n == last { count.clone() } else { None };
                    self.send_event(updated, count).await?;
                }
                Ok(())
            }
            HubEvent::PeerOnline { user } => {
                if !self.peers.change(user, true) {
                    return Ok(());
                }
                self.send_event(Event::PeerOnline(user), None).await
            }
            HubEvent::PeerOffline { user, last_seen_at } => {
                if !self.peers.change(user, false) {
                    return Ok(());
                }
                let event = Event::PeerOffline {
                    user,
                    last_seen_at: Some(last_seen_at),
                };
                self.send_event(event, None).await
            }
            HubEvent::HighWater { version } => self.resync_if_ahead(version).await,
        }
    }

    fn next_in_line(&self, version: i64) -> bool {
        version == self.version + 1
    }

    /// A change past the next one means some were missed: read them back.
    /// One at or below the last passed on was already sent.
    async fn resync_if_ahead(&mut self, version: i64) -> Step {
        if version <= self.version {
            return Ok(());
        }
        metrics::counter!("notify_stream_gap_reads_total").increment(1);
        self.resync().await
    }

    async fn send_state(&mut self, reset: bool, online: &[User]) -> Step {
        if !self.request.sync {
            return Ok(());
        }
        let user = self.user();
        let now = self.store().unread_counts(user).await?;
        if self.last_id.is_none() && self.last_seq > 0 {
            self.last_id = self.store().id_at(user, self.last_seq).await?;
        }
        let state = StreamState {
            epoch: self.store().epoch().to_owned(),
            last_seq: self.last_seq,
            last_id: self.last_id.clone(),
            version: self.version,
            online_peers: online.to_vec(),
            reset,
        };
        // The count as it is now; its version may be ahead of the changes
        // passed on when one is still on its way, which orders them right.
        let count = UnreadCount {
            unread: now.unread,
            by_category: Arc::new(now.by_category),
            version: now.version,
        };
        self.send_event(Event::State(state), Some(count)).await
    }

    /// Queues a catch-up event behind the one held back.
    async fn hold(&mut self, event: Event) -> Step {
        let event = StreamEvent { event, count: None };
        if let Some(previous) = self.held.replace(event) {
            self.send(previous).await?;
        }
        Ok(())
    }

    /// A change read back, as the row is now: merged into the held event
    /// when it says the same (fields and time), as one mark's rows do.
    async fn hold_update(&mut self, notification: &Notification) -> Step {
        let now = Update {
            status: Some(notification.status),
            archived: Some(notification.archived_at.is_some()),
            expired: notification
                .expired(notify_store::now_millis())
                .then_some(true),
            replaced_by: notification.replaced_by.clone(),
            action_taken: notification.action_taken.clone(),
        };
        if let Some(StreamEvent {
            event:
                Event::Updated {
                    ids,
                    update,
                    updated_at,
                },
            ..
        }) = &mut self.held
            && *update == now
            && *updated_at == notification.updated_at
            && ids.len() < IDS_PER_UPDATE
        {
            ids.push(notification.id.clone());
            return Ok(());
        }
        let update = Event::Updated {
            ids: vec![notification.id.clone()],
            update: now,
            updated_at: notification.updated_at,
        };
        self.hold(update).await
    }

    async fn send_event(&mut self, event: Event, count: Option<UnreadCount>) -> Step {
        if let Some(count) = &count {
            self.counted = Some(count.clone());
        }
        self.send(StreamEvent { event, count }).await
    }

    async fn send(&self, event: StreamEvent) -> Step {
        self.out.send(event).await
    }
}

/// Whether a row read back in a catch-up changed after it was created (a
/// status, an archive, or one undone since): a row only ever created is the
/// reader's already, as it was.
fn changed_since_created(notification: &Notification) -> bool {
    notification.status != Status::Sent
        || notification.archived_at.is_some()
        || notification.replaced_by.is_some()
        || notification.action_taken.is_some()
        || notification.updated_at != notification.created_at
}

/// The stream's catch-up, gap and resync logic against a real SQLite store
/// in a temporary directory, in process: a gate between the store and the
/// hub drops chosen changes, as a full queue or a lost database notice would.
#[cfg(test)]
pub(super) mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use notify_store::{Change, ChangeSink, Channel, NewNotification, SqliteOptions, SqliteStore};
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::core::hub::Hub;
    use crate::core::presence::Presence;

    /// Passes changes to the hub, except the next `drop` of them.
    struct Gate {
        hub: Arc<Hub>,
        drop: AtomicUsize,
    }

    impl ChangeSink for Gate {
        fn publish(&self, change: Change) {
            let dropped = self
                .drop
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if !dropped {
                self.hub.publish(change);
            }
        }
    }

    pub(in crate::core) struct Fixture {
        pub core: Arc<Notifications>,
        gate: Arc<Gate>,
        pub shutdown: CancellationToken,
        _dir: tempfile::TempDir,
    }

    pub(in crate::core) const USER: User = User {
        role: notify_store::Role::Vendor,
        id: 5,
    };

    pub(in crate::core) async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("stream.db").display());
        let (hub, presence_changes) = Hub::new();
        let hub = Arc::new(hub);
        let gate = Arc::new(Gate {
            hub: hub.clone(),
            drop: AtomicUsize::new(0),
        });
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(&url, SqliteOptions::default(), gate.clone())
                .await
                .unwrap(),
        );
        let shutdown = CancellationToken::new();
        let presence = Presence::start(
            store.clone(),
            hub.clone(),
            presence_changes,
            Duration::from_secs(15),
            shutdown.clone(),
        );
        Fixture {
            core: Arc::new(Notifications::new(store, hub, presence, shutdown.clone())),
            gate,
            shutdown,
            _dir: dir,
        }
    }

    impl Fixture {
        pub async fn create(&self) -> Arc<Notification> {
            self.create_under(None).await
        }

        /// A notification to `recipient`.
        pub async fn create_for(&self, recipient: User) -> Arc<Notification> {
            self.create_new(recipient, None).await
        }

        /// A notification under collapse key `key`.
        async fn create_keyed(&self, key: &str) -> Arc<Notification> {
            self.create_under(Some(key)).await
        }

        async fn create_under(&self, collapse_key: Option<&str>) -> Arc<Notification> {
            self.create_new(USER, collapse_key).await
        }

        async fn create_new(
            &self,
            recipient: User,
            collapse_key: Option<&str>,
        ) -> Arc<Notification> {
            let new = NewNotification {
                id: None,
                recipient,
                kind: "order".to_owned(),
                channel: Channel::InApp,
                content: "{}".to_owned(),
                priority: 0,
                idempotency_key: None,
                category: "order".to_owned(),
                expires_at: None,
                collapse_key: collapse_key.map(str::to_owned),
                actions: Vec::new(),
            };
            let created = self.core.store.create(vec![new]).await.unwrap();
            Arc::new(created.into_iter().next().unwrap().notification)
        }

        async fn read(&self, notification: &Notification) {
            let ids = vec![notification.id.clone()];
            self.core.store.mark(USER, ids, Status::Read).await.unwrap();
        }

        /// The next `n` changes never reach the hub.
        pub fn lose_next(&self, n: usize) {
            self.gate.drop.store(n, Ordering::SeqCst);
        }

        async fn open(&self, request: OpenStream) -> Reader {
            Reader(self.core.open_stream(request).await.unwrap())
        }
    }

    pub(in crate::core) fn live_only() -> OpenStream {
        OpenStream {
            user: USER,
            after_seq: None,
            after_id: None,
            after_version: None,
            epoch: None,
            presence: false,
            sync: false,
        }
    }

    struct Reader(mpsc::Receiver<Result<StreamEvent, CoreError>>);

    impl Reader {
        /// The next event; a stream that says nothing for 10 s is a failure.
        async fn next(&mut self) -> StreamEvent {
            tokio::time::timeout(Duration::from_secs(10), self.0.recv())
                .await
                .expect("the stream said nothing for 10 s")
                .expect("the stream ended")
                .expect("the stream failed")
        }

        async fn notification(&mut self) -> (i64, Option<UnreadCount>) {
            match self.next().await {
                StreamEvent {
                    event: Event::Notification(n),
                    count,
                } => (n.seq, count),
                other => panic!("expected a notification, got {other:?}"),
            }
        }
    }

    fn unread(n: i64) -> impl Fn(&Option<UnreadCount>) -> bool {
        move |count| {
            count
                .as_ref()
                .is_some_and(|c| c.unread == n && c.by_category.get("order") == Some(&n))
        }
    }

    #[tokio::test]
    async fn a_resume_replays_what_the_reader_lacks_then_goes_live() {
        let f = fixture().await;
        for _ in 0..3 {
            f.create().await;
        }
        let mut reader = f
            .open(OpenStream {
                after_seq: Some(1),
                ..live_only()
            })
            .await;
        assert_eq!(reader.notification().await, (2, None));
        let (seq, count) = reader.notification().await;
        assert_eq!(seq, 3);
        assert!(
            unread(3)(&count),
            "the count rides on the last replayed: {count:?}"
        );
        f.create().await;
        let (seq, count) = reader.notification().await;
        assert_eq!(seq, 4, "live after the replay, nothing twice");
        assert!(unread(4)(&count), "{count:?}");
    }

    #[tokio::test]
    async fn a_missed_create_is_read_back_when_the_next_one_arrives() {
        let f = fixture().await;
        let mut reader = f.open(live_only()).await;
        f.lose_next(1);
        f.create().await;
        f.create().await;
        // The count rides on the first too when the stream's opening
        // catch-up read only it; the last always has it.
        assert_eq!(reader.notification().await.0, 1, "the lost one first");
        let (seq, count) = reader.notification().await;
        assert_eq!(seq, 2);
        assert!(unread(2)(&count), "{count:?}");
    }

    #[tokio::test]
    async fn a_lost_last_change_is_read_back_when_its_high_water_mark_arrives() {
        let f = fixture().await;
        let mut reader = f.open(live_only()).await;
        f.lose_next(1);
        let lost = f.create().await;
        // No later change shows the gap; the bus's mark does. One at the
        // stream's own version changes nothing.
        f.core.hub.send(USER, HubEvent::HighWater { version: 0 });
        f.core.hub.send(
            USER,
            HubEvent::HighWater {
                version: lost.version,
            },
        );
        let (seq, count) = reader.notification().await;
        assert_eq!(seq, lost.seq, "the lost one, read back");
        assert!(unread(1)(&count), "{count:?}");
        f.core.hub.send(
            USER,
            HubEvent::HighWater {
                version: lost.version,
            },
        );
        f.create().await;
        assert_eq!(reader.notification().await.0, 2, "nothing twice");
    }

    #[tokio::test]
    async fn a_missed_read_is_read_back_with_the_count_as_it_is_now() {
        let f = fixture().await;
        let mut reader = f.open(live_only()).await;
        let first = f.create().await;
        reader.notification().await;
        f.lose_next(1);
        f.read(&first).await;
        f.create().await;
        match reader.next().await {
            StreamEvent {
                event: Event::Updated { ids, update, .. },
                count: None,
            } => assert_eq!(
                (ids, update.status, update.archived),
                (vec![first.id.clone()], Some(Status::Read), Some(false))
            ),
            other => panic!("expected the lost read, got {other:?}"),
        }
        let (seq, count) = reader.notification().await;
        assert_eq!(seq, 2);
        assert!(unread(1)(&count), "one read, one not: {count:?}");
    }

    #[tokio::test]
    async fn a_collapse_sends_the_new_one_then_the_old_one_leaving_with_the_count() {
        let f = fixture().await;
        let mut reader = f.open(live_only()).await;
        let placed = f.create_keyed("order-7").await;
        reader.notification().await;
        let packed = f.create_keyed("order-7").await;
        assert_eq!(reader.notification().await, (2, None), "no count yet");
        match reader.next().await {
            StreamEvent {
                event: Event::Updated { ids, update, .. },
                count,
            } => {
                assert_eq!(ids, vec![placed.id.clone()]);
                assert_eq!(update.replaced_by.as_deref(), Some(packed.id.as_str()));
                assert!(unread(1)(&count), "the count did not grow: {count:?}");
            }
            other => panic!("expected the replaced one, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_missed_collapse_is_read_back_and_the_replaced_one_never_replayed() {
        let f = fixture().await;
        let mut reader = f.open(live_only()).await;
        let placed = f.create_keyed("order-7").await;
        reader.notification().await;
        // The reader misses packed (which replaces placed) and shipped
        // (which replaces packed); the next create brings them back.
        f.lose_next(2);
        let packed = f.create_keyed("order-7").await;
        let shipped = f.create_keyed("order-7").await;
        f.create().await;
        match reader.next().await {
            StreamEvent {
                event: Event::Updated { ids, update, .. },
                count: None,
            } => {
                assert_eq!(ids, vec![placed.id.clone()]);
                assert_eq!(update.replaced_by.as_deref(), Some(packed.id.as_str()));
            }
            other => panic!("expected placed replaced, got {other:?}"),
        }
        assert_eq!(
            reader.notification().await.0,
            shipped.seq,
            "packed, replaced since, is never replayed"
        );
        let (seq, count) = reader.notification().await;
        assert_eq!(seq, 4);
        assert!(unread(2)(&count), "shipped and the last: {count:?}");
    }

    #[tokio::test]
    async fn a_lagging_stream_catches_up_from_the_store() {
        let f = fixture().await;
        let mut reader = f.open(live_only()).await;
        f.lose_next(1);
        f.create().await;
        // What the hub does when a stream's queue overflows.
        f.core.hub.resync_all();
        let (seq, count) = reader.notification().await;
        assert_eq!(seq, 1);
        assert!(unread(1)(&count), "{count:?}");
    }

    async fn state_after(f: &Fixture, request: OpenStream) -> StreamState {
        let mut reader = f.open(request).await;
        match reader.next().await.event {
            Event::State(state) => state,
            other => panic!("expected the state first, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_resume_that_does_not_fit_the_database_resets() {
        let f = fixture().await;
        let held = f.create().await;
        let synced = |after_seq, after_id: Option<&str>, epoch: Option<&str>| OpenStream {
            after_seq: Some(after_seq),
            after_id: after_id.map(str::to_owned),
            epoch: epoch.map(str::to_owned),
            sync: true,
            ..live_only()
        };
        let epoch = f.core.store.epoch().to_owned();
        let fits = state_after(&f, synced(1, Some(&held.id), Some(&epoch))).await;
        assert!(!fits.reset, "{fits:?}");
        assert_eq!((fits.last_seq, fits.last_id), (1, Some(held.id.clone())));
        for (why, request) in [
            ("another epoch", synced(1, None, Some("another"))),
            ("a seq past the database", synced(9, None, None)),
            (
                "another id at the seq",
                synced(1, Some("0123456789abcdef01234567"), None),
            ),
        ] {
            let state = state_after(&f, request).await;
            assert!(state.reset, "{why}: {state:?}");
            assert_eq!(state.last_seq, 1, "{why}: positioned at the database's");
        }
    }

    #[tokio::test]
    async fn streams_end_when_the_core_shuts_down() {
        let f = fixture().await;
        let mut reader = f.open(live_only()).await;
        f.shutdown.cancel();
        let end = tokio::time::timeout(Duration::from_secs(10), reader.0.recv()).await;
        assert!(matches!(end, Ok(None)), "{end:?}");
        assert!(f.core.open_stream(live_only()).await.is_err());
    }
}
