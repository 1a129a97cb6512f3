use tracing_subscriber::EnvFilter;

/// Logs go to stdout; `PAYSTREAM_LOG_FORMAT=json` gives one JSON object per line for production,
/// `RUST_LOG` filters (default `info`, with chatty dependencies turned down).
pub fn init(service: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("info,sqlx=warn,rdkafka=warn,hyper=warn,tower_http=info")
    });
    let json = std::env::var("PAYSTREAM_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let result = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.compact().try_init()
    };
    if result.is_ok() {
        tracing::info!(service, "starting");
    }
}
