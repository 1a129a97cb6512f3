//! `runtime-worker`: one instance of a consuming service for the exactly-once tests
//! (`tests/tests/exactly_once.rs`). It runs the real `ConsumerRuntime` and `OutboxRelay` with the
//! test handler of `paystream_e2e::runtime_support` (one `effects` row and one emitted event per
//! record), until SIGTERM (graceful: exit code 0) or SIGKILL.
//!
//! Configuration (environment): `RTW_TOPIC`, `RTW_OUT_TOPIC`, `RTW_GROUP`, `RTW_SCHEMA`
//! (required), `RTW_DELAY_MS` (handler delay per record, default 0), `RTW_MAX_BATCH`
//! (default 100), `RTW_TRANSACTIONAL` (`true`: the handler declares its effects transactional,
//! so batches run without savepoints; default `false`), plus the usual `KAFKA_BOOTSTRAP_SERVERS` / `DATABASE_URL`.
//!
//! Protocol on stdout, one line each: `ready` once consuming, `h` after each record the handler
//! applied (inside the batch's transaction), `c <n>` after a batch with `n` applied records
//! committed, `bye` after a graceful stop. Logs go to stderr.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use paystream_e2e::runtime_support::{EffectHandler, Env, Running, short_retry};
use paystream_messaging::RuntimeConfig;

fn var(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| format!("{name} is required"))
}

fn line(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,rdkafka=error".into()))
        .with_writer(std::io::stderr)
        .try_init();
    let topic = var("RTW_TOPIC")?;
    let out_topic = var("RTW_OUT_TOPIC")?;
    let group = var("RTW_GROUP")?;
    let schema = var("RTW_SCHEMA")?;
    let delay_ms: u64 = paystream_kit::config::env_parse("RTW_DELAY_MS", 0)?;
    let max_batch: usize = paystream_kit::config::env_parse("RTW_MAX_BATCH", 100)?;
    let transactional: bool = paystream_kit::config::env_parse("RTW_TRANSACTIONAL", false)?;

    let shutdown = paystream_kit::shutdown::on_signal();
    let env = Env::connect(6).await?;
    let mut config = RuntimeConfig::new(
        paystream_e2e::runtime_support::SERVICE,
        env.bootstrap(),
        &schema,
        &[&topic],
    );
    config.group_id = group;
    config.max_batch = max_batch;
    config.batch_linger = Duration::from_millis(5);
    config.retry = short_retry();
    let handler = EffectHandler::new(&schema)
        .transactional(transactional)
        .emitting_to(&out_topic)
        .with_delay(Duration::from_millis(delay_ms))
        .on_handle(|_| line("h"))
        .on_commit(|n| line(&format!("c {n}")));
    let running = Running::start_with(&env, config, handler, shutdown)?;
    line("ready");
    running.finish().await?;
    line("bye");
    Ok(())
}
