//! `runtime-bench`: records per second through one service on the messaging runtime (inbox,
//! effect, outbox, relay, offset commit) beside a no-op consume-and-produce copy built from the
//! same client settings, on the same broker and the same input topic, in one run.
//!
//! ```text
//! cargo run --release -p paystream-bench --bin runtime-bench -- --records 20000
//! ```

mod baseline;
mod kafka;
mod progress;
mod report;
mod runtime;
mod setup;

use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use paystream_kit::{CommonConfig, db};
use tokio_util::sync::CancellationToken;

use crate::report::{Format, RunResult};
use crate::setup::Resources;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    Both,
    Runtime,
    Baseline,
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "runtime-bench",
    about = "Throughput of one service on the messaging runtime beside a plain consume-and-produce copy"
)]
pub struct Args {
    /// Records pre-produced to the input topic and pushed through each mode.
    #[arg(long, default_value_t = 20_000)]
    pub records: u64,
    /// Partitions of every topic the benchmark creates.
    #[arg(long, default_value_t = 6)]
    pub partitions: i32,
    /// Records per batch (RuntimeConfig::max_batch; the baseline batches the same way).
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// How long a batch waits for more records once its first arrived (RuntimeConfig::batch_linger).
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    /// Postgres connections of the runtime's pool (services use 10).
    #[arg(long, default_value_t = 10)]
    pub pool: u32,
    /// Runtime instances in the runtime's consumer group (each its own ConsumerRuntime and
    /// relay, sharing the pool), to see what concurrency buys; the baseline stays one consumer.
    #[arg(long, default_value_t = 1)]
    pub instances: usize,
    /// Repetitions of each mode over the same input topic; each uses a fresh group, output
    /// topic and (runtime) schema. Figures are per round, the ratio uses the medians.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    #[arg(long, value_enum, default_value_t = Mode::Both)]
    pub mode: Mode,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Give up on a run that has not published every record after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
    /// Keep the topics, groups and schemas instead of deleting them at the end.
    #[arg(long)]
    pub keep: bool,
    /// Defaults to KAFKA_BOOTSTRAP_SERVERS, then 127.0.0.1:9092.
    #[arg(long)]
    pub bootstrap: Option<String>,
    /// Defaults to DATABASE_URL, then the dev database.
    #[arg(long)]
    pub database_url: Option<String>,
}

impl Args {
    /// The command line that reproduces this run's figures.
    pub fn command(&self) -> String {
        let mode = match self.mode {
            Mode::Both => "both",
            Mode::Runtime => "runtime",
            Mode::Baseline => "baseline",
        };
        format!(
            "cargo run --release -p paystream-bench --bin runtime-bench -- --records {} --partitions {} --batch {} --linger-ms {} --pool {} --instances {} --rounds {} --mode {mode}",
            self.records,
            self.partitions,
            self.batch,
            self.linger_ms,
            self.pool,
            self.instances,
            self.rounds
        )
    }
}

/// What every run of one invocation shares.
pub struct Ctx {
    pub args: Args,
    pub bootstrap: String,
    pub pool: sqlx::PgPool,
    pub suffix: String,
    pub input_topic: String,
    pub resources: Resources,
    /// Cancelled on Ctrl-C; every run stops on it.
    pub stop: CancellationToken,
}

impl Ctx {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.args.timeout_secs)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    anyhow::ensure!(args.records > 0, "--records must be at least 1");
    anyhow::ensure!(args.partitions > 0, "--partitions must be at least 1");
    anyhow::ensure!(args.batch > 0, "--batch must be at least 1");
    anyhow::ensure!(args.rounds > 0, "--rounds must be at least 1");
    anyhow::ensure!(args.instances > 0, "--instances must be at least 1");
    anyhow::ensure!(
        args.pool as usize >= args.instances + 2,
        "--pool must be at least --instances + 2 (a batch transaction per instance, the relay)"
    );

    let common = CommonConfig::for_tests();
    let bootstrap = args.bootstrap.clone().unwrap_or(common.kafka_bootstrap);
    let database_url = args.database_url.clone().unwrap_or(common.database_url);
    let pool = db::connect(&database_url, args.pool.max(2)).await?;
    ensure_migrated(&pool).await?;

    let suffix = setup::unique_suffix();
    let ctx = Ctx {
        input_topic: format!("bench.{suffix}.input"),
        args,
        bootstrap,
        pool,
        suffix,
        resources: Resources::default(),
        stop: CancellationToken::new(),
    };
    eprintln!(
        "runtime-bench {}: {} records, {} partitions, batch {}, linger {} ms, broker {}",
        ctx.suffix,
        ctx.args.records,
        ctx.args.partitions,
        ctx.args.batch,
        ctx.args.linger_ms,
        ctx.bootstrap
    );

    let outcome = tokio::select! {
        r = bench(&ctx) => r,
        _ = tokio::signal::ctrl_c() => {
            ctx.stop.cancel();
            // Lets the runs see the cancellation and close their consumers first.
            tokio::time::sleep(Duration::from_secs(2)).await;
            Err(anyhow::anyhow!("interrupted"))
        }
    };
    if ctx.args.keep {
        eprintln!("--keep: leaving {}", ctx.resources.describe());
    } else {
        setup::cleanup(&ctx).await;
    }
    let results = outcome?;
    let out =
        report::render(&ctx.args, &ctx.bootstrap, &results).context("rendering the report")?;
    print!("{out}");
    Ok(())
}

/// Runs the workspace migrations only on a database that lacks them: the benchmark needs nothing
/// beyond `paystream_messaging_tables`, and must not be the one to apply a migration that is still
/// being written.
async fn ensure_migrated(pool: &sqlx::PgPool) -> anyhow::Result<()> {
    let present: bool = sqlx::query_scalar(
        "SELECT to_regprocedure('public.paystream_messaging_tables(text)') IS NOT NULL",
    )
    .fetch_one(pool)
    .await
    .context("looking for paystream_messaging_tables")?;
    if !present {
        eprintln!("database has no paystream_messaging_tables; running the migrations");
        db::migrate(pool).await?;
    }
    Ok(())
}

async fn bench(ctx: &Ctx) -> anyhow::Result<Vec<RunResult>> {
    setup::create_topics(ctx, std::slice::from_ref(&ctx.input_topic)).await?;
    kafka::pre_produce(ctx).await?;
    let mut results = Vec::new();
    for round in 1..=ctx.args.rounds {
        if matches!(ctx.args.mode, Mode::Both | Mode::Runtime) {
            let r = runtime::run(ctx, round).await.context("runtime run")?;
            eprintln!(
                "runtime  round {round}: {:.0} records/s",
                r.records_per_second
            );
            results.push(r);
        }
        if matches!(ctx.args.mode, Mode::Both | Mode::Baseline) {
            let r = baseline::run(ctx, round).await.context("baseline run")?;
            eprintln!(
                "baseline round {round}: {:.0} records/s",
                r.records_per_second
            );
            results.push(r);
        }
    }
    Ok(results)
}
