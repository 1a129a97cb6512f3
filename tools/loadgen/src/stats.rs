//! Latency percentiles and throughput of one benchmark.

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub name: String,
    pub concurrency: usize,
    /// Requests (or transactions) that succeeded: 202 for the ingress.
    pub ok: u64,
    /// Everything else, by kind (`status_409`, `transport`, ...).
    pub errors: Vec<(String, u64)>,
    pub seconds: f64,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// The `q`-quantile (nearest rank) of sorted microsecond latencies, in milliseconds.
pub fn quantile_ms(sorted_us: &[u64], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted_us.len() as f64).ceil() as usize).clamp(1, sorted_us.len());
    sorted_us[rank - 1] as f64 / 1000.0
}

pub fn summarize(
    name: &str,
    concurrency: usize,
    mut latencies_us: Vec<u64>,
    errors: Vec<(String, u64)>,
    seconds: f64,
) -> Summary {
    latencies_us.sort_unstable();
    let ok = latencies_us.len() as u64;
    Summary {
        name: name.to_owned(),
        concurrency,
        ok,
        errors,
        seconds,
        per_second: if seconds > 0.0 {
            ok as f64 / seconds
        } else {
            0.0
        },
        p50_ms: quantile_ms(&latencies_us, 0.50),
        p90_ms: quantile_ms(&latencies_us, 0.90),
        p99_ms: quantile_ms(&latencies_us, 0.99),
        max_ms: latencies_us.last().map_or(0.0, |v| *v as f64 / 1000.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(quantile_ms(&v, 0.5), 50.0);
        assert_eq!(quantile_ms(&v, 0.9), 90.0);
        assert_eq!(quantile_ms(&v, 0.99), 99.0);
        assert_eq!(quantile_ms(&[], 0.5), 0.0);
        let s = summarize("x", 1, vec![3000, 1000, 2000], vec![], 2.0);
        assert_eq!((s.ok, s.per_second, s.p50_ms, s.max_ms), (3, 1.5, 2.0, 3.0));
    }
}
