use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    payctl::run(payctl::Cli::parse()).await
}
