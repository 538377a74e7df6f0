//! Bad configuration: the process refuses to start, exits 2 and says why
//! in one line, instead of starting half-broken.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `notify core` (or `dev`) with `args` on a throwaway database and
/// ephemeral ports; it must exit on its own within 10 s.
fn refused(args: &[&str]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("n.db").display());
    let mut all = args.to_vec();
    all.extend(["--database-url", &url]);
    all.extend(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"]);
    exits(&all)
}

/// Runs `notify` with exactly `args`; it must exit on its own within 10 s.
fn exits(args: &[&str]) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_notify"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait(
        &mut child,
        Duration::from_secs(10),
        &format!("notify {args:?} refusing to start"),
    );
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status.code().unwrap_or(-1), stderr)
}

/// Waits for `child` to exit; kills it and fails after `limit`.
fn wait(child: &mut std::process::Child, limit: Duration, what: &str) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("gave up waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
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

#[test]
fn the_bridge_refuses_the_public_development_secret() {
    let dev = "notify-dev-secret-do-not-use-in-production";
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), format!("{dev}\n")).unwrap();
    let path = file.path().to_str().unwrap();
    for secret in [["--jwt-secret", dev], ["--jwt-secret-file", path]] {
        let (code, stderr) = exits(&["bridge", "--listen", "127.0.0.1:0", secret[0], secret[1]]);
        assert_eq!(code, 2, "{stderr}");
        assert!(stderr.contains("public development secret"), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }
}

#[test]
fn notify_dev_listens_on_loopback_only() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("n.db").display());
    for (flag, addr) in [
        ("--listen", "0.0.0.0:0"),
        ("--core-listen", "0.0.0.0:0"),
        ("--metrics-listen", "[::]:0"),
    ] {
        let mut args = vec!["dev", "--database-url", &url];
        for (other, loopback) in [
            ("--listen", "127.0.0.1:0"),
            ("--core-listen", "127.0.0.1:0"),
            ("--metrics-listen", "127.0.0.1:0"),
        ] {
            args.extend([other, if other == flag { addr } else { loopback }]);
        }
        let (code, stderr) = exits(&args);
        assert_eq!(code, 2, "{stderr}");
        assert!(
            stderr.contains(flag) && stderr.contains("loopback"),
            "{stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }
}

#[test]
fn an_empty_or_missing_secret_file_is_refused() {
    let empty = tempfile::NamedTempFile::new().unwrap();
    let empty = empty.path().to_str().unwrap();
    for (args, says) in [
        (
            vec!["bridge", "--jwt-secret-file", empty],
            "--jwt-secret must not be empty",
        ),
        (
            vec!["bridge", "--jwt-secret-file", "/nonexistent/secret"],
            "--jwt-secret-file /nonexistent/secret",
        ),
        (
            vec!["core", "--api-token-file", empty, "--listen", "127.0.0.1:0"],
            "--api-token must not be empty",
        ),
    ] {
        let (code, stderr) = exits(&args);
        assert_eq!(code, 2, "{stderr}");
        assert!(stderr.contains(says), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }
}

#[test]
fn the_bridge_refuses_missing_or_unusable_identity_keys() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_key = dir.path().join("not-a-key.pem");
    std::fs::write(
        &not_a_key,
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    )
    .unwrap();
    let symmetric_only = dir.path().join("oct.json");
    std::fs::write(
        &symmetric_only,
        r#"{"keys":[{"kty":"oct","kid":"k1","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"}]}"#,
    )
    .unwrap();
    let not_a_key = not_a_key.to_str().unwrap();
    let symmetric_only = symmetric_only.to_str().unwrap();
    for (args, says) in [
        (
            vec!["bridge"],
            "give --jwt-secret, --jwt-public-key or --jwks-file",
        ),
        (
            vec!["bridge", "--jwt-public-key", not_a_key],
            "--jwt-public-key",
        ),
        (
            vec!["bridge", "--jwt-public-key", "/nonexistent/key.pem"],
            "--jwt-public-key /nonexistent/key.pem",
        ),
        (
            vec!["bridge", "--jwks-file", symmetric_only],
            "no RS256, ES256 or EdDSA signing key",
        ),
        (
            vec![
                "bridge",
                "--jwt-secret-file",
                "/dev/null",
                "--jwt-issuer",
                "x",
            ],
            "--jwt-secret must not be empty",
        ),
    ] {
        let mut all = args.clone();
        all.extend(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"]);
        let (code, stderr) = exits(&all);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "a-secret-of-at-least-thirty-two-bytes!").unwrap();
    let (code, stderr) = exits(&[
        "bridge",
        "--jwt-secret-file",
        secret.to_str().unwrap(),
        "--jwt-issuer",
        "https://id.example",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("--jwt-issuer and --jwt-audience need"),
        "{stderr}"
    );
}

/// Started with a closed log pipe (`notify … 2>&1 | head -c 50`, once
/// `head` has exited): the logs written at shutdown fail, and the process
/// still stops cleanly with 0, for the core and the bridge alike.
#[test]
fn sigterm_after_the_log_pipe_closed_exits_0() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("n.db").display());
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "a-secret-of-at-least-32-bytes-for-tests").unwrap();
    let secret = secret.to_str().unwrap();
    let runs: [(&[&str], &str); 2] = [
        (&["core", "--database-url", &url], "notify core ready"),
        (
            &["bridge", "--jwt-secret-file", secret],
            "notify bridge ready",
        ),
    ];
    for (args, ready) in runs {
        let mut child = Command::new(env!("CARGO_BIN_EXE_notify"))
            .args(args)
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let line = std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find(|l| l.starts_with(ready));
        assert!(line.is_some(), "{args:?} never got ready");
        // The log reader goes away.
        drop(child.stderr.take());
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let status = wait(
            &mut child,
            Duration::from_secs(20),
            &format!("{args:?} stopping on SIGTERM"),
        );
        assert_eq!(status.code(), Some(0), "{args:?}");
    }
}

/// A SIGTERM while a polling client waits in a long poll and other
/// connections sit idle: the bridge finishes the request, closes the idle
/// ones, stops with 0, and nothing panics on the way.
#[test]
fn sigterm_during_a_long_poll_stops_cleanly() {
    use std::io::{BufRead, Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "a-secret-of-at-least-32-bytes-for-tests").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_notify"))
        .args([
            "bridge",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .args(["--jwt-secret-file", secret.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let line = std::io::BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .find(|l| l.starts_with("notify bridge ready"))
        .expect("ready line");
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http="))
        .unwrap()
        .to_owned();
    let get = |path: &str| {
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        stream
    };
    // Open a session; its first answer is the open packet with the sid.
    let mut open = String::new();
    get("/socket.io/?EIO=4&transport=polling")
        .read_to_string(&mut open)
        .unwrap();
    let sid = open
        .split("\"sid\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a sid in the open packet")
        .to_owned();
    // The next poll waits for something to send; other connections sit
    // idle between requests.
    let _long_poll = get(&format!("/socket.io/?EIO=4&transport=polling&sid={sid}"));
    let _idle: Vec<_> = (0..20)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = wait(&mut child, Duration::from_secs(20), "the bridge stopping");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_bus_is_refused_without_postgres_or_a_nats_url_and_named_when_unreachable() {
    // Nothing listens on port 1; the checks come before any connection.
    let postgres = "postgres://nobody@127.0.0.1:1/notify";
    for (database, bus, says) in [
        (
            "sqlite",
            "nats://127.0.0.1:1",
            "--bus needs a PostgreSQL --database-url",
        ),
        (
            postgres,
            "http://127.0.0.1:1",
            "--bus must be nats://host:port",
        ),
        (postgres, "not a url", "--bus \"not a url\" is not a URL"),
        (
            postgres,
            "nats://127.0.0.1:1",
            "cannot connect to --bus nats://127.0.0.1:1",
        ),
    ] {
        let (code, stderr) = if database == "sqlite" {
            refused(&["core", "--bus", bus])
        } else {
            let args = ["core", "--database-url", database, "--bus", bus];
            let mut all = args.to_vec();
            all.extend(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"]);
            exits(&all)
        };
        assert_eq!(code, 2, "{stderr}");
        assert!(stderr.contains(says), "{bus}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
