//! One FollowUsers call: many users' streams, as a bridge holds them, on
//! one HTTP/2 stream and one task.
//!
//! Each follow is a [`Stream`] (the same catch-up, gap and resync logic as
//! a StreamUserEvents call) kept in a map, not a task and a call of its
//! own: the hub queues every follow's events into the call's one inbox,
//! tagged with the follow's key, and this task passes each on. A follow's
//! stream is in one of two states, and only its owner touches it:
//!
//! ```text
//!   follow ──▶ Busy ──── the task gives the stream back ────▶ Ready
//!               ▲                                              │
//!               └── a gap, a lag, or `again` when it came back ┘
//! ```
//!
//! - *Busy*: its opening, or a catch-up, runs in a task of its own with the
//!   stream; live events for it are dropped and remembered as `again`.
//! - *Ready*: live events pass on here, in order.
//!
//! A Busy stream is the only thing sending that follow's events, so its
//! events never overtake each other. When it comes back with `again` set,
//! it catches up once more: whatever it dropped is in the store, past the
//! version it reached. A follow ends on `unfollow`, when the store fails
//! for good (its last event says why; the other follows go on), or with
//! the call.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::command::OpenStream;
use super::error::CoreError;
use super::hub::{FollowInbox, HubEvent, Registration, wait_registered};
use super::notifications::Notifications;
use super::stream::{Followed, Out, Step, Stop, Stream};
use crate::contract::validate::FieldError;

/// Events of all follows queued for the call before the slowest ones are
/// flagged as lagging (and catch up from the store).
const INBOX: usize = 16 * 1024;
/// Events queued towards the client before the call waits for it.
pub const OUTBOUND_QUEUE: usize = 4096;

/// What the caller asks, already validated by the gRPC layer.
#[derive(Debug)]
pub enum FollowCommand {
    /// Start following: the request, or why it was refused.
    Follow(u64, Result<OpenStream, FieldError>),
    /// Stop following.
    Unfollow(u64),
}

/// A follow's stream and where it is.
enum Slot {
    Ready(Box<Stream>),
    /// Its stream is in a task; `again`: live events came meanwhile.
    Busy {
        again: bool,
    },
}

struct Follow {
    /// The caller's id for it, which its events carry.
    id: u64,
    slot: Slot,
    presence: Option<notify_store::User>,
    /// Dropped with the follow: the hub stops queueing its events.
    _registration: Registration,
}

/// What a task does with a follow's stream.
enum Work {
    /// The opening: once the bus has the user (`barrier`), catch up.
    Open(Option<oneshot::Receiver<()>>),
    /// A catch-up after a gap or a lag.
    Resync,
}

/// What a task gives back: the follow's key, its stream, how the work went.
type Done = (u64, Box<Stream>, Step);

/// Starts the call's task: `commands` in, tagged events out.
pub fn start(
    core: Arc<Notifications>,
    commands: mpsc::Receiver<FollowCommand>,
) -> mpsc::Receiver<Followed> {
    let (out, receiver) = mpsc::channel(OUTBOUND_QUEUE);
    tokio::spawn(async move {
        metrics::gauge!("notify_follow_calls").increment(1.0);
        let (inbox, events) = FollowInbox::new(INBOX);
        let (done, finished) = mpsc::unbounded_channel();
        let call = Call {
            core,
            out,
            inbox,
            done,
            follows: HashMap::new(),
            keys: HashMap::new(),
            next_key: 0,
        };
        call.run(commands, events, finished).await;
        metrics::gauge!("notify_follow_calls").decrement(1.0);
    });
    receiver
}

struct Call {
    core: Arc<Notifications>,
    out: mpsc::Sender<Followed>,
    inbox: Arc<FollowInbox>,
    done: mpsc::UnboundedSender<Done>,
    /// By key: a number of this call's own, never reused, which the hub's
    /// events and the tasks' answers carry, so that nothing meant for an
    /// ended follow can reach a later one, even one the caller gave the
    /// same id.
    follows: HashMap<u64, Follow>,
    /// The key of each caller's id.
    keys: HashMap<u64, u64>,
    next_key: u64,
}

impl Call {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<FollowCommand>,
        mut events: mpsc::Receiver<(u64, HubEvent)>,
        mut finished: mpsc::UnboundedReceiver<Done>,
    ) {
        let shutdown = self.core.shutdown.clone();
        let out = self.out.clone();
        let inbox = self.inbox.clone();
        let mut commands_open = true;
        loop {
            let step = tokio::select! {
                _ = out.closed() => break,
                _ = shutdown.cancelled() => break,
                command = commands.recv(), if commands_open => match command {
                    Some(command) => self.command(command).await,
                    // The caller sent all it will; its follows go on.
                    None => {
                        commands_open = false;
                        Ok(())
                    }
                },
                Some((key, stream, step)) = finished.recv() => self.finished(key, stream, step).await,
                _ = inbox.wake.notified() => {
                    for key in self.inbox.take_lagged() {
                        self.catch_up(key);
                    }
                    Ok(())
                }
                Some((key, event)) = events.recv() => self.live(key, event).await,
            };
            if step.is_err() {
                break;
            }
        }
        for follow in self.follows.values() {
            if let Some(user) = follow.presence {
                self.core.presence.disconnect(user);
            }
        }
        metrics::gauge!("notify_open_streams").decrement(self.follows.len() as f64);
    }

    async fn command(&mut self, command: FollowCommand) -> Step {
        match command {
            FollowCommand::Follow(id, Err(error)) => {
                self.send((id, Err(CoreError::Invalid(error)))).await
            }
            FollowCommand::Follow(id, Ok(request)) => {
                if self.keys.contains_key(&id) {
                    let refused = FieldError::new("id", "is already following on this call");
                    return self.send((id, Err(CoreError::Invalid(refused)))).await;
                }
                let user = request.user;
                let presence = request.presence.then_some(user);
                let key = self.next_key;
                self.next_key += 1;
                let mut registration = self.core.hub.follow(user, key, self.inbox.clone());
                let barrier = registration.take_barrier();
                if presence.is_some() {
                    self.core.presence.connect(user);
                }
                metrics::gauge!("notify_open_streams").increment(1.0);
                let out = Out::Follow {
                    id,
                    queue: self.out.clone(),
                };
                let stream = Box::new(Stream::new(self.core.clone(), request, out));
                self.keys.insert(id, key);
                self.follows.insert(
                    key,
                    Follow {
                        id,
                        slot: Slot::Busy { again: false },
                        presence,
                        _registration: registration,
                    },
                );
                self.spawn(key, stream, Work::Open(barrier));
                Ok(())
            }
            FollowCommand::Unfollow(id) => {
                if let Some(key) = self.keys.get(&id).copied() {
                    self.remove(key);
                }
                Ok(())
            }
        }
    }

    /// A live event: passed on by a Ready stream, remembered by a Busy one.
    async fn live(&mut self, key: u64, event: HubEvent) -> Step {
        let Some(follow) = self.follows.get_mut(&key) else {
            return Ok(());
        };
        match &mut follow.slot {
            Slot::Busy { again } => {
                *again = true;
                Ok(())
            }
            Slot::Ready(stream) if stream.gap_before(&event) => {
                metrics::counter!("notify_stream_gap_reads_total").increment(1);
                self.catch_up(key);
                Ok(())
            }
            Slot::Ready(stream) => match stream.live(event).await {
                Err(Stop::Failed(error)) => self.end(key, error).await,
                step => step,
            },
        }
    }

    /// Makes the follow read what it missed from the store.
    fn catch_up(&mut self, key: u64) {
        let Some(follow) = self.follows.get_mut(&key) else {
            return;
        };
        match std::mem::replace(&mut follow.slot, Slot::Busy { again: false }) {
            Slot::Ready(stream) => self.spawn(key, stream, Work::Resync),
            Slot::Busy { .. } => follow.slot = Slot::Busy { again: true },
        }
    }

    fn spawn(&self, key: u64, mut stream: Box<Stream>, work: Work) {
        let done = self.done.clone();
        tokio::spawn(async move {
            let step = match work {
                Work::Open(barrier) => {
                    if let Some(barrier) = barrier {
                        wait_registered(barrier, stream.user()).await;
                    }
                    stream.open_follow().await
                }
                Work::Resync => stream.resync().await,
            };
            let _ = done.send((key, stream, step));
        });
    }

    /// A task gave the stream back.
    async fn finished(&mut self, key: u64, stream: Box<Stream>, step: Step) -> Step {
        let Some(follow) = self.follows.get_mut(&key) else {
            // Unfollowed meanwhile.
            return Ok(());
        };
        match step {
            Ok(()) => {
                let again = matches!(follow.slot, Slot::Busy { again: true });
                follow.slot = Slot::Ready(stream);
                if again {
                    self.catch_up(key);
                }
                Ok(())
            }
            Err(Stop::ClientGone) => Err(Stop::ClientGone),
            Err(Stop::Failed(error)) => self.end(key, error).await,
        }
    }

    /// The store failed for good for this follow: its last event says so.
    async fn end(&mut self, key: u64, error: notify_store::StoreError) -> Step {
        let Some(id) = self.remove(key) else {
            return Ok(());
        };
        tracing::warn!(follow = id, %error, "follow ended by an error");
        self.send((id, Err(error.into()))).await
    }

    /// Ends the follow of `key`; answers the caller's id for it.
    fn remove(&mut self, key: u64) -> Option<u64> {
        let follow = self.follows.remove(&key)?;
        self.keys.remove(&follow.id);
        if let Some(user) = follow.presence {
            self.core.presence.disconnect(user);
        }
        metrics::gauge!("notify_open_streams").decrement(1.0);
        Some(follow.id)
    }

    async fn send(&self, event: Followed) -> Step {
        self.out.send(event).await.map_err(|_| Stop::ClientGone)
    }
}

/// Follows against a real SQLite store in process, with the stream
/// tests' fixture (its gate loses chosen changes on their way to the hub).
#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use notify_store::User;

    use super::*;
    use crate::core::stream::tests::{Fixture, USER, fixture, live_only};
    use crate::core::stream::{Event, StreamEvent};

    const OTHER: User = User {
        role: notify_store::Role::Customer,
        id: 9,
    };

    struct Caller {
        commands: mpsc::Sender<FollowCommand>,
        events: mpsc::Receiver<Followed>,
    }

    impl Caller {
        fn start(f: &Fixture) -> Caller {
            let (commands, received) = mpsc::channel(16);
            Caller {
                commands,
                events: start(f.core.clone(), received),
            }
        }

        async fn send(&self, command: FollowCommand) {
            self.commands
                .send(command)
                .await
                .expect("the call is running");
        }

        async fn follow(&self, id: u64, request: OpenStream) {
            self.send(FollowCommand::Follow(id, Ok(request))).await;
        }

        /// Follows and waits for the follow's state: it is live then.
        async fn follow_synced(&mut self, id: u64, user: User) {
            let request = OpenStream {
                user,
                sync: true,
                ..live_only()
            };
            self.follow(id, request).await;
            match self.next().await {
                (
                    got,
                    Ok(StreamEvent {
                        event: Event::State(_),
                        ..
                    }),
                ) if got == id => {}
                other => panic!("expected follow {id}'s state, got {other:?}"),
            }
        }

        /// Follows and waits for the follow's state, passing over what
        /// came before it (an earlier follow's events).
        async fn follow_synced_skipping(&mut self, id: u64, user: User) {
            let request = OpenStream {
                user,
                sync: true,
                ..live_only()
            };
            self.follow(id, request).await;
            loop {
                if let (
                    got,
                    Ok(StreamEvent {
                        event: Event::State(_),
                        ..
                    }),
                ) = self.next().await
                    && got == id
                {
                    return;
                }
            }
        }

        /// The next event; a call that says nothing for 10 s is a failure.
        async fn next(&mut self) -> Followed {
            tokio::time::timeout(Duration::from_secs(10), self.events.recv())
                .await
                .expect("the call said nothing for 10 s")
                .expect("the call ended")
        }

        /// The seqs of the next `n` notifications, by follow, checking each
        /// is for the user its follow is of.
        async fn notifications(
            &mut self,
            n: usize,
            users: &[(u64, User)],
        ) -> HashMap<u64, Vec<i64>> {
            let mut seqs: HashMap<u64, Vec<i64>> = HashMap::new();
            let mut seen = 0;
            while seen < n {
                let (id, event) = self.next().await;
                let event = event.expect("no follow ends here");
                if let Event::Notification(notification) = event.event {
                    let (_, user) = users
                        .iter()
                        .find(|(of, _)| *of == id)
                        .expect("a known follow");
                    assert_eq!(
                        notification.recipient, *user,
                        "follow {id} gets its own user's"
                    );
                    seqs.entry(id).or_default().push(notification.seq);
                    seen += 1;
                }
            }
            seqs
        }
    }

    /// What `what` gives, within 10 s.
    async fn soon<T>(what: impl std::future::Future<Output = Option<T>>) -> T {
        tokio::time::timeout(Duration::from_secs(10), what)
            .await
            .expect("in time")
            .expect("still open")
    }

    #[tokio::test]
    async fn two_follows_on_one_call_each_replay_their_own_user_then_go_live() {
        let f = fixture().await;
        f.create().await;
        f.create().await;
        f.create_for(OTHER).await;
        let mut caller = Caller::start(&f);
        let replay = |user| OpenStream {
            user,
            after_seq: Some(0),
            ..live_only()
        };
        caller.follow(1, replay(USER)).await;
        caller.follow(2, replay(OTHER)).await;
        let users = [(1, USER), (2, OTHER)];
        let replayed = caller.notifications(3, &users).await;
        assert_eq!(replayed, HashMap::from([(1, vec![1, 2]), (2, vec![1])]));
        f.create_for(OTHER).await;
        f.create().await;
        let live = caller.notifications(2, &users).await;
        assert_eq!(
            live,
            HashMap::from([(1, vec![3]), (2, vec![2])]),
            "live, nothing twice"
        );
    }

    #[tokio::test]
    async fn creates_racing_a_follow_s_replay_arrive_once_in_order() {
        let f = fixture().await;
        f.create().await;
        let mut caller = Caller::start(&f);
        caller
            .follow(
                1,
                OpenStream {
                    after_seq: Some(0),
                    ..live_only()
                },
            )
            .await;
        // Whichever of these commit before, during or after the opening's
        // catch-up, each reaches the reader exactly once, in seq order.
        for _ in 0..20 {
            f.create().await;
        }
        let seqs = caller.notifications(21, &[(1, USER)]).await;
        assert_eq!(seqs[&1], (1..=21).collect::<Vec<_>>());
    }

    /// The owner's steps by hand: a change whose event comes while the
    /// follow's opening is still out in its task is read back once the
    /// stream returns, though no later change shows the gap.
    #[tokio::test]
    async fn a_change_heard_while_busy_is_read_back_when_the_stream_returns() {
        let f = fixture().await;
        let (out, mut sent) = mpsc::channel(OUTBOUND_QUEUE);
        let (inbox, mut events) = FollowInbox::new(INBOX);
        let (done, mut finished) = mpsc::unbounded_channel();
        let mut call = Call {
            core: f.core.clone(),
            out,
            inbox,
            done,
            follows: HashMap::new(),
            keys: HashMap::new(),
            next_key: 0,
        };
        assert!(
            call.command(FollowCommand::Follow(1, Ok(live_only())))
                .await
                .is_ok()
        );
        // The opening is done, but the owner has not heard yet: still Busy.
        let (id, stream, step) = soon(finished.recv()).await;
        let created = f.create().await;
        let (follow, event) = soon(events.recv()).await;
        assert!(
            call.live(follow, event).await.is_ok(),
            "remembered, not sent"
        );
        assert!(sent.try_recv().is_err());
        assert!(call.finished(id, stream, step).await.is_ok());
        let (id, stream, step) = soon(finished.recv()).await;
        assert!(call.finished(id, stream, step).await.is_ok());
        match sent.try_recv() {
            Ok((
                1,
                Ok(StreamEvent {
                    event: Event::Notification(notification),
                    ..
                }),
            )) => assert_eq!(notification.id, created.id),
            other => panic!("expected the change read back, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_lost_change_is_read_back_for_its_follow_while_the_others_go_on() {
        let f = fixture().await;
        let mut caller = Caller::start(&f);
        caller.follow_synced(1, USER).await;
        caller.follow_synced(2, OTHER).await;
        f.lose_next(1);
        f.create().await;
        f.create_for(OTHER).await;
        // The gap shows when the next one comes.
        f.create().await;
        let seqs = caller.notifications(3, &[(1, USER), (2, OTHER)]).await;
        assert_eq!(seqs, HashMap::from([(1, vec![1, 2]), (2, vec![1])]));
    }

    #[tokio::test]
    async fn a_lagging_follow_catches_up_from_the_store() {
        let f = fixture().await;
        let mut caller = Caller::start(&f);
        caller.follow_synced(1, USER).await;
        f.lose_next(1);
        f.create().await;
        // What the hub does when the call's inbox overflows.
        f.core.hub.resync_all();
        let seqs = caller.notifications(1, &[(1, USER)]).await;
        assert_eq!(seqs[&1], vec![1]);
    }

    #[tokio::test]
    async fn an_unfollowed_user_hears_nothing_and_a_refused_follow_ends_alone() {
        let f = fixture().await;
        let mut caller = Caller::start(&f);
        caller.follow_synced(1, USER).await;
        let refused = FieldError::new("vendorId", "must be positive");
        caller.send(FollowCommand::Follow(2, Err(refused))).await;
        match caller.next().await {
            (2, Err(CoreError::Invalid(error))) => assert_eq!(error.field, "vendorId"),
            other => panic!("expected follow 2 refused, got {other:?}"),
        }
        caller.send(FollowCommand::Unfollow(1)).await;
        // Commands apply in order: once follow 3 is live, 1 is gone.
        caller.follow_synced(3, OTHER).await;
        f.create().await;
        f.create_for(OTHER).await;
        // The hub queues in commit order, so USER's would have come first.
        match caller.next().await {
            (
                3,
                Ok(StreamEvent {
                    event: Event::Notification(notification),
                    ..
                }),
            ) => assert_eq!(notification.recipient, OTHER),
            other => panic!("expected follow 3's notification alone, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_id_given_again_after_its_unfollow_hears_only_its_new_user() {
        let f = fixture().await;
        let mut caller = Caller::start(&f);
        caller.follow_synced(1, USER).await;
        // Changes of USER may still be queued for the old follow 1 when
        // the new one opens; none of them may reach it.
        f.create().await;
        caller.send(FollowCommand::Unfollow(1)).await;
        caller.follow_synced_skipping(1, OTHER).await;
        f.create().await;
        f.create_for(OTHER).await;
        let seqs = caller.notifications(1, &[(1, OTHER)]).await;
        assert_eq!(seqs[&1], vec![1], "OTHER's first, and nothing of USER's");
    }

    #[tokio::test]
    async fn a_call_ends_when_the_core_shuts_down() {
        let f = fixture().await;
        let mut caller = Caller::start(&f);
        caller.follow_synced(1, USER).await;
        f.shutdown.cancel();
        let end = tokio::time::timeout(Duration::from_secs(10), caller.events.recv()).await;
        assert!(matches!(end, Ok(None)), "{end:?}");
    }
}
