//! Starts the real fleet in-process, on ephemeral ports, against the real broker, database and
//! cache named by the usual environment variables. One fleet per test binary: it runs on a
//! runtime of its own so that every `#[tokio::test]` can use it.

pub mod runtime_support;

use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context;
use paystream_domain::topics;
use paystream_kit::CommonConfig;
use paystream_kit::auth::{self, Role};
use psp_sim::{SimConfig, SimHandle};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Every test fleet gets its own database and its own consumer groups, so that fleets of test
/// binaries running at the same time (or a dev fleet) never act on each other's payments: a
/// fleet may read another's records from the shared topics, but it applies them to its own
/// database, and the tests only look at their own payments, databases and PSP emulators.
pub struct Isolation {
    pub run_id: String,
    pub database_url: String,
}

impl Isolation {
    pub fn group(&self, service: &str) -> String {
        format!("e2e-{}-{service}", self.run_id)
    }
}

/// Creates a fresh database for this run (named `e2e_<run id>`) next to `DATABASE_URL`'s, with
/// migrations applied. `scripts/test.sh` drops the databases of earlier runs before it starts.
pub async fn isolate() -> anyhow::Result<Isolation> {
    let base = CommonConfig::for_tests();
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let (prefix, _) = base
        .database_url
        .rsplit_once('/')
        .context("DATABASE_URL has no database name")?;
    let admin = paystream_kit::db::connect(&format!("{prefix}/postgres"), 2).await?;
    let name = format!("e2e_{run_id}");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .context("creating the run's database")?;
    let database_url = format!("{prefix}/{name}");
    let pool = paystream_kit::db::connect(&database_url, 2).await?;
    paystream_kit::db::migrate(&pool).await?;
    pool.close().await;
    admin.close().await;
    Ok(Isolation {
        run_id,
        database_url,
    })
}

pub struct Fleet {
    pub api_url: String,
    /// The configuration the fleet's api-ingress runs with (its database, consumer group,
    /// secret), for tests that start another instance beside it with other limits.
    pub api_config: api_ingress::Config,
    pub jwt_secret: String,
    pub database_url: String,
    pub alpha: SimHandle,
    pub beta: SimHandle,
    pub shutdown: CancellationToken,
}

impl Fleet {
    pub fn token(&self, sub: &str, role: Role) -> String {
        auth::mint(&self.jwt_secret, sub, role, 3600).unwrap_or_default()
    }

    pub async fn pool(&self) -> PgPool {
        paystream_kit::db::connect(&self.database_url, 5)
            .await
            .unwrap_or_else(|e| panic!("test database: {e:#}"))
    }
}

pub fn fleet() -> &'static Fleet {
    static FLEET: OnceLock<Fleet> = OnceLock::new();
    start_once(&FLEET, "the test fleet", start)
}

/// Runs `start` once per test binary on a multi-threaded runtime of its own thread, which then
/// keeps the services it spawned running until the process exits; every `#[tokio::test]`, each
/// on its own runtime, shares the result.
pub fn start_once<T, F, Fut>(cell: &'static OnceLock<T>, what: &'static str, start: F) -> &'static T
where
    T: Send + Sync + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    cell.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(4)
                .enable_all()
                .build()
                .unwrap_or_else(|e| panic!("{what} runtime: {e}"));
            rt.block_on(async move {
                let started = start().await.map_err(|e| format!("{e:#}"));
                let ok = started.is_ok();
                let _ = tx.send(started);
                if ok {
                    std::future::pending::<()>().await;
                }
            });
        });
        match rx.recv_timeout(Duration::from_secs(180)) {
            Ok(Ok(value)) => value,
            Ok(Err(e)) => panic!("{what} did not start: {e}"),
            Err(e) => panic!("{what} did not start in time: {e}"),
        }
    })
}

/// Test logs through the test writer, `RUST_LOG` or warnings only.
pub fn init_test_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,rdkafka=error".to_owned()),
        )
        .with_test_writer()
        .try_init();
}

fn common(iso: &Isolation, service: &str) -> CommonConfig {
    let mut c = CommonConfig::for_tests();
    c.group_id = Some(iso.group(service));
    c.database_url = iso.database_url.clone();
    c
}

async fn start() -> anyhow::Result<Fleet> {
    init_test_logs();
    let shutdown = CancellationToken::new();
    let base = CommonConfig::for_tests();
    let iso = isolate().await?;

    paystream_messaging::admin::ensure_topics(
        &base.kafka_bootstrap,
        &payctl::fleet_topics(),
        12,
        1,
    )
    .await
    .context("creating topics")?;
    let retry: Vec<String> = payctl::CONSUMER_GROUPS
        .iter()
        .map(|g| topics::retry_topic(&iso.group(g)))
        .collect();
    paystream_messaging::admin::ensure_topics(&base.kafka_bootstrap, &retry, 2, 1)
        .await
        .context("creating retry topics")?;
    let groups: Vec<String> = payctl::CONSUMER_GROUPS
        .iter()
        .map(|g| iso.group(g))
        .collect();
    skip_history(&base.kafka_bootstrap, &groups).await?;

    let mut sims = Vec::new();
    for name in ["alpha", "beta"] {
        let config = SimConfig {
            name: name.to_owned(),
            api_key: format!("sk_test_{name}"),
            webhook_secret: format!("whsec_{name}"),
            ..SimConfig::default()
        };
        let app = psp_sim::build(config, "127.0.0.1:0").await?;
        let url = app.base_url();
        let handle = app.handle();
        let stop = shutdown.clone();
        tokio::spawn(app.run_until_stopped(async move { stop.cancelled().await }));
        sims.push((url, handle));
    }
    let (alpha_url, alpha) = sims.remove(0);
    let (beta_url, beta) = sims.remove(0);

    let mut risk = risk_engine::Config::from_env()?;
    risk.common = common(&iso, risk_engine::SERVICE);
    risk.rules.max_amount = 500_000;
    spawn(
        risk_engine::build(risk)
            .await?
            .run_until_stopped(shutdown.clone()),
    );

    let mut gateway = psp_gateway::Config::from_env()?;
    gateway.common = common(&iso, psp_gateway::SERVICE);
    for psp in &mut gateway.psps {
        psp.url = if psp.name == "alpha" {
            alpha_url.clone()
        } else {
            beta_url.clone()
        };
    }
    spawn(
        psp_gateway::build(gateway)
            .await?
            .run_until_stopped(shutdown.clone()),
    );

    let mut orders = order_store::Config::from_env()?;
    orders.common = common(&iso, order_store::SERVICE);
    spawn(
        order_store::build(orders)
            .await?
            .run_until_stopped(shutdown.clone()),
    );

    let mut accounts = account_store::Config::from_env()?;
    accounts.common = common(&iso, account_store::SERVICE);
    spawn(
        account_store::build(accounts)
            .await?
            .run_until_stopped(shutdown.clone()),
    );

    let mut val = validator::Config::from_env()?;
    val.common = common(&iso, validator::SERVICE);
    for psp in &mut val.psps {
        psp.url = if psp.name == "alpha" {
            alpha_url.clone()
        } else {
            beta_url.clone()
        };
    }
    val.timing.settle_delay = Duration::from_millis(300);
    val.timing.grace = Duration::from_secs(15);
    spawn(
        validator::build(val)
            .await?
            .run_until_stopped(shutdown.clone()),
    );

    let mut api = api_ingress::Config::from_env()?;
    api.common = common(&iso, api_ingress::SERVICE);
    api.api_addr = "127.0.0.1:0".to_owned();
    let jwt_secret = api.jwt_secret.clone();
    let api_config = api.clone();
    let app = api_ingress::build(api).await?;
    let api_url = format!("http://127.0.0.1:{}", app.port());
    spawn(app.run_until_stopped(shutdown.clone()));

    Ok(Fleet {
        api_url,
        api_config,
        jwt_secret,
        database_url: iso.database_url.clone(),
        alpha,
        beta,
        shutdown,
    })
}

fn spawn(fut: impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static) {
    tokio::spawn(async move {
        if let Err(e) = fut.await {
            eprintln!("fleet task failed: {e:#}");
        }
    });
}

/// Commits the current end of every contract topic as the position of each of `groups`.
///
/// A fresh consumer group starts at the earliest offset, so without this every fleet re-reads
/// every record earlier runs left on the shared topics (kept for a week), and its validator
/// checks thousands of payments that are not its own. Records produced after this call (the
/// fleet's own) are all consumed.
pub async fn skip_history(bootstrap: &str, groups: &[String]) -> anyhow::Result<()> {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::{Offset, TopicPartitionList};

    let bootstrap = bootstrap.to_owned();
    let groups = groups.to_vec();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let timeout = Duration::from_secs(10);
        let probe: BaseConsumer = paystream_messaging::kafka::base_config(&bootstrap)
            .create()
            .context("creating a metadata client")?;
        let mut ends = TopicPartitionList::new();
        for topic in topics::ALL {
            let metadata = probe
                .fetch_metadata(Some(topic), timeout)
                .with_context(|| format!("reading the metadata of {topic}"))?;
            for t in metadata.topics() {
                for p in t.partitions() {
                    let high = watermark_with_retry(&probe, topic, p.id(), timeout)?;
                    ends.add_partition_offset(topic, p.id(), Offset::Offset(high))
                        .context("building the offset list")?;
                }
            }
        }
        for group in &groups {
            let consumer: BaseConsumer =
                paystream_messaging::kafka::consumer_config(&bootstrap, group)
                    .create()
                    .context("creating a consumer to commit positions")?;
            consumer
                .commit(&ends, CommitMode::Sync)
                .with_context(|| format!("committing the end of the topics for {group}"))?;
        }
        Ok(())
    })
    .await
    .context("skip_history task")?
}

/// The high watermark of a partition. Right after a topic is created its leader may not be known
/// yet (`NotLeaderForPartition`), so the query is repeated for a while before giving up.
fn watermark_with_retry(
    probe: &rdkafka::consumer::BaseConsumer,
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> anyhow::Result<i64> {
    use rdkafka::consumer::Consumer;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match probe.fetch_watermarks(topic, partition, timeout) {
            Ok((_, high)) => return Ok(high),
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("waiting for the leader of {topic}/{partition}: {e}");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => {
                return Err(e).with_context(|| format!("reading the end of {topic}/{partition}"));
            }
        }
    }
}
