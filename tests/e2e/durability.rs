//! What was acknowledged survives `kill -9`; SIGTERM stops cleanly.

use std::time::Duration;

use notify::contract::proto::{self, StreamUserEventsRequest};

use crate::harness::CoreProcess;
use crate::{assert_all_stored, read_notifications, simple};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_create_survives_kill_9() {
    let mut core = CoreProcess::start();
    let client = core.client().await;
    let mut tasks = Vec::new();
    for task in 0..20 {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for n in 0..50 {
                let created = client
                    .create_notification(simple(3, task * 100 + n))
                    .await
                    .unwrap();
                acked.push(created.into_inner());
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for task in tasks {
        acked.extend(task.await.unwrap());
    }
    core.kill9();
    core.restart();

    let mut client = core.client().await;
    assert_all_stored(&mut client, &acked).await;
    let mut stream = client
        .stream_user_events(StreamUserEventsRequest {
            vendor_id: Some(3),
            after_seq: Some(0),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let seqs: Vec<i64> = read_notifications(&mut stream, acked.len())
        .await
        .iter()
        .map(|n| n.seq)
        .collect();
    assert_eq!(seqs, (1..=acked.len() as i64).collect::<Vec<_>>());
    // Numbering continues after the restart without a gap.
    let next = client
        .create_notification(simple(3, 9_999))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next.seq, acked.len() as i64 + 1);
}

#[tokio::test]
async fn sigterm_ends_open_streams_and_exits_zero() {
    let mut core = CoreProcess::start();
    let mut client = core.client().await;
    let mut stream = client
        .stream_user_events(StreamUserEventsRequest {
            vendor_id: Some(1),
            presence: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let status = core.shut_down().await;
    assert!(status.success(), "exit status {status:?}");
    // The stream ended instead of hanging.
    let end = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("stream closed by the shutdown");
    assert!(!matches!(end, Ok(Some(_))), "{end:?}");
}

/// A small tmpfs of the test's own, unmounted when dropped.
struct SmallDisk {
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(megabytes: u32) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::create_dir(&path).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        mounted.then_some(SmallDisk { path, _dir: dir })
    }

    fn grow(&self, megabytes: u32) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={megabytes}m")])
            .arg(&self.path)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(&self.path)
            .status();
    }
}

#[tokio::test]
async fn a_full_disk_gives_clear_errors_and_recovers_on_its_own() {
    // Mounting a tmpfs needs root, which CI has; elsewhere say so and pass.
    let Some(disk) = SmallDisk::mount(3) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs as root and must be able to mount a tmpfs"
        );
        eprintln!("full-disk test not run: cannot mount a tmpfs (not root)");
        return;
    };
    let url = format!("sqlite://{}", disk.path.join("notify.db").display());
    let mut core = CoreProcess::start_on(&url, &[], tempfile::tempdir().unwrap());
    let mut client = core.client().await;
    let blob = "x".repeat(60_000);
    let mut acked = Vec::new();
    let mut refused = None;
    for n in 0..200 {
        let request = crate::create_for_vendor(6, serde_json::json!({"n": n, "blob": blob}));
        match client.create_notification(request).await {
            Ok(created) => acked.push(created.into_inner()),
            Err(status) => {
                refused = Some(status);
                break;
            }
        }
    }
    let refused = refused.expect("a 3 MiB disk fills up");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("full"), "{}", refused.message());
    // Reads still work while the disk is full.
    let listed = client
        .list_offline(proto::ListOfflineRequest {
            vendor_id: Some(6),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.pagination.unwrap().total_records, acked.len() as i64);

    // The fault clears: creates work again, with no restart and no gap.
    disk.grow(64);
    let next = client
        .create_notification(simple(6, 10_000))
        .await
        .expect("creates work again once there is room")
        .into_inner();
    assert_eq!(next.seq, acked.len() as i64 + 1);

    // Nothing acknowledged was lost or damaged, across a restart too.
    core.restart();
    let mut client = core.client().await;
    assert_all_stored(&mut client, &acked).await;
}

/// With the database down, SIGTERM still ends the core promptly: nothing
/// it would still write (presence entries) keeps it waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_while_the_database_is_down() {
    if crate::harness::postgres_admin_url().is_none() {
        return;
    }
    let server = crate::harness::OwnPostgres::start().expect("a PostgreSQL server of our own");
    let url = crate::harness::create_database(&server.url).await;
    let mut core = CoreProcess::start_on(&url, &[], tempfile::tempdir().unwrap());
    let mut client = core.client().await;
    let _connected = client
        .stream_user_events(StreamUserEventsRequest {
            vendor_id: Some(3),
            presence: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    server.stop().expect("stop PostgreSQL");
    // `shut_down` fails the test if the core is still running 15 s later.
    assert!(core.shut_down().await.success());
}
