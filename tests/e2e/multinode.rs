//! Several cores on one PostgreSQL database: cross-core fan-out, gapless
//! seqs under contention, presence across cores (and its expiry when a core
//! is killed), and a PostgreSQL restart under load. The cases that involve
//! the fan-out run on each bus: LISTEN/NOTIFY, and NATS (`--bus`, a
//! `nats-server` of the case's own).

use std::time::Duration;

use notify::contract::proto::{self, StreamUserEventsRequest, user_event::Event};
use tonic::Streaming;

use crate::harness::{Client, CoreProcess, OwnPostgres, create_database, postgres_admin_url};
use crate::{assert_all_stored, only_presence_event, presence_events, read_notifications, simple};

fn core_on(url: &str, extra: &[&str]) -> CoreProcess {
    CoreProcess::start_on(url, extra, tempfile::tempdir().unwrap())
}

/// How a case's cores reach each other: LISTEN/NOTIFY, or a `nats-server`
/// of the case's own.
struct Bus(Option<notify_testkit::nats::OwnNats>);

impl Bus {
    /// A core on `url` on this bus, with `extra` flags.
    fn core(&self, url: &str, extra: &[&str]) -> CoreProcess {
        let bus = self.0.as_ref().map(|nats| nats.url());
        let mut flags: Vec<&str> = extra.to_vec();
        if let Some(bus) = &bus {
            flags.extend(["--bus", bus]);
        }
        core_on(url, &flags)
    }
}

/// Runs `case` once on each bus, as `case::listen` and `case::nats`.
macro_rules! on_each_bus {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn listen() {
                super::$case(super::Bus(None)).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn nats() {
                let Some(nats) = notify_testkit::nats::OwnNats::for_test() else {
                    return;
                };
                super::$case(super::Bus(Some(nats))).await
            }
        }
    )*};
}

on_each_bus!(
    four_cores_give_gapless_seqs_and_each_sees_the_others_creates,
    a_user_on_two_cores_is_offline_once_when_both_streams_close,
    the_presence_of_a_killed_core_expires_and_peers_hear_it_once,
    a_postgres_restart_under_load_loses_nothing_acknowledged,
);

async fn stream(
    client: &mut Client,
    user: (Option<i64>, Option<i64>),
    after: Option<i64>,
    presence: bool,
) -> Streaming<proto::UserEvent> {
    client
        .stream_user_events(StreamUserEventsRequest {
            vendor_id: user.0,
            customer_id: user.1,
            after_seq: after,
            presence,
            ..Default::default()
        })
        .await
        .expect("stream")
        .into_inner()
}

async fn four_cores_give_gapless_seqs_and_each_sees_the_others_creates(bus: Bus) {
    let Some(admin) = postgres_admin_url() else {
        return;
    };
    let url = create_database(&admin).await;
    let cores: Vec<CoreProcess> = (0..4).map(|_| bus.core(&url, &[])).collect();
    let mut watcher = cores[0].client().await;
    let mut live = stream(&mut watcher, (Some(7), None), Some(0), false).await;
    let mut tasks = Vec::new();
    for core in &cores {
        for task in 0..8 {
            let mut client = core.client().await;
            tasks.push(tokio::spawn(async move {
                let mut seqs = Vec::new();
                for n in 0..25 {
                    let created = client
                        .create_notification(simple(7, task * 100 + n))
                        .await
                        .expect("create");
                    seqs.push(created.into_inner().seq);
                }
                seqs
            }));
        }
    }
    let mut seqs = Vec::new();
    for task in tasks {
        seqs.extend(task.await.unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (1..=800).collect::<Vec<i64>>(),
        "4 cores × 8 tasks × 25: gapless, no duplicate"
    );
    // Created on all four cores, streamed from core 0, in seq order.
    let received: Vec<i64> = read_notifications(&mut live, 800)
        .await
        .iter()
        .map(|n| n.seq)
        .collect();
    assert_eq!(received, (1..=800).collect::<Vec<i64>>());
}

async fn a_user_on_two_cores_is_offline_once_when_both_streams_close(bus: Bus) {
    let Some(admin) = postgres_admin_url() else {
        return;
    };
    let url = create_database(&admin).await;
    let (a, b) = (bus.core(&url, &[]), bus.core(&url, &[]));
    let (mut on_a, mut on_b) = (a.client().await, b.client().await);
    for (vendor, customer) in [(Some(5), None), (None, Some(12))] {
        on_a.join_room(proto::RoomRequest {
            room: "order:881".into(),
            vendor_id: vendor,
            customer_id: customer,
        })
        .await
        .unwrap();
    }
    let mut peer = crate::observer(&mut on_b, (None, Some(12))).await;
    let first = stream(&mut on_a, (Some(5), None), None, true).await;
    let second = stream(&mut on_b, (Some(5), None), None, true).await;
    let window = Duration::from_millis(1500);
    let event = only_presence_event(&mut peer, window).await;
    assert!(
        matches!(&event, Event::UserOnline(p) if p.vendor_id == Some(5)),
        "{event:?}"
    );
    drop(first);
    assert!(
        presence_events(&mut peer, window).await.is_empty(),
        "still online through core B"
    );
    drop(second);
    let event = only_presence_event(&mut peer, window).await;
    assert!(
        matches!(&event, Event::UserOffline(p) if p.vendor_id == Some(5) && !p.last_seen_at.is_empty()),
        "{event:?}"
    );
}

async fn the_presence_of_a_killed_core_expires_and_peers_hear_it_once(bus: Bus) {
    let Some(admin) = postgres_admin_url() else {
        return;
    };
    let url = create_database(&admin).await;
    let ttl = ["--presence-ttl", "2s"];
    let (mut a, b) = (bus.core(&url, &ttl), bus.core(&url, &ttl));
    let (mut on_a, mut on_b) = (a.client().await, b.client().await);
    for (vendor, customer) in [(Some(5), None), (None, Some(12))] {
        on_b.join_room(proto::RoomRequest {
            room: "order:9".into(),
            vendor_id: vendor,
            customer_id: customer,
        })
        .await
        .unwrap();
    }
    let mut peer = crate::observer(&mut on_b, (None, Some(12))).await;
    let _doomed = stream(&mut on_a, (Some(5), None), None, true).await;
    let event = only_presence_event(&mut peer, Duration::from_millis(1500)).await;
    assert!(matches!(event, Event::UserOnline(_)), "{event:?}");
    a.kill9();
    // Entries live 2 s past the last heartbeat; the expiry runs every 2/3 s.
    let event = only_presence_event(&mut peer, Duration::from_secs(3)).await;
    assert!(
        matches!(&event, Event::UserOffline(p) if p.vendor_id == Some(5)),
        "{event:?}"
    );
    let members = on_b
        .list_room_members(proto::ListRoomMembersRequest {
            room: "order:9".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .members;
    assert!(members.iter().all(|m| !m.online), "{members:?}");
}

async fn a_postgres_restart_under_load_loses_nothing_acknowledged(bus: Bus) {
    if postgres_admin_url().is_none() {
        return;
    }
    // A server of this test's own: restarting the shared one would disturb
    // the other tests.
    let server = OwnPostgres::start().expect("a PostgreSQL server of our own");
    let url = create_database(&server.url).await;
    let core = bus.core(&url, &["--db-acquire-timeout", "1s"]);
    let client = core.client().await;
    let mut watcher = client.clone();
    let mut live = stream(&mut watcher, (Some(4), None), Some(0), false).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let mut writers = Vec::new();
    for writer in 0..6 {
        let mut client = client.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let (mut acked, mut refused) = (Vec::new(), 0);
            let mut n = 0;
            while !stop.is_cancelled() {
                n += 1;
                match client
                    .create_notification(simple(4, writer * 100_000 + n))
                    .await
                {
                    Ok(created) => acked.push(created.into_inner()),
                    Err(status) => {
                        assert!(
                            matches!(status.code(), tonic::Code::Unavailable),
                            "{status:?}"
                        );
                        refused += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            (acked, refused)
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    server.restart().expect("restart PostgreSQL");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.cancel();
    let (mut acked, mut refused) = (Vec::new(), 0);
    for writer in writers {
        let (a, r) = writer.await.unwrap();
        acked.extend(a);
        refused += r;
    }
    eprintln!(
        "{} acknowledged, {refused} refused with UNAVAILABLE during the restart",
        acked.len()
    );
    // The core recovered by itself: it creates again.
    let mut client = client.clone();
    let after = client
        .create_notification(simple(4, 0))
        .await
        .expect("the core recovers")
        .into_inner();
    assert_all_stored(&mut client, &acked).await;
    assert_eq!(
        after.seq,
        acked.len() as i64 + 1,
        "seqs stayed gapless across the restart"
    );
    // The stream opened before the restart ends up with every one of them.
    let received = read_notifications(&mut live, acked.len() + 1).await;
    let seqs: Vec<i64> = received.iter().map(|n| n.seq).collect();
    assert_eq!(seqs, (1..=acked.len() as i64 + 1).collect::<Vec<_>>());
}

/// Joins everyone to one room through `client`.
async fn room_of(client: &mut Client, room: &str, users: &[(Option<i64>, Option<i64>)]) {
    for &(vendor, customer) in users {
        client
            .join_room(proto::RoomRequest {
                room: room.into(),
                vendor_id: vendor,
                customer_id: customer,
            })
            .await
            .unwrap();
    }
}

async fn online(client: &mut Client, room: &str, vendor: i64) -> bool {
    client
        .list_room_members(proto::ListRoomMembersRequest { room: room.into() })
        .await
        .unwrap()
        .into_inner()
        .members
        .iter()
        .any(|m| m.vendor_id == Some(vendor) && m.online)
}

/// A core that stalls past the TTL loses its entries to another core's
/// expiry; when it comes back its users, still connected, are online again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_expired_while_a_core_stalled_are_written_again() {
    let Some(admin) = postgres_admin_url() else {
        return;
    };
    let url = create_database(&admin).await;
    let ttl = ["--presence-ttl", "2s"];
    let (a, b) = (core_on(&url, &ttl), core_on(&url, &ttl));
    let (mut on_a, mut on_b) = (a.client().await, b.client().await);
    room_of(&mut on_b, "order:5", &[(Some(5), None), (None, Some(12))]).await;
    let mut peer = crate::observer(&mut on_b, (None, Some(12))).await;
    let _connected = stream(&mut on_a, (Some(5), None), None, true).await;
    assert!(matches!(
        crate::next_presence_event(&mut peer).await,
        Event::UserOnline(_)
    ));
    a.signal("STOP");
    let gone = crate::next_presence_event(&mut peer).await;
    a.signal("CONT");
    assert!(matches!(gone, Event::UserOffline(_)), "{gone:?}");
    // Vendor 5's stream on core A never closed: A's next heartbeat finds its
    // entry gone and writes it again.
    let back = crate::next_presence_event(&mut peer).await;
    assert!(matches!(back, Event::UserOnline(_)), "{back:?}");
    assert!(online(&mut on_b, "order:5", 5).await);
}

/// Leases are measured on the database's clock: a core whose own clock is
/// a minute ahead neither expires other cores' live entries early nor
/// writes entries that outlive it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_core_with_a_clock_a_minute_ahead_expires_nobody_early() {
    let Some(admin) = postgres_admin_url() else {
        return;
    };
    let Some(faketime) = crate::harness::libfaketime() else {
        assert!(
            std::env::var_os("NOTIFY_REQUIRE_POSTGRES").is_none(),
            "libfaketime is missing (scripts/test installs Debian's faketime)"
        );
        return;
    };
    let url = create_database(&admin).await;
    let ttl = ["--presence-ttl", "2s"];
    let a = core_on(&url, &ttl);
    let ahead = CoreProcess::start_with_env(
        &url,
        &ttl,
        &[
            ("LD_PRELOAD", faketime.to_str().unwrap()),
            ("FAKETIME", "+60s"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
        tempfile::tempdir().unwrap(),
    );
    let (mut on_a, mut on_ahead) = (a.client().await, ahead.client().await);
    room_of(&mut on_a, "order:6", &[(Some(6), None), (None, Some(12))]).await;
    let mut peer = crate::observer(&mut on_a, (None, Some(12))).await;
    let _connected = stream(&mut on_a, (Some(6), None), None, true).await;
    assert!(matches!(
        crate::next_presence_event(&mut peer).await,
        Event::UserOnline(_)
    ));
    // Three TTLs of expiry runs by the core that is ahead.
    let events = presence_events(&mut peer, Duration::from_secs(6)).await;
    assert!(events.is_empty(), "{events:?}");
    assert!(online(&mut on_ahead, "order:6", 6).await);
    // And entries it writes expire on time once it is gone.
    room_of(&mut on_a, "order:6", &[(Some(7), None)]).await;
    let _theirs = stream(&mut on_ahead, (Some(7), None), None, true).await;
    let came = crate::next_presence_event(&mut peer).await;
    assert!(
        matches!(&came, Event::UserOnline(p) if p.vendor_id == Some(7)),
        "{came:?}"
    );
    drop(ahead);
    let gone = crate::next_presence_event(&mut peer).await;
    assert!(
        matches!(&gone, Event::UserOffline(p) if p.vendor_id == Some(7)),
        "{gone:?}"
    );
}

/// A core stopped with SIGTERM leaves its entries to expire: a user whose
/// connection moves to another core within the TTL (a rolling restart) is
/// announced to nobody; one that goes for good, once, after the TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_announces_nobody() {
    let Some(admin) = postgres_admin_url() else {
        return;
    };
    let url = create_database(&admin).await;
    let ttl = ["--presence-ttl", "3s"];
    let (mut a, b) = (core_on(&url, &ttl), core_on(&url, &ttl));
    let (mut on_a, mut on_b) = (a.client().await, b.client().await);
    room_of(
        &mut on_b,
        "order:8",
        &[(Some(8), None), (Some(9), None), (None, Some(12))],
    )
    .await;
    let mut peer = crate::observer(&mut on_b, (None, Some(12))).await;
    let _moving = stream(&mut on_a, (Some(8), None), None, true).await;
    let _leaving = stream(&mut on_a, (Some(9), None), None, true).await;
    for _ in 0..2 {
        assert!(matches!(
            crate::next_presence_event(&mut peer).await,
            Event::UserOnline(_)
        ));
    }
    assert!(a.shut_down().await.success());
    // Vendor 8's connection moves to core B; vendor 9's does not come back.
    let _moved = stream(&mut on_b, (Some(8), None), None, true).await;
    // Past vendor 9's expiry, a TTL more in which vendor 8 must not go.
    let event = only_presence_event(&mut peer, Duration::from_secs(3)).await;
    assert!(
        matches!(&event, Event::UserOffline(p) if p.vendor_id == Some(9)),
        "only vendor 9, once: {event:?}"
    );
    assert!(online(&mut on_b, "order:8", 8).await);
}
