//! The one configuration file: TOML sections per role, overridden by
//! `TIDEMARK_<SECTION>__<FIELD>` environment variables, overridden by flags.

use anyhow::Context;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tidemark_server::ServerConfig;
use tidemark_service::ServiceConfig;

/// Settings of `tidemark ops` (section `[ops]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpsConfig {
    /// URL of the DB server.
    pub db: String,
    /// Journal directory.
    pub journal: PathBuf,
    /// Source name that numbers the orders.
    pub source: String,
    /// Orders per request.
    pub batch: usize,
}

impl Default for OpsConfig {
    fn default() -> Self {
        Self {
            db: "http://127.0.0.1:7070".into(),
            journal: PathBuf::from("./tidemark-journal"),
            source: "ops-1".into(),
            batch: 1000,
        }
    }
}

/// The whole file. Unknown top-level keys are ignored (other TIDEMARK_*
/// variables exist); unknown keys inside a section are refused.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub server: ServerConfig,
    pub service: ServiceConfig,
    pub ops: OpsConfig,
}

/// Loads defaults, then the file (if given), then the environment.
pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
    let mut fig = Figment::from(Serialized::defaults(Config::default()));
    if let Some(path) = file {
        if !path.exists() {
            anyhow::bail!(
                "config file {} does not exist; check the --config path",
                path.display()
            );
        }
        fig = fig.merge(Toml::file(path));
    }
    fig = fig.merge(Env::prefixed("TIDEMARK_").split("__").filter(|k| {
        let k = k.as_str().to_ascii_lowercase();
        ["server.", "service.", "ops."]
            .iter()
            .any(|p| k.starts_with(p))
    }));
    fig.extract()
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("invalid configuration (file or TIDEMARK_* environment)")
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's own error type
mod tests {
    use super::*;

    #[test]
    fn file_then_env_layering() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("t.toml", "[server]\nlisten = \"127.0.0.1:9000\"\ndata_dir = \"/tmp/x\"\n[service]\nid = \"svc\"\n")?;
            jail.set_env("TIDEMARK_SERVER__LISTEN", "127.0.0.1:9001");
            jail.set_env("TIDEMARK_REQUIRE_POSTGRES", "1");
            let c = load(Some(Path::new("t.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.server.listen, "127.0.0.1:9001");
            assert_eq!(c.server.data_dir, PathBuf::from("/tmp/x"));
            assert_eq!(c.service.id, "svc");
            Ok(())
        });
    }

    #[test]
    fn unknown_section_keys_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("t.toml", "[server]\nlisten_on = \"x\"\n")?;
            assert!(load(Some(Path::new("t.toml"))).is_err());
            Ok(())
        });
    }
}
