//! The hub as production runs it: `petrel dev --hub-nodes 3` is a 3-node JetStream
//! cluster with R3 streams, fsync before every acknowledgement and its monitoring
//! listed in endpoints.json; leaf links need TLS and the edge's login, and an edge may
//! use only Petrel's subjects; the production configs in deploy/ are valid.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use petrel_devkit::dev::{self, Endpoints};
use petrel_devkit::nats::{LeafAuth, NatsProcess};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn petrel_dev_with_three_hub_nodes_runs_r3_streams_that_fsync() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("dev");
    let stop = tokio_util::sync::CancellationToken::new();
    let shape = dev::Shape {
        push: false,
        messages: false,
        edges: 1,
        hub_nodes: 3,
        sync_interval: "always".into(),
    };
    let running = tokio::spawn({
        let (dir, stop) = (dir.clone(), stop.clone());
        async move { dev::run(&dir, None, shape, stop).await }
    });
    let started = Instant::now();
    let ep = loop {
        if let Ok(ep) = Endpoints::read(&dir) {
            break ep;
        }
        ensure!(!running.is_finished(), "petrel dev ended early");
        ensure!(
            started.elapsed() < Duration::from_secs(60),
            "no endpoints.json"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    ensure!(ep.nats_hub_nodes.len() == 3 && ep.hub_monitoring.len() == 3);
    ensure!(
        ep.nats_hub == ep.nats_hub_nodes[0],
        "nats_hub is the first node"
    );
    // Every node's monitoring answers, each a JetStream server of the one cluster.
    for m in &ep.hub_monitoring {
        let addr = m.trim_start_matches("http://");
        let (status, body) = petrel_devkit::http_get(addr, "/varz").await?;
        ensure!(status == 200, "{m}/varz: {status}");
        // The body may come chunked: the JSON object is between the outer braces.
        let json = body
            .find('{')
            .zip(body.rfind('}'))
            .map(|(a, b)| &body[a..=b])
            .context("no JSON in /varz")?;
        let varz: serde_json::Value = serde_json::from_str(json)?;
        ensure!(
            varz["cluster"]["name"] == "petrel-hub",
            "{m}: {}",
            varz["cluster"]
        );
        ensure!(
            varz["jetstream"]["config"]["sync_always"] == true,
            "{m}: not fsyncing before acknowledging: {}",
            varz["jetstream"]["config"]
        );
        let (status, _) = petrel_devkit::http_get(addr, "/jsz").await?;
        ensure!(status == 200);
    }
    // The streams have three replicas.
    let admin = petrel_devkit::nats::connect(&ep.nats_hub).await?;
    let js = async_nats::jetstream::with_domain(admin, "hub");
    let mut s = js.get_stream(petrel_core::subject::MESSAGE_STREAM).await?;
    let info = s.info().await?;
    ensure!(
        info.config.num_replicas == 3,
        "{:?}",
        info.config.num_replicas
    );
    let cluster = info.cluster.as_ref().context("no cluster info")?;
    ensure!(cluster.leader.is_some() && cluster.replicas.len() == 2);
    stop.cancel();
    running.await??;
    Ok(())
}

/// A leaf with the edge's login but without TLS, and one over TLS with a wrong
/// password, never reach the hub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_admits_only_tls_leaves_that_log_in() -> anyhow::Result<()> {
    let topo = petrel_tests::chaos::topology(1, 1).await?;
    let good = topo.hub.leaf_remote_urls();
    let auth = LeafAuth::random();
    // Wrong password, TLS.
    let wrong: Vec<String> = good
        .iter()
        .map(|u| u.replace(&topo.hub.auth().edge, "not-the-password"))
        .collect();
    let dir = topo.dir().join("rogue");
    let leaf = NatsProcess::start_leaf(
        &dir.join("wrong"),
        "wrong",
        &wrong,
        topo.hub.ca_file(),
        None,
        &auth,
    )
    .await?;
    ensure!(
        !links_within(&leaf, &auth, Duration::from_secs(3)).await,
        "a leaf with a wrong password reached the hub"
    );
    leaf.stop().await;
    // The right login, no TLS (a plain remote: the same config without its tls block).
    let plain = NatsProcess::start(&dir.join("plain"), "plain", &plain_leaf(&dir, &good)?).await?;
    ensure!(
        !links_within(&plain, &auth, Duration::from_secs(3)).await,
        "a leaf without TLS reached the hub"
    );
    plain.stop().await;
    topo.stop().await;
    Ok(())
}

/// A leaf config with `remotes` that have no TLS, admitting one anonymous-free user.
fn plain_leaf(dir: &Path, urls: &[String]) -> anyhow::Result<String> {
    let quoted: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
    Ok(format!(
        "server_name: plain\nlisten: \"127.0.0.1:-1\"\nports_file_dir: {:?}\nauthorization {{ users = [ {{ user: \"petrel-gateway\", password: \"pw\" }} ] }}\nleafnodes {{ remotes: [ {{ urls: [{}] }} ] }}\n",
        dir.join("plain").display().to_string(),
        quoted.join(", ")
    ))
}

/// Whether JetStream answers through `leaf` within `d`.
async fn links_within(leaf: &NatsProcess, auth: &LeafAuth, d: Duration) -> bool {
    let url = if leaf.name == "plain" {
        leaf.client_url
            .replacen("nats://", "nats://petrel-gateway:pw@", 1)
    } else {
        auth.gateway_url(&leaf.client_url)
    };
    petrel_devkit::nats::wait_jetstream(&url, "hub", d)
        .await
        .is_ok()
}

/// An edge may call only the JetStream API a gateway needs: it reads streams, never
/// deletes or changes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_cannot_delete_or_change_a_stream() -> anyhow::Result<()> {
    let topo = petrel_tests::chaos::topology(1, 1).await?;
    let edge = petrel_devkit::nats::connect(&topo.edges[0].leaf_url).await?;
    let js = async_nats::jetstream::with_domain(edge, "hub");
    let name = petrel_core::subject::MESSAGE_STREAM;
    ensure!(js.get_stream(name).await.is_ok(), "reading is allowed");
    let deleted = tokio::time::timeout(Duration::from_secs(3), js.delete_stream(name)).await;
    ensure!(!matches!(deleted, Ok(Ok(_))), "the edge deleted {name}");
    let admin = async_nats::jetstream::with_domain(topo.hub_client.clone(), "hub");
    ensure!(
        admin.get_stream(name).await.is_ok(),
        "{name} is still there"
    );
    topo.stop().await;
    Ok(())
}

/// deploy/nats/production/{hub,leaf}.conf pass `nats-server -t` with their variables
/// set and certificate files in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_production_hub_and_leaf_configs_are_valid() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let ca = petrel_devkit::ca::DevCa::create(&tmp.path().join("ca"))?;
    let node = ca.issue("hub-1")?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nats/production");
    for name in ["hub.conf", "leaf.conf"] {
        // The files name /etc/petrel/…: point those at the test's certificates.
        let text = std::fs::read_to_string(root.join(name))?
            .replace("/etc/petrel/hub/node.pem", &node.cert.display().to_string())
            .replace("/etc/petrel/hub/node.key", &node.key.display().to_string())
            .replace(
                "/etc/petrel/hub/ca.pem",
                &ca.ca_file().display().to_string(),
            )
            .replace(
                "/etc/petrel/leaf/ca.pem",
                &ca.ca_file().display().to_string(),
            )
            .replace("/var/lib/petrel", &tmp.path().display().to_string());
        let path = tmp.path().join(name);
        std::fs::write(&path, text)?;
        let out = tokio::process::Command::new(petrel_devkit::nats::nats_server_bin())
            .arg("-t")
            .arg("-c")
            .arg(&path)
            .env("PETREL_HUB_NAME", "hub-1")
            .env("PETREL_EDGE_NAME", "edge-1")
            .env("PETREL_EDGE_PASSWORD", "e")
            .env("PETREL_ADMIN_PASSWORD", "a")
            .env("PETREL_PUSH_PASSWORD", "p")
            .env("PETREL_MESSAGES_PASSWORD", "m")
            .env("PETREL_SYS_PASSWORD", "s")
            .env("PETREL_LEAF_GATEWAY_PASSWORD", "g")
            .env("PETREL_LEAF_SERVICES_PASSWORD", "v")
            .output()
            .await?;
        ensure!(
            out.status.success(),
            "{name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
