//! End-to-end tests: real `notify core` processes on loopback, driven by a
//! tonic client and by the real `grpcurl` binary. One test binary, so it
//! links once.

mod api;
mod bad_input;
mod config;
mod durability;
mod follow;
mod grpcurl;
mod harness;
mod multinode;
mod ordering;
mod presence;
mod resync;
mod topics;

use notify::contract::proto;

pub use notify_testkit::requests::{create_for_vendor, simple, to_json, to_struct};

/// Reads stream events until `count` notifications arrived (10 s at most).
pub async fn read_notifications(
    stream: &mut tonic::Streaming<proto::UserEvent>,
    count: usize,
) -> Vec<proto::Notification> {
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let event = tokio::time::timeout(std::time::Duration::from_secs(10), stream.message())
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} notifications arrived", out.len()))
            .expect("stream ok")
            .expect("stream open");
        if let Some(proto::user_event::Event::Notification(n)) = event.event {
            out.push(n);
        }
    }
    out
}

/// Presence events (`userOnline`, `userOffline`) arriving within `window`.
pub async fn presence_events(
    stream: &mut tonic::Streaming<proto::UserEvent>,
    window: std::time::Duration,
) -> Vec<proto::user_event::Event> {
    use proto::user_event::Event;
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(message) = tokio::time::timeout_at(deadline, stream.message()).await {
        let event = message.expect("stream ok").expect("stream open").event;
        if let Some(event @ (Event::UserOnline(_) | Event::UserOffline(_))) = event {
            events.push(event);
        }
    }
    events
}

/// The next presence event (`userOnline`, `userOffline`), waiting 10 s at most.
pub async fn next_presence_event(
    stream: &mut tonic::Streaming<proto::UserEvent>,
) -> proto::user_event::Event {
    use proto::user_event::Event;
    loop {
        let message = tokio::time::timeout(std::time::Duration::from_secs(10), stream.message())
            .await
            .expect("a presence event within 10 s")
            .expect("stream ok")
            .expect("stream open");
        if let Some(event @ (Event::UserOnline(_) | Event::UserOffline(_))) = message.event {
            return event;
        }
    }
}

/// A stream watching the room peers of `user`: opened with `sync`, and
/// returned once its opening state has arrived (10 s at most). The state
/// lists the peers online as the stream opened; only changes after it come
/// as `userOnline`/`userOffline` events, so a test that changed presence
/// before the state arrived could find the change in the state instead.
pub async fn observer(
    client: &mut harness::Client,
    (vendor_id, customer_id): (Option<i64>, Option<i64>),
) -> tonic::Streaming<proto::UserEvent> {
    use proto::user_event::Event;
    let mut stream = client
        .stream_user_events(proto::StreamUserEventsRequest {
            vendor_id,
            customer_id,
            sync: true,
            ..Default::default()
        })
        .await
        .expect("stream")
        .into_inner();
    loop {
        let message = tokio::time::timeout(std::time::Duration::from_secs(10), stream.message())
            .await
            .expect("the stream's state within 10 s")
            .expect("stream ok")
            .expect("stream open");
        if let Some(Event::State(_)) = message.event {
            return stream;
        }
    }
}

/// The next presence event (waiting as `next_presence_event` does), then
/// `quiet` with no other: the one announcement a change should make. The
/// wait for the event is bounded by patience, not by a window, so a loaded
/// machine delays the test instead of failing it.
pub async fn only_presence_event(
    stream: &mut tonic::Streaming<proto::UserEvent>,
    quiet: std::time::Duration,
) -> proto::user_event::Event {
    let event = next_presence_event(stream).await;
    let more = presence_events(stream, quiet).await;
    assert!(more.is_empty(), "after {event:?}, also {more:?}");
    event
}

/// Every acknowledged notification reads back exactly as it was returned.
pub async fn assert_all_stored(client: &mut harness::Client, acked: &[proto::Notification]) {
    for notification in acked {
        let stored = client
            .get_notification(proto::GetNotificationRequest {
                id: notification.id.clone(),
            })
            .await
            .unwrap_or_else(|status| {
                panic!("acknowledged {} is not stored: {status:?}", notification.id)
            })
            .into_inner();
        assert_eq!(&stored, notification);
    }
}
