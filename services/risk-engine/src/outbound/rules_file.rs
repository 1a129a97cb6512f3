//! Rules from a file (`PAYSTREAM_RISK_RULES_FILE`): TOML, or JSON when the name ends in `.json`.

use std::path::PathBuf;

use anyhow::Context;
use async_trait::async_trait;

use crate::domain::ports::{RulesSource, RulesSourceError};
use crate::domain::rules::{Rules, parse_rules};

pub struct FileRules {
    path: PathBuf,
}

impl FileRules {
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }
}

#[async_trait]
impl RulesSource for FileRules {
    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }

    /// Reads the whole file each time: rule files are small, and comparing contents (rather than
    /// modification times) also catches an editor that keeps the mtime or a config-map swap.
    async fn load(&self) -> Result<Option<Rules>, RulesSourceError> {
        let text = tokio::fs::read_to_string(&self.path)
            .await
            .with_context(|| format!("reading {}", self.path.display()))
            .map_err(RulesSourceError::Unavailable)?;
        let json = self
            .path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        Ok(Some(parse_rules(&text, json)?))
    }
}
