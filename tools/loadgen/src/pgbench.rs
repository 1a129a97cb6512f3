//! The reference: `pgbench` running single-row INSERTs into a scratch table on the same Postgres,
//! with the same number of clients, for the same time (or the same number of transactions).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;

use crate::stats::{Summary, summarize};

/// Scratch table of the benchmark, dropped after the run.
const SCHEMA: &str = "loadgen_bench";

const SCRIPT: &str = "\\set amount random(1, 1000000)
INSERT INTO loadgen_bench.inserts (merchant_id, amount, currency) VALUES ('m_pgbench', :amount, 'EUR');
";

pub struct Plan {
    pub pgbench: PathBuf,
    pub database_url: String,
    pub concurrency: usize,
    pub duration: Option<Duration>,
    pub requests: Option<u64>,
    pub progress: bool,
}

pub async fn run(plan: Plan) -> anyhow::Result<Summary> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&plan.database_url)
        .await
        .context("connecting to Postgres for the scratch table")?;
    for sql in [
        format!("CREATE SCHEMA IF NOT EXISTS {SCHEMA}"),
        format!("DROP TABLE IF EXISTS {SCHEMA}.inserts"),
        format!(
            "CREATE TABLE {SCHEMA}.inserts (id bigserial PRIMARY KEY, merchant_id text NOT NULL,
             amount bigint NOT NULL, currency text NOT NULL, created_at timestamptz NOT NULL DEFAULT now())"
        ),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .context("preparing the scratch table")?;
    }
    let dir = std::env::temp_dir().join(format!("paystream-loadgen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).context("creating the pgbench directory")?;
    let script = dir.join("insert.sql");
    std::fs::write(&script, SCRIPT).context("writing the pgbench script")?;
    let result = bench(&plan, &dir, &script).await;
    let dropped = sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {SCHEMA} CASCADE")))
        .execute(&pool)
        .await;
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = dropped {
        eprintln!("could not drop the scratch schema {SCHEMA}: {e}");
    }
    result
}

async fn bench(plan: &Plan, dir: &Path, script: &Path) -> anyhow::Result<Summary> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(plan.concurrency)
        .max(1);
    let mut cmd = tokio::process::Command::new(&plan.pgbench);
    cmd.arg("--no-vacuum")
        .arg("--protocol=prepared")
        .arg(format!("--client={}", plan.concurrency))
        .arg(format!("--jobs={threads}"))
        .arg(format!("--file={}", script.display()))
        .arg("--log")
        .arg(format!("--log-prefix={}", dir.join("tx").display()));
    match (plan.duration, plan.requests) {
        (Some(d), _) => {
            cmd.arg(format!("--time={}", d.as_secs().max(1)));
        }
        (None, Some(n)) => {
            let per_client = n.div_ceil(plan.concurrency as u64).max(1);
            cmd.arg(format!("--transactions={per_client}"));
        }
        (None, None) => anyhow::bail!("pgbench needs a duration or a number of requests"),
    }
    if plan.progress {
        cmd.arg("--progress=1");
    }
    cmd.arg(&plan.database_url)
        .stdout(Stdio::piped())
        .stderr(if plan.progress {
            Stdio::inherit()
        } else {
            Stdio::piped()
        });
    eprintln!(
        "running {} with {} clients",
        plan.pgbench.display(),
        plan.concurrency
    );
    let output = cmd
        .output()
        .await
        .with_context(|| format!("running {}", plan.pgbench.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "pgbench failed ({}): {stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let (latencies, failed) = read_logs(dir)?;
    let seconds = field(&stdout, "duration: ")
        .and_then(|d| d.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    let tps =
        field(&stdout, "tps = ").and_then(|t| t.split_whitespace().next()?.parse::<f64>().ok());
    let errors = if failed > 0 {
        vec![("failed".to_owned(), failed)]
    } else {
        vec![]
    };
    let mut summary = summarize(
        "pgbench single-row INSERT",
        plan.concurrency,
        latencies,
        errors,
        seconds,
    );
    // pgbench's own figure (excluding connection set-up) when it printed one.
    if let Some(tps) = tps {
        summary.per_second = tps;
    }
    Ok(summary)
}

fn field<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines().find_map(|l| l.trim().strip_prefix(prefix))
}

/// Per-transaction log lines: `client_id transaction_no time script_no time_epoch time_us`, time
/// in microseconds (or `failed`/`skipped`).
fn read_logs(dir: &Path) -> anyhow::Result<(Vec<u64>, u64)> {
    let mut latencies = Vec::new();
    let mut failed = 0;
    for entry in std::fs::read_dir(dir).context("reading the pgbench logs")? {
        let path = entry.context("pgbench log entry")?.path();
        let is_log = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("tx."));
        if !is_log {
            continue;
        }
        let text = std::fs::read_to_string(&path).context("reading a pgbench log")?;
        for line in text.lines() {
            match line.split_whitespace().nth(2) {
                Some(t) => match t.parse::<u64>() {
                    Ok(us) => latencies.push(us),
                    Err(_) => failed += 1,
                },
                None => continue,
            }
        }
    }
    Ok((latencies, failed))
}
