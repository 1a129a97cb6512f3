use paystream_kit::{shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init(api_ingress::SERVICE);
    let config = api_ingress::Config::from_env()?;
    let app = api_ingress::build(config).await?;
    tracing::info!(port = app.port(), "api-ingress listening");
    app.run_until_stopped(shutdown::on_signal()).await
}
