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

use notify_store::{ChangePosition, Notification, PeerView, Status, Store, User, UserState};
use tokio::sync::mpsc;

use super::Core;
use super::hub::{HubEvent, Subscription};
use super::service::store_status;
use crate::contract::convert;
use crate::contract::proto::{self, user_event::Event};

/// Notifications read from the store per query while catching up.
const CATCH_UP_BATCH: u32 = 500;
/// Events buffered towards the client before the stream waits for it.
const OUTBOUND_QUEUE: usize = 64;
/// Ids in one `notificationUpdated` event of a catch-up.
const IDS_PER_UPDATE: usize = 1000;
/// How long a live stream waits for the database to come back before it
/// gives up with UNAVAILABLE.
const STORE_PATIENCE: Duration = Duration::from_secs(30);

type Outbound = mpsc::Sender<Result<proto::UserEvent, tonic::Status>>;

/// A validated `StreamUserEvents` request.
#[derive(Debug, Clone)]
pub struct Request {
    /// Whose events.
    pub user: User,
    /// Replay notifications after this seq; `None`: live only.
    pub after_seq: Option<i64>,
    /// The id the reader holds at `after_seq`.
    pub after_id: Option<String>,
    /// The reader has every change up to this version.
    pub after_version: Option<i64>,
    /// The epoch the reader's positions belong to.
    pub epoch: Option<String>,
    /// The stream counts as a connection of the user.
    pub presence: bool,
    /// Send `state` events.
    pub sync: bool,
}

/// Starts the stream's task and returns what the gRPC layer sends out.
pub async fn open(
    core: Arc<Core>,
    request: Request,
) -> Result<mpsc::Receiver<Result<proto::UserEvent, tonic::Status>>, tonic::Status> {
    // The counters before subscribing: whatever commits after this read is
    // either queued by the hub or read back by the first catch-up, so a
    // live-only stream misses nothing committed once it has answered.
    let start = core
        .store
        .user_state(request.user)
        .await
        .map_err(store_status)?;
    let subscription = core.hub.subscribe(request.user);
    let (out, receiver) = mpsc::channel(OUTBOUND_QUEUE);
    tokio::spawn(async move {
        metrics::gauge!("notify_open_streams").increment(1.0);
        let user = request.user;
        let presence = request.presence;
        if presence {
            core.presence.connect(user);
        }
        let outcome = Stream::new(&core, request, &out)
            .run(start, subscription)
            .await;
        if presence {
            core.presence.disconnect(user);
        }
        metrics::gauge!("notify_open_streams").decrement(1.0);
        match outcome {
            Ok(()) => tracing::debug!(%user, "stream ended"),
            Err(status) => {
                tracing::warn!(%user, error = %status.message(), "stream ended by an error");
                let _ = out.send(Err(status)).await;
            }
        }
    });
    Ok(receiver)
}

/// Why the stream stopped early: the client left (not an error) or the store failed.
enum Stop {
    ClientGone,
    Failed(tonic::Status),
}

type Step = Result<(), Stop>;

fn failed(error: notify_store::StoreError) -> Stop {
    Stop::Failed(store_status(error))
}

/// One stream and what its reader has been told.
struct Stream<'a> {
    core: &'a Core,
    request: Request,
    out: &'a Outbound,
    /// The highest seq the reader has, and that notification's id if known.
    last_seq: i64,
    last_id: Option<String>,
    /// Every change up to this version has been passed on.
    version: i64,
    peers: PeerView,
    /// The last event of a catch-up, held back so the count can ride on it.
    held: Option<proto::UserEvent>,
}

impl<'a> Stream<'a> {
    fn new(core: &'a Core, request: Request, out: &'a Outbound) -> Stream<'a> {
        Stream {
            core,
            request,
            out,
            last_seq: 0,
            last_id: None,
            version: 0,
            peers: PeerView::default(),
            held: None,
        }
    }

    fn store(&self) -> &'a dyn Store {
        self.core.store.as_ref()
    }

    fn user(&self) -> User {
        self.request.user
    }

    async fn run(
        mut self,
        start: UserState,
        mut subscription: Subscription,
    ) -> Result<(), tonic::Status> {
        let result = async {
            let reset = !self.resume_fits(&start).await?;
            let from = match (reset, self.request.after_seq, self.request.after_version) {
                (false, Some(seq), Some(version)) => (seq, version),
                (false, Some(seq), None) => (seq, start.version),
                _ => (start.last_seq, start.version),
            };
            (self.last_seq, self.version) = from;
            let online = self
                .store()
                .online_peers(self.user())
                .await
                .map_err(failed)?;
            self.peers.start(&online);
            self.catch_up().await?;
            self.send_state(reset, &online).await?;
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
            Err(Stop::Failed(status)) => Err(status),
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
            let held = self.store().id_at(self.user(), seq).await.map_err(failed)?;
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
        let state = loop {
            let page = self
                .store()
                .changed_after(self.user(), after, CATCH_UP_BATCH)
                .await
                .map_err(failed)?;
            let full = page.items.len() == CATCH_UP_BATCH as usize;
            for notification in page.items {
                after = ChangePosition {
                    version: notification.version,
                    seq: notification.seq,
                };
                // Those past `known` are new to the reader: sent whole below.
                if notification.seq <= known && notification.status != Status::Sent {
                    self.hold_update(&notification).await?;
                }
            }
            if !full {
                break page.state;
            }
        };
        'replay: while self.last_seq < state.last_seq {
            let batch = self
                .store()
                .after_seq(self.user(), self.last_seq, CATCH_UP_BATCH)
                .await
                .map_err(failed)?;
            let full = batch.len() == CATCH_UP_BATCH as usize;
            for notification in batch {
                // Later ones come live, with versions past the snapshot's.
                if notification.seq > state.last_seq {
                    break 'replay;
                }
                self.last_seq = notification.seq;
                self.last_id = Some(notification.id.clone());
                let event = Event::Notification(convert::notification(&notification));
                self.hold(event).await?;
            }
            if !full {
                break;
            }
        }
        self.version = self.version.max(state.version);
        if let Some(mut last) = self.held.take() {
            last.unread_count = Some(state.unread);
            last.version = Some(state.version);
            self.send(last).await?;
        }
        Ok(())
    }

    /// [`Self::catch_up`] after events were missed, riding out a short
    /// database outage (a restart, a failover) instead of ending the stream;
    /// then the peers' presence as it is now, and the state.
    async fn resync(&mut self) -> Step {
        let started = Instant::now();
        let mut delay = Duration::from_millis(100);
        let online = loop {
            let attempt = async {
                self.catch_up().await?;
                self.store().online_peers(self.user()).await.map_err(failed)
            };
            match attempt.await {
                Err(Stop::Failed(status))
                    if status.code() == tonic::Code::Unavailable
                        && started.elapsed() < STORE_PATIENCE =>
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
                Event::UserOnline(convert::presence_change(peer, None))
            } else {
                let seen = self.store().last_seen(peer).await.map_err(failed)?;
                Event::UserOffline(convert::presence_change(peer, seen))
            };
            self.send_event(event, None).await?;
        }
        self.send_state(false, &online).await
    }

    async fn live(&mut self, event: HubEvent) -> Step {
        match event {
            HubEvent::Created {
                notification,
                unread,
                version,
            } => {
                if !self.next_in_line(version) {
                    return self.resync_if_ahead(version).await;
                }
                self.version = version;
                self.last_seq = self.last_seq.max(notification.seq);
                self.last_id = Some(notification.id.clone());
                let event = Event::Notification(convert::notification(&notification));
                self.send_counted(event, unread, version).await
            }
            HubEvent::Updated {
                ids,
                status,
                updated_at,
                unread,
                version,
            } => {
                if !self.next_in_line(version) {
                    return self.resync_if_ahead(version).await;
                }
                self.version = version;
                let updated = proto::NotificationsUpdated {
                    ids: ids.to_vec(),
                    status: status.code() as i32,
                    updated_at: notify_store::format_millis(updated_at),
                };
                self.send_counted(Event::NotificationUpdated(updated), unread, version)
                    .await
            }
            HubEvent::PeerOnline { user } => {
                if !self.peers.change(user, true) {
                    return Ok(());
                }
                let event = Event::UserOnline(convert::presence_change(user, None));
                self.send_event(event, None).await
            }
            HubEvent::PeerOffline { user, last_seen_at } => {
                if !self.peers.change(user, false) {
                    return Ok(());
                }
                let event = Event::UserOffline(convert::presence_change(user, Some(last_seen_at)));
                self.send_event(event, None).await
            }
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
        let now = self.store().user_state(user).await.map_err(failed)?;
        if self.last_id.is_none() && self.last_seq > 0 {
            self.last_id = self
                .store()
                .id_at(user, self.last_seq)
                .await
                .map_err(failed)?;
        }
        let state = proto::StreamState {
            epoch: self.store().epoch().to_owned(),
            last_seq: self.last_seq,
            last_id: self.last_id.clone().unwrap_or_default(),
            version: self.version,
            online_peers: online
                .iter()
                .map(|peer| proto::Recipient {
                    vendor_id: peer.vendor_id(),
                    customer_id: peer.customer_id(),
                })
                .collect(),
            reset,
        };
        // The count as it is now; its version may be ahead of the changes
        // passed on when one is still on its way, which orders them right.
        self.send_counted(Event::State(state), now.unread, now.version)
            .await
    }

    /// Queues a catch-up event behind the one held back.
    async fn hold(&mut self, event: Event) -> Step {
        let event = proto::UserEvent {
            event: Some(event),
            unread_count: None,
            version: None,
        };
        if let Some(previous) = self.held.replace(event) {
            self.send(previous).await?;
        }
        Ok(())
    }

    /// A status change read back: merged into the held event when it says
    /// the same (status and time), as one mark's notifications do.
    async fn hold_update(&mut self, notification: &Notification) -> Step {
        let status = notification.status.code() as i32;
        let updated_at = notify_store::format_millis(notification.updated_at);
        if let Some(proto::UserEvent {
            event: Some(Event::NotificationUpdated(held)),
            ..
        }) = &mut self.held
            && held.status == status
            && held.updated_at == updated_at
            && held.ids.len() < IDS_PER_UPDATE
        {
            held.ids.push(notification.id.clone());
            return Ok(());
        }
        let update = proto::NotificationsUpdated {
            ids: vec![notification.id.clone()],
            status,
            updated_at,
        };
        self.hold(Event::NotificationUpdated(update)).await
    }

    async fn send_counted(&mut self, event: Event, unread: i64, version: i64) -> Step {
        self.send_event(event, Some((unread, version))).await
    }

    async fn send_event(&mut self, event: Event, count: Option<(i64, i64)>) -> Step {
        self.send(proto::UserEvent {
            event: Some(event),
            unread_count: count.map(|c| c.0),
            version: count.map(|c| c.1),
        })
        .await
    }

    async fn send(&self, event: proto::UserEvent) -> Step {
        self.out.send(Ok(event)).await.map_err(|_| Stop::ClientGone)
    }
}
