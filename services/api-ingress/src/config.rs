use paystream_kit::CommonConfig;
use paystream_kit::config::{DEFAULT_JWT_SECRET, env_or};

#[derive(Clone)]
pub struct Config {
    pub common: CommonConfig,
    /// `PAYSTREAM_API_ADDR` (contract), default 127.0.0.1:8080.
    pub api_addr: String,
    /// `PAYSTREAM_JWT_SECRET` (contract). Never printed.
    pub jwt_secret: String,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("common", &self.common)
            .field("api_addr", &self.api_addr)
            .field("jwt_secret", &"<redacted>")
            .finish()
    }
}

impl Config {
    pub fn from_env() -> Self {
        Self {
            common: CommonConfig::from_env("127.0.0.1:8080"),
            api_addr: env_or("PAYSTREAM_API_ADDR", "127.0.0.1:8080"),
            jwt_secret: env_or("PAYSTREAM_JWT_SECRET", DEFAULT_JWT_SECRET),
        }
    }
}
