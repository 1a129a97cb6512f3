use paystream_kit::CommonConfig;

#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
    /// Tests only (never read from the environment): consume `<namespace>.<topic>` instead of
    /// each contract topic, so that a test's fleet sees only the records its test produced even
    /// when other fleets and load generators share the broker. Published records keep their
    /// contract topics. `None` in production.
    pub topic_namespace: Option<String>,
}

impl Config {
    /// Only the common settings: `REDIS_URL` names the cache the ingress reads payments from.
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            common: CommonConfig::from_env("127.0.0.1:9103"),
            topic_namespace: None,
        })
    }
}

impl Config {
    /// The topics to consume: the contract names, or their namespaced copies in tests.
    pub fn consumed_topics(&self, contract: &[&str]) -> Vec<String> {
        contract
            .iter()
            .map(|t| match &self.topic_namespace {
                Some(ns) => format!("{ns}.{t}"),
                None => (*t).to_owned(),
            })
            .collect()
    }
}
