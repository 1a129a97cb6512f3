use paystream_kit::{shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init(account_store::SERVICE);
    let config = account_store::Config::from_env()?;
    let app = account_store::build(config).await?;
    tracing::info!(admin_port = app.admin_port(), "account-store ready");
    app.run_until_stopped(shutdown::on_signal()).await
}
