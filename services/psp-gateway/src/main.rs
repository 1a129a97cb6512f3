use paystream_kit::{shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init(psp_gateway::SERVICE);
    let config = psp_gateway::Config::from_env()?;
    let app = psp_gateway::build(config).await?;
    tracing::info!(admin_port = app.admin_port(), "psp-gateway ready");
    app.run_until_stopped(shutdown::on_signal()).await
}
