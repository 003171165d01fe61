//! `petrel provision` against a real hub: creates the streams, then updates them
//! idempotently, with the limits and caps of the design, logging in as the hub's admin.

use std::process::Command;
use std::time::Duration;

use async_nats::jetstream::stream::{DiscardPolicy, RetentionPolicy, StorageType};
use petrel_devkit::hub::{Hub, HubOptions};

const PETREL: &str = env!("CARGO_BIN_EXE_petrel");

fn provision(url: &str, extra: &[&str]) -> Vec<serde_json::Value> {
    let out = Command::new(PETREL)
        .args(["provision", "--nats", url, "--domain", "hub"])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "provision failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn config_of(
    js: &async_nats::jetstream::Context,
    name: &str,
) -> anyhow::Result<async_nats::jetstream::stream::Config> {
    Ok(js.get_stream(name).await?.info().await?.config.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provision_creates_then_updates_the_streams() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start(dir.path(), HubOptions::default()).await?;
    let client = hub.admin_client().await?;

    // Without the admin login the hub refuses.
    let plain = hub.client_urls()[0].clone();
    let out = Command::new(PETREL)
        .args(["provision", "--nats", &plain])
        .output()?;
    assert!(!out.status.success(), "an anonymous provision was let in");

    // The production caps (100 GB + 10 GB) do not fit this hub's 8 GB store: a clear
    // error, and nothing half-made.
    let out = Command::new(PETREL)
        .args(["provision", "--nats", &hub.admin_urls()[0]])
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_file_store"), "{err}");

    let url = hub.admin_urls()[0].clone();
    let small = [
        "--messages-max-bytes",
        "1GiB",
        "--notifications-max-bytes",
        "256MiB",
    ];
    let first = tokio::task::spawn_blocking(move || provision(&url, &small)).await?;
    let names: Vec<_> = first
        .iter()
        .map(|v| v["stream"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        [
            "USER_MESSAGES",
            "SYSTEM_NOTIFICATIONS",
            "ONLINE_STATUS",
            "RECEIPT_CLAIMS",
            "PUSH_TARGETS",
            "PUSH_DEAD_LETTERS"
        ]
    );
    assert!(first.iter().all(|v| v["action"] == "created"), "{first:?}");
    let url = hub.admin_urls()[0].clone();
    let second = tokio::task::spawn_blocking(move || {
        provision(
            &url,
            &[
                "--messages-max-msgs",
                "5000",
                "--messages-max-bytes",
                "64MiB",
                "--notifications-max-bytes",
                "256MiB",
            ],
        )
    })
    .await?;
    assert!(
        second.iter().all(|v| v["action"] == "updated"),
        "{second:?}"
    );

    let js = async_nats::jetstream::with_domain(client, "hub");
    let day = Duration::from_secs(24 * 3600);
    let um = config_of(&js, "USER_MESSAGES").await?;
    assert_eq!(um.max_age, 7 * day);
    assert_eq!(
        (um.max_messages, um.max_bytes, um.discard),
        (5000, 64 << 20, DiscardPolicy::Old),
        "the caps given to the second run"
    );
    assert_eq!(um.storage, StorageType::File);
    assert!(um.allow_direct);
    let rp = um.republish.expect("USER_MESSAGES re-publishes");
    assert_eq!(
        (rp.source.as_str(), rp.destination.as_str()),
        ("msg.>", "live.msg.>")
    );
    let notif = config_of(&js, "SYSTEM_NOTIFICATIONS").await?;
    assert_eq!(notif.max_age, 3 * day);
    assert_eq!(
        (notif.max_messages, notif.max_bytes, notif.discard),
        (1_000_000, 256 << 20, DiscardPolicy::Old),
        "the default count cap, the given size"
    );
    let status = config_of(&js, "ONLINE_STATUS").await?;
    assert_eq!(status.max_messages, 100_000);
    assert_eq!(
        (status.storage, status.max_age),
        (StorageType::Memory, Duration::from_secs(300))
    );
    let claims = config_of(&js, "RECEIPT_CLAIMS").await?;
    assert_eq!(
        (
            claims.max_messages_per_subject,
            claims.discard_new_per_subject,
            claims.discard
        ),
        (1, true, DiscardPolicy::New),
        "a second claim on a subject is refused"
    );
    // The push registry keeps one value per user; dead letters are kept, not consumed.
    let registry = config_of(&js, "PUSH_TARGETS").await?;
    assert_eq!(
        (registry.max_messages_per_subject, registry.allow_direct),
        (1, true)
    );
    let dead = config_of(&js, "PUSH_DEAD_LETTERS").await?;
    assert_eq!(dead.retention, RetentionPolicy::Limits);

    // A bad URL is a clear error with a non-zero exit.
    let out = Command::new(PETREL)
        .args(["provision", "--nats", "nats://127.0.0.1:1"])
        .output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("connecting to nats://127.0.0.1:1"));
    // So is a size that is not one.
    let out = Command::new(PETREL)
        .args([
            "provision",
            "--nats",
            "nats://127.0.0.1:1",
            "--messages-max-bytes",
            "lots",
        ])
        .output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a size"));
    hub.stop().await;
    Ok(())
}
