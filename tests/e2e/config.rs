//! Bad configuration: the process refuses to start, exits 2 and says why
//! in one line, instead of starting half-broken.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `notify` with `args`; it must exit on its own within 10 s.
fn refused(args: &[&str]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("n.db").display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_notify"))
        .args(args)
        .args(["--database-url", &url])
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("notify {args:?} did not refuse to start");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status.code().unwrap_or(-1), stderr)
}

#[test]
fn a_presence_ttl_too_short_to_heartbeat_is_refused() {
    for ttl in ["0s", "10ms"] {
        let (code, stderr) = refused(&["core", "--presence-ttl", ttl]);
        assert_eq!(code, 2, "{stderr}");
        assert!(stderr.contains("--presence-ttl"), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }
}
