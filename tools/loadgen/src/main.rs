//! `paystream-loadgen`: accepted payments per second and latency percentiles of a running
//! ingress at a fixed concurrency, then, in the same run, `pgbench` single-row INSERTs on the same
//! Postgres with as many clients, and the ratio of the two. A benchmark, not a test: it asserts
//! nothing and prints its figures.
//!
//! ```text
//! paystream-loadgen --url http://127.0.0.1:8080 --secret dev-secret-change-me \
//!     --concurrency 32 --duration 30 --format table
//! ```

mod ingress;
mod pgbench;
mod report;
mod stats;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use paystream_kit::auth::{self, Role};

#[derive(Debug, Parser)]
#[command(
    name = "paystream-loadgen",
    about = "Benchmark the ingress against pgbench single-row inserts"
)]
struct Cli {
    /// Base URL of a running api-ingress.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// A merchant token to send every request with.
    #[arg(
        long,
        conflicts_with = "secret",
        env = "LOADGEN_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// The ingress's JWT secret: mints one merchant token per `--merchants`.
    #[arg(long, env = "PAYSTREAM_JWT_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Merchants to spread the load over when minting (each has its own rate-limit bucket);
    /// default: one per worker.
    #[arg(long)]
    merchants: Option<usize>,
    /// Requests in flight at any time (and pgbench clients).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Seconds of measurement (default 20 unless --requests is given).
    #[arg(long)]
    duration: Option<u64>,
    /// Requests in all, instead of a duration.
    #[arg(long, conflicts_with = "duration")]
    requests: Option<u64>,
    /// Seconds of unmeasured load first (connections, caches, JIT of the database).
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Amount of each payment, in minor units.
    #[arg(long, default_value_t = 1999)]
    amount: i64,
    #[arg(long, value_enum, default_value = "table")]
    format: report::Format,
    /// The pgbench binary.
    #[arg(long, default_value = "/usr/lib/postgresql/15/bin/pgbench")]
    pgbench: PathBuf,
    /// The Postgres the ingress uses (pgbench runs there, on a scratch table it drops after).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://paystream:paystream@127.0.0.1:5432/paystream"
    )]
    database_url: String,
    /// Only the ingress benchmark.
    #[arg(long)]
    skip_pgbench: bool,
    /// No progress lines on stderr.
    #[arg(long)]
    quiet: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    anyhow::ensure!(cli.concurrency > 0, "--concurrency must be at least 1");
    let tokens = match (&cli.token, &cli.secret) {
        (Some(t), _) => vec![t.clone()],
        (None, Some(secret)) => {
            let run = uuid::Uuid::new_v4().simple().to_string();
            let n = cli.merchants.unwrap_or(cli.concurrency).max(1);
            (0..n)
                .map(|i| {
                    auth::mint(
                        secret,
                        &format!("loadgen_{}_{i}", &run[..8]),
                        Role::Merchant,
                        3600,
                    )
                })
                .collect::<anyhow::Result<Vec<_>>>()?
        }
        (None, None) => anyhow::bail!("give --token or --secret (PAYSTREAM_JWT_SECRET)"),
    };
    let duration = match (cli.duration, cli.requests) {
        (Some(d), _) => Some(Duration::from_secs(d.max(1))),
        (None, Some(_)) => None,
        (None, None) => Some(Duration::from_secs(20)),
    };
    let ingress = ingress::run(ingress::Plan {
        url: cli.url.clone(),
        tokens,
        concurrency: cli.concurrency,
        duration,
        requests: cli.requests,
        warmup: Duration::from_secs(cli.warmup),
        amount: cli.amount,
        progress: !cli.quiet,
    })
    .await?;
    let mut rows = vec![ingress];
    let mut ratio = None;
    if !cli.skip_pgbench {
        let bench = pgbench::run(pgbench::Plan {
            pgbench: cli.pgbench.clone(),
            database_url: cli.database_url.clone(),
            concurrency: cli.concurrency,
            duration,
            requests: cli.requests,
            progress: !cli.quiet,
        })
        .await?;
        if bench.per_second > 0.0 {
            ratio = Some(rows[0].per_second / bench.per_second);
        }
        rows.push(bench);
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let context = format!(
        "{cores} cores; client, ingress, Kafka, Postgres and Redis on this one machine; the ingress answers 202 once the payment, its key and its outbox record are committed"
    );
    print!("{}", report::render(cli.format, &rows, ratio, &context));
    Ok(())
}
