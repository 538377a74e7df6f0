//! A stream that missed events (its queue overflowed while its reader was
//! slow, or it opened while creates raced it) still brings its reader to
//! the current state: every notification, every status, the unread count
//! as it is now, and the room peers' presence as it is now.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use notify::contract::proto::{self, StreamUserEventsRequest, user_event::Event};
use tonic::Streaming;

use crate::harness::{Client, CoreProcess};
use crate::{create_for_vendor, simple};

/// What a reader knows from the events it read.
#[derive(Default, Debug)]
struct View {
    /// Status per notification id.
    statuses: HashMap<String, i32>,
    /// Seqs of the notifications, in arrival order.
    seqs: Vec<i64>,
    /// The last unread count it was told.
    unread: Option<i64>,
    /// Presence events about each peer, in order (true: online).
    presence: HashMap<(Option<i64>, Option<i64>), Vec<bool>>,
}

impl View {
    fn apply(&mut self, event: proto::UserEvent) {
        if let Some(count) = event.unread_count {
            self.unread = Some(count);
        }
        match event.event {
            Some(Event::Notification(n)) => {
                self.seqs.push(n.seq);
                self.statuses.insert(n.id, n.status);
            }
            Some(Event::NotificationUpdated(updated)) => {
                for id in updated.ids {
                    self.statuses.insert(id, updated.status);
                }
            }
            Some(Event::UserOnline(peer)) => self.peer(peer, true),
            Some(Event::UserOffline(peer)) => self.peer(peer, false),
            _ => {}
        }
    }

    fn peer(&mut self, peer: proto::PresenceChange, online: bool) {
        self.presence
            .entry((peer.vendor_id, peer.customer_id))
            .or_default()
            .push(online);
    }

    /// Reads until `done` holds (10 s at most, then says what it has).
    async fn read_until(
        &mut self,
        stream: &mut Streaming<proto::UserEvent>,
        what: &str,
        done: impl Fn(&View) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !done(self) {
            match tokio::time::timeout_at(deadline, stream.message()).await {
                Ok(message) => self.apply(message.expect("stream ok").expect("stream open")),
                Err(_) => panic!(
                    "{what} never held; the reader has {} notifications, unread {:?}, presence {:?}",
                    self.seqs.len(),
                    self.unread,
                    self.presence
                ),
            }
        }
    }
}

async fn open(
    client: &mut Client,
    vendor: i64,
    after_seq: Option<i64>,
) -> Streaming<proto::UserEvent> {
    client
        .stream_user_events(StreamUserEventsRequest {
            vendor_id: Some(vendor),
            after_seq,
            ..Default::default()
        })
        .await
        .expect("stream")
        .into_inner()
}

/// `notify_stream_lagged_total`: events dropped because a queue was full.
async fn lagged(core: &CoreProcess) -> u64 {
    let metrics = crate::api::reqwest_metrics(core.metrics_addr).await;
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("notify_stream_lagged_total "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits until the core has dropped more than `before` events.
async fn dropped_past(core: &CoreProcess, before: u64) -> u64 {
    for _ in 0..500 {
        let now = lagged(core).await;
        if now > before {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no event was dropped");
}

/// Creates 4 KB notifications for `vendor` until a stream of it that reads
/// nothing has overflowed: everything published for it from now on is dropped.
async fn overflow(core: &CoreProcess, client: &mut Client, vendor: i64) -> usize {
    let before = lagged(core).await;
    let padding = "x".repeat(4096);
    let mut created = 0;
    while lagged(core).await == before {
        for _ in 0..50 {
            let content = serde_json::json!({"n": created, "padding": padding});
            client
                .create_notification(create_for_vendor(vendor, content))
                .await
                .unwrap();
            created += 1;
        }
        assert!(created < 5_000, "the stream never overflowed");
    }
    created
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_overflow_the_reader_has_the_current_count_and_every_status() {
    let core = CoreProcess::start();
    let mut client = core.client().await;
    // The slow reader has a connection of its own, as a slow client would.
    let mut slow_client = core.client().await;
    let mut slow = open(&mut slow_client, 31, Some(0)).await;
    let created = overflow(&core, &mut client, 31).await;
    // A mark while the stream's queue is full: its event is dropped.
    let before = lagged(&core).await;
    let page = client
        .list_offline(proto::ListOfflineRequest {
            vendor_id: Some(31),
            page: Some(1),
            limit: Some(100),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let read: Vec<String> = page.items.iter().map(|n| n.id.clone()).collect();
    client
        .mark_notifications(proto::MarkNotificationsRequest {
            vendor_id: Some(31),
            ids: read.clone(),
            status: proto::Status::Read as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    dropped_past(&core, before).await;

    let unread = (created - read.len()) as i64;
    let mut view = View::default();
    view.read_until(&mut slow, "every notification and status", |v| {
        v.seqs.len() >= created
            && read
                .iter()
                .all(|id| v.statuses.get(id) == Some(&(proto::Status::Read as i32)))
            && v.unread == Some(unread)
    })
    .await;
    assert_eq!(view.seqs, (1..=created as i64).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_overflow_the_reader_hears_where_room_peers_are_now() {
    let core = CoreProcess::start();
    let mut client = core.client().await;
    for vendor in [41, 42] {
        client
            .join_room(proto::RoomRequest {
                room: "order:41".into(),
                vendor_id: Some(vendor),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let mut slow_client = core.client().await;
    let mut slow = open(&mut slow_client, 41, Some(0)).await;
    let created = overflow(&core, &mut client, 41).await;
    // Vendor 42 comes online, goes offline and comes online again while
    // vendor 41's queue is full: each announcement to it is dropped.
    let before = lagged(&core).await;
    let presence = |client: &mut Client| {
        let mut client = client.clone();
        async move {
            client
                .stream_user_events(StreamUserEventsRequest {
                    vendor_id: Some(42),
                    presence: true,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let first = presence(&mut client).await;
    let mut dropped = dropped_past(&core, before).await;
    drop(first);
    dropped = dropped_past(&core, dropped).await;
    let _online = presence(&mut client).await;
    dropped_past(&core, dropped).await;

    let mut view = View::default();
    view.read_until(&mut slow, "vendor 42 online", |v| {
        v.seqs.len() >= created
            && v.presence.get(&(Some(42), None)).and_then(|p| p.last()) == Some(&true)
    })
    .await;
    let heard = &view.presence[&(Some(42), None)];
    assert!(
        heard.windows(2).all(|w| w[0] != w[1]),
        "presence alternates: {heard:?}"
    );
}

/// A live-only stream delivers every notification committed after its
/// response arrived, even while creates race its opening.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_stream_misses_nothing_created_after_it_opened() {
    let core = CoreProcess::start();
    let client = core.client().await;
    let stop = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for writer in 0..6 {
        let mut client = client.clone();
        let stop = stop.clone();
        let started = started.clone();
        writers.push(tokio::spawn(async move {
            // (creation index, seq): the index counts creates started.
            let mut made = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let index = started.fetch_add(1, Ordering::SeqCst);
                let created = client
                    .create_notification(simple(51, writer * 1_000_000 + index as i64))
                    .await
                    .unwrap()
                    .into_inner();
                made.push((index, created.seq));
            }
            made
        }));
    }
    let mut streams = Vec::new();
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(30)).await;
        let mut client = client.clone();
        let stream = open(&mut client, 51, None).await;
        // Every create started from now on was committed after the stream opened.
        streams.push((started.load(Ordering::SeqCst), stream));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::Relaxed);
    let mut made = Vec::new();
    for writer in writers {
        made.extend(writer.await.unwrap());
    }
    for (opened_at, mut stream) in streams {
        let due: Vec<i64> = made
            .iter()
            .filter(|(index, _)| *index >= opened_at)
            .map(|(_, seq)| *seq)
            .collect();
        let mut view = View::default();
        view.read_until(
            &mut stream,
            "every notification created after opening",
            |v| due.iter().all(|seq| v.seqs.contains(seq)),
        )
        .await;
    }
}

/// Opens a `sync` stream resuming from `resume` and reads up to its first state.
async fn open_synced(
    client: &mut Client,
    vendor: i64,
    resume: Option<&proto::StreamState>,
) -> (Streaming<proto::UserEvent>, View, proto::StreamState) {
    let request = StreamUserEventsRequest {
        vendor_id: Some(vendor),
        after_seq: Some(resume.map_or(0, |s| s.last_seq)),
        after_id: resume.map(|s| s.last_id.clone()).unwrap_or_default(),
        after_version: resume.map(|s| s.version),
        epoch: resume.map(|s| s.epoch.clone()).unwrap_or_default(),
        sync: true,
        ..Default::default()
    };
    let mut stream = client
        .stream_user_events(request)
        .await
        .expect("stream")
        .into_inner();
    let mut view = View::default();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("a state event within 10 s")
            .expect("stream ok")
            .expect("stream open");
        if let Some(Event::State(state)) = &event.event {
            let state = state.clone();
            view.apply(event);
            return (stream, view, state);
        }
        view.apply(event);
    }
}

#[tokio::test]
async fn a_synced_reader_resumes_with_what_changed_meanwhile_and_nothing_else() {
    let core = CoreProcess::start();
    let mut client = core.client().await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(
            client
                .create_notification(simple(61, n))
                .await
                .unwrap()
                .into_inner()
                .id,
        );
    }
    let (first, view, state) = open_synced(&mut client, 61, None).await;
    assert_eq!(view.seqs, vec![1, 2, 3, 4, 5]);
    assert_eq!((state.last_seq, &state.last_id), (5, &ids[4]));
    assert_eq!(view.unread, Some(5));
    assert!(!state.reset);
    let listed = client
        .list_offline(proto::ListOfflineRequest {
            vendor_id: Some(61),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state.epoch, listed.epoch);
    assert_eq!(state.version, listed.version);
    drop(first);

    // While the reader is away: two read, one new.
    client
        .mark_notifications(proto::MarkNotificationsRequest {
            vendor_id: Some(61),
            ids: ids[..2].to_vec(),
            status: proto::Status::Read as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    let new = client
        .create_notification(simple(61, 5))
        .await
        .unwrap()
        .into_inner();
    let (_second, view, resumed) = open_synced(&mut client, 61, Some(&state)).await;
    assert!(!resumed.reset);
    assert_eq!(view.seqs, vec![6], "only the new one, once");
    let read = proto::Status::Read as i32;
    assert_eq!(view.statuses.get(&ids[0]), Some(&read));
    assert_eq!(view.statuses.get(&ids[1]), Some(&read));
    assert_eq!(view.statuses.len(), 3, "{view:?}");
    assert_eq!(view.unread, Some(4));
    assert_eq!((resumed.last_seq, resumed.last_id), (6, new.id));
}

#[tokio::test]
async fn a_reader_of_a_database_restored_from_a_backup_resets_instead_of_skipping() {
    let mut core = CoreProcess::start();
    let mut client = core.client().await;
    for n in 0..2 {
        client.create_notification(simple(71, n)).await.unwrap();
    }
    // A backup, taken with the core stopped.
    core.kill9();
    let backup = tempfile::tempdir().unwrap();
    let files = core.sqlite_files();
    for (index, file) in files.iter().enumerate() {
        if file.exists() {
            std::fs::copy(file, backup.path().join(index.to_string())).unwrap();
        }
    }
    core.start_again();
    let mut client = core.client().await;
    for n in 2..5 {
        client.create_notification(simple(71, n)).await.unwrap();
    }
    let (reader, _, state) = open_synced(&mut client, 71, None).await;
    assert_eq!(state.last_seq, 5);
    drop(reader);

    // The backup comes back: seqs 3 to 5 are gone, and will be given again.
    core.kill9();
    for (index, file) in files.iter().enumerate() {
        let saved = backup.path().join(index.to_string());
        if saved.exists() {
            std::fs::copy(&saved, file).unwrap();
        } else {
            let _ = std::fs::remove_file(file);
        }
    }
    core.start_again();
    let mut client = core.client().await;

    // Resuming at seq 5 of a database that has 2 would skip the next three.
    let (mut ahead, _, reset) = open_synced(&mut client, 71, Some(&state)).await;
    assert!(reset.reset, "{reset:?}");
    let created = client
        .create_notification(simple(71, 9))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.seq, 3);
    let mut view = View::default();
    view.read_until(&mut ahead, "the new seq 3", |v| v.seqs.contains(&3))
        .await;

    // Once seqs 3 to 5 exist again, they are other notifications: the id
    // at afterSeq tells.
    for n in 10..12 {
        client.create_notification(simple(71, n)).await.unwrap();
    }
    let (mut behind, _, reset) = open_synced(&mut client, 71, Some(&state)).await;
    assert!(
        reset.reset,
        "the notification at seq 5 is not the reader's: {reset:?}"
    );
    client.create_notification(simple(71, 12)).await.unwrap();
    let mut view = View::default();
    view.read_until(&mut behind, "the new seq 6", |v| v.seqs.contains(&6))
        .await;

    // Another epoch resets too.
    let other = proto::StreamState {
        epoch: "0123456789abcdef01234567".into(),
        ..reset
    };
    let (_, _, reset) = open_synced(&mut client, 71, Some(&other)).await;
    assert!(reset.reset);
}
