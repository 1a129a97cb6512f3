//! A line on stderr every second: how far a phase is and how fast it goes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

pub struct Progress {
    count: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl Progress {
    pub fn start(label: &str, total: u64) -> Self {
        let count = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let (c, s, label) = (count.clone(), stop.clone(), label.to_owned());
        tokio::spawn(async move {
            let started = Instant::now();
            let mut last = 0u64;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = s.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let now = c.load(Ordering::Relaxed);
                let secs = started.elapsed().as_secs_f64();
                eprintln!(
                    "  [{label}] {now}/{total}  {:>8.0}/s over the last second, {:>8.0}/s since start ({secs:.0}s)",
                    now.saturating_sub(last) as f64,
                    now as f64 / secs.max(1e-9),
                );
                last = now;
            }
        });
        Self { count, stop }
    }

    pub fn counter(&self) -> Arc<AtomicU64> {
        self.count.clone()
    }

    pub fn add(&self, n: u64) {
        self.count.fetch_add(n, Ordering::Relaxed);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
