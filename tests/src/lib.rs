//! Starts the real fleet in-process, on ephemeral ports, against the real broker, database and
//! cache named by the usual environment variables. One fleet per test binary: it runs on a
//! runtime of its own so that every `#[tokio::test]` can use it.

use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context;
use paystream_domain::topics;
use paystream_kit::CommonConfig;
use paystream_kit::auth::{self, Role};
use psp_sim::{SimConfig, SimHandle};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Consumer groups of the test fleet carry this prefix, so that a dev fleet running on the same
/// broker neither steals nor shares their partitions.
pub const GROUP_PREFIX: &str = "e2e-";

pub struct Fleet {
    pub api_url: String,
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
    FLEET.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(4)
                .enable_all()
                .build()
                .unwrap_or_else(|e| panic!("fleet runtime: {e}"));
            rt.block_on(async move {
                match start().await {
                    Ok(fleet) => {
                        let stop = fleet.shutdown.clone();
                        let _ = tx.send(Ok(fleet));
                        stop.cancelled().await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(format!("{e:#}")));
                    }
                }
            });
        });
        match rx.recv_timeout(Duration::from_secs(180)) {
            Ok(Ok(fleet)) => fleet,
            Ok(Err(e)) => panic!("the test fleet did not start: {e}"),
            Err(e) => panic!("the test fleet did not start in time: {e}"),
        }
    })
}

fn common(service: &str) -> CommonConfig {
    let mut c = CommonConfig::for_tests();
    c.group_id = Some(format!("{GROUP_PREFIX}{service}"));
    c
}

async fn start() -> anyhow::Result<Fleet> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,rdkafka=error".to_owned()),
        )
        .with_test_writer()
        .try_init();
    let shutdown = CancellationToken::new();
    let base = CommonConfig::for_tests();

    let mut all = payctl::fleet_topics();
    for group in payctl::CONSUMER_GROUPS {
        all.push(topics::retry_topic(&format!("{GROUP_PREFIX}{group}")));
    }
    paystream_messaging::admin::ensure_topics(&base.kafka_bootstrap, &all, 12, 1)
        .await
        .context("creating topics")?;

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
    risk.common = common(risk_engine::SERVICE);
    risk.rules.max_amount = 500_000;
    spawn(
        risk_engine::build(risk)
            .await?
            .run_until_stopped(shutdown.clone()),
    );

    let mut gateway = psp_gateway::Config::from_env()?;
    gateway.common = common(psp_gateway::SERVICE);
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
    orders.common = common(order_store::SERVICE);
    spawn(
        order_store::build(orders)
            .await?
            .run_until_stopped(shutdown.clone()),
    );

    let mut accounts = account_store::Config::from_env()?;
    accounts.common = common(account_store::SERVICE);
    spawn(
        account_store::build(accounts)
            .await?
            .run_until_stopped(shutdown.clone()),
    );

    let mut val = validator::Config::from_env()?;
    val.common = common(validator::SERVICE);
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

    let mut api = api_ingress::Config::from_env();
    api.common = common(api_ingress::SERVICE);
    api.api_addr = "127.0.0.1:0".to_owned();
    let jwt_secret = api.jwt_secret.clone();
    let app = api_ingress::build(api).await?;
    let api_url = format!("http://127.0.0.1:{}", app.port());
    spawn(app.run_until_stopped(shutdown.clone()));

    Ok(Fleet {
        api_url,
        jwt_secret,
        database_url: base.database_url,
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
