//! One feed per user with sockets on this bridge: a task that owns the
//! user's single stream from the core (a follow with presence on its
//! connection's FollowUsers call, see `link`) and every socket of that user
//! here, and passes the stream's events to them.
//!
//! A socket goes through a small state machine, all of it kept by the
//! feed's task (one owner: no interleaving to reason about):
//!
//! ```text
//!  admitted ──Join──▶ awaiting inbox ──first page sent──▶ live ──Leave──▶ gone
//!     │                 │        ▲                          │
//!     │                 │        └───── the store reset ────┘
//!     │                 └──────────────────Leave──────────────────────▶ gone
//!     └── handshake never finished: released when dropped ─────────────▶ gone
//! ```
//!
//! - *Admitted*: the connect middleware counted the socket against its
//!   user's limit (`admission`, under one lock, so handshakes racing
//!   each other cannot pass it together). The `Admission` lives in the
//!   socket; a socket whose handshake never completes gives its place back
//!   when it is dropped.
//! - *Join* (the connect handler) and *Leave* (the disconnect handler, or
//!   the connect handler itself for a client already gone) reach the feed
//!   through its mailbox in that order, so no socket stays behind and none
//!   joins after leaving.
//! - *Awaiting inbox*: the socket already gets live notifications; once the
//!   stream is open its first page of the inbox is read (and read again
//!   after a failure, with backoff) and sent, then its unread count.
//! - *Live*: it gets everything, and an unread count only when it is newer
//!   than the last it got (counts carry the version they were read at), so
//!   an older count never replaces a newer one.
//!
//! The stream opens when the first socket joins and closes when the last
//! leaves, so the core counts the user online exactly while a socket is
//! connected. After an outage it resumes where it stopped (epoch, seq,
//! version), so nothing committed in between is lost; sockets get
//! `appError` 503 once per outage. A stream whose resume does not fit the
//! database (restored from a backup) resets: every socket gets its inbox
//! again. A socket is disconnected, with `appError` 401, when its token
//! expires.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use notify_store::{ListQuery, PeerView, User};
use socketioxide::extract::SocketRef;
use socketioxide::socket::Sid;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Bridge;
use super::auth::Identity;
use super::core_client::{CALL_TIMEOUT, unary};
use super::emit::{deliver, emit, send_page};
use super::paging::{OfflinePage, delivered_live, offline_page, remember_page};
use super::payload::{
    AppError, Envelope, NotificationJson, NotificationsUpdatedJson, PresenceEnvelope, PresenceJson,
    UnreadCount,
};
use crate::contract::proto::{self, user_event::Event};
use crate::contract::validate;

/// What a feed hears from the socket handlers.
pub(super) enum Message {
    /// The socket's connect handler ran: it gets its inbox and what follows.
    Join(SocketRef, Identity),
    /// The socket is gone.
    Leave(Sid),
    /// An event of the feed's follow with this id (see `link`).
    Core(u64, Box<proto::UserEvent>),
    /// The follow with this id ended: the core ended it, or the call failed.
    Ended(u64, tonic::Status),
}

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Up to ±25 % so reconnecting feeds do not move in lockstep.
fn jitter(base: Duration) -> Duration {
    let factor = 0.75 + rand::random::<f64>() * 0.5;
    base.mul_f64(factor)
}

fn doubled(backoff: Duration) -> Duration {
    (backoff * 2).min(BACKOFF_MAX)
}

/// An unread count (in all and by category) and the change version it is
/// exact at.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Count {
    unread: i64,
    by_category: Arc<BTreeMap<String, i64>>,
    version: i64,
}

impl Count {
    fn of(event: &proto::UserEvent) -> Option<Count> {
        Some(Count {
            unread: event.unread_count?,
            by_category: Arc::new(sorted(&event.unread_by_category)),
            version: event.version?,
        })
    }

    /// Whether this count may replace `known`: only a newer one may.
    fn replaces(&self, known: Option<&Count>) -> bool {
        known.is_none_or(|known| self.version > known.version)
    }

    /// Whether it says something other than `known` does.
    fn differs(&self, known: Option<&Count>) -> bool {
        known.is_none_or(|known| {
            (known.unread, &known.by_category) != (self.unread, &self.by_category)
        })
    }
}

fn sorted(counts: &HashMap<String, i64>) -> BTreeMap<String, i64> {
    counts.iter().map(|(k, v)| (k.clone(), *v)).collect()
}

/// One socket of the feed's user.
struct Member {
    socket: SocketRef,
    /// Its token's expiry.
    expires_at: Instant,
    /// Its first page of the inbox is still to come.
    awaiting_inbox: bool,
    /// The last count it was sent.
    count: Option<Count>,
    /// It was told the core is unavailable, since things last worked.
    told_unavailable: bool,
    /// Its token expired; it is being disconnected.
    expired: bool,
}

impl Member {
    /// Sends `count` if it is newer than the last one sent and says something new.
    fn offer(&mut self, count: &Count) {
        if !count.replaces(self.count.as_ref()) {
            return;
        }
        let changed = count.differs(self.count.as_ref());
        self.count = Some(count.clone());
        if changed {
            emit(
                &self.socket,
                "unreadCount",
                &Envelope::ok(UnreadCount {
                    count: count.unread,
                    by_category: (*count.by_category).clone(),
                }),
            );
        }
    }

    fn unavailable(&mut self, error: &AppError) {
        if !self.told_unavailable {
            self.told_unavailable = true;
            emit(&self.socket, "appError", error);
        }
    }
}

/// Where the stream stopped, to resume from.
#[derive(Clone, Debug)]
struct Resume {
    epoch: String,
    last_seq: i64,
    last_id: String,
    version: i64,
}

/// The feed's stream to the core: a follow on its connection's call.
enum Link {
    /// No socket: no stream.
    Idle,
    /// Down; the next attempt at this time.
    Waiting(Instant),
    /// Following as `id`; `synced` once its first state arrived (the core
    /// caught it up), which must happen by `deadline`.
    Following {
        id: u64,
        synced: bool,
        deadline: Instant,
    },
}

/// The first page of the unread inbox and the counts by category, read
/// side by side.
type Reading = Pin<Box<dyn Future<Output = Result<(OfflinePage, Count), tonic::Status>> + Send>>;

/// An inbox read in flight, and the sockets it is for.
struct InboxRead {
    serving: Vec<Sid>,
    reading: Reading,
}

/// The task's state.
pub(super) struct Feed {
    bridge: Arc<Bridge>,
    user: User,
    /// The feed's own mailbox, for its follows' events (weakly held by the
    /// link, so the feed still ends when its sockets' senders are gone).
    mailbox: mpsc::WeakUnboundedSender<Message>,
    members: Vec<Member>,
    link: Link,
    backoff: Duration,
    /// The sockets were told the core is unavailable.
    outage: bool,
    resume: Option<Resume>,
    /// The newest count heard.
    unread: Option<Count>,
    peers: PeerView,
    peers_known: bool,
    inbox: Option<InboxRead>,
    inbox_retry: Option<Instant>,
    inbox_backoff: Duration,
}

impl Feed {
    /// Starts the feed's task; it runs until its mailbox closes (the user's
    /// last admitted socket left) or the bridge shuts down.
    pub(super) fn start(bridge: Arc<Bridge>, user: User) -> mpsc::UnboundedSender<Message> {
        let (mailbox, messages) = mpsc::unbounded_channel();
        let feed = Feed {
            bridge,
            user,
            mailbox: mailbox.downgrade(),
            members: Vec::new(),
            link: Link::Idle,
            backoff: BACKOFF_START,
            outage: false,
            resume: None,
            unread: None,
            peers: PeerView::default(),
            peers_known: false,
            inbox: None,
            inbox_retry: None,
            inbox_backoff: BACKOFF_START,
        };
        tokio::spawn(feed.run(messages));
        mailbox
    }

    async fn run(mut self, mut messages: mpsc::UnboundedReceiver<Message>) {
        let shutdown = self.bridge.shutdown.clone();
        loop {
            self.advance();
            let wake = self.next_wake();
            tokio::select! {
                message = messages.recv() => match message {
                    Some(Message::Join(socket, identity)) => self.join(socket, identity),
                    Some(Message::Leave(sid)) => self.leave(sid),
                    Some(Message::Core(id, event)) => self.on_event(id, *event),
                    Some(Message::Ended(id, status)) => self.ended(id, status),
                    None => break,
                },
                _ = shutdown.cancelled() => break,
                read = inbox_step(&mut self.inbox) => self.inbox_read(read),
                _ = tokio::time::sleep_until(wake) => {
                    self.expire_tokens();
                    self.check_opening();
                }
            }
        }
        metrics::gauge!("notify_bridge_sockets").decrement(self.members.len() as f64);
        if !matches!(self.link, Link::Idle) {
            self.unfollow();
            metrics::gauge!("notify_bridge_users").decrement(1.0);
        }
    }

    /// Starts what is due: the stream while sockets are here, an inbox read
    /// while some await theirs.
    fn advance(&mut self) {
        let now = Instant::now();
        if self.members.is_empty() {
            if !matches!(self.link, Link::Idle) {
                self.go_idle();
            }
            return;
        }
        match self.link {
            Link::Idle => self.follow(),
            Link::Waiting(at) if at <= now => self.follow(),
            _ => {}
        }
        let synced = matches!(self.link, Link::Following { synced: true, .. });
        if synced
            && self.inbox.is_none()
            && self.inbox_retry.is_none_or(|at| at <= now)
            && self.members.iter().any(|m| m.awaiting_inbox)
        {
            self.inbox = Some(self.read_inbox());
        }
    }

    /// The last socket left: the stream closes (the core counts the user
    /// offline), and what the sockets were told is forgotten with them.
    fn go_idle(&mut self) {
        self.unfollow();
        self.link = Link::Idle;
        self.backoff = BACKOFF_START;
        self.outage = false;
        self.resume = None;
        self.unread = None;
        self.peers = PeerView::default();
        self.peers_known = false;
        self.inbox = None;
        self.inbox_retry = None;
        self.inbox_backoff = BACKOFF_START;
        metrics::gauge!("notify_bridge_users").decrement(1.0);
    }

    fn next_wake(&self) -> Instant {
        let mut wake = Instant::now() + Duration::from_secs(3600);
        match self.link {
            Link::Waiting(at)
            | Link::Following {
                synced: false,
                deadline: at,
                ..
            } => wake = wake.min(at),
            _ => {}
        }
        if let Some(at) = self.inbox_retry {
            wake = wake.min(at);
        }
        for member in self.members.iter().filter(|m| !m.expired) {
            wake = wake.min(member.expires_at);
        }
        wake
    }

    fn join(&mut self, socket: SocketRef, identity: Identity) {
        if self.members.iter().any(|m| m.socket.id == socket.id) {
            return;
        }
        let left = identity
            .expires_at
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        let mut member = Member {
            socket,
            expires_at: Instant::now() + left,
            awaiting_inbox: true,
            count: None,
            told_unavailable: false,
            expired: false,
        };
        if self.outage {
            member.unavailable(&AppError::core_unavailable());
        }
        self.members.push(member);
        metrics::gauge!("notify_bridge_sockets").increment(1.0);
    }

    fn leave(&mut self, sid: Sid) {
        let before = self.members.len();
        self.members.retain(|m| m.socket.id != sid);
        let gone = before - self.members.len();
        metrics::gauge!("notify_bridge_sockets").decrement(gone as f64);
    }

    /// Sockets whose token expired get `appError` 401 and are disconnected;
    /// they leave through their disconnect handler.
    fn expire_tokens(&mut self) {
        let now = Instant::now();
        for member in self
            .members
            .iter_mut()
            .filter(|m| !m.expired && m.expires_at <= now)
        {
            member.expired = true;
            tracing::info!(sid = %member.socket.id, user = %self.user, "token expired; disconnecting the socket");
            emit(
                &member.socket,
                "appError",
                &AppError::unauthenticated("token expired"),
            );
            let _ = member.socket.clone().disconnect();
        }
    }

    /// Follows the user on the core (its events come through the mailbox).
    fn follow(&mut self) {
        let Some(mailbox) = self.mailbox.upgrade() else {
            // The feed is ending: its sockets' senders are gone.
            return;
        };
        let resume = self.resume.clone();
        let request = proto::StreamUserEventsRequest {
            vendor_id: self.user.vendor_id(),
            customer_id: self.user.customer_id(),
            // First time: live from now (sockets read their inbox once the
            // stream is open). After an outage: where it stopped.
            after_seq: resume.as_ref().map(|r| r.last_seq),
            after_id: resume
                .as_ref()
                .map(|r| r.last_id.clone())
                .unwrap_or_default(),
            after_version: resume.as_ref().map(|r| r.version),
            epoch: resume.map(|r| r.epoch).unwrap_or_default(),
            presence: true,
            sync: true,
        };
        let id = self.bridge.links.follow(self.user, request, &mailbox);
        if matches!(self.link, Link::Idle) {
            metrics::gauge!("notify_bridge_users").increment(1.0);
        }
        self.link = Link::Following {
            id,
            synced: false,
            deadline: Instant::now() + CALL_TIMEOUT,
        };
    }

    /// Stops the follow, if there is one.
    fn unfollow(&mut self) {
        if let Link::Following { id, .. } = self.link {
            self.bridge.links.unfollow(self.user, id);
        }
    }

    /// A follow the core has not caught up by its deadline is given up.
    fn check_opening(&mut self) {
        if let Link::Following {
            synced: false,
            deadline,
            ..
        } = self.link
            && deadline <= Instant::now()
        {
            self.unfollow();
            self.link_lost(tonic::Status::unavailable(
                "the core did not answer in time",
            ));
        }
    }

    fn current(&self, id: u64) -> bool {
        matches!(self.link, Link::Following { id: current, .. } if current == id)
    }

    fn on_event(&mut self, id: u64, event: proto::UserEvent) {
        if self.current(id) {
            self.pass_on(event);
        }
    }

    fn ended(&mut self, id: u64, status: tonic::Status) {
        if self.current(id) {
            self.link_lost(status);
        }
    }

    /// The stream failed: retry with backoff, and tell the sockets once.
    fn link_lost(&mut self, status: tonic::Status) {
        self.link = Link::Waiting(Instant::now() + jitter(self.backoff));
        self.backoff = doubled(self.backoff);
        if !self.outage {
            self.outage = true;
            metrics::counter!("notify_bridge_core_reconnects_total").increment(1);
            tracing::warn!(user = %self.user, error = %status.message(), "stream to the core lost; reconnecting");
        }
        let error = AppError::from(status);
        for member in &mut self.members {
            member.unavailable(&error);
        }
    }

    fn pass_on(&mut self, event: proto::UserEvent) {
        let count = Count::of(&event);
        match event.event {
            Some(Event::State(state)) => {
                self.synced(state);
                if let Some(count) = count {
                    self.offer(&count);
                }
                return;
            }
            Some(Event::Notification(notification)) => {
                if let Some(resume) = &mut self.resume
                    && notification.seq > resume.last_seq
                {
                    resume.last_seq = notification.seq;
                    resume.last_id = notification.id.clone();
                }
                let json = NotificationJson::from(&notification);
                for member in &self.members {
                    deliver(&self.bridge, &member.socket, self.user, &json);
                    delivered_live(&member.socket, notification.seq);
                }
            }
            Some(Event::UserOnline(peer)) => self.presence(&peer, true),
            Some(Event::UserOffline(peer)) => self.presence(&peer, false),
            Some(Event::NotificationUpdated(update)) => {
                // Every socket of the user, whichever tab or backend made
                // the change: two open tabs agree without a reload.
                let envelope = Envelope::ok(NotificationsUpdatedJson::from(update));
                for member in &self.members {
                    emit(&member.socket, "notificationUpdated", &envelope);
                }
            }
            None => {}
        }
        if let Some(count) = count {
            if let Some(resume) = &mut self.resume {
                resume.version = resume.version.max(count.version);
            }
            self.offer(&count);
        }
    }

    /// The core caught the stream up: where it stands now.
    fn synced(&mut self, state: proto::StreamState) {
        let reset = state.reset
            || self
                .resume
                .as_ref()
                .is_some_and(|resume| resume.epoch != state.epoch);
        if reset {
            // Another database than the one the sockets' seqs and counts
            // came from: each reloads its inbox.
            tracing::info!(user = %self.user, "the database was reset; sockets reload their inbox");
            self.unread = None;
            for member in &mut self.members {
                member.awaiting_inbox = true;
                member.count = None;
            }
        }
        self.resume = Some(Resume {
            epoch: state.epoch,
            last_seq: state.last_seq,
            last_id: state.last_id,
            version: state.version,
        });
        if let Link::Following { synced, .. } = &mut self.link {
            *synced = true;
        }
        self.backoff = BACKOFF_START;
        if self.outage {
            self.outage = false;
            tracing::info!(user = %self.user, "stream to the core resumed");
        }
        for member in &mut self.members {
            member.told_unavailable = false;
        }
        let online: Vec<User> = state
            .online_peers
            .iter()
            .filter_map(|peer| validate::recipient(peer.vendor_id, peer.customer_id).ok())
            .collect();
        if self.peers_known {
            for (peer, now_online) in self.peers.snapshot(&online) {
                self.announce(peer, now_online, None);
            }
        } else {
            self.peers.start(&online);
            self.peers_known = true;
        }
    }

    fn presence(&mut self, peer: &proto::PresenceChange, online: bool) {
        let Ok(user) = validate::recipient(peer.vendor_id, peer.customer_id) else {
            return;
        };
        if self.peers.change(user, online) {
            let seen = (!online).then(|| peer.last_seen_at.clone());
            self.announce(user, online, seen);
        }
    }

    fn announce(&self, peer: User, online: bool, last_seen_at: Option<String>) {
        let (event, message) = if online {
            ("userIsOnline", "User is online")
        } else {
            ("userIsOffline", "User has gone offline")
        };
        let envelope =
            PresenceEnvelope {
                error: false,
                message,
                data: PresenceJson {
                    vendor_id: peer.vendor_id(),
                    customer_id: peer.customer_id(),
                    last_seen_at: if online {
                        None
                    } else {
                        Some(last_seen_at.unwrap_or_else(|| {
                            notify_store::format_millis(notify_store::now_millis())
                        }))
                    },
                },
                status_code: 200,
            };
        for member in &self.members {
            emit(&member.socket, event, &envelope);
        }
    }

    /// A count heard from the core or a list: kept if it is the newest, and
    /// sent to the sockets past their inbox that have an older one.
    fn offer(&mut self, count: &Count) {
        if count.replaces(self.unread.as_ref()) {
            self.unread = Some(count.clone());
        }
        for member in self.members.iter_mut().filter(|m| !m.awaiting_inbox) {
            member.offer(count);
        }
    }

    fn read_inbox(&self) -> InboxRead {
        let serving = self
            .members
            .iter()
            .filter(|m| m.awaiting_inbox)
            .map(|m| m.socket.id)
            .collect();
        let user = self.user;
        let page = offline_page(
            self.bridge.core.for_user(user),
            user,
            ListQuery::inbox(),
            1,
            validate::DEFAULT_PAGE_LIMIT,
            None,
        );
        let mut client = self.bridge.core.for_user(user);
        let counts = async move {
            let counts = client
                .get_unread_counts(unary(proto::GetUnreadCountsRequest {
                    vendor_id: user.vendor_id(),
                    customer_id: user.customer_id(),
                }))
                .await?
                .into_inner();
            Ok(Count {
                unread: counts.count,
                by_category: Arc::new(sorted(&counts.by_category)),
                version: counts.version,
            })
        };
        let reading = Box::pin(async move { tokio::try_join!(page, counts) });
        InboxRead { serving, reading }
    }

    fn inbox_read(&mut self, read: Result<(OfflinePage, Count), tonic::Status>) {
        let Some(InboxRead { serving, .. }) = self.inbox.take() else {
            return;
        };
        let (page, listed) = match read {
            Ok((page, listed))
                if self
                    .resume
                    .as_ref()
                    .is_none_or(|resume| resume.epoch == page.epoch) =>
            {
                (page, listed)
            }
            Ok(_) => {
                // A list of another database than the stream's: the stream
                // resets shortly, and the inbox is read again then.
                self.retry_inbox();
                return;
            }
            Err(status) => {
                tracing::warn!(user = %self.user, error = %status.message(), "inbox not read; retrying");
                let error = AppError::from(status);
                for member in self
                    .members
                    .iter_mut()
                    .filter(|m| m.awaiting_inbox && serving.contains(&m.socket.id))
                {
                    member.unavailable(&error);
                }
                self.retry_inbox();
                return;
            }
        };
        self.inbox_retry = None;
        self.inbox_backoff = BACKOFF_START;
        if listed.replaces(self.unread.as_ref()) {
            self.unread = Some(listed.clone());
        }
        let newest = self.unread.clone().unwrap_or_else(|| listed.clone());
        for member in self
            .members
            .iter_mut()
            .filter(|m| m.awaiting_inbox && serving.contains(&m.socket.id))
        {
            member.awaiting_inbox = false;
            member.told_unavailable = false;
            send_page(
                &self.bridge,
                &member.socket,
                self.user,
                &page.envelope,
                &page.ids,
            );
            remember_page(&member.socket, page.next.clone());
            // Right after the page: its count, or a newer one heard since.
            member.count = None;
            member.offer(&newest);
        }
        self.offer(&listed);
    }

    fn retry_inbox(&mut self) {
        self.inbox_retry = Some(Instant::now() + jitter(self.inbox_backoff));
        self.inbox_backoff = doubled(self.inbox_backoff);
    }
}

async fn inbox_step(inbox: &mut Option<InboxRead>) -> Result<(OfflinePage, Count), tonic::Status> {
    match inbox {
        Some(inbox) => (&mut inbox.reading).await,
        None => std::future::pending().await,
    }
}
