//! A scenario's result: printed for people, or one JSON object per line (`--json`).

use serde::Serialize;

use crate::hist::LatencySummary;

/// The machine a run was measured on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Logical CPUs.
    pub cores: usize,
    /// Memory, GiB.
    pub memory_gib: f64,
    /// `uname -r`.
    pub kernel: String,
}

impl Machine {
    /// This machine.
    pub fn here() -> Self {
        let memory_gib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
            .map(|kb| (kb / 1024.0 / 1024.0 * 10.0).round() / 10.0)
            .unwrap_or(0.0);
        Self {
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            memory_gib,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
        }
    }
}

/// One scenario on one transport (or one peer system).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// `quic`, `websocket`, or the peer measured (`nats-websocket`, …).
    pub system: String,
    /// The scenario's parameters.
    pub params: serde_json::Value,
    /// Seconds measured.
    pub seconds: f64,
    /// Messages sent (or connections opened, for `idle`).
    pub sent: u64,
    /// Messages the application received (deliveries: each recipient counts).
    pub delivered: u64,
    /// Expected deliveries that never came.
    pub lost: u64,
    /// Deliveries the application saw twice (the SDK drops wire duplicates; this
    /// should stay 0).
    pub duplicates: u64,
    /// The headline rate (per second), named by `rate_unit`.
    pub rate: f64,
    /// What `rate` counts, e.g. `deliveries/s`.
    pub rate_unit: String,
    /// Latency percentiles, if measured.
    pub latency: Option<LatencySummary>,
    /// Scenario-specific figures.
    pub extra: serde_json::Map<String, serde_json::Value>,
    /// Where it ran.
    pub machine: Machine,
    /// When (UTC, RFC 3339).
    pub date: String,
}

impl Report {
    /// An empty report for `scenario` on `system`.
    pub fn new(scenario: &str, system: &str, params: serde_json::Value) -> Self {
        Self {
            scenario: scenario.into(),
            system: system.into(),
            params,
            seconds: 0.0,
            sent: 0,
            delivered: 0,
            lost: 0,
            duplicates: 0,
            rate: 0.0,
            rate_unit: String::new(),
            latency: None,
            extra: Default::default(),
            machine: Machine::here(),
            date: now_rfc3339(),
        }
    }

    /// Sets a scenario-specific figure.
    pub fn set(&mut self, key: &str, v: impl Serialize) {
        if let Ok(v) = serde_json::to_value(v) {
            self.extra.insert(key.into(), v);
        }
    }

    /// Prints for people (stdout).
    pub fn print(&self) {
        println!(
            "{} [{}] {}: {:.0} {} over {:.1} s; sent {}, delivered {}, lost {}, duplicates {}",
            self.scenario,
            self.system,
            self.params,
            self.rate,
            self.rate_unit,
            self.seconds,
            self.sent,
            self.delivered,
            self.lost,
            self.duplicates
        );
        if let Some(l) = &self.latency {
            println!("  latency: {l}");
        }
        for (k, v) in &self.extra {
            println!("  {k}: {v}");
        }
    }
}

/// Prints `a` against `b` as a ratio line.
pub fn compare(what: &str, ours: f64, peer: f64, peer_name: &str) {
    if peer > 0.0 {
        // On stderr: stdout stays one JSON object per line with --json.
        eprintln!(
            "  {what}: petrel {ours:.2} vs {peer_name} {peer:.2} = {:.2}x",
            ours / peer
        );
    }
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc())
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
