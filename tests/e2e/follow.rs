//! FollowUsers against a real core process: many users on one call, each
//! follow keeping StreamUserEvents' promises, a refused follow ending alone.

use std::collections::HashMap;
use std::time::Duration;

use notify::contract::proto::{self, follow_request::Command, user_event::Event};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::harness::{Client, CoreProcess};
use crate::{create_for_vendor, next_presence_event, observer};

/// One FollowUsers call: what to send, and what came back so far.
struct Call {
    requests: mpsc::UnboundedSender<proto::FollowRequest>,
    events: tonic::Streaming<proto::FollowedEvents>,
    pending: std::collections::VecDeque<proto::FollowedEvent>,
    /// The follows that ended, as their last events said.
    ended: HashMap<u64, proto::FollowEnded>,
}

impl Call {
    async fn open(client: &mut Client) -> Call {
        let (requests, outgoing) = mpsc::unbounded_channel();
        let events = client
            .follow_users(UnboundedReceiverStream::new(outgoing))
            .await
            .expect("the call opens")
            .into_inner();
        Call {
            requests,
            events,
            pending: Default::default(),
            ended: HashMap::new(),
        }
    }

    fn send(&self, command: Command) {
        let request = proto::FollowRequest {
            command: Some(command),
        };
        self.requests.send(request).expect("the call is open");
    }

    fn follow(&self, id: u64, stream: proto::StreamUserEventsRequest) {
        self.send(Command::Follow(proto::Follow {
            id,
            stream: Some(stream),
        }));
    }

    /// The next event of any follow (10 s at most).
    async fn next(&mut self) -> proto::FollowedEvent {
        while self.pending.is_empty() {
            let batch = tokio::time::timeout(Duration::from_secs(10), self.events.message())
                .await
                .expect("an event within 10 s")
                .expect("the call is fine")
                .expect("the call is open");
            self.pending.extend(batch.events);
        }
        self.pending.pop_front().expect("one is there")
    }

    /// Waits for follow `id`'s state (it is live then).
    async fn synced(&mut self, id: u64) {
        loop {
            let followed = self.next().await;
            assert!(followed.ended.is_none(), "{followed:?}");
            if followed.id == id
                && matches!(
                    followed.event,
                    Some(proto::UserEvent {
                        event: Some(Event::State(_)),
                        ..
                    })
                )
            {
                return;
            }
        }
    }

    /// The seqs of the next `n` notifications, by follow, and the vendor
    /// each was for.
    async fn notifications(&mut self, n: usize) -> HashMap<u64, Vec<(i64, i64)>> {
        let mut seen: HashMap<u64, Vec<(i64, i64)>> = HashMap::new();
        let mut count = 0;
        while count < n {
            let followed = self.next().await;
            if let Some(ended) = followed.ended {
                self.ended.insert(followed.id, ended);
                continue;
            }
            if let Some(proto::UserEvent {
                event: Some(Event::Notification(notification)),
                ..
            }) = followed.event
            {
                let vendor = notification.vendor_id.unwrap_or(0);
                seen.entry(followed.id)
                    .or_default()
                    .push((vendor, notification.seq));
                count += 1;
            }
        }
        seen
    }
}

fn vendor(id: i64) -> proto::StreamUserEventsRequest {
    proto::StreamUserEventsRequest {
        vendor_id: Some(id),
        ..Default::default()
    }
}

#[tokio::test]
async fn one_call_follows_many_users_and_a_refused_follow_ends_alone() {
    let core = CoreProcess::start();
    let mut client = core.client().await;
    for recipient in [1, 1, 2] {
        client
            .create_notification(create_for_vendor(recipient, serde_json::json!({"n": 1})))
            .await
            .unwrap();
    }
    let mut call = Call::open(&mut client).await;
    let replay = |id| proto::StreamUserEventsRequest {
        after_seq: Some(0),
        ..vendor(id)
    };
    call.follow(1, replay(1));
    call.follow(2, replay(2));
    call.follow(3, vendor(-4));
    let replayed = call.notifications(3).await;
    assert_eq!(
        replayed[&1],
        vec![(1, 1), (1, 2)],
        "vendor 1's, in seq order"
    );
    assert_eq!(replayed[&2], vec![(2, 1)], "vendor 2's");
    while !call.ended.contains_key(&3) {
        let followed = call.next().await;
        let ended = followed.ended.expect("nothing but follow 3's end is left");
        call.ended.insert(followed.id, ended);
    }
    let ended = &call.ended[&3];
    assert_eq!(ended.code, tonic::Code::InvalidArgument as i32);
    assert!(ended.message.contains("vendorId"), "{}", ended.message);

    client
        .create_notification(create_for_vendor(2, serde_json::json!({"n": 1})))
        .await
        .unwrap();
    client
        .create_notification(create_for_vendor(1, serde_json::json!({"n": 1})))
        .await
        .unwrap();
    let live = call.notifications(2).await;
    assert_eq!(
        live,
        HashMap::from([(1, vec![(1, 3)]), (2, vec![(2, 2)])]),
        "live, nothing twice"
    );

    call.send(Command::Unfollow(1));
    // Commands apply in order: once follow 4 is live, 1 is gone.
    call.follow(
        4,
        proto::StreamUserEventsRequest {
            sync: true,
            ..vendor(3)
        },
    );
    call.synced(4).await;
    client
        .create_notification(create_for_vendor(1, serde_json::json!({"n": 1})))
        .await
        .unwrap();
    client
        .create_notification(create_for_vendor(3, serde_json::json!({"n": 1})))
        .await
        .unwrap();
    // Changes reach the call in commit order: vendor 1's would come first.
    assert_eq!(
        call.notifications(1).await,
        HashMap::from([(4, vec![(3, 1)])])
    );
    assert_eq!(call.ended.len(), 1, "only follow 3 ended: {:?}", call.ended);
}

#[tokio::test]
async fn a_follow_with_presence_counts_its_user_online_until_unfollowed() {
    let core = CoreProcess::start();
    let mut client = core.client().await;
    for vendor_id in [51, 52] {
        client
            .join_room(proto::RoomRequest {
                room: "order:51".into(),
                vendor_id: Some(vendor_id),
                customer_id: None,
            })
            .await
            .unwrap();
    }
    let mut peer = observer(&mut client, (Some(52), None)).await;
    let mut call = Call::open(&mut client).await;
    call.follow(
        1,
        proto::StreamUserEventsRequest {
            presence: true,
            sync: true,
            ..vendor(51)
        },
    );
    call.synced(1).await;
    assert!(matches!(
        next_presence_event(&mut peer).await,
        Event::UserOnline(_)
    ));
    call.send(Command::Unfollow(1));
    assert!(matches!(
        next_presence_event(&mut peer).await,
        Event::UserOffline(_)
    ));
    // So does the end of the call, for the follows still on it.
    call.follow(
        2,
        proto::StreamUserEventsRequest {
            presence: true,
            sync: true,
            ..vendor(51)
        },
    );
    call.synced(2).await;
    assert!(matches!(
        next_presence_event(&mut peer).await,
        Event::UserOnline(_)
    ));
    drop(call);
    assert!(matches!(
        next_presence_event(&mut peer).await,
        Event::UserOffline(_)
    ));
}
