//! One test suite for every Store implementation, so SQLite and PostgreSQL
//! cannot drift apart. Each case runs against a fresh SQLite file and a
//! fresh PostgreSQL database. The PostgreSQL half needs
//! `NOTIFY_TEST_POSTGRES_URL` (an admin URL; `scripts/test` starts a server
//! and sets it); without it those cases say so and pass, unless
//! `NOTIFY_REQUIRE_POSTGRES=1`, which `scripts/test` also sets.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify_store::{
    Action, ActionRefused, ByCategory, Change, ChangePosition, ChangeSink, Channel, ListQuery,
    NewNotification, PageStart, PgOptions, PgStore, SqliteOptions, SqliteStore, Status, Store,
    StoreError, User, View, new_object_id,
};
use sqlx::Connection;

#[derive(Default)]
struct Changes(Mutex<Vec<Change>>);

impl ChangeSink for Changes {
    fn publish(&self, change: Change) {
        self.0.lock().unwrap().push(change);
    }
}

impl Changes {
    /// Waits (PostgreSQL delivers through LISTEN) until `pick` finds `count`.
    async fn wait_for<T>(&self, count: usize, pick: impl Fn(&Change) -> Option<T>) -> Vec<T> {
        for _ in 0..200 {
            let found: Vec<T> = self.0.lock().unwrap().iter().filter_map(&pick).collect();
            if found.len() >= count {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        self.0.lock().unwrap().iter().filter_map(&pick).collect()
    }
}

struct Backend {
    store: Arc<dyn Store>,
    changes: Arc<Changes>,
    url: String,
    _dir: Option<tempfile::TempDir>,
}

impl Backend {
    /// Runs `sql` behind the store's back.
    async fn execute(&self, sql: &'static str) {
        if self.url.starts_with("sqlite:") {
            let mut connection = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
            sqlx::query(sql).execute(&mut connection).await.unwrap();
        } else {
            let mut connection = sqlx::PgConnection::connect(&self.url).await.unwrap();
            sqlx::query(sql).execute(&mut connection).await.unwrap();
        }
    }

    /// How many `users` rows the database holds, read behind the store's back.
    async fn users_rows(&self) -> i64 {
        let sql = "SELECT COUNT(*) FROM users";
        if self.url.starts_with("sqlite:") {
            let mut connection = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
            sqlx::query_scalar(sql)
                .fetch_one(&mut connection)
                .await
                .unwrap()
        } else {
            let mut connection = sqlx::PgConnection::connect(&self.url).await.unwrap();
            sqlx::query_scalar(sql)
                .fetch_one(&mut connection)
                .await
                .unwrap()
        }
    }
}

async fn sqlite() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let changes = Arc::new(Changes::default());
    let url = format!("sqlite://{}", dir.path().join("suite.db").display());
    let store = SqliteStore::open(&url, SqliteOptions::default(), changes.clone())
        .await
        .unwrap();
    Backend {
        store: Arc::new(store),
        changes,
        url,
        _dir: Some(dir),
    }
}

/// A fresh database on the test server, or `None` if there is no server.
pub async fn postgres_database() -> Option<String> {
    notify_testkit::postgres::database().await
}

async fn postgres() -> Option<Backend> {
    let url = postgres_database().await?;
    let changes = Arc::new(Changes::default());
    let store = PgStore::open(&url, PgOptions::default(), changes.clone())
        .await
        .unwrap();
    Some(Backend {
        store: Arc::new(store),
        changes,
        url,
        _dir: None,
    })
}

fn new(user: User, n: i64) -> NewNotification {
    NewNotification {
        id: None,
        recipient: user,
        kind: "order:paid".into(),
        channel: Channel::Push,
        content: format!(r#"{{"n":{n},"price":"22","ok":true}}"#),
        priority: 1,
        idempotency_key: None,
        category: "order".into(),
        expires_at: None,
        collapse_key: None,
        actions: Vec::new(),
    }
}

/// Runs each case against both backends.
macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod on_sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                super::$case(super::sqlite().await).await;
            })*
        }
        mod on_postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                if let Some(backend) = super::postgres().await {
                    super::$case(backend).await;
                }
            })*
        }
    };
}

suite!(
    seqs_are_gapless_under_concurrency,
    content_comes_back_exactly_and_changes_are_published,
    idempotency_keys_are_unique_per_recipient,
    marking_moves_forward_and_keeps_the_unread_count,
    receipts_for_many_users_at_once_touch_only_their_own,
    marks_for_users_without_notifications_store_nothing,
    pages_are_newest_first_with_one_snapshot,
    keyset_pages_continue_where_the_last_page_ended,
    an_unreadable_row_is_corrupt_not_unavailable,
    rooms_and_peers,
    presence_counts_every_node_and_expires,
    changes_take_versions_and_read_back_in_order,
    the_epoch_is_made_once_per_database,
    a_mark_of_many_ids_is_published_whole,
    counts_by_category_stay_exact_under_every_change,
    archived_ones_leave_the_inbox_and_come_back,
    mark_all_is_one_change_up_to_a_seq_and_of_a_category,
    expired_ones_leave_every_list_and_count_once,
    retention_deletes_only_what_is_not_unread,
    erasure_deletes_everything_and_seqs_go_on,
    a_collapse_key_replaces_the_unread_one_and_the_count_does_not_grow,
    an_action_is_taken_once_and_reads_the_notification,
    preferences_turn_pairs_off_and_on_and_say_who_muted,
    scheduled_ones_wait_unseen_then_take_their_seq_when_sent,
    a_topic_fans_out_once_to_each_subscriber_in_batches,
);

async fn a_topic_fans_out_once_to_each_subscriber_in_batches(b: Backend) {
    let topic = "store:7:followers";
    let followers: Vec<User> = (1..=1200).map(User::customer).collect();
    let mut added = 0;
    for chunk in followers.chunks(1000) {
        added += b.store.subscribe(topic, chunk).await.unwrap();
    }
    assert_eq!(added, 1200);
    assert_eq!(
        b.store.subscribe(topic, &followers[..10]).await.unwrap(),
        0,
        "already"
    );
    let vendor = User::vendor(1);
    b.store.subscribe(topic, &[vendor]).await.unwrap();
    assert_eq!(
        b.store
            .unsubscribe(topic, &[vendor, User::vendor(2)])
            .await
            .unwrap(),
        1
    );
    assert_eq!(b.store.subscribers(topic).await.unwrap(), 1200);
    assert_eq!(b.store.subscribers("store:8:followers").await.unwrap(), 0);
    // One follower had a notification already; one muted the category.
    b.store.create(vec![new(followers[0], 0)]).await.unwrap();
    b.store
        .set_preferences(followers[1], vec![rule("order", Channel::Push, false)])
        .await
        .unwrap()
        .unwrap();

    let publish = notify_store::Publish {
        topic: topic.into(),
        template: NewNotification {
            idempotency_key: Some("sale-2026-12".into()),
            ..new(vendor, 9)
        },
        critical: false,
    };
    let fanout = b.store.publish(publish.clone()).await.unwrap();
    assert_eq!(
        (fanout.recipients, fanout.created, fanout.done),
        (1200, 0, false)
    );
    // Subscribing later does not add to a fan-out already recorded.
    b.store
        .subscribe(topic, &[User::customer(5000)])
        .await
        .unwrap();
    let again = b.store.publish(publish).await.unwrap();
    assert_eq!(again.id, fanout.id, "the same key answers the same fan-out");

    let mut steps = 0;
    while b.store.fanout_step(500).await.unwrap() {
        steps += 1;
        assert!(steps < 10, "a fan-out ends");
    }
    assert_eq!(steps, 3, "500 + 500 + 200");
    let state = b.store.fanout(&fanout.id).await.unwrap().unwrap();
    assert_eq!(
        (state.created, state.suppressed, state.done),
        (1199, 1, true)
    );
    assert_eq!(state.recipients, 1200);
    for (n, follower) in followers.iter().enumerate().step_by(97) {
        let counts = b.store.unread_counts(*follower).await.unwrap();
        let expected = match n {
            0 => 2,
            1 => 0,
            _ => 1,
        };
        assert_eq!(counts.unread, expected, "follower {n}");
    }
    let first = listed(&b, followers[0], View::All, None).await;
    assert_eq!(first.len(), 2, "its own seq after the one it had");
    assert!(
        listed(&b, User::customer(5000), View::All, None)
            .await
            .is_empty()
    );
    assert!(b.store.fanout(&new_object_id()).await.unwrap().is_none());
}

async fn scheduled_ones_wait_unseen_then_take_their_seq_when_sent(b: Backend) {
    let (user, other) = (User::customer(71), User::customer(72));
    b.store.create(vec![new(user, 0)]).await.unwrap();
    let later = notify_store::now_millis() + 60_000;
    let keyed = NewNotification {
        idempotency_key: Some("reminder-9am".into()),
        ..new(user, 1)
    };
    let pending = b
        .store
        .schedule(vec![keyed.clone(), new(user, 2)], later)
        .await
        .unwrap();
    let ids: Vec<String> = pending.iter().map(|c| c.notification.id.clone()).collect();
    for created in &pending {
        let n = &created.notification;
        assert!(created.fresh);
        assert_eq!(
            (n.status, n.seq, n.send_at),
            (Status::Pending, 0, Some(later))
        );
    }
    // The same key again answers the pending one.
    let again = b.store.schedule(vec![keyed], later).await.unwrap();
    assert_eq!(again[0].notification.id, ids[0]);
    assert!(!again[0].fresh);
    // Pending: readable by id, in no list, count or change.
    let read = b.store.get(&ids[0]).await.unwrap().unwrap();
    assert_eq!((read.status, read.send_at), (Status::Pending, Some(later)));
    assert_eq!(b.store.unread_counts(user).await.unwrap().unread, 1);
    assert_eq!(listed(&b, user, View::All, None).await.len(), 1);
    assert!(
        b.store.due(later - 1, 100).await.unwrap().is_empty(),
        "not due yet"
    );

    // Cancelled: gone, never sent; a sent one and an unknown one are refused.
    assert_eq!(b.store.cancel(&ids[1]).await.unwrap().unwrap().id, ids[1]);
    assert_eq!(
        b.store.cancel(&ids[1]).await.unwrap(),
        Err(notify_store::CancelRefused::NotFound)
    );
    let sent_one = b.store.create(vec![new(other, 0)]).await.unwrap();
    assert_eq!(
        b.store.cancel(&sent_one[0].notification.id).await.unwrap(),
        Err(notify_store::CancelRefused::NotPending)
    );

    // Due: sent with its id and the next seq, exactly once.
    let due = b.store.due(later, 100).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].id.as_deref(), Some(ids[0].as_str()));
    let sent = b.store.send_due(due.clone(), Vec::new()).await.unwrap();
    assert_eq!(sent.len(), 1);
    let n = &sent[0].notification;
    assert_eq!(
        (n.id.as_str(), n.seq, n.status),
        (ids[0].as_str(), 2, Status::Sent)
    );
    assert_eq!(n.send_at, None);
    let published = b
        .changes
        .wait_for(3, |c| match c {
            Change::Created { notification, .. } => Some(notification.id.clone()),
            _ => None,
        })
        .await;
    assert!(published.contains(&ids[0]), "its creation is published");
    assert!(
        b.store.send_due(due, Vec::new()).await.unwrap().is_empty(),
        "a second send of the same rows creates nothing"
    );
    assert!(b.store.due(later, 100).await.unwrap().is_empty());
    assert_eq!(b.store.get(&ids[0]).await.unwrap().unwrap().seq, 2);
    assert_eq!(b.store.unread_counts(user).await.unwrap().unread, 2);

    // Dropped (a muted recipient): leaves the table, creates nothing.
    let dropped = b.store.schedule(vec![new(other, 5)], later).await.unwrap();
    let id = dropped[0].notification.id.clone();
    let due = b.store.due(later, 100).await.unwrap();
    assert!(
        b.store
            .send_due(Vec::new(), vec![id.clone()])
            .await
            .unwrap()
            .is_empty()
    );
    assert!(b.store.get(&id).await.unwrap().is_none());
    assert!(b.store.send_due(due, Vec::new()).await.unwrap().is_empty());
}

fn rule(category: &str, channel: Channel, enabled: bool) -> notify_store::Rule {
    notify_store::Rule {
        category: category.into(),
        channel,
        enabled,
    }
}

async fn preferences_turn_pairs_off_and_on_and_say_who_muted(b: Backend) {
    let (a, c, quiet) = (User::vendor(61), User::customer(61), User::customer(62));
    assert!(b.store.preferences(a).await.unwrap().is_empty(), "all on");
    let set = b
        .store
        .set_preferences(
            a,
            vec![
                rule("marketing", Channel::Push, false),
                rule("marketing", Channel::Email, false),
                rule("order", Channel::Sms, false),
                rule("order", Channel::Sms, true),
            ],
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        set,
        vec![
            rule("marketing", Channel::Push, false),
            rule("marketing", Channel::Email, false),
        ],
        "ordered by category, then channel; the later rule wins"
    );
    assert_eq!(b.store.preferences(a).await.unwrap(), set);
    b.store
        .set_preferences(c, vec![rule("marketing", Channel::Push, false)])
        .await
        .unwrap()
        .unwrap();
    let muted = b
        .store
        .muted(&[a, quiet, c], "marketing", Channel::Push)
        .await
        .unwrap();
    let mut muted = muted;
    muted.sort_unstable();
    assert_eq!(muted, vec![a, c]);
    assert!(
        b.store
            .muted(&[a, c], "marketing", Channel::InApp)
            .await
            .unwrap()
            .is_empty()
    );
    // Back on: the pair leaves the list.
    let set = b
        .store
        .set_preferences(a, vec![rule("marketing", Channel::Push, true)])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(set, vec![rule("marketing", Channel::Email, false)]);
    // Past the limit: refused whole, nothing changes.
    let many: Vec<_> = (0..=notify_store::MAX_MUTED_PER_USER)
        .map(|n| rule(&format!("c{n}"), Channel::Push, false))
        .collect();
    assert_eq!(
        b.store.set_preferences(a, many).await.unwrap(),
        Err(notify_store::PreferencesRefused::TooMany)
    );
    assert_eq!(b.store.preferences(a).await.unwrap(), set);
    // Erasure takes them too.
    b.store.erase_user(c).await.unwrap();
    assert!(b.store.preferences(c).await.unwrap().is_empty());
    assert!(
        b.store
            .muted(&[c], "marketing", Channel::Push)
            .await
            .unwrap()
            .is_empty()
    );
    // A store opened again on the same database knows who muted what.
    if b.url.starts_with("sqlite:") {
        let again = SqliteStore::open(&b.url, SqliteOptions::default(), b.changes.clone())
            .await
            .unwrap();
        let muted = again
            .muted(&[a, c], "marketing", Channel::Email)
            .await
            .unwrap();
        assert_eq!(muted, vec![a]);
    }
}

async fn seqs_are_gapless_under_concurrency(b: Backend) {
    let user = User::vendor(7);
    let mut tasks = Vec::new();
    for task in 0..16 {
        let store = b.store.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for n in 0..25 {
                // Mixed single and multi-recipient calls.
                let batch = if n % 5 == 0 {
                    vec![new(user, task * 100 + n), new(User::customer(7), n)]
                } else {
                    vec![new(user, task * 100 + n)]
                };
                for created in b_create(&store, batch).await {
                    if created.0 == user {
                        seqs.push(created.1);
                    }
                }
            }
            seqs
        }));
    }
    let mut seqs = Vec::new();
    for task in tasks {
        seqs.extend(task.await.unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=400).collect::<Vec<i64>>());
    assert_eq!(b.store.user_state(user).await.unwrap().last_seq, 400);
    assert_eq!(
        b.store
            .user_state(User::customer(7))
            .await
            .unwrap()
            .last_seq,
        80
    );
    let stored: Vec<i64> = b
        .store
        .after_seq(user, 0, 1000)
        .await
        .unwrap()
        .iter()
        .map(|n| n.seq)
        .collect();
    assert_eq!(stored, (1..=400).collect::<Vec<i64>>());
}

async fn b_create(store: &Arc<dyn Store>, batch: Vec<NewNotification>) -> Vec<(User, i64)> {
    store
        .create(batch)
        .await
        .unwrap()
        .iter()
        .map(|c| (c.notification.recipient, c.notification.seq))
        .collect()
}

async fn content_comes_back_exactly_and_changes_are_published(b: Backend) {
    let user = User::customer(12);
    let content = r#"{"data":{"id":63,"list":[1,null,true,"é"],"x":3244.9},"message":"hi"}"#;
    let created = b
        .store
        .create(vec![NewNotification {
            content: content.into(),
            ..new(user, 0)
        }])
        .await
        .unwrap()
        .remove(0);
    assert!(created.fresh);
    assert_eq!(created.notification.status, Status::Sent);
    let fetched = b
        .store
        .get(&created.notification.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(fetched.content, content);
    assert_eq!(fetched, created.notification);
    assert_eq!(b.store.get(&new_object_id()).await.unwrap(), None);
    let published = b
        .changes
        .wait_for(1, |c| match c {
            Change::Created {
                notification,
                unread,
                ..
            } => Some((notification.id.clone(), *unread)),
            _ => None,
        })
        .await;
    assert_eq!(published, vec![(created.notification.id.clone(), 1)]);
}

async fn idempotency_keys_are_unique_per_recipient(b: Backend) {
    let keyed = |user, n| NewNotification {
        idempotency_key: Some("order-881".into()),
        ..new(user, n)
    };
    let first = b
        .store
        .create(vec![keyed(User::vendor(5), 1)])
        .await
        .unwrap();
    let again = b
        .store
        .create(vec![keyed(User::vendor(5), 2)])
        .await
        .unwrap();
    assert_eq!(first[0].notification, again[0].notification);
    assert!(!again[0].fresh);
    let other = b
        .store
        .create(vec![keyed(User::customer(5), 1)])
        .await
        .unwrap();
    assert!(other[0].fresh);
    // Twice in one batch: one row.
    let twice = b
        .store
        .create(vec![keyed(User::vendor(6), 1), keyed(User::vendor(6), 2)])
        .await
        .unwrap();
    assert_eq!(twice[0].notification.id, twice[1].notification.id);
    assert_eq!(
        b.store.user_state(User::vendor(5)).await.unwrap().last_seq,
        1
    );
    assert_eq!(
        b.store.user_state(User::vendor(6)).await.unwrap().last_seq,
        1
    );
}

async fn marking_moves_forward_and_keeps_the_unread_count(b: Backend) {
    let user = User::vendor(9);
    let ids: Vec<String> = b
        .store
        .create((0..5).map(|n| new(user, n)).collect())
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.notification.id)
        .collect();
    let delivered = b
        .store
        .mark(user, ids[..2].to_vec(), Status::Delivered)
        .await
        .unwrap();
    assert_eq!((delivered.updated.len(), delivered.unread), (2, 5));
    let read = b
        .store
        .mark(user, ids[..3].to_vec(), Status::Read)
        .await
        .unwrap();
    assert_eq!((read.updated.len(), read.unread), (3, 2));
    let backwards = b
        .store
        .mark(user, ids.clone(), Status::Delivered)
        .await
        .unwrap();
    assert_eq!(backwards.updated.len(), 2, "only the two still SENT move");
    let stranger = b
        .store
        .mark(User::customer(9), ids.clone(), Status::Read)
        .await
        .unwrap();
    assert!(stranger.updated.is_empty());
    assert_eq!(
        b.store.get(&ids[0]).await.unwrap().unwrap().status,
        Status::Read
    );
    let page = b
        .store
        .list(user, &ListQuery::inbox(), PageStart::Page(1), 20)
        .await
        .unwrap();
    assert_eq!(page.total, 2);
    assert_eq!(page.items.len(), 2);
    let updates = b
        .changes
        .wait_for(3, |c| match c {
            Change::Updated { update, unread, .. } => Some((update.status.unwrap(), *unread)),
            _ => None,
        })
        .await;
    assert_eq!(
        updates,
        vec![
            (Status::Delivered, 5),
            (Status::Read, 2),
            (Status::Delivered, 2)
        ]
    );
}

/// Many DELIVERED marks at once (as RecordDeliveries makes them) land in
/// one write group; each still counts and touches only its own user's
/// notifications.
async fn receipts_for_many_users_at_once_touch_only_their_own(b: Backend) {
    let users: Vec<User> = (300..340).map(User::vendor).collect();
    let mut ids = Vec::new();
    for &user in &users {
        let created = b
            .store
            .create((0..3).map(|n| new(user, n)).collect())
            .await
            .unwrap();
        ids.push(
            created
                .into_iter()
                .map(|c| c.notification.id)
                .collect::<Vec<_>>(),
        );
    }
    // Each user names its own first two, its first again, and the next
    // user's third (not theirs).
    let marks = users.iter().enumerate().map(|(i, &user)| {
        let store = b.store.clone();
        let mut wanted = vec![ids[i][0].clone(), ids[i][1].clone(), ids[i][0].clone()];
        wanted.push(ids[(i + 1) % users.len()][2].clone());
        async move { store.mark(user, wanted, Status::Delivered).await.unwrap() }
    });
    let handles: Vec<_> = marks.map(tokio::spawn).collect();
    for handle in handles {
        let outcome = handle.await.unwrap();
        assert_eq!(outcome.updated.len(), 2, "{outcome:?}");
        assert_eq!(outcome.unread, 3);
    }
    for user_ids in &ids {
        let statuses: Vec<Status> = statuses_of(&b, user_ids).await;
        assert_eq!(
            statuses,
            vec![Status::Delivered, Status::Delivered, Status::Sent]
        );
    }
}

/// Bad input (any user id, any ids) must not leave rows behind.
async fn marks_for_users_without_notifications_store_nothing(b: Backend) {
    b.store.create(vec![new(User::vendor(1), 1)]).await.unwrap();
    let before = b.users_rows().await;
    for status in [Status::Read, Status::Delivered] {
        for id in 987_650..987_660 {
            let outcome = b
                .store
                .mark(User::customer(id), vec![new_object_id()], status)
                .await
                .unwrap();
            assert!(outcome.updated.is_empty());
        }
    }
    assert_eq!(b.users_rows().await, before, "no users row for a mark");
}

async fn statuses_of(b: &Backend, ids: &[String]) -> Vec<Status> {
    let mut statuses = Vec::new();
    for id in ids {
        statuses.push(b.store.get(id).await.unwrap().unwrap().status);
    }
    statuses
}

async fn pages_are_newest_first_with_one_snapshot(b: Backend) {
    let user = User::customer(3);
    b.store
        .create((0..45).map(|n| new(user, n)).collect())
        .await
        .unwrap();
    let first = b
        .store
        .list(user, &ListQuery::inbox(), PageStart::Page(1), 20)
        .await
        .unwrap();
    assert_eq!((first.total, first.last_seq), (45, 45));
    assert_eq!(
        first.items.iter().map(|n| n.seq).collect::<Vec<_>>(),
        (26..=45).rev().collect::<Vec<_>>()
    );
    let third = b
        .store
        .list(user, &ListQuery::inbox(), PageStart::Page(3), 20)
        .await
        .unwrap();
    assert_eq!(
        third.items.iter().map(|n| n.seq).collect::<Vec<_>>(),
        (1..=5).rev().collect::<Vec<_>>()
    );
    assert!(
        b.store
            .list(user, &ListQuery::inbox(), PageStart::Page(4), 20)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let nobody = b
        .store
        .list(User::vendor(3), &ListQuery::inbox(), PageStart::Page(1), 20)
        .await
        .unwrap();
    assert_eq!(
        (nobody.total, nobody.last_seq, nobody.items.len()),
        (0, 0, 0)
    );
    assert_eq!(
        b.store
            .after_seq(user, 40, 3)
            .await
            .unwrap()
            .iter()
            .map(|n| n.seq)
            .collect::<Vec<_>>(),
        vec![41, 42, 43]
    );
}

/// A page read after the last seq of the one before (keyset) is the page an
/// offset would give, and it skips what was read meanwhile.
async fn keyset_pages_continue_where_the_last_page_ended(b: Backend) {
    let user = User::customer(4);
    b.store
        .create((0..45).map(|n| new(user, n)).collect())
        .await
        .unwrap();
    let seqs =
        |page: &notify_store::OfflinePage| page.items.iter().map(|n| n.seq).collect::<Vec<_>>();
    let mut last = None;
    for page in 1..=3 {
        let by_offset = b
            .store
            .list(user, &ListQuery::inbox(), PageStart::Page(page), 20)
            .await
            .unwrap();
        if let Some(before) = last {
            let by_keyset = b
                .store
                .list(user, &ListQuery::inbox(), PageStart::BeforeSeq(before), 20)
                .await
                .unwrap();
            assert_eq!(seqs(&by_keyset), seqs(&by_offset), "page {page}");
            assert_eq!(by_keyset.total, 45);
        }
        last = by_offset.items.last().map(|n| n.seq);
    }
    // seq 20 is read: the page after seq 26 goes on with 25..21, 19..5.
    let twenty = b.store.after_seq(user, 19, 1).await.unwrap().remove(0);
    b.store
        .mark(user, vec![twenty.id], Status::Read)
        .await
        .unwrap();
    let after = b
        .store
        .list(user, &ListQuery::inbox(), PageStart::BeforeSeq(26), 20)
        .await
        .unwrap();
    assert_eq!(
        seqs(&after),
        (21..=25).rev().chain((5..=19).rev()).collect::<Vec<_>>()
    );
    assert_eq!(after.total, 44);
    assert!(
        b.store
            .list(user, &ListQuery::inbox(), PageStart::BeforeSeq(1), 20)
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

/// A stored row the store cannot read is reported as corrupt (a bug or a
/// damaged database), never as "unavailable, retry later", which would send
/// callers retrying forever.
async fn an_unreadable_row_is_corrupt_not_unavailable(b: Backend) {
    let user = User::vendor(77);
    let created = b.store.create(vec![new(user, 1)]).await.unwrap().remove(0);
    let id = created.notification.id;
    // SQLite keeps whatever it is given; PostgreSQL only a number.
    let damage = if b.url.starts_with("sqlite:") {
        "UPDATE notifications SET status = 'not a status', channel = 99"
    } else {
        "UPDATE notifications SET status = 99, channel = 99"
    };
    b.execute(damage).await;
    assert!(
        matches!(b.store.get(&id).await, Err(StoreError::Corrupt(_))),
        "get"
    );
    let marked = b.store.mark(user, vec![id], Status::Read).await;
    assert!(
        matches!(marked, Err(StoreError::Corrupt(_)) | Ok(_)),
        "mark: {marked:?}"
    );
    if b.url.starts_with("sqlite:") {
        assert!(
            matches!(marked, Err(StoreError::Corrupt(_))),
            "mark: {marked:?}"
        );
    }
}

async fn rooms_and_peers(b: Backend) {
    let (vendor, alice, bob) = (User::vendor(5), User::customer(12), User::customer(13));
    for (room, user) in [
        ("order:1", vendor),
        ("order:1", alice),
        ("order:2", vendor),
        ("order:2", alice),
        ("order:2", bob),
        ("order:3", bob),
    ] {
        b.store.join_room(room, user).await.unwrap();
    }
    b.store.join_room("order:1", alice).await.unwrap();
    let mut peers = b.store.room_peers(vendor).await.unwrap();
    peers.sort();
    assert_eq!(peers, vec![alice, bob]);
    b.store.leave_room("order:2", bob).await.unwrap();
    assert_eq!(b.store.room_peers(vendor).await.unwrap(), vec![alice]);
    let members = b.store.room_members("order:1").await.unwrap();
    assert_eq!(
        members
            .iter()
            .map(|m| (m.user, m.online))
            .collect::<Vec<_>>(),
        vec![(vendor, false), (alice, false)]
    );
}

async fn presence_counts_every_node_and_expires(b: Backend) {
    let user = User::vendor(5);
    let ttl = Duration::from_secs(60);
    let presence = |c: &Change| match c {
        Change::Presence { user, online, .. } => Some((*user, *online)),
        _ => None,
    };
    b.store
        .set_presence("a", vec![(user, 2)], ttl)
        .await
        .unwrap();
    b.store
        .set_presence("b", vec![(user, 1)], ttl)
        .await
        .unwrap();
    b.store
        .set_presence("a", vec![(user, 0)], ttl)
        .await
        .unwrap();
    assert_eq!(b.changes.wait_for(1, presence).await, vec![(user, true)]);
    b.store.join_room("r", user).await.unwrap();
    assert!(b.store.room_members("r").await.unwrap()[0].online);
    b.store
        .set_presence("b", vec![(user, 0)], ttl)
        .await
        .unwrap();
    assert_eq!(
        b.changes.wait_for(2, presence).await,
        vec![(user, true), (user, false)]
    );
    let member = b.store.room_members("r").await.unwrap().remove(0);
    assert!(!member.online);
    assert!(member.last_seen_at.is_some());

    // A node that stops refreshing: its entries expire and the user goes
    // offline, once, however many nodes run the expiry.
    let other = User::customer(8);
    b.store
        .set_presence("dead", vec![(other, 1)], Duration::from_millis(200))
        .await
        .unwrap();
    b.store.refresh_presence("alive", ttl).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (one, two) = tokio::join!(b.store.expire_presence(), b.store.expire_presence());
    one.unwrap();
    two.unwrap();
    let seen = b.changes.wait_for(4, presence).await;
    assert_eq!(seen[2..], [(other, true), (other, false)]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b.changes.wait_for(5, presence).await.len(), 4);
}

/// Every create and every status change takes the user's next version, and
/// `changed_after` reads back what changed after any position, each
/// notification once, at its latest change, with the counters of the same
/// snapshot: how streams catch up on what they missed.
async fn changes_take_versions_and_read_back_in_order(b: Backend) {
    let user = User::vendor(21);
    let other = User::vendor(22);
    let created = b
        .store
        .create((0..5).map(|n| new(user, n)).collect())
        .await
        .unwrap();
    b.store.create(vec![new(other, 0)]).await.unwrap();
    let versions: Vec<i64> = created.iter().map(|c| c.notification.version).collect();
    assert_eq!(versions, vec![1, 2, 3, 4, 5]);
    let ids: Vec<String> = created.iter().map(|c| c.notification.id.clone()).collect();
    // One mark: one version for all it changed; a repeat changes nothing.
    let delivered = b
        .store
        .mark(user, ids[..3].to_vec(), Status::Delivered)
        .await
        .unwrap();
    assert_eq!((delivered.updated.len(), delivered.version), (3, 6));
    let read = b
        .store
        .mark(user, ids[1..2].to_vec(), Status::Read)
        .await
        .unwrap();
    assert_eq!((read.version, read.unread), (7, 4));
    let again = b
        .store
        .mark(user, ids[1..2].to_vec(), Status::Read)
        .await
        .unwrap();
    assert!(again.updated.is_empty());
    let state = b.store.user_state(user).await.unwrap();
    assert_eq!((state.last_seq, state.unread, state.version), (5, 4, 7));

    // After version 3: seqs 4 and 5 (created at 4, 5), then 1 and 3
    // (delivered at 6), then 2 (read at 7). Read two at a time.
    let mut after = ChangePosition::after(3);
    let mut seen = Vec::new();
    loop {
        let page = b.store.changed_after(user, after, 2).await.unwrap();
        seen.extend(page.items.iter().map(|n| (n.seq, n.version, n.status)));
        if page.items.len() < 2 {
            assert_eq!(page.state, state);
            break;
        }
        let last = page.items.last().unwrap();
        after = ChangePosition {
            version: last.version,
            seq: last.seq,
        };
    }
    assert_eq!(
        seen,
        vec![
            (4, 4, Status::Sent),
            (5, 5, Status::Sent),
            (1, 6, Status::Delivered),
            (3, 6, Status::Delivered),
            (2, 7, Status::Read),
        ]
    );
    let none = b
        .store
        .changed_after(user, ChangePosition::after(7), 10)
        .await
        .unwrap();
    assert!(none.items.is_empty());
    assert_eq!(b.store.id_at(user, 2).await.unwrap(), Some(ids[1].clone()));
    assert_eq!(b.store.id_at(user, 6).await.unwrap(), None);
    let page = b
        .store
        .list(user, &ListQuery::inbox(), PageStart::Page(1), 20)
        .await
        .unwrap();
    assert_eq!((page.total, page.version), (4, 7));

    // Receipts for several users in one group: one version each.
    let theirs = b.store.create(vec![new(other, 1)]).await.unwrap();
    let (mine, yours) = tokio::join!(
        b.store.mark(user, ids[3..].to_vec(), Status::Delivered),
        b.store.mark(
            other,
            vec![theirs[0].notification.id.clone()],
            Status::Delivered
        ),
    );
    assert_eq!(mine.unwrap().version, 8);
    assert_eq!(yours.unwrap().version, 3);
    let updates = b
        .changes
        .wait_for(5, |c| match c {
            Change::Updated {
                user: who, version, ..
            } => Some((*who, *version)),
            _ => None,
        })
        .await;
    let mut updates = updates;
    updates.sort_unstable();
    assert_eq!(updates, vec![(user, 6), (user, 7), (user, 8), (other, 3)]);
}

/// The epoch is made with the database and stays with it.
async fn the_epoch_is_made_once_per_database(b: Backend) {
    let epoch = b.store.epoch().to_owned();
    assert_eq!(epoch.len(), 24, "{epoch}");
    assert!(epoch.bytes().all(|c| c.is_ascii_hexdigit()));
    let again: Arc<dyn Store> = if b.url.starts_with("sqlite:") {
        Arc::new(
            SqliteStore::open(&b.url, SqliteOptions::default(), b.changes.clone())
                .await
                .unwrap(),
        )
    } else {
        Arc::new(
            PgStore::open(&b.url, PgOptions::default(), b.changes.clone())
                .await
                .unwrap(),
        )
    };
    assert_eq!(again.epoch(), epoch, "reopening keeps the epoch");
    let other = sqlite().await;
    assert_ne!(
        other.store.epoch(),
        epoch,
        "another database, another epoch"
    );
}

/// A mark of more ids than a database notice can list still reaches the
/// listeners whole.
async fn a_mark_of_many_ids_is_published_whole(b: Backend) {
    let user = User::customer(23);
    let ids: Vec<String> = b
        .store
        .create((0..600).map(|n| new(user, n)).collect())
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.notification.id)
        .collect();
    let read = b.store.mark(user, ids.clone(), Status::Read).await.unwrap();
    assert_eq!(read.updated.len(), 600);
    let published = b
        .changes
        .wait_for(1, |c| match c {
            Change::Updated { ids, version, .. } => Some((ids.len(), *version)),
            _ => None,
        })
        .await;
    assert_eq!(published, vec![(600, read.version)]);
}

fn in_category(user: User, n: i64, category: &str) -> NewNotification {
    NewNotification {
        kind: format!("{category}:event"),
        category: category.to_owned(),
        ..new(user, n)
    }
}

fn by_category(counts: &[(&str, i64)]) -> ByCategory {
    counts.iter().map(|(c, n)| (c.to_string(), *n)).collect()
}

/// Every id of a list, page by page.
async fn listed(b: &Backend, user: User, view: View, category: Option<&str>) -> Vec<String> {
    let query = ListQuery {
        view,
        category: category.map(str::to_owned),
    };
    let mut ids = Vec::new();
    for page in 1.. {
        let page = b
            .store
            .list(user, &query, PageStart::Page(page), 100)
            .await
            .unwrap();
        let more = page.items.len() == 100;
        ids.extend(page.items.into_iter().map(|n| n.id));
        if !more {
            break;
        }
    }
    ids
}

/// The counts the store keeps equal the lists it holds, category by
/// category and in all, for every view: recounted here the slow way.
async fn assert_counts_match_lists(b: &Backend, user: User, categories: &[&str]) {
    let counts = b.store.unread_counts(user).await.unwrap();
    let mut recounted = ByCategory::new();
    for category in categories {
        let inbox = listed(b, user, View::Inbox, Some(category)).await.len() as i64;
        if inbox > 0 {
            recounted.insert(category.to_string(), inbox);
        }
        for view in [View::Inbox, View::Archived, View::All] {
            let query = ListQuery {
                view,
                category: Some(category.to_string()),
            };
            let page = b
                .store
                .list(user, &query, PageStart::Page(1), 1)
                .await
                .unwrap();
            let ids = listed(b, user, view, Some(category)).await;
            assert_eq!(page.total, ids.len() as i64, "{view:?} of {category}");
        }
    }
    assert_eq!(counts.by_category, recounted);
    let inbox = listed(b, user, View::Inbox, None).await;
    assert_eq!(counts.unread, inbox.len() as i64);
    assert_eq!(counts.unread, recounted.values().sum::<i64>());
}

/// Creates, reads, receipts, archives and mark-alls each leave the counts
/// by category equal to what the lists hold, and every change that moves
/// them carries them.
async fn counts_by_category_stay_exact_under_every_change(b: Backend) {
    let user = User::vendor(31);
    let categories = ["order", "product", "payment"];
    let mut batch = Vec::new();
    for (n, category) in ["order", "order", "order", "product", "product", "payment"]
        .iter()
        .enumerate()
    {
        batch.push(in_category(user, n as i64, category));
    }
    let ids: Vec<String> = b
        .store
        .create(batch)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.notification.id)
        .collect();
    let counts = b.store.unread_counts(user).await.unwrap();
    assert_eq!(counts.unread, 6);
    assert_eq!(
        counts.by_category,
        by_category(&[("order", 3), ("product", 2), ("payment", 1)])
    );
    assert_counts_match_lists(&b, user, &categories).await;
    let created = b
        .changes
        .wait_for(6, |c| match c {
            Change::Created { by_category, .. } => Some(by_category.clone()),
            _ => None,
        })
        .await;
    assert_eq!(created[2], by_category(&[("order", 3)]));
    assert_eq!(
        created[5], counts.by_category,
        "each create carries its counts"
    );

    let read = b
        .store
        .mark(user, vec![ids[0].clone()], Status::Read)
        .await
        .unwrap();
    assert_eq!(read.unread, 5);
    assert_eq!(
        read.by_category,
        Some(by_category(&[("order", 2), ("product", 2), ("payment", 1)]))
    );
    assert_counts_match_lists(&b, user, &categories).await;
    let delivered = b
        .store
        .mark(user, vec![ids[1].clone()], Status::Delivered)
        .await
        .unwrap();
    assert_eq!(delivered.unread, 5, "a receipt moves no count");
    b.store
        .archive(user, vec![ids[3].clone(), ids[0].clone()], true)
        .await
        .unwrap();
    assert_counts_match_lists(&b, user, &categories).await;
    let all_orders = b
        .store
        .mark_all(user, Status::Read, Some("order".into()), None)
        .await
        .unwrap();
    assert_eq!(all_orders.updated.len(), 2);
    assert_eq!(
        all_orders.by_category,
        Some(by_category(&[("product", 1), ("payment", 1)])),
        "categories with none left are left out"
    );
    assert_counts_match_lists(&b, user, &categories).await;
    b.store
        .archive(user, vec![ids[3].clone()], false)
        .await
        .unwrap();
    assert_counts_match_lists(&b, user, &categories).await;
    let everything = b
        .store
        .mark_all(user, Status::Read, None, None)
        .await
        .unwrap();
    assert_eq!((everything.updated.len(), everything.unread), (3, 0));
    assert_counts_match_lists(&b, user, &categories).await;
    let counts = b.store.unread_counts(user).await.unwrap();
    assert_eq!((counts.unread, counts.by_category.len()), (0, 0));
    assert_eq!(counts.version, everything.version);
}

/// Archive takes one out of the inbox and its count whatever its status,
/// into the ARCHIVED view; ALL lists both; unarchive brings it back as it
/// was. Someone else's ids, and ones already so, change nothing.
async fn archived_ones_leave_the_inbox_and_come_back(b: Backend) {
    let user = User::customer(32);
    let ids: Vec<String> = b
        .store
        .create((0..4).map(|n| in_category(user, n, "order")).collect())
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.notification.id)
        .collect();
    b.store
        .mark(user, vec![ids[1].clone()], Status::Read)
        .await
        .unwrap();
    let archived = b
        .store
        .archive(user, vec![ids[0].clone(), ids[1].clone()], true)
        .await
        .unwrap();
    assert_eq!((archived.updated.len(), archived.unread), (2, 2));
    let again = b
        .store
        .archive(user, vec![ids[0].clone()], true)
        .await
        .unwrap();
    assert!(again.updated.is_empty(), "already archived");
    let stranger = b
        .store
        .archive(User::vendor(32), ids.clone(), true)
        .await
        .unwrap();
    assert!(stranger.updated.is_empty(), "not theirs");
    let newest_first = |mut v: Vec<String>| {
        v.reverse();
        v
    };
    assert_eq!(
        listed(&b, user, View::Inbox, None).await,
        newest_first(ids[2..].to_vec())
    );
    assert_eq!(
        listed(&b, user, View::Archived, None).await,
        newest_first(ids[..2].to_vec())
    );
    assert_eq!(
        listed(&b, user, View::All, None).await,
        newest_first(ids.clone())
    );
    let stored = b.store.get(&ids[0]).await.unwrap().unwrap();
    assert!(stored.archived_at.is_some());
    assert_eq!(stored.category, "order");
    let update = b
        .changes
        .wait_for(1, |c| match c {
            Change::Updated { update, ids, .. } if update.archived == Some(true) => {
                Some((update.status, ids.len()))
            }
            _ => None,
        })
        .await;
    assert_eq!(update, vec![(None, 2)], "an archive says what changed");

    let back = b
        .store
        .archive(user, ids[..2].to_vec(), false)
        .await
        .unwrap();
    assert_eq!(
        back.unread, 3,
        "the unread one counts again, the read one not"
    );
    assert_eq!(
        listed(&b, user, View::Inbox, None).await,
        newest_first([&ids[..1], &ids[2..]].concat())
    );
    assert!(listed(&b, user, View::Archived, None).await.is_empty());
    assert!(
        b.store
            .get(&ids[0])
            .await
            .unwrap()
            .unwrap()
            .archived_at
            .is_none()
    );
    assert_counts_match_lists(&b, user, &["order"]).await;
}

/// Mark-all covers the unread inbox up to the seq the user saw (and of a
/// category when named) in one change of one version, however many.
async fn mark_all_is_one_change_up_to_a_seq_and_of_a_category(b: Backend) {
    let user = User::vendor(33);
    let mut batch: Vec<NewNotification> =
        (0..1200).map(|n| in_category(user, n, "order")).collect();
    batch.extend((0..10).map(|n| in_category(user, n, "product")));
    let created = b.store.create(batch).await.unwrap();
    let product_seq = created[1205].notification.seq;
    b.store
        .archive(user, vec![created[0].notification.id.clone()], true)
        .await
        .unwrap();
    let before = b.store.unread_counts(user).await.unwrap();
    let up_to = b
        .store
        .mark_all(user, Status::Read, None, Some(product_seq))
        .await
        .unwrap();
    assert_eq!(
        up_to.updated.len(),
        1206 - 1,
        "up to that seq, the archived one left alone"
    );
    assert_eq!(up_to.version, before.version + 1, "one version");
    assert_eq!(up_to.by_category, Some(by_category(&[("product", 4)])));
    let published = b
        .changes
        .wait_for(1, |c| match c {
            Change::Updated { ids, version, .. } if *version == up_to.version => Some(ids.len()),
            _ => None,
        })
        .await;
    assert_eq!(published, vec![1205], "one change with every id");
    let none_left = b
        .store
        .mark_all(user, Status::Read, Some("order".into()), None)
        .await
        .unwrap();
    assert!(none_left.updated.is_empty());
    let rest = b
        .store
        .mark_all(user, Status::Read, Some("product".into()), None)
        .await
        .unwrap();
    assert_eq!((rest.updated.len(), rest.unread), (4, 0));
    assert_eq!(
        b.store
            .get(&created[0].notification.id)
            .await
            .unwrap()
            .unwrap()
            .status,
        Status::Sent,
        "archived ones are not in the inbox mark-all covers"
    );
    assert_counts_match_lists(&b, user, &["order", "product"]).await;
}

/// Past its `expiresAt` a notification leaves every list and count, in one
/// change of its user that says `expired`; a read racing the expiry keeps
/// the counts exact; a second sweep finds nothing.
async fn expired_ones_leave_every_list_and_count_once(b: Backend) {
    let user = User::customer(34);
    let soon = notify_store::now_millis() + 300;
    let mut batch: Vec<NewNotification> = (0..3)
        .map(|n| NewNotification {
            expires_at: Some(soon),
            ..in_category(user, n, "sale")
        })
        .collect();
    batch.push(in_category(user, 3, "order"));
    // Another user's, due at the same moment: one sweep, a change each.
    let other = User::customer(35);
    for n in 0..2 {
        batch.push(NewNotification {
            expires_at: Some(soon),
            ..in_category(other, n, "sale")
        });
    }
    batch.push(in_category(other, 2, "order"));
    let created = b.store.create(batch).await.unwrap();
    let ids: Vec<String> = created.iter().map(|c| c.notification.id.clone()).collect();
    assert_eq!(created[0].notification.expires_at, Some(soon));
    // One read, one archived before they expire.
    b.store
        .mark(user, vec![ids[0].clone()], Status::Read)
        .await
        .unwrap();
    b.store
        .archive(user, vec![ids[1].clone()], true)
        .await
        .unwrap();
    assert_eq!(b.store.expire_due(100).await.unwrap(), 0, "none due yet");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(b.store.expire_due(100).await.unwrap(), 5);
    assert_eq!(b.store.expire_due(100).await.unwrap(), 0, "once");
    let counts = b.store.unread_counts(user).await.unwrap();
    assert_eq!(
        (counts.unread, counts.by_category),
        (1, by_category(&[("order", 1)]))
    );
    for view in [View::Inbox, View::Archived, View::All] {
        let listed = listed(&b, user, view, None).await;
        assert!(
            listed.iter().all(|id| !ids[..3].contains(id)),
            "{view:?} lists no expired one"
        );
    }
    assert_counts_match_lists(&b, user, &["sale", "order"]).await;
    let mut expired = b
        .changes
        .wait_for(2, |c| match c {
            Change::Updated {
                user: whose,
                update,
                ids,
                unread,
                by_category,
                ..
            } if update.expired == Some(true) => {
                Some((*whose, ids.len(), *unread, by_category.clone()))
            }
            _ => None,
        })
        .await;
    expired.sort_by_key(|(whose, ..)| *whose);
    let order = Some(by_category(&[("order", 1)]));
    assert_eq!(
        expired,
        vec![(user, 3, 1, order.clone()), (other, 2, 1, order)],
        "one change for each user, with its own counts"
    );
    let counts = b.store.unread_counts(other).await.unwrap();
    assert_eq!(
        (counts.unread, counts.by_category),
        (1, by_category(&[("order", 1)]))
    );
    assert_counts_match_lists(&b, other, &["sale", "order"]).await;
    // A read of an expired one changes its status and no count.
    let late = b
        .store
        .mark(user, vec![ids[2].clone()], Status::Read)
        .await
        .unwrap();
    assert_eq!(late.unread, 1);
    assert_counts_match_lists(&b, user, &["sale", "order"]).await;
}

/// Retention deletes old READ, archived and expired notifications, never an
/// unread one, and the counts of the views follow.
async fn retention_deletes_only_what_is_not_unread(b: Backend) {
    let user = User::vendor(35);
    let ids: Vec<String> = b
        .store
        .create((0..4).map(|n| in_category(user, n, "order")).collect())
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.notification.id)
        .collect();
    b.store
        .mark(user, vec![ids[0].clone()], Status::Read)
        .await
        .unwrap();
    b.store
        .archive(user, vec![ids[1].clone(), ids[2].clone()], true)
        .await
        .unwrap();
    let future = notify_store::now_millis() + 60_000;
    assert_eq!(
        b.store.delete_old(0, 100).await.unwrap(),
        0,
        "none that old"
    );
    assert_eq!(b.store.delete_old(future, 100).await.unwrap(), 3);
    assert!(b.store.get(&ids[0]).await.unwrap().is_none());
    assert!(
        b.store.get(&ids[3]).await.unwrap().is_some(),
        "unread stays"
    );
    assert_eq!(b.store.delete_old(future, 100).await.unwrap(), 0);
    let query = ListQuery {
        view: View::All,
        category: None,
    };
    let all = b
        .store
        .list(user, &query, PageStart::Page(1), 20)
        .await
        .unwrap();
    assert_eq!((all.total, all.items.len()), (1, 1));
    assert_counts_match_lists(&b, user, &["order"]).await;
}

/// Erasure deletes every notification, room membership and presence entry
/// of the user; later notifications continue the seq.
async fn erasure_deletes_everything_and_seqs_go_on(b: Backend) {
    let user = User::customer(36);
    let other = User::customer(37);
    let created = b
        .store
        .create((0..5).map(|n| new(user, n)).collect())
        .await
        .unwrap();
    b.store.create(vec![new(other, 0)]).await.unwrap();
    b.store.join_room("order:36", user).await.unwrap();
    b.store.join_room("order:36", other).await.unwrap();
    b.store
        .set_presence("node", vec![(user, 1)], Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(b.store.erase_user(user).await.unwrap(), 5);
    assert!(
        b.store
            .get(&created[0].notification.id)
            .await
            .unwrap()
            .is_none()
    );
    let counts = b.store.unread_counts(user).await.unwrap();
    assert_eq!((counts.unread, counts.by_category.len()), (0, 0));
    let members = b.store.room_members("order:36").await.unwrap();
    assert_eq!(
        members.iter().map(|m| m.user).collect::<Vec<_>>(),
        vec![other]
    );
    assert!(b.store.online_peers(other).await.unwrap().is_empty());
    let again = b.store.create(vec![new(user, 9)]).await.unwrap();
    assert_eq!(again[0].notification.seq, 6, "a seq is never reused");
    assert_eq!(
        b.store.unread_counts(other).await.unwrap().unread,
        1,
        "others untouched"
    );
    assert_counts_match_lists(&b, user, &["order"]).await;
}

fn collapsing(user: User, n: i64, key: &str, category: &str) -> NewNotification {
    NewNotification {
        collapse_key: Some(key.to_owned()),
        ..in_category(user, n, category)
    }
}

/// placed → packed → shipped under one key: each replaces the unread one
/// before it (stored, or earlier in the same commit), which leaves every
/// list and names its successor; the count stays at one. A read or
/// archived one is not replaced, and other users' keys are their own.
async fn a_collapse_key_replaces_the_unread_one_and_the_count_does_not_grow(b: Backend) {
    let user = User::customer(41);
    let other = User::customer(42);
    let placed = b
        .store
        .create(vec![collapsing(user, 0, "order-7", "order")])
        .await
        .unwrap()
        .remove(0)
        .notification;
    let before = b.store.user_state(user).await.unwrap();
    let mut pair = b
        .store
        .create(vec![
            collapsing(user, 1, "order-7", "order"),
            collapsing(other, 1, "order-7", "order"),
            collapsing(user, 2, "order-7", "shipping"),
        ])
        .await
        .unwrap();
    let shipped = pair.remove(2).notification;
    let packed = pair.remove(0).notification;
    assert_eq!(packed.replaces.as_deref(), Some(placed.id.as_str()));
    assert_eq!(shipped.replaces.as_deref(), Some(packed.id.as_str()));
    assert_eq!(pair[0].notification.replaces, None, "another user's key");
    let counts = b.store.unread_counts(user).await.unwrap();
    assert_eq!(
        (counts.unread, counts.by_category),
        (1, by_category(&[("shipping", 1)]))
    );
    assert_eq!(counts.version, before.version + 2, "one version per create");
    for view in [View::Inbox, View::All] {
        assert_eq!(listed(&b, user, view, None).await, vec![shipped.id.clone()]);
    }
    let gone = b.store.get(&placed.id).await.unwrap().unwrap();
    assert_eq!(gone.replaced_by.as_deref(), Some(packed.id.as_str()));
    assert_counts_match_lists(&b, user, &["order", "shipping"]).await;

    // The changes say who replaced whom, with the count after.
    let replaced = b
        .changes
        .wait_for(3, |c| match c {
            Change::Created {
                notification,
                replaced,
                unread,
                ..
            } if notification.recipient == user => {
                Some((notification.id.clone(), replaced.clone(), *unread))
            }
            _ => None,
        })
        .await;
    assert_eq!(
        replaced,
        vec![
            (placed.id.clone(), vec![], 1),
            (packed.id.clone(), vec![placed.id.clone()], 1),
            (shipped.id.clone(), vec![packed.id.clone()], 1),
        ]
    );
    // A catch-up reads the replaced one back as changed in that version.
    let page = b
        .store
        .changed_after(user, ChangePosition::after(before.version), 10)
        .await
        .unwrap();
    let changed: Vec<(&str, Option<&str>)> = page
        .items
        .iter()
        .map(|n| (n.id.as_str(), n.replaced_by.as_deref()))
        .collect();
    assert_eq!(
        changed,
        vec![
            (placed.id.as_str(), Some(packed.id.as_str())),
            (packed.id.as_str(), Some(shipped.id.as_str())),
            (shipped.id.as_str(), None),
        ]
    );

    // A read one is not replaced: the next one just joins the inbox.
    b.store
        .mark(user, vec![shipped.id.clone()], Status::Read)
        .await
        .unwrap();
    let delivered = b
        .store
        .create(vec![collapsing(user, 3, "order-7", "shipping")])
        .await
        .unwrap()
        .remove(0)
        .notification;
    assert_eq!(delivered.replaces, None);
    let read = b.store.get(&shipped.id).await.unwrap().unwrap();
    assert_eq!((read.status, read.replaced_by), (Status::Read, None));
    assert_eq!(b.store.unread_counts(user).await.unwrap().unread, 1);
    assert_counts_match_lists(&b, user, &["order", "shipping"]).await;
}

fn with_actions(user: User, n: i64) -> NewNotification {
    NewNotification {
        actions: vec![
            Action {
                id: "accept".into(),
                label: "Accept return".into(),
                url: None,
            },
            Action {
                id: "view".into(),
                label: "View order".into(),
                url: Some("https://shop.example/orders/7".into()),
            },
        ],
        ..in_category(user, n, "return")
    }
}

/// An action is taken once: the notification becomes READ with the action
/// recorded, as one change; an unknown action, a second completion,
/// someone else's notification and a replaced one are each refused and
/// change nothing.
async fn an_action_is_taken_once_and_reads_the_notification(b: Backend) {
    let user = User::vendor(43);
    let created = b
        .store
        .create(vec![with_actions(user, 0), with_actions(user, 1)])
        .await
        .unwrap();
    let (first, second) = (&created[0].notification, &created[1].notification);
    assert_eq!(first.actions.len(), 2);
    assert_eq!(
        first.actions[1].url.as_deref(),
        Some("https://shop.example/orders/7")
    );
    let complete = |id: &str, action: &str, who: User| {
        let store = b.store.clone();
        let (id, action) = (id.to_owned(), action.to_owned());
        async move { store.complete_action(who, id, action).await.unwrap() }
    };
    assert_eq!(
        complete(&first.id, "refund", user).await,
        Err(ActionRefused::UnknownAction)
    );
    assert_eq!(
        complete(&first.id, "accept", User::vendor(44)).await,
        Err(ActionRefused::NotFound),
        "another user's notification"
    );
    let before = b.store.user_state(user).await.unwrap();
    let done = complete(&first.id, "accept", user).await.unwrap();
    assert_eq!(done.status, Status::Read);
    let taken = done.action_taken.clone().unwrap();
    assert_eq!(taken.id, "accept");
    assert_eq!(done.version, before.version + 1);
    assert_eq!(
        complete(&first.id, "view", user).await,
        Err(ActionRefused::AlreadyTaken(taken.clone())),
        "once"
    );
    let counts = b.store.unread_counts(user).await.unwrap();
    assert_eq!((counts.unread, counts.version), (1, before.version + 1));
    assert_counts_match_lists(&b, user, &["return"]).await;
    let published = b
        .changes
        .wait_for(1, |c| match c {
            Change::Updated {
                ids,
                update,
                unread,
                ..
            } if update.action_taken.is_some() => Some((
                ids.clone(),
                update.status,
                update.action_taken.clone(),
                *unread,
            )),
            _ => None,
        })
        .await;
    assert_eq!(
        published,
        vec![(vec![first.id.clone()], Some(Status::Read), Some(taken), 1)]
    );

    // An action of an archived, already READ one records the action alone.
    b.store
        .mark(user, vec![second.id.clone()], Status::Read)
        .await
        .unwrap();
    b.store
        .archive(user, vec![second.id.clone()], true)
        .await
        .unwrap();
    let archived = complete(&second.id, "view", user).await.unwrap();
    assert_eq!(
        (archived.status, archived.archived_at.is_some()),
        (Status::Read, true)
    );
    assert_eq!(archived.action_taken.unwrap().id, "view");

    // A replaced one is gone: its buttons went with it.
    let keyed = |n| NewNotification {
        collapse_key: Some("return-9".into()),
        ..with_actions(user, n)
    };
    let old = b.store.create(vec![keyed(2)]).await.unwrap().remove(0);
    b.store.create(vec![keyed(3)]).await.unwrap();
    assert_eq!(
        complete(&old.notification.id, "accept", user).await,
        Err(ActionRefused::Gone)
    );
    assert_counts_match_lists(&b, user, &["return"]).await;
}

/// PostgreSQL refuses a NUL in text (the API refuses it earlier; here it
/// stands for any call whose statement the server refuses). Calls made at
/// once share group commits: only the refused one fails, the others are
/// stored, their seqs gapless, and their marks applied.
#[tokio::test]
async fn a_call_the_server_refuses_fails_alone_in_its_group() {
    let Some(b) = postgres().await else { return };
    let user = User::vendor(4242);
    const CALLS: i64 = 32;
    const BAD: i64 = 7;
    let mut creates = Vec::new();
    for n in 0..CALLS {
        let store = b.store.clone();
        let mut one = new(user, n);
        if n == BAD {
            one.kind = "order\u{0}paid".into();
        }
        creates.push(tokio::spawn(async move { store.create(vec![one]).await }));
    }
    let mut ids = Vec::new();
    for (n, call) in creates.into_iter().enumerate() {
        match call.await.unwrap() {
            Ok(created) if n as i64 != BAD => ids.push(created[0].notification.id.clone()),
            Err(_) if n as i64 == BAD => {}
            other => panic!("create {n}: {other:?}"),
        }
    }
    let mut seqs: Vec<i64> = b
        .store
        .after_seq(user, 0, 100)
        .await
        .unwrap()
        .iter()
        .map(|n| n.seq)
        .collect();
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (1..CALLS).collect::<Vec<i64>>(),
        "the others, gapless"
    );

    let mut marks = Vec::new();
    for (n, id) in ids.iter().enumerate() {
        let store = b.store.clone();
        let mut named = vec![id.clone()];
        if n as i64 == BAD {
            named.push("bad\u{0}id".into());
        }
        marks.push(tokio::spawn(async move {
            store.mark(user, named, Status::Read).await
        }));
    }
    for (n, call) in marks.into_iter().enumerate() {
        let outcome = call.await.unwrap();
        assert_eq!(outcome.is_err(), n as i64 == BAD, "mark {n}: {outcome:?}");
    }
    let unread = b.store.unread_counts(user).await.unwrap().unread;
    assert_eq!(unread, 1, "every mark but the refused one applied");
}
