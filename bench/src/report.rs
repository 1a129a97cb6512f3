//! Figures per run, the runtime/baseline ratio, and their table, CSV or JSON form.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use serde::Serialize;

use crate::Args;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

/// Per batch: time from the batch in hand to its effect being durable (runtime: Postgres commit;
/// baseline: every copy acknowledged), offset commit excluded; and its size.
#[derive(Debug, Default)]
pub struct BatchTimes {
    samples: Vec<(Duration, usize)>,
}

impl BatchTimes {
    pub fn push(&mut self, took: Duration, records: usize) {
        self.samples.push((took, records));
    }

    pub fn append(&mut self, other: &mut BatchTimes) {
        self.samples.append(&mut other.samples);
    }

    fn quantile_ms(&self, q: f64) -> f64 {
        let mut ms: Vec<f64> = self
            .samples
            .iter()
            .map(|(d, _)| d.as_secs_f64() * 1e3)
            .collect();
        if ms.is_empty() {
            return f64::NAN;
        }
        ms.sort_by(f64::total_cmp);
        let rank = ((ms.len() as f64) * q).ceil() as usize;
        ms[rank.clamp(1, ms.len()) - 1]
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub mode: String,
    pub round: usize,
    pub records: u64,
    /// Start of the consumers to the first record in hand (group join, first fetch).
    pub startup_seconds: f64,
    /// First record in hand to the last record seen on the output topic.
    pub seconds: f64,
    /// Start of the consumers to the last record seen on the output topic.
    pub wall_seconds: f64,
    /// records / seconds.
    pub records_per_second: f64,
    pub batches: usize,
    pub mean_batch: f64,
    pub batch_p50_ms: f64,
    pub batch_p99_ms: f64,
    pub notes: String,
}

impl RunResult {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        mode: &str,
        round: usize,
        records: u64,
        started: Instant,
        first_in: Instant,
        last_out: Instant,
        batches: &BatchTimes,
        notes: String,
    ) -> Self {
        let seconds = last_out.duration_since(first_in).as_secs_f64();
        let in_batches: usize = batches.samples.iter().map(|(_, n)| n).sum();
        let count = batches.samples.len();
        Self {
            mode: mode.to_owned(),
            round,
            records,
            startup_seconds: first_in.duration_since(started).as_secs_f64(),
            seconds,
            wall_seconds: last_out.duration_since(started).as_secs_f64(),
            records_per_second: records as f64 / seconds.max(1e-9),
            batches: count,
            mean_batch: if count == 0 {
                0.0
            } else {
                in_batches as f64 / count as f64
            },
            batch_p50_ms: batches.quantile_ms(0.50),
            batch_p99_ms: batches.quantile_ms(0.99),
            notes,
        }
    }
}

#[derive(Debug, Serialize)]
struct Summary<'a> {
    command: String,
    machine: Machine,
    runs: &'a [RunResult],
    runtime_records_per_second: Option<f64>,
    baseline_records_per_second: Option<f64>,
    /// runtime / baseline, on the medians over rounds.
    ratio: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Machine {
    cpus: usize,
    os: String,
    bootstrap: String,
}

fn machine(bootstrap: &str) -> Machine {
    let os = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|r| format!("{} {}", std::env::consts::OS, r.trim()))
        .unwrap_or_else(|_| std::env::consts::OS.to_owned());
    Machine {
        cpus: std::thread::available_parallelism().map_or(0, usize::from),
        os,
        bootstrap: bootstrap.to_owned(),
    }
}

fn median_rate(runs: &[RunResult], mode: &str) -> Option<f64> {
    let mut rates: Vec<f64> = runs
        .iter()
        .filter(|r| r.mode == mode)
        .map(|r| r.records_per_second)
        .collect();
    if rates.is_empty() {
        return None;
    }
    rates.sort_by(f64::total_cmp);
    let mid = rates.len() / 2;
    Some(if rates.len() % 2 == 1 {
        rates[mid]
    } else {
        (rates[mid - 1] + rates[mid]) / 2.0
    })
}

pub fn render(args: &Args, bootstrap: &str, runs: &[RunResult]) -> anyhow::Result<String> {
    let runtime = median_rate(runs, "runtime");
    let baseline = median_rate(runs, "baseline");
    let ratio = runtime.zip(baseline).map(|(r, b)| r / b);
    let summary = Summary {
        command: args.command(),
        machine: machine(bootstrap),
        runs,
        runtime_records_per_second: runtime,
        baseline_records_per_second: baseline,
        ratio,
    };
    Ok(match args.format {
        Format::Json => format!("{}\n", serde_json::to_string_pretty(&summary)?),
        Format::Csv => csv(&summary)?,
        Format::Table => table(&summary)?,
    })
}

fn csv(s: &Summary<'_>) -> anyhow::Result<String> {
    let mut out = String::new();
    writeln!(
        out,
        "mode,round,records,seconds,records_per_second,startup_seconds,wall_seconds,batches,mean_batch,batch_p50_ms,batch_p99_ms,ratio_to_baseline"
    )?;
    for r in s.runs {
        let ratio = s
            .baseline_records_per_second
            .map(|b| format!("{:.4}", r.records_per_second / b))
            .unwrap_or_default();
        writeln!(
            out,
            "{},{},{},{:.3},{:.1},{:.3},{:.3},{},{:.1},{:.2},{:.2},{ratio}",
            r.mode,
            r.round,
            r.records,
            r.seconds,
            r.records_per_second,
            r.startup_seconds,
            r.wall_seconds,
            r.batches,
            r.mean_batch,
            r.batch_p50_ms,
            r.batch_p99_ms
        )?;
    }
    Ok(out)
}

fn table(s: &Summary<'_>) -> anyhow::Result<String> {
    let mut out = String::new();
    writeln!(
        out,
        "{:<9} {:>5} {:>8} {:>8} {:>10} {:>8} {:>7} {:>8} {:>7} {:>9} {:>9}",
        "mode",
        "round",
        "records",
        "seconds",
        "records/s",
        "startup",
        "wall",
        "batches",
        "mean",
        "p50 ms",
        "p99 ms"
    )?;
    for r in s.runs {
        writeln!(
            out,
            "{:<9} {:>5} {:>8} {:>8.2} {:>10.0} {:>8.2} {:>7.2} {:>8} {:>7.1} {:>9.2} {:>9.2}",
            r.mode,
            r.round,
            r.records,
            r.seconds,
            r.records_per_second,
            r.startup_seconds,
            r.wall_seconds,
            r.batches,
            r.mean_batch,
            r.batch_p50_ms,
            r.batch_p99_ms
        )?;
    }
    writeln!(out)?;
    for r in s.runs {
        writeln!(out, "{} r{}: {}", r.mode, r.round, r.notes)?;
    }
    match (
        s.runtime_records_per_second,
        s.baseline_records_per_second,
        s.ratio,
    ) {
        (Some(rt), Some(b), Some(ratio)) => writeln!(
            out,
            "runtime {rt:.0} records/s, baseline {b:.0} records/s, ratio runtime/baseline {ratio:.3} ({:.1}%)",
            ratio * 100.0
        )?,
        (Some(rt), None, _) => writeln!(out, "runtime {rt:.0} records/s")?,
        (None, Some(b), _) => writeln!(out, "baseline {b:.0} records/s")?,
        _ => {}
    }
    writeln!(
        out,
        "machine: {} CPUs, {}; broker {}",
        s.machine.cpus, s.machine.os, s.machine.bootstrap
    )?;
    writeln!(
        out,
        "seconds = first record in hand -> last record seen on the output topic; startup = consumer start -> first record (group join); batch latency = batch in hand -> effect durable (Postgres commit / all copies acked)"
    )?;
    writeln!(out, "reproduce: {}", s.command)?;
    Ok(out)
}
