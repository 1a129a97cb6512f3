use paystream_kit::CommonConfig;

#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
}

impl Config {
    /// Only the common settings: `REDIS_URL` names the cache the ingress reads payments from.
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            common: CommonConfig::from_env("127.0.0.1:9103"),
        })
    }
}
