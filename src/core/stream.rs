//! One `StreamUserEvents` call: replay from the store, then live from the
//! hub, with no gap and no duplicate between the two.
//!
//! The stream subscribes to the hub *before* it reads the store, and tracks
//! the last seq it sent. A live notification at or below that seq was
//! already replayed and is skipped; one above `last + 1` means something was
//! missed (a publish raced the replay, or the queue overflowed) and the gap
//! is read from the store. Notifications are committed before they are
//! published, so the store always has what the hub announces.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use notify_store::{Store, User};
use tokio::sync::mpsc;
use tonic::Status;

use super::Core;
use super::convert;
use super::hub::{HubEvent, Subscription};
use crate::proto::{self, user_event::Event};

/// Notifications read from the store per query while catching up.
const CATCH_UP_BATCH: u32 = 500;
/// Events buffered towards the client before the stream waits for it.
const OUTBOUND_QUEUE: usize = 64;

type Outbound = mpsc::Sender<Result<proto::UserEvent, Status>>;

/// Starts the stream's task and returns what the gRPC layer sends out.
pub fn open(
    core: Arc<Core>,
    user: User,
    after_seq: Option<i64>,
    presence: bool,
) -> mpsc::Receiver<Result<proto::UserEvent, Status>> {
    let (out, receiver) = mpsc::channel(OUTBOUND_QUEUE);
    // Subscribe now, before any store read, so nothing falls between.
    let subscription = core.hub.subscribe(user);
    core.open_streams.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(async move {
        metrics::gauge!("notify_open_streams").increment(1.0);
        if presence {
            core.presence.connect(user);
        }
        let outcome = run(&core, user, after_seq, subscription, &out).await;
        if presence {
            core.presence.disconnect(user);
        }
        core.open_streams.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!("notify_open_streams").decrement(1.0);
        if let Err(status) = outcome {
            tracing::warn!(%user, error = %status.message(), "stream ended by an error");
            let _ = out.send(Err(status)).await;
        }
    });
    receiver
}

/// Why the loop stopped early: the client left (not an error) or the store failed.
enum Stop {
    ClientGone,
    Failed(Status),
}

async fn run(
    core: &Core,
    user: User,
    after_seq: Option<i64>,
    mut subscription: Subscription,
    out: &Outbound,
) -> Result<(), Status> {
    let result = async {
        let mut last = match after_seq {
            Some(seq) => seq,
            None => core.store.last_seq(user).await.map_err(stop_for)?,
        };
        catch_up(core.store.as_ref(), user, &mut last, out).await?;
        loop {
            tokio::select! {
                _ = out.closed() => return Err(Stop::ClientGone),
                _ = core.shutdown.cancelled() => return Ok(()),
                _ = subscription.lagged.notified() => {
                    catch_up_patiently(core.store.as_ref(), user, &mut last, out).await?;
                }
                event = subscription.events.recv() => {
                    let Some(event) = event else { return Ok(()) };
                    live(core.store.as_ref(), user, event, &mut last, out).await?;
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

fn stop_for(error: notify_store::StoreError) -> Stop {
    Stop::Failed(super::service::store_status(error))
}

async fn send(out: &Outbound, event: Event, unread_count: Option<i64>) -> Result<(), Stop> {
    out.send(Ok(proto::UserEvent {
        event: Some(event),
        unread_count,
    }))
    .await
    .map_err(|_| Stop::ClientGone)
}

/// Sends every stored notification with seq > `last`, advancing `last`.
/// How long a live stream waits for the database to come back before it
/// gives up with UNAVAILABLE.
const STORE_PATIENCE: Duration = Duration::from_secs(30);

/// [`catch_up`] that rides out a short database outage (a restart, a
/// failover) instead of ending the stream: the client keeps its stream and
/// gets what it missed once the database answers again.
async fn catch_up_patiently(
    store: &dyn Store,
    user: User,
    last: &mut i64,
    out: &Outbound,
) -> Result<(), Stop> {
    let started = Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        match catch_up(store, user, last, out).await {
            Err(Stop::Failed(status))
                if status.code() == tonic::Code::Unavailable
                    && started.elapsed() < STORE_PATIENCE =>
            {
                tokio::select! {
                    _ = out.closed() => return Err(Stop::ClientGone),
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            other => return other,
        }
    }
}

async fn catch_up(
    store: &dyn Store,
    user: User,
    last: &mut i64,
    out: &Outbound,
) -> Result<(), Stop> {
    loop {
        let batch = store
            .after_seq(user, *last, CATCH_UP_BATCH)
            .await
            .map_err(stop_for)?;
        let full = batch.len() == CATCH_UP_BATCH as usize;
        for notification in batch {
            *last = notification.seq;
            send(
                out,
                Event::Notification(convert::notification(&notification)),
                None,
            )
            .await?;
        }
        if !full {
            return Ok(());
        }
    }
}

async fn live(
    store: &dyn Store,
    user: User,
    event: HubEvent,
    last: &mut i64,
    out: &Outbound,
) -> Result<(), Stop> {
    match event {
        HubEvent::Created {
            notification,
            unread,
        } => {
            if notification.seq <= *last {
                return Ok(()); // already sent by the replay
            }
            if notification.seq > *last + 1 {
                metrics::counter!("notify_stream_gap_reads_total").increment(1);
                return catch_up_patiently(store, user, last, out).await;
            }
            *last = notification.seq;
            send(
                out,
                Event::Notification(convert::notification(&notification)),
                Some(unread),
            )
            .await
        }
        HubEvent::Updated {
            ids,
            status,
            updated_at,
            unread,
        } => {
            let updated = proto::NotificationsUpdated {
                ids: ids.to_vec(),
                status: status.code() as i32,
                updated_at: notify_store::format_millis(updated_at),
            };
            send(out, Event::NotificationUpdated(updated), Some(unread)).await
        }
        HubEvent::PeerOnline { user } => {
            send(
                out,
                Event::UserOnline(convert::presence_change(user, None)),
                None,
            )
            .await
        }
        HubEvent::PeerOffline { user, last_seen_at } => {
            send(
                out,
                Event::UserOffline(convert::presence_change(user, Some(last_seen_at))),
                None,
            )
            .await
        }
    }
}
