//! The README's CLI session, run against a real `petrel dev` process.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PETREL: &str = env!("CARGO_BIN_EXE_petrel");

struct Dev {
    child: Child,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_dev(dir: &Path) -> Dev {
    start_dev_cmd(dir, Command::new(PETREL))
}

/// `petrel dev --push`.
fn start_dev_with_push(dir: &Path) -> Dev {
    let mut cmd = Command::new(PETREL);
    cmd.args(["dev", "--push"]);
    start_dev_cmd(dir, cmd)
}

/// Starts `petrel dev` as a terminal would run it: the leader of its own process
/// group, so that a Ctrl-C (SIGINT to the whole group) can be sent like a terminal's.
fn start_dev_in_own_group(dir: &Path) -> Dev {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(PETREL);
    cmd.process_group(0);
    start_dev_cmd(dir, cmd)
}

fn start_dev_cmd(dir: &Path, mut cmd: Command) -> Dev {
    if cmd.get_args().next().is_none() {
        cmd.arg("dev");
    }
    let child = cmd
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.with_extension("log")).unwrap())
        .spawn()
        .expect("spawn petrel dev");
    let mut dev = Dev { child };
    let started = Instant::now();
    while !dir.join("endpoints.json").exists() {
        if let Ok(Some(status)) = dev.child.try_wait() {
            panic!(
                "petrel dev exited ({status}) before writing endpoints.json: {}",
                std::fs::read_to_string(dir.with_extension("log")).unwrap_or_default()
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "petrel dev did not write endpoints.json: {}",
            std::fs::read_to_string(dir.with_extension("log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    dev
}

/// Starts `petrel client ... listen` and waits until it reports it is connected.
fn start_listener(dir: &Path, user: &str, device: &str, transport: &str, count: u32) -> Child {
    let count = count.to_string();
    start_listener_with(
        dir,
        &[
            "--user",
            user,
            "--device",
            device,
            "--transport",
            transport,
            "listen",
            "--count",
            &count,
            "--timeout",
            "30",
        ],
    )
}

/// Runs `petrel client --dev DIR ARGS…` to completion.
fn petrel_client(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(PETREL)
        .args(["client", "--dev"])
        .arg(dir)
        .args(args)
        .output()
        .unwrap()
}

fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn json_lines(out: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

fn nats_servers_of(dir: &Path) -> usize {
    servers_of(dir, "nats-server").len()
}

/// Live (not zombie) processes named `program` whose command line mentions `dir`.
fn servers_of(dir: &Path, program: &str) -> Vec<i32> {
    let needle = dir.to_string_lossy().to_string();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline);
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let zombie = stat.rsplit(')').next()?.trim_start().starts_with('Z');
            (cmdline.contains(program) && cmdline.contains(&needle) && !zombie).then_some(pid)
        })
        .collect()
}

/// Sends `signal` to process `pid`, or to process group `-pid`.
fn signal(pid: i32, signal: i32) {
    // SAFETY: plain kill(2) on a process or group this test started.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Waits (at most `secs`) for `dev` to exit; its exit status.
fn wait_exit(dev: &mut Dev, secs: u64, what: &str) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(s) = dev.child.try_wait().unwrap() {
            return s;
        }
        assert!(started.elapsed() < Duration::from_secs(secs), "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn ctrl_c_in_a_terminal_stops_petrel_dev_and_its_servers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let mut dev = start_dev_in_own_group(&dir);
    assert_eq!(nats_servers_of(&dir), 2);
    assert_eq!(servers_of(&dir, "redis-server").len(), 1);
    // A terminal's Ctrl-C: SIGINT to the whole foreground process group.
    signal(-(dev.child.id() as i32), libc::SIGINT);
    let status = wait_exit(&mut dev, 15, "petrel dev did not stop on Ctrl-C");
    assert!(status.success(), "petrel dev exited with {status}");
    assert_eq!(
        nats_servers_of(&dir),
        0,
        "a nats-server outlived petrel dev"
    );
    assert!(
        servers_of(&dir, "redis-server").is_empty(),
        "redis-server outlived petrel dev"
    );
    assert!(!dir.join("endpoints.json").exists());
}

#[test]
fn petrel_dev_stops_promptly_when_its_servers_died_first() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let mut dev = start_dev_in_own_group(&dir);
    for pid in servers_of(&dir, "nats-server")
        .into_iter()
        .chain(servers_of(&dir, "redis-server"))
    {
        signal(pid, libc::SIGKILL);
    }
    let started = Instant::now();
    while nats_servers_of(&dir) > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "nats-servers still up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(-(dev.child.id() as i32), libc::SIGINT);
    let status = wait_exit(&mut dev, 15, "petrel dev hung after its servers went away");
    assert!(status.success(), "petrel dev exited with {status}");
}

#[test]
fn readme_session_alice_quic_to_bob_websocket_on_two_devices() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let mut dev = start_dev(&dir);
    let endpoints: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("endpoints.json")).unwrap())
            .unwrap();
    for key in [
        "quic",
        "webtransport",
        "websocket",
        "http",
        "nats_hub",
        "nats_leaf",
        "cert_sha256",
    ] {
        assert!(
            endpoints[key].as_str().is_some_and(|s| !s.is_empty()),
            "endpoints.json lacks {key}"
        );
    }
    assert_eq!(nats_servers_of(&dir), 2, "hub and leaf should be running");
    let http = endpoints["http"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://")
        .to_string();
    assert!(http_get(&http, "/healthz").starts_with("HTTP/1.1 200"));
    let wt = endpoints["webtransport"].as_str().unwrap();
    assert!(
        wt.starts_with("https://127.0.0.1:") && wt.ends_with("/wt"),
        "{wt}"
    );
    // Dev tokens: on in petrel dev, validating the user id.
    assert!(http_get(&http, "/dev/token?user=alice").contains("\"token\""));
    assert!(http_get(&http, "/dev/token?user=a.b").starts_with("HTTP/1.1 400"));
    let ready = http_get(&http, "/readyz");
    assert!(
        ready.starts_with("HTTP/1.1 200") && ready.contains("ready"),
        "{ready}"
    );

    let bob1 = start_listener(&dir, "bob", "phone", "websocket", 2);
    let bob2 = start_listener(&dir, "bob", "laptop", "websocket", 2);

    let mut seqs = vec![];
    for (id, text) in [("hello-1", "hi bob"), ("hello-2", "are you there?")] {
        let out = petrel_client(
            &dir,
            &[
                "--user",
                "alice",
                "--transport",
                "quic",
                "send",
                "--to",
                "bob",
                "--id",
                id,
                text,
            ],
        );
        assert!(
            out.status.success(),
            "send failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v = &json_lines(&out.stdout)[0];
        assert_eq!(v["status"], "stored");
        assert_eq!(v["subject"], "msg.private.bob");
        assert_eq!(v["id"], id);
        seqs.push(v["seq"].as_u64().unwrap());
    }
    for bob in [bob1, bob2] {
        let out = bob.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "listen failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got = json_lines(&out.stdout);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0]["text"], "hi bob");
        assert_eq!(got[1]["text"], "are you there?");
        assert_eq!(got[0]["from"], "alice");
        assert_eq!(got[0]["to"], "bob");
        assert_eq!(got[0]["id"], "hello-1");
        assert_eq!(got[0]["seq"].as_u64().unwrap(), seqs[0]);
        assert_eq!(got[1]["seq"].as_u64().unwrap(), seqs[1]);
    }

    // Retrying with the same id gives the same sequence.
    let out = petrel_client(
        &dir,
        &[
            "--user",
            "alice",
            "--transport",
            "websocket",
            "send",
            "--to",
            "bob",
            "--id",
            "hello-1",
            "hi bob",
        ],
    );
    let v = &json_lines(&out.stdout)[0];
    assert_eq!(
        (v["seq"].as_u64().unwrap(), v["duplicate"].as_bool()),
        (seqs[0], Some(true))
    );

    // A bad recipient: JSON on stdout, an error on stderr, non-zero exit.
    let out = petrel_client(&dir, &["--user", "alice", "send", "--to", "bob.*", "x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("INVALID_ID"));

    // `petrel token` prints a JWT.
    let out = Command::new(PETREL)
        .args(["token", "--dev"])
        .arg(&dir)
        .args(["--user", "carol"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .split('.')
            .count(),
        3
    );

    // SIGTERM stops everything, children included.
    signal(dev.child.id() as i32, libc::SIGTERM);
    let status = wait_exit(&mut dev, 30, "petrel dev did not stop on SIGTERM");
    assert!(status.success(), "petrel dev exited with {status}");
    assert_eq!(
        nats_servers_of(&dir),
        0,
        "a nats-server outlived petrel dev"
    );
    assert!(!dir.join("endpoints.json").exists());
}

#[test]
fn listen_with_a_state_file_resumes_exactly_where_it_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let _dev = start_dev(&dir);
    let state = tmp.path().join("dora.state");
    let state_s = state.to_str().unwrap();
    let send = |id: &str, text: &str| {
        let out = petrel_client(
            &dir,
            &["--user", "eve", "send", "--to", "dora", "--id", id, text],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let listen_args = |count: &'static str, timeout: &'static str| {
        [
            "--user",
            "dora",
            "--device",
            "tab",
            "listen",
            "--state",
            state_s,
            "--count",
            count,
            "--timeout",
            timeout,
        ]
    };
    let listen = |count: &'static str, timeout: &'static str| {
        petrel_client(&dir, &listen_args(count, timeout))
    };
    // A new device (no state file) starts from now: send once it is listening.
    let first = start_listener_with(&dir, &listen_args("1", "30"));
    send("one", "one");
    let out = first.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(json_lines(&out.stdout)[0]["text"], "one");
    let saved = petrel_client::state::DeviceState::open(&state)
        .unwrap()
        .cursors()
        .unwrap();
    assert!(
        saved.iter().any(|(s, q)| s == "msg.private.dora" && *q > 0),
        "{saved:?}"
    );

    // Away: two messages arrive; the next listen gets exactly those, in order.
    send("two", "two");
    send("three", "three");
    let out = listen("2", "10");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let texts: Vec<_> = json_lines(&out.stdout)
        .iter()
        .map(|m| m["text"].clone())
        .collect();
    assert_eq!(texts, ["two", "three"]);
    // Nothing is delivered twice.
    let out = listen("1", "1");
    assert!(!out.status.success(), "nothing left to deliver");
    assert!(json_lines(&out.stdout).is_empty());
    // A broken state file is a clear error.
    std::fs::write(&state, "msg.private.dora lots\n".repeat(100)).unwrap();
    let out = listen("1", "1");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a Petrel state file"), "{err}");
}

/// Starts `petrel client --dev DIR ARGS…` (a listen) and waits until it is connected.
fn start_listener_with(dir: &Path, args: &[&str]) -> Child {
    let mut child = Command::new(PETREL)
        .args(["client", "--dev"])
        .arg(dir)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn listener");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let first = lines.next().expect("listener said nothing").expect("read");
    assert!(
        first.starts_with("listening as"),
        "listener failed: {first}"
    );
    // Keep draining stderr so the listener never writes into a closed pipe.
    std::thread::spawn(move || for _ in lines {});
    child
}

#[test]
fn the_edge_cache_reopens_after_kill_9_in_the_middle_of_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let mut dev = start_dev(&dir);
    // zed listening makes the edge receive, and cache, zed's inbox.
    let mut listener = start_listener_with(&dir, &["--user", "zed", "listen", "--timeout", "60"]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let (dir, stop) = (dir.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut child = Command::new(PETREL)
                    .args(["client", "--dev"])
                    .arg(&dir)
                    .args(["--user", "yan", "send", "--to", "zed", &format!("m{i}")])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap();
                // A send caught by the kill would wait for its connection to time out.
                while child.try_wait().unwrap().is_none() {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let _ = child.kill();
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                i += 1;
            }
        })
    };
    // Once messages are flowing (and being cached), SIGKILL the whole edge.
    let stdout = listener.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    for _ in 0..5 {
        lines.next().expect("listener ended").expect("read");
    }
    dev.child.kill().unwrap();
    dev.child.wait().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sender.join().unwrap();
    let _ = listener.kill();
    let _ = listener.wait();

    // The cache opens after the crash, and what it holds reads back without errors.
    {
        let store = petrel_storage::EdgeStore::open(dir.join("edge0/edge-cache")).unwrap();
        let (entries, corrupt) = store.recent_after("msg.private.zed", 0, 10_000).unwrap();
        assert!(corrupt.is_none(), "{corrupt:?}");
        assert!(
            !entries.is_empty(),
            "messages delivered before the kill were cached"
        );
        assert!(
            entries.windows(2).all(|w| w[1].prev == w[0].seq),
            "an unbroken chain"
        );
    }
    // And petrel dev starts again on the same directory (its cache included).
    std::fs::remove_file(dir.join("endpoints.json")).unwrap();
    let _again = start_dev(&dir);
    let ep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("endpoints.json")).unwrap())
            .unwrap();
    let http = ep["http"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://")
        .to_string();
    assert!(http_get(&http, "/readyz").starts_with("HTTP/1.1 200"));
}

#[test]
fn two_dev_instances_side_by_side_and_kill_9_leaves_no_child() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let mut dev_a = start_dev(&a);
    let _dev_b = start_dev(&b);
    let ea: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("endpoints.json")).unwrap()).unwrap();
    let eb: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(b.join("endpoints.json")).unwrap()).unwrap();
    assert_ne!(ea["quic"], eb["quic"]);
    // SIGKILL: no chance to clean up, yet the children must die with it.
    dev_a.child.kill().unwrap();
    dev_a.child.wait().unwrap();
    let started = Instant::now();
    while nats_servers_of(&a) > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "nats-server outlived a killed petrel dev"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        nats_servers_of(&b),
        2,
        "the other instance must be unaffected"
    );
}

#[test]
fn help_explains_every_command() {
    let out = Command::new(PETREL).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["dev", "token", "client", "gateway", "provision", "admin"] {
        assert!(text.contains(cmd), "--help does not mention {cmd}");
    }
    let out = Command::new(PETREL)
        .args(["client", "--help"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("--transport"));
    let out = Command::new(PETREL)
        .args(["gateway", "--config", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.toml"));
}

#[test]
fn admin_groups_and_notifications_from_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let _dev = start_dev(&dir);
    let admin = |args: &[&str]| {
        Command::new(PETREL)
            .args(["admin", "group", "--dev"])
            .arg(&dir)
            .args(args)
            .output()
            .unwrap()
    };
    let out = admin(&["add", "crew", "ann", "ben"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out.stdout);
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["changed"], true);
    let out = admin(&["list", "crew"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ann\nben\n");
    let out = admin(&["add", "bad.group", "ann"]);
    assert!(!out.status.success(), "an invalid group id is refused");

    // ben listens; ann sends to the group; cid (not a member) is refused.
    let listener = start_listener(&dir, "ben", "phone", "websocket", 1);
    let sent = petrel_client(
        &dir,
        &["--user", "ann", "send", "--group", "crew", "hello crew"],
    );
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    assert_eq!(json_lines(&sent.stdout)[0]["subject"], "msg.group.crew");
    let got = listener.wait_with_output().unwrap();
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    let m = &json_lines(&got.stdout)[0];
    assert_eq!(
        (m["text"].as_str(), m["subject"].as_str()),
        (Some("hello crew"), Some("msg.group.crew"))
    );
    // A notification from the admin CLI reaches a listener of that user.
    let listener = start_listener(&dir, "ann", "tablet", "quic", 1);
    let out = Command::new(PETREL)
        .args(["admin", "notify", "--dev"])
        .arg(&dir)
        .args([
            "--user",
            "ann",
            "--category",
            "system",
            "--title",
            "Welcome",
            "--body",
            "hi",
            "--priority",
            "high",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json_lines(&out.stdout)[0]["subject"], "notif.system.ann");
    let got = listener.wait_with_output().unwrap();
    let m = &json_lines(&got.stdout)[0];
    assert_eq!(m["notification"]["title"], "Welcome");
    assert_eq!(m["notification"]["priority"], "PRIORITY_HIGH");
    let bad = Command::new(PETREL)
        .args(["admin", "notify", "--dev"])
        .arg(&dir)
        .args(["--user", "ann", "--category", "spam", "--title", "x"])
        .output()
        .unwrap();
    assert!(!bad.status.success(), "an unknown category is refused");
    // Presence from the CLI: ben is offline now (his listener ended).
    let watched = petrel_client(
        &dir,
        &[
            "--user",
            "ann",
            "watch",
            "--users",
            "ben,bad.id",
            "--timeout",
            "2",
        ],
    );
    assert!(
        !watched.status.success(),
        "an invalid user id in the list is refused"
    );
    let watched = petrel_client(
        &dir,
        &["--user", "ann", "watch", "--users", "ben", "--timeout", "1"],
    );
    assert!(
        watched.status.success(),
        "{}",
        String::from_utf8_lossy(&watched.stderr)
    );
    assert_eq!(json_lines(&watched.stdout)[0]["state"], "OFFLINE");
    let typed = petrel_client(&dir, &["--user", "ann", "typing", "--group", "crew"]);
    assert!(
        typed.status.success(),
        "{}",
        String::from_utf8_lossy(&typed.stderr)
    );
    let refused = petrel_client(&dir, &["--user", "cid", "send", "--group", "crew", "hi"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stdout).contains("FORBIDDEN"));
}

/// The README's push session: register a phone (APNs) and a tablet (FCM), close the
/// apps, get a message: each gets one push from the worker `petrel dev --push` runs;
/// after push-unregister the phone gets none.
#[test]
fn readme_push_session() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let _dev = start_dev_with_push(&dir);
    let ep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("endpoints.json")).unwrap())
            .unwrap();
    let received =
        std::path::PathBuf::from(ep["push"]["received"].as_str().expect("push endpoints"));
    let ok = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        json_lines(&out.stdout)
    };
    let r = ok(petrel_client(
        &dir,
        &[
            "--user",
            "bob",
            "--device",
            "phone",
            "push-register",
            "--platform",
            "apns",
            "--token",
            "0a1b2c3d",
            "--topic",
            "com.example.chat",
        ],
    ));
    assert_eq!(r[0]["registered"], "apns");
    ok(petrel_client(
        &dir,
        &[
            "--user",
            "bob",
            "--device",
            "tablet",
            "push-register",
            "--platform",
            "fcm",
            "--token",
            "bob-tablet-token",
        ],
    ));
    let bad = petrel_client(
        &dir,
        &[
            "--user",
            "bob",
            "--device",
            "tv",
            "push-register",
            "--platform",
            "apns",
            "--token",
            "zz",
            "--topic",
            "x",
        ],
    );
    assert!(!bad.status.success(), "a non-hex APNs token is refused");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("hexadecimal"));
    ok(petrel_client(
        &dir,
        &["--user", "alice", "send", "--to", "bob", "dinner at 8?"],
    ));
    let pushes = |token: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(&received)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|r| r["token"] == token)
            .collect()
    };
    let started = Instant::now();
    while pushes("0a1b2c3d").is_empty() || pushes("bob-tablet-token").is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no pushes in {}",
            received.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        pushes("0a1b2c3d")[0]["body"]["aps"]["alert"]["body"],
        "dinner at 8?"
    );
    assert_eq!(
        pushes("bob-tablet-token")[0]["body"]["notification"]["title"],
        "alice"
    );
    ok(petrel_client(
        &dir,
        &["--user", "bob", "--device", "phone", "push-unregister"],
    ));
    std::thread::sleep(Duration::from_millis(1200));
    ok(petrel_client(
        &dir,
        &["--user", "alice", "send", "--to", "bob", "still there?"],
    ));
    let started = Instant::now();
    while pushes("bob-tablet-token").len() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no second push to the tablet"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        pushes("0a1b2c3d").len(),
        1,
        "the unregistered phone was pushed"
    );
}

/// The README's conversation session: replies and mentions, a new device's list with
/// unread counts, mark-read, the archived history of one conversation, edit and
/// recall, against the message service `petrel dev` runs.
#[test]
fn readme_messages_session() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let _dev = start_dev(&dir);
    let ok = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        json_lines(&out.stdout)
    };
    ok(Command::new(PETREL)
        .args(["admin", "group", "--dev"])
        .arg(&dir)
        .args(["add", "team", "bob", "carol"])
        .output()
        .unwrap());
    let first = ok(petrel_client(
        &dir,
        &["--user", "alice", "send", "--to", "bob", "lunch?"],
    ));
    let seq = first[0]["seq"].as_u64().unwrap();
    let reference = format!("msg.private.bob:{seq}");
    ok(petrel_client(
        &dir,
        &[
            "--user",
            "alice",
            "send",
            "--to",
            "bob",
            "--reply-to",
            &reference,
            "--mention",
            "bob",
            "at noon, @bob",
        ],
    ));
    ok(petrel_client(
        &dir,
        &["--user", "carol", "send", "--group", "team", "standup in 5"],
    ));
    // The archive follows within moments; a new device asks until it has caught up.
    let started = Instant::now();
    let list = loop {
        let list = ok(petrel_client(
            &dir,
            &["--user", "bob", "--device", "new-phone", "conversations"],
        ));
        if list.len() == 2 && list.iter().all(|c| c["unread"].as_u64() > Some(0)) {
            break list;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{list:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(list[0]["group"], "team", "{list:?}");
    assert_eq!(list[1]["peer"], "alice");
    assert_eq!(list[1]["unread"], 2);
    assert_eq!(list[1]["last"]["text"], "at noon, @bob");
    assert_eq!(list[1]["last"]["reply_to"]["seq"], seq);
    ok(petrel_client(
        &dir,
        &[
            "--user",
            "bob",
            "--device",
            "laptop",
            "mark-read",
            "--group",
            "team",
        ],
    ));
    let started = Instant::now();
    loop {
        let list = ok(petrel_client(&dir, &["--user", "bob", "conversations"]));
        let team = list.iter().find(|c| c["group"] == "team").unwrap();
        if team["unread"] == 0 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{list:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Pinned, alice comes before the group that spoke last; the answer says so.
    let pinned = ok(petrel_client(
        &dir,
        &["--user", "bob", "pin", "--with", "alice"],
    ));
    assert_eq!(pinned[0]["pinned"], true, "{pinned:?}");
    assert_eq!(pinned[0]["peer"], "alice", "{pinned:?}");
    let list = ok(petrel_client(&dir, &["--user", "bob", "conversations"]));
    assert_eq!(list[0]["peer"], "alice", "{list:?}");
    let neither = petrel_client(&dir, &["--user", "bob", "pin"]);
    assert!(!neither.status.success());
    assert!(
        String::from_utf8_lossy(&neither.stderr).contains("--with"),
        "{neither:?}"
    );
    let history = ok(petrel_client(
        &dir,
        &["--user", "bob", "history", "--with", "alice"],
    ));
    let texts: Vec<&str> = history
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["at noon, @bob", "lunch?"]);
    ok(petrel_client(
        &dir,
        &[
            "--user", "alice", "send", "--to", "bob", "--id", "m-42", "helo",
        ],
    ));
    // An amend finds its original in the archive: wait until bob's list shows it.
    let started = Instant::now();
    loop {
        let list = ok(petrel_client(&dir, &["--user", "bob", "conversations"]));
        if list.iter().any(|c| c["last"]["text"] == "helo") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{list:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let edited = ok(petrel_client(
        &dir,
        &["--user", "alice", "edit", "--id", "m-42", "hello"],
    ));
    assert_eq!(edited[0]["status"], "stored", "{edited:?}");
    let recalled = ok(petrel_client(
        &dir,
        &["--user", "alice", "recall", "--id", "m-42"],
    ));
    assert_eq!(recalled[0]["status"], "stored", "{recalled:?}");
    let not_mine = petrel_client(&dir, &["--user", "bob", "edit", "--id", "m-42", "mine"]);
    assert!(!not_mine.status.success());
    assert_eq!(json_lines(&not_mine.stdout)[0]["code"], "FORBIDDEN");
}
