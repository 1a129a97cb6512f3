use paystream_kit::{shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init(order_store::SERVICE);
    let config = order_store::Config::from_env()?;
    let app = order_store::build(config).await?;
    tracing::info!(admin_port = app.admin_port(), "order-store ready");
    app.run_until_stopped(shutdown::on_signal()).await
}
