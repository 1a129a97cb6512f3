use paystream_kit::{shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init(validator::SERVICE);
    let config = validator::Config::from_env()?;
    let app = validator::build(config).await?;
    tracing::info!(admin_port = app.admin_port(), "validator ready");
    app.run_until_stopped(shutdown::on_signal()).await
}
