//! Thin start-up: configuration → telemetry → build → run until SIGTERM or ctrl-c.

use clap::{Parser, ValueEnum};
use psp_sim::{Faults, SimConfig};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum PspName {
    Alpha,
    Beta,
}

impl PspName {
    fn as_str(self) -> &'static str {
        match self {
            Self::Alpha => "alpha",
            Self::Beta => "beta",
        }
    }

    /// Distinct defaults so `alpha` and `beta` can run side by side without flags.
    fn default_addr(self) -> &'static str {
        match self {
            Self::Alpha => "127.0.0.1:8091",
            Self::Beta => "127.0.0.1:8092",
        }
    }
}

/// Stripe-like PSP emulator. Credentials come only from the environment
/// (PSP_<NAME>_API_KEY, PSP_<NAME>_WEBHOOK_SECRET) so they never show in `ps` or in `--help`.
#[derive(Debug, Parser)]
#[command(name = "psp-sim", version)]
struct Cli {
    /// Which PSP to play.
    #[arg(long, env = "PSP_SIM_NAME", value_enum)]
    name: PspName,
    /// Listen address [default: 127.0.0.1:8091 for alpha, 127.0.0.1:8092 for beta].
    #[arg(long, env = "PSP_SIM_ADDR")]
    addr: Option<String>,
    /// Where to POST signed webhooks (e.g. http://127.0.0.1:8083/webhooks/alpha).
    #[arg(long, env = "PSP_SIM_WEBHOOK_URL")]
    webhook_url: Option<String>,
    /// Latency added to every /v1 call, in milliseconds.
    #[arg(long, env = "PSP_SIM_LATENCY_MS", default_value_t = 0)]
    latency_ms: u64,
    /// Share (0..=1) of charges randomly declined.
    #[arg(long, env = "PSP_SIM_DECLINE_RATE", default_value_t = 0.0, value_parser = rate)]
    decline_rate: f64,
    /// Share (0..=1) of mutating calls that hang then answer 504 (half of them did the work).
    #[arg(long, env = "PSP_SIM_TIMEOUT_RATE", default_value_t = 0.0, value_parser = rate)]
    timeout_rate: f64,
    /// Share (0..=1) of mutating calls that do the work and answer 500.
    #[arg(long, env = "PSP_SIM_AMBIGUOUS_RATE", default_value_t = 0.0, value_parser = rate)]
    ambiguous_rate: f64,
    /// How long a simulated timeout hangs before its 504, in milliseconds.
    #[arg(long, env = "PSP_SIM_HANG_MS", default_value_t = 30_000)]
    hang_ms: u64,
}

fn rate(value: &str) -> Result<f64, String> {
    let rate: f64 = value.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(format!("{rate} is not between 0 and 1"))
    }
}

fn secret_from_env(var: &str, default: String) -> String {
    std::env::var(var)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();

    let cli = Cli::parse();
    let name = cli.name.as_str();
    let upper = name.to_uppercase();
    let config = SimConfig {
        name: name.to_owned(),
        api_key: secret_from_env(&format!("PSP_{upper}_API_KEY"), format!("sk_test_{name}")),
        webhook_secret: secret_from_env(
            &format!("PSP_{upper}_WEBHOOK_SECRET"),
            format!("whsec_{name}"),
        ),
        webhook_url: cli.webhook_url,
        faults: Faults {
            latency_ms: cli.latency_ms,
            decline_rate: cli.decline_rate,
            timeout_rate: cli.timeout_rate,
            ambiguous_rate: cli.ambiguous_rate,
            hang_ms: cli.hang_ms,
        },
    };
    let addr = cli
        .addr
        .unwrap_or_else(|| cli.name.default_addr().to_owned());
    tracing::info!(
        psp = name,
        webhook_url = config.webhook_url.as_deref().unwrap_or("-"),
        faults = ?config.faults,
        "starting psp-sim"
    );
    let app = psp_sim::build(config, &addr).await?;
    app.run_until_stopped(shutdown_signal()).await?;
    tracing::info!(psp = name, "psp-sim stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutdown signal received");
}
