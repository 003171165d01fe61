//! Certificates change under a running gateway without touching open connections:
//! the self-signed dev certificate rotates (current → next), and PEM files are
//! reloaded when they change (a broken pair is refused and the old one kept).

use std::time::Duration;

use petrel_client::{ConnectOptions, Connection, TransportKind::*, Trust};
use petrel_gateway::tls::{self, CertHashes};
use petrel_tests::{TestTopology, Topology, next_message_on};

async fn hashes(t: &Topology) -> anyhow::Result<CertHashes> {
    Ok(serde_json::from_str(&t.http_get(0, "/cert-hashes").await?)?)
}

/// Polls `/cert-hashes` until `pred` holds, at most 15 s.
async fn wait_hashes(
    t: &Topology,
    pred: impl Fn(&CertHashes) -> bool,
) -> anyhow::Result<CertHashes> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let h = hashes(t).await?;
        if pred(&h) {
            return Ok(h);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "certificate hashes never changed as expected: {h:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `cond` until it holds, at most 15 s.
async fn wait_until(cond: impl Fn() -> bool) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !cond() {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "condition never held"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Connects bob over `transport`, pinning exactly `sha256`.
async fn connect_pinned(
    t: &Topology,
    transport: petrel_client::TransportKind,
    sha256: &str,
) -> Result<Connection, petrel_client::ClientError> {
    let mut ep = t.endpoint(0, transport);
    ep.trust = Trust::from_hex_sha256(sha256)?;
    ep.connect_timeout = Duration::from_secs(3);
    Connection::connect(ConnectOptions::new(ep, t.token("bob"), "pinned")).await
}

/// Alice sends to bob; each of bob's `clients` must receive it.
async fn still_works(
    t: &Topology,
    clients: &mut [&mut Connection],
    id: &str,
) -> anyhow::Result<()> {
    let alice = t.connect(0, Quic, "alice", "phone").await?;
    alice.send("bob", id, "still here").await?;
    for bob in clients.iter_mut() {
        let m = next_message_on(bob, "msg.private.bob", 5).await?;
        anyhow::ensure!(m.client_msg_id == id, "got {m:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_signed_certificate_rotates_without_a_restart() -> anyhow::Result<()> {
    let t = Topology::start_with(1, |cfg, _| {
        cfg.tls.rotate_secs = 3;
        Ok(())
    })
    .await?;
    let before = hashes(&t).await?;
    assert_eq!(before.algorithm, "sha-256");
    let next = before
        .next
        .clone()
        .expect("a self-signed store has a next certificate");
    assert_ne!(before.current, next);
    let mut bob_quic = connect_pinned(&t, Quic, &before.current).await?;
    let mut bob_ws = connect_pinned(&t, WebSocket, &before.current).await?;

    let after = wait_hashes(&t, |h| h.current != before.current).await?;
    assert_eq!(
        after.current, next,
        "the announced next certificate took over"
    );
    assert!(after.next.is_some() && after.next != before.next);

    // Open connections are untouched; new handshakes get the new certificate.
    still_works(&t, &mut [&mut bob_quic, &mut bob_ws], "after-rotation").await?;
    // (Another rotation may happen meanwhile; pin what is served now.)
    let now = hashes(&t).await?;
    connect_pinned(&t, Quic, &now.current).await?;
    assert!(
        connect_pinned(&t, Quic, &before.current).await.is_err(),
        "the rotated-out certificate is no longer served"
    );
    t.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_files_are_reloaded_and_a_broken_pair_is_refused() -> anyhow::Result<()> {
    let t = Topology::start_with(1, |cfg, dir| {
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        tls::write_dev_cert(&cert, &key, 10)?;
        cfg.tls.self_signed = false;
        cfg.tls.cert = Some(cert);
        cfg.tls.key = Some(key);
        cfg.tls.reload_secs = 1;
        cfg.web.dev_tokens = false;
        Ok(())
    })
    .await?;
    let first = hashes(&t).await?;
    assert_eq!(first.next, None, "files have no next certificate");
    let (status, _) =
        petrel_devkit::http_get(&t.edges[0].addrs.http.to_string(), "/dev/token?user=alice")
            .await?;
    assert_eq!(status, 404, "dev tokens are off unless configured");
    let mut bob = connect_pinned(&t, Quic, &first.current).await?;

    // Renewal (as an ACME client would): both files replaced.
    let dir = t.dir().join("edge0");
    let renewed = tls::write_dev_cert(&dir.join("cert.pem"), &dir.join("key.pem"), 10)?;
    let after = wait_hashes(&t, |h| h.current == renewed).await?;
    assert_eq!(after.current, renewed);
    still_works(&t, &mut [&mut bob], "after-reload").await?;
    connect_pinned(&t, WebSocket, &renewed).await?;

    // A broken certificate file is refused; the renewed certificate stays in service.
    let certs = t.edges[0].certs.clone();
    let errors = certs.errors();
    std::fs::write(
        dir.join("cert.pem"),
        "-----BEGIN CERTIFICATE-----\nnot base64\n",
    )?;
    wait_until(|| certs.errors() > errors).await?;
    assert_eq!(hashes(&t).await?.current, renewed);
    connect_pinned(&t, Quic, &renewed).await?;
    // …and a key that does not belong to the certificate is refused too.
    let other = t.dir().join("other");
    std::fs::create_dir_all(&other)?;
    tls::write_dev_cert(&other.join("c.pem"), &other.join("k.pem"), 10)?;
    let errors = certs.errors();
    std::fs::copy(other.join("c.pem"), dir.join("cert.pem"))?;
    wait_until(|| certs.errors() > errors).await?;
    assert_eq!(hashes(&t).await?.current, renewed);
    connect_pinned(&t, Quic, &renewed).await?;
    t.stop().await;
    Ok(())
}
