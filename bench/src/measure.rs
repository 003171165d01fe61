//! What every measurement shares, Petrel's and the peers' alike: progress shown on a
//! terminal, and waiting for deliveries to finish arriving.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn progress(len: u64, what: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg:>12} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec})",
    ) {
        pb.set_style(style);
    }
    pb.set_message(what.to_string());
    pb
}

/// Waits until `count` reaches `want`, or nothing new arrived for `quiet`; shows
/// progress. Returns the count.
pub async fn wait_for(count: &AtomicU64, want: u64, quiet: Duration, what: &str) -> u64 {
    let pb = progress(want, what);
    let mut last = count.load(Ordering::Relaxed);
    let mut last_change = Instant::now();
    loop {
        let now = count.load(Ordering::Relaxed);
        pb.set_position(now);
        if now >= want {
            break;
        }
        if now != last {
            last = now;
            last_change = Instant::now();
        } else if last_change.elapsed() >= quiet {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pb.finish_and_clear();
    count.load(Ordering::Relaxed)
}
