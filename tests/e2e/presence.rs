//! Presence: a user is online while one of their `presence: true` streams is
//! open; room peers hear of the first open and the last close, once each.

use std::time::Duration;

use notify::contract::proto::{self, StreamUserEventsRequest, user_event::Event};
use tonic::Streaming;

use crate::harness::{Client, CoreProcess};
use crate::presence_events;

async fn join(client: &mut Client, room: &str, vendor: Option<i64>, customer: Option<i64>) {
    client
        .join_room(proto::RoomRequest {
            room: room.into(),
            vendor_id: vendor,
            customer_id: customer,
        })
        .await
        .expect("join");
}

async fn open(
    client: &mut Client,
    vendor: Option<i64>,
    customer: Option<i64>,
    presence: bool,
) -> Streaming<proto::UserEvent> {
    client
        .stream_user_events(StreamUserEventsRequest {
            vendor_id: vendor,
            customer_id: customer,
            presence,
            ..Default::default()
        })
        .await
        .expect("stream")
        .into_inner()
}

async fn members(client: &mut Client, room: &str) -> Vec<proto::RoomMember> {
    client
        .list_room_members(proto::ListRoomMembersRequest { room: room.into() })
        .await
        .unwrap()
        .into_inner()
        .members
}

#[tokio::test]
async fn two_streams_one_online_and_the_last_close_one_offline_per_peer() {
    let core = CoreProcess::start();
    let mut client = core.client().await;
    // Vendor 5 shares two rooms with customer 12 (still one event each) and
    // one with customer 13; customer 14 shares none.
    join(&mut client, "order:881", Some(5), None).await;
    join(&mut client, "order:882", Some(5), None).await;
    join(&mut client, "order:881", None, Some(12)).await;
    join(&mut client, "order:882", None, Some(12)).await;
    join(&mut client, "order:882", None, Some(13)).await;
    join(&mut client, "order:999", None, Some(14)).await;
    let mut peer12 = crate::observer(&mut client, (None, Some(12))).await;
    let mut peer13 = crate::observer(&mut client, (None, Some(13))).await;
    let mut stranger = crate::observer(&mut client, (None, Some(14))).await;

    let first = open(&mut client, Some(5), None, true).await;
    let second = open(&mut client, Some(5), None, true).await;
    let window = Duration::from_millis(700);
    for peer in [&mut peer12, &mut peer13] {
        let event = crate::only_presence_event(peer, window).await;
        let Event::UserOnline(online) = &event else {
            panic!("expected userOnline, got {event:?}")
        };
        assert_eq!((online.vendor_id, online.customer_id), (Some(5), None));
    }
    let online = members(&mut client, "order:881").await;
    assert!(online.iter().any(|m| m.vendor_id == Some(5) && m.online));

    drop(first);
    for peer in [&mut peer12, &mut peer13] {
        let events = presence_events(peer, window).await;
        assert!(
            events.is_empty(),
            "closing one of two streams says nothing: {events:?}"
        );
    }

    drop(second);
    for peer in [&mut peer12, &mut peer13] {
        let event = crate::only_presence_event(peer, window).await;
        let Event::UserOffline(offline) = &event else {
            panic!("expected userOffline, got {event:?}")
        };
        assert_eq!((offline.vendor_id, offline.customer_id), (Some(5), None));
        assert!(offline.last_seen_at.ends_with('Z'), "{offline:?}");
    }
    assert!(presence_events(&mut stranger, window).await.is_empty());

    let after = members(&mut client, "order:881").await;
    let vendor = after.iter().find(|m| m.vendor_id == Some(5)).unwrap();
    assert!(!vendor.online);
    assert!(!vendor.last_seen_at.is_empty());
}

#[tokio::test]
async fn observer_streams_do_not_count_as_online() {
    let core = CoreProcess::start();
    let mut client = core.client().await;
    join(&mut client, "order:1", Some(5), None).await;
    join(&mut client, "order:1", None, Some(12)).await;
    let mut peer = crate::observer(&mut client, (None, Some(12))).await;
    let observer = open(&mut client, Some(5), None, false).await;
    assert!(
        presence_events(&mut peer, Duration::from_millis(500))
            .await
            .is_empty()
    );
    drop(observer);
    assert!(
        presence_events(&mut peer, Duration::from_millis(500))
            .await
            .is_empty()
    );
    // The peer would have heard: a presence stream of the same user is
    // announced to it.
    let _connection = open(&mut client, Some(5), None, true).await;
    let event = crate::next_presence_event(&mut peer).await;
    assert!(
        matches!(&event, Event::UserOnline(online) if online.vendor_id == Some(5)),
        "{event:?}"
    );
}

/// A core restarted within the presence TTL announces nobody whose
/// connection comes back; a user that does not come back goes offline once,
/// after the TTL.
#[tokio::test]
async fn a_restart_within_the_ttl_announces_only_those_who_left() {
    let mut core = CoreProcess::start_with(&["--presence-ttl", "3s"]);
    let mut client = core.client().await;
    join(&mut client, "order:3", Some(31), None).await;
    join(&mut client, "order:3", Some(32), None).await;
    join(&mut client, "order:3", None, Some(12)).await;
    let mut peer = crate::observer(&mut client, (None, Some(12))).await;
    let _staying = open(&mut client, Some(31), None, true).await;
    let _leaving = open(&mut client, Some(32), None, true).await;
    for _ in 0..2 {
        assert!(matches!(
            crate::next_presence_event(&mut peer).await,
            Event::UserOnline(_)
        ));
    }
    assert!(core.shut_down().await.success());
    core.start_again();
    // Everyone's connection comes back at once but vendor 32's.
    let mut client = core.client().await;
    let mut peer = crate::observer(&mut client, (None, Some(12))).await;
    let _back = open(&mut client, Some(31), None, true).await;
    // Past vendor 32's expiry, a TTL more in which vendor 31 must not go.
    let event = crate::only_presence_event(&mut peer, Duration::from_secs(3)).await;
    assert!(
        matches!(&event, Event::UserOffline(p) if p.vendor_id == Some(32)),
        "only vendor 32, once: {event:?}"
    );
}
