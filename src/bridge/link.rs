//! The bridge's FollowUsers calls: every connected user's stream to the
//! core is one follow on one of a few calls (one per core connection), not
//! a call of its own, so the core keeps a map entry per user instead of an
//! HTTP/2 stream, a task and their buffers.
//!
//! Each call has one task, which owns it and the routes from follow ids to
//! the feeds' mailboxes. A feed asks to follow (it gets a fresh id, never
//! reused), hears its events through its mailbox as
//! [`Message::Core`], and hears [`Message::Ended`] when the core ended the
//! follow or the call failed; it then follows again with its backoff and
//! resume, as it would reopen a StreamUserEvents call. The call opens with
//! the first follow and after a failure with the next one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use notify_store::User;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;

use super::core_client::{CALL_TIMEOUT, CoreApi, CoreClient};
use super::feed::Message;
use crate::contract::proto;

/// What a feed asks of its call's task.
enum Command {
    Follow {
        id: u64,
        request: proto::StreamUserEventsRequest,
        /// Weak: a feed ends when its sockets' senders are gone.
        mailbox: mpsc::WeakUnboundedSender<Message>,
    },
    Unfollow(u64),
}

/// The calls, one per core connection; a user's follows always ride the
/// same one.
pub struct Links {
    calls: Box<[mpsc::UnboundedSender<Command>]>,
    core: CoreClient,
    next_id: AtomicU64,
}

impl Links {
    /// Starts a task per core connection; each opens its call when first
    /// needed and ends at `shutdown`.
    pub fn start(core: &CoreClient, shutdown: &CancellationToken) -> Links {
        let calls = (0..core.connections())
            .map(|index| {
                let (commands, received) = mpsc::unbounded_channel();
                let link = Link {
                    client: core.on_channel(index),
                    routes: HashMap::new(),
                    call: Call::Down,
                };
                tokio::spawn(link.run(received, shutdown.clone()));
                commands
            })
            .collect();
        Links {
            calls,
            core: core.clone(),
            next_id: AtomicU64::new(1),
        }
    }

    /// Follows `user` as `request` asks; the events go to `mailbox`,
    /// tagged with the id this answers.
    pub fn follow(
        &self,
        user: User,
        request: proto::StreamUserEventsRequest,
        mailbox: &mpsc::UnboundedSender<Message>,
    ) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.tell(
            user,
            Command::Follow {
                id,
                request,
                mailbox: mailbox.downgrade(),
            },
        );
        id
    }

    /// Stops the follow `id` of `user`.
    pub fn unfollow(&self, user: User, id: u64) {
        self.tell(user, Command::Unfollow(id));
    }

    fn tell(&self, user: User, command: Command) {
        let call = &self.calls[self.core.channel_of(user) % self.calls.len()];
        // Fails only once the task stopped, at shutdown.
        let _ = call.send(command);
    }
}

type Opening = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<Streaming<proto::FollowedEvents>, tonic::Status>>
            + Send,
    >,
>;

/// The call's state.
enum Call {
    /// None open: the next follow opens one.
    Down,
    /// Asked for; the follows sent meanwhile wait in `requests`.
    Opening {
        requests: mpsc::UnboundedSender<proto::FollowRequest>,
        opening: Opening,
    },
    Open {
        requests: mpsc::UnboundedSender<proto::FollowRequest>,
        events: Box<Streaming<proto::FollowedEvents>>,
    },
}

/// What the call did (the opened call boxed: it is large).
enum CallStep {
    Opened(Result<Box<Streaming<proto::FollowedEvents>>, tonic::Status>),
    Events(Result<Option<proto::FollowedEvents>, tonic::Status>),
}

struct Link {
    client: CoreApi,
    routes: HashMap<u64, mpsc::WeakUnboundedSender<Message>>,
    call: Call,
}

impl Link {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                command = commands.recv() => match command {
                    Some(command) => self.command(command),
                    None => return,
                },
                step = call_step(&mut self.call) => match step {
                    CallStep::Opened(Ok(events)) => self.opened(events),
                    CallStep::Opened(Err(status)) => self.failed(status),
                    CallStep::Events(Ok(Some(batch))) => self.route(batch),
                    CallStep::Events(Ok(None)) => {
                        self.failed(tonic::Status::unavailable("the core ended the stream"))
                    }
                    CallStep::Events(Err(status)) => self.failed(status),
                },
            }
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Follow {
                id,
                request,
                mailbox,
            } => {
                self.routes.insert(id, mailbox);
                let follow = proto::follow_request::Command::Follow(proto::Follow {
                    id,
                    stream: Some(request),
                });
                self.send(follow);
            }
            Command::Unfollow(id) => {
                if self.routes.remove(&id).is_some() {
                    self.send(proto::follow_request::Command::Unfollow(id));
                }
            }
        }
    }

    /// Sends on the call, opening it first if none is open.
    fn send(&mut self, command: proto::follow_request::Command) {
        if matches!(self.call, Call::Down) {
            let (requests, outgoing) = mpsc::unbounded_channel();
            let mut client = self.client.clone();
            let opening = Box::pin(async move {
                let call = client.follow_users(UnboundedReceiverStream::new(outgoing));
                match tokio::time::timeout(CALL_TIMEOUT, call).await {
                    Ok(opened) => opened.map(tonic::Response::into_inner),
                    Err(_) => Err(tonic::Status::unavailable(
                        "the core did not answer in time",
                    )),
                }
            });
            self.call = Call::Opening { requests, opening };
        }
        let (Call::Opening { requests, .. } | Call::Open { requests, .. }) = &self.call else {
            unreachable!("a call was just opened");
        };
        // Fails only when the call is ending; its failure reaches the
        // follows then.
        let _ = requests.send(proto::FollowRequest {
            command: Some(command),
        });
    }

    fn opened(&mut self, events: Box<Streaming<proto::FollowedEvents>>) {
        let call = std::mem::replace(&mut self.call, Call::Down);
        if let Call::Opening { requests, .. } = call {
            self.call = Call::Open { requests, events };
        }
    }

    /// Every follow on the call ends; their feeds follow again.
    fn failed(&mut self, status: tonic::Status) {
        self.call = Call::Down;
        for (id, mailbox) in self.routes.drain() {
            if let Some(mailbox) = mailbox.upgrade() {
                let _ = mailbox.send(Message::Ended(id, status.clone()));
            }
        }
    }

    fn route(&mut self, batch: proto::FollowedEvents) {
        for followed in batch.events {
            let id = followed.id;
            let Some(mailbox) = self.routes.get(&id) else {
                // Unfollowed; the core had sent these before it heard.
                continue;
            };
            let Some(mailbox) = mailbox.upgrade() else {
                // The feed is gone without unfollowing (its task ended).
                self.routes.remove(&id);
                self.send(proto::follow_request::Command::Unfollow(id));
                continue;
            };
            if let Some(ended) = followed.ended {
                self.routes.remove(&id);
                let status = tonic::Status::new(ended.code.into(), ended.message);
                let _ = mailbox.send(Message::Ended(id, status));
            } else if let Some(event) = followed.event {
                let _ = mailbox.send(Message::Core(id, Box::new(event)));
            }
        }
    }
}

async fn call_step(call: &mut Call) -> CallStep {
    match call {
        Call::Opening { opening, .. } => CallStep::Opened(opening.await.map(Box::new)),
        Call::Open { events, .. } => CallStep::Events(events.message().await),
        Call::Down => std::future::pending().await,
    }
}
