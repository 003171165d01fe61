//! Smoke runs of `petrel bench`: every scenario on both transports, small and short,
//! each against the fresh `petrel dev` topology the bench starts itself. The figures
//! are not judged here (BENCHMARKS.md records them from release runs); what is checked
//! is that each scenario runs and accounts for every message: nothing lost, nothing
//! seen twice. And through the impairment proxy: loss and address switches, with the
//! QUIC sessions surviving the switches and WebSocket clients reconnecting.

use petrel_tests::petrel_bin;
use serde_json::Value;

/// Runs `petrel bench ARGS --json` and returns its reports.
fn bench(args: &[&str]) -> anyhow::Result<Vec<Value>> {
    let out = std::process::Command::new(petrel_bin()?)
        .arg("bench")
        .arg("--json")
        .args(args)
        .env("PETREL_LOG", "warn")
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "petrel bench {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reports: Vec<Value> = String::from_utf8(out.stdout)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    Ok(reports)
}

fn num(r: &Value, key: &str) -> u64 {
    r[key].as_u64().unwrap_or(u64::MAX)
}

/// Both transports reported, nothing lost or duplicated, `delivered` as expected.
fn accounted(reports: &[Value], expect: impl Fn(&Value) -> u64) -> anyhow::Result<()> {
    let systems: Vec<_> = reports.iter().map(|r| r["system"].clone()).collect();
    anyhow::ensure!(systems == ["quic", "websocket"], "reports for {systems:?}");
    for r in reports {
        anyhow::ensure!(num(r, "lost") == 0, "lost: {r}");
        anyhow::ensure!(num(r, "duplicates") == 0, "duplicates: {r}");
        anyhow::ensure!(num(r, "delivered") == expect(r), "delivered: {r}");
        anyhow::ensure!(r["rate"].as_f64().unwrap_or(0.0) > 0.0, "no rate: {r}");
    }
    Ok(())
}

#[test]
fn pairs_fanout_and_ingest_account_for_every_message() -> anyhow::Result<()> {
    let pairs = bench(&["pairs", "--pairs", "2", "--rate", "100", "--duration", "2"])?;
    accounted(&pairs, |r| num(r, "sent"))?;
    for r in &pairs {
        anyhow::ensure!(r["latency"]["count"].as_u64() == Some(num(r, "sent")));
    }
    let fanout = bench(&[
        "fanout",
        "--members",
        "20",
        "--rate",
        "20",
        "--duration",
        "2",
    ])?;
    accounted(&fanout, |r| r["extra"]["stored"].as_u64().unwrap_or(0) * 20)?;
    let ingest = bench(&["ingest", "--senders", "2", "--messages", "1000"])?;
    accounted(&ingest, |_| 1000)?;
    Ok(())
}

#[test]
fn idle_and_resume_report_memory_and_cache_use() -> anyhow::Result<()> {
    let idle = bench(&["idle", "--connections", "50"])?;
    accounted(&idle, |_| 0)?;
    for r in &idle {
        anyhow::ensure!(
            r["extra"]["gateway_rss_after_mib"].as_f64().is_some(),
            "{r}"
        );
    }
    let resume = bench(&["resume", "--missed", "100", "--rounds", "2"])?;
    accounted(&resume, |_| 200)?;
    for r in &resume {
        // Another device of the user was online: the edge cache served all of it.
        anyhow::ensure!(r["extra"]["from_edge_cache"].as_f64() == Some(200.0), "{r}");
    }
    Ok(())
}

#[test]
fn through_the_impairment_proxy_nothing_is_lost_quic_migrates_and_websocket_reconnects()
-> anyhow::Result<()> {
    let reports = bench(&[
        "--impair",
        "loss=5%,delay=10ms,jitter=2ms,switch=2s,seed=5",
        "pairs",
        "--pairs",
        "2",
        "--rate",
        "40",
        "--duration",
        "3",
    ])?;
    anyhow::ensure!(reports.len() == 2);
    let quic = &reports[0];
    anyhow::ensure!(quic["system"] == "quic");
    // The proxy did drop and switch; the QUIC clients got everything without a single
    // reconnect: their sessions moved to the new addresses.
    anyhow::ensure!(quic["extra"]["proxy_dropped"].as_u64() > Some(0), "{quic}");
    anyhow::ensure!(quic["extra"]["proxy_switches"].as_u64() > Some(0), "{quic}");
    anyhow::ensure!(
        num(quic, "lost") == 0 && num(quic, "delivered") == num(quic, "sent"),
        "{quic}"
    );
    anyhow::ensure!(num(quic, "duplicates") == 0);
    anyhow::ensure!(quic["extra"]["reconnects"].as_u64() == Some(0), "{quic}");
    // WebSocket cannot move: every switch cuts its connections; the bench's clients
    // connect again (the receiver resumes from its cursor, the sender re-sends what was
    // unanswered with the same ids), and still nothing is lost or seen twice.
    let ws = &reports[1];
    anyhow::ensure!(ws["system"] == "websocket");
    anyhow::ensure!(ws["extra"]["reconnects"].as_u64() > Some(0), "{ws}");
    anyhow::ensure!(
        num(ws, "lost") == 0 && num(ws, "delivered") == num(ws, "sent"),
        "{ws}"
    );
    anyhow::ensure!(num(ws, "duplicates") == 0);
    Ok(())
}
