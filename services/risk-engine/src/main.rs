use paystream_kit::{shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init(risk_engine::SERVICE);
    let config = risk_engine::Config::from_env()?;
    let app = risk_engine::build(config).await?;
    tracing::info!(admin_port = app.admin_port(), "risk-engine ready");
    app.run_until_stopped(shutdown::on_signal()).await
}
