//! The core's verbs: what can be done with notifications, whichever edge
//! asks. Each takes a typed command (see `command`) and answers with store
//! values or a [`CoreError`]; nothing here knows gRPC.

use std::collections::HashSet;
use std::sync::Arc;

use notify_store::{
    ActionRefused, CancelRefused, Created, Fanout, MAX_MUTED_PER_USER, MarkOutcome,
    NewNotification, Notification, OfflinePage, PreferencesRefused, Publish, RoomMember, Rule,
    Store, UnreadCounts, User,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::command::{
    Archive, CompleteAction, Create, List, Mark, MarkAll, Membership, OpenStream, RecordDeliveries,
    SetPreferences, Subscription,
};
use super::error::CoreError;
use super::hub::Hub;
use super::presence::Presence;
use super::stream::{self, StreamEvent};
use crate::contract::paging::Pagination;
use crate::contract::validate::FieldError;

/// The notification service itself: the store, the live fan-out of its
/// commits, and the presence of this core's streams.
pub struct Notifications {
    pub(super) store: Arc<dyn Store>,
    pub(super) hub: Arc<Hub>,
    pub(super) presence: Arc<Presence>,
    /// Cancelled when the core shuts down; open streams end on it.
    pub(super) shutdown: CancellationToken,
}

/// What became of one notification of a create.
#[derive(Clone, Debug)]
pub enum Sent {
    /// Stored (or found stored, on a repeated idempotency key).
    Stored(Created),
    /// Not stored: the recipient turned its category off on its channel.
    Suppressed(NewNotification),
}

/// One page of one of a user's lists, placed among all its pages, with the
/// database's epoch its seqs belong to.
#[derive(Clone, Debug)]
pub struct Inbox {
    /// The rows and the counters they were read at.
    pub page: OfflinePage,
    /// Where the page sits.
    pub pagination: Pagination,
    /// See [`Store::epoch`].
    pub epoch: String,
}

impl Notifications {
    /// A service over `store`, whose commits reach `hub`.
    pub fn new(
        store: Arc<dyn Store>,
        hub: Arc<Hub>,
        presence: Arc<Presence>,
        shutdown: CancellationToken,
    ) -> Notifications {
        Notifications {
            store,
            hub,
            presence,
            shutdown,
        }
    }

    /// Stores the notifications in one transaction (all or none), but for
    /// recipients who turned the category off on the channel (unless the
    /// command is critical): those are answered as suppressed and stored
    /// nowhere. A repeat of an idempotency key answers with the stored one,
    /// not fresh.
    pub async fn create(&self, command: Create) -> Result<Vec<Sent>, CoreError> {
        let Create {
            notifications,
            critical,
            send_at,
        } = command;
        if let Some(send_at) = send_at {
            // Preferences apply when it goes out (see `sweeps`).
            let pending = self.store.schedule(notifications, send_at).await?;
            let fresh = pending.iter().filter(|c| c.fresh).count();
            metrics::counter!("notify_notifications_scheduled_total").increment(fresh as u64);
            return Ok(pending.into_iter().map(Sent::Stored).collect());
        }
        let muted: HashSet<User> = match notifications.first() {
            // Every notification of one command shares category and
            // channel: one read covers the batch.
            Some(first) if !critical => {
                let users: Vec<User> = notifications.iter().map(|n| n.recipient).collect();
                self.store
                    .muted(&users, &first.category, first.channel)
                    .await?
                    .into_iter()
                    .collect()
            }
            _ => HashSet::new(),
        };
        let (skipped, kept): (Vec<_>, Vec<_>) = notifications
            .into_iter()
            .enumerate()
            .partition(|(_, n)| muted.contains(&n.recipient));
        let expected = kept.len();
        let (places, kept): (Vec<usize>, Vec<NewNotification>) = kept.into_iter().unzip();
        let created = if kept.is_empty() {
            Vec::new()
        } else {
            self.store.create(kept).await?
        };
        if created.len() != expected {
            return Err(CoreError::Internal(format!(
                "the store answered {} notifications for {expected}",
                created.len()
            )));
        }
        let fresh = created.iter().filter(|c| c.fresh).count();
        metrics::counter!("notify_notifications_created_total").increment(fresh as u64);
        metrics::counter!("notify_notifications_suppressed_total").increment(skipped.len() as u64);
        let mut sent: Vec<(usize, Sent)> = places
            .into_iter()
            .zip(created.into_iter().map(Sent::Stored))
            .chain(skipped.into_iter().map(|(at, n)| (at, Sent::Suppressed(n))))
            .collect();
        sent.sort_unstable_by_key(|(at, _)| *at);
        Ok(sent.into_iter().map(|(_, sent)| sent).collect())
    }

    /// Subscribes the users; answers how many were not yet.
    pub async fn subscribe(&self, command: Subscription) -> Result<u64, CoreError> {
        Ok(self.store.subscribe(&command.topic, &command.users).await?)
    }

    /// Unsubscribes the users; answers how many were.
    pub async fn unsubscribe(&self, command: Subscription) -> Result<u64, CoreError> {
        Ok(self
            .store
            .unsubscribe(&command.topic, &command.users)
            .await?)
    }

    /// How many users the topic has.
    pub async fn subscribers(&self, topic: &str) -> Result<i64, CoreError> {
        Ok(self.store.subscribers(topic).await?)
    }

    /// Records a fan-out; the core's fan-out worker carries it out.
    pub async fn publish(&self, publish: Publish) -> Result<Fanout, CoreError> {
        let fanout = self.store.publish(publish).await?;
        metrics::counter!("notify_fanouts_published_total").increment(1);
        Ok(fanout)
    }

    /// Where a fan-out stands.
    pub async fn fanout(&self, id: &str) -> Result<Fanout, CoreError> {
        self.store
            .fanout(id)
            .await?
            .ok_or_else(|| CoreError::NotFound(format!("no fan-out {id}")))
    }

    /// Cancels a pending notification.
    pub async fn cancel(&self, id: &str) -> Result<Notification, CoreError> {
        match self.store.cancel(id).await? {
            Ok(cancelled) => Ok(cancelled),
            Err(CancelRefused::NotFound) => {
                Err(CoreError::NotFound(format!("no notification {id}")))
            }
            Err(CancelRefused::NotPending) => Err(CoreError::FailedPrecondition(format!(
                "id: {id} is not pending: it was sent already"
            ))),
        }
    }

    /// The pairs the user turned off.
    pub async fn preferences(&self, user: User) -> Result<Vec<Rule>, CoreError> {
        Ok(self.store.preferences(user).await?)
    }

    /// Applies the rules; answers the pairs off after.
    pub async fn set_preferences(&self, command: SetPreferences) -> Result<Vec<Rule>, CoreError> {
        match self
            .store
            .set_preferences(command.user, command.rules)
            .await?
        {
            Ok(rules) => Ok(rules),
            Err(PreferencesRefused::TooMany) => Err(CoreError::FailedPrecondition(format!(
                "rules: at most {MAX_MUTED_PER_USER} category × channel pairs may be off per user"
            ))),
        }
    }

    /// One notification by canonical id.
    pub async fn get(&self, id: &str) -> Result<Notification, CoreError> {
        self.store
            .get(id)
            .await?
            .ok_or_else(|| CoreError::NotFound(format!("no notification with id {id}")))
    }

    /// A page of one of the user's lists, newest first.
    pub async fn list(&self, command: List) -> Result<Inbox, CoreError> {
        let page = self
            .store
            .list(command.user, &command.query, command.start, command.limit)
            .await?;
        Ok(Inbox {
            pagination: Pagination::new(command.page, command.limit, page.total),
            page,
            epoch: self.store.epoch().to_owned(),
        })
    }

    /// Moves the user's own notifications among the ids forward.
    pub async fn mark(&self, command: Mark) -> Result<MarkOutcome, CoreError> {
        Ok(self
            .store
            .mark(command.user, command.ids, command.status)
            .await?)
    }

    /// The user's unread counts, in all and by category.
    pub async fn unread_counts(&self, user: User) -> Result<UnreadCounts, CoreError> {
        Ok(self.store.unread_counts(user).await?)
    }

    /// Moves the user's whole unread inbox (of a category, up to a seq)
    /// forward, in one transaction.
    pub async fn mark_all(&self, command: MarkAll) -> Result<MarkOutcome, CoreError> {
        Ok(self
            .store
            .mark_all(
                command.user,
                command.status,
                command.category,
                command.up_to_seq,
            )
            .await?)
    }

    /// Archives the user's own notifications among the ids, or brings
    /// them back.
    pub async fn archive(&self, command: Archive) -> Result<MarkOutcome, CoreError> {
        Ok(self
            .store
            .archive(command.user, command.ids, command.archived)
            .await?)
    }

    /// Takes one of the user's notification's actions: it becomes READ
    /// and records which, once.
    pub async fn complete_action(
        &self,
        command: CompleteAction,
    ) -> Result<Notification, CoreError> {
        let CompleteAction {
            user,
            id,
            action_id,
        } = command;
        let refused = match self
            .store
            .complete_action(user, id.clone(), action_id.clone())
            .await?
        {
            Ok(done) => return Ok(done),
            Err(refused) => refused,
        };
        Err(match refused {
            ActionRefused::NotFound => {
                CoreError::NotFound(format!("{user} has no notification with id {id}"))
            }
            ActionRefused::UnknownAction => CoreError::Invalid(FieldError::new(
                "actionId",
                format!("notification {id} has no action {action_id:?}"),
            )),
            ActionRefused::AlreadyTaken(taken) => CoreError::FailedPrecondition(format!(
                "notification {id} already had its action {:?} taken at {}",
                taken.id,
                notify_store::format_millis(taken.at)
            )),
            ActionRefused::Gone => CoreError::FailedPrecondition(format!(
                "notification {id} has expired or was replaced"
            )),
        })
    }

    /// Deletes everything stored of the user (a data-protection erasure);
    /// answers how many notifications went.
    pub async fn erase_user(&self, user: User) -> Result<u64, CoreError> {
        let deleted = self.store.erase_user(user).await?;
        tracing::info!(%user, deleted, "user erased");
        Ok(deleted)
    }

    /// Marks each user's delivered ids DELIVERED; answers how many moved.
    /// The users' marks run side by side, so the store's group commit folds
    /// them into one transaction.
    pub async fn record_deliveries(&self, command: RecordDeliveries) -> Result<usize, CoreError> {
        let mut pending = tokio::task::JoinSet::new();
        for (user, ids) in command.receipts {
            let store = self.store.clone();
            pending
                .spawn(async move { store.mark(user, ids, notify_store::Status::Delivered).await });
        }
        let mut updated = 0;
        let mut failure = None;
        while let Some(joined) = pending.join_next().await {
            match joined {
                Ok(Ok(outcome)) => updated += outcome.updated.len(),
                Ok(Err(error)) => failure = Some(CoreError::from(error)),
                Err(error) => failure = Some(CoreError::Internal(error.to_string())),
            }
        }
        match failure {
            Some(error) => Err(error),
            None => Ok(updated),
        }
    }

    /// Opens a stream of the user's events: first what the reader lacks,
    /// then live (see `stream`). It ends when the receiver is dropped, the
    /// core shuts down, or the store fails for good (its last item).
    pub async fn open_stream(
        self: &Arc<Self>,
        command: OpenStream,
    ) -> Result<mpsc::Receiver<Result<StreamEvent, CoreError>>, CoreError> {
        if self.shutdown.is_cancelled() {
            return Err(notify_store::StoreError::Closed.into());
        }
        stream::open(self.clone(), command).await
    }

    /// Starts a FollowUsers call: many users' streams, each as
    /// [`Notifications::open_stream`] would open it, on one queue of
    /// tagged events (see `follow`).
    pub fn follow_users(
        self: &Arc<Self>,
        commands: mpsc::Receiver<super::follow::FollowCommand>,
    ) -> Result<mpsc::Receiver<super::stream::Followed>, CoreError> {
        if self.shutdown.is_cancelled() {
            return Err(notify_store::StoreError::Closed.into());
        }
        Ok(super::follow::start(self.clone(), commands))
    }

    /// Adds the user to the room (no-op if already there).
    pub async fn join_room(&self, command: Membership) -> Result<(), CoreError> {
        Ok(self.store.join_room(&command.room, command.user).await?)
    }

    /// Removes the user from the room (no-op if not there).
    pub async fn leave_room(&self, command: Membership) -> Result<(), CoreError> {
        Ok(self.store.leave_room(&command.room, command.user).await?)
    }

    /// The room's members with their presence.
    pub async fn room_members(&self, room: &str) -> Result<Vec<RoomMember>, CoreError> {
        Ok(self.store.room_members(room).await?)
    }
}
