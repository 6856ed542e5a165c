//! The one configuration file: TOML sections per role, overridden by
//! `TIDEMARK_<SECTION>__<FIELD>` environment variables, overridden by flags.

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

/// What every command that talks to a DB server uses (section
/// `[client]`): the client commands' `--server`, `--token` and
/// `--ca-cert`, and a service server's token and CA.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    /// The DB server's URL (`--server`; env `TIDEMARK_CLIENT__SERVER`).
    pub server: Option<String>,
    /// The token to send (`--token`; env `TIDEMARK_TOKEN`).
    pub token: Option<String>,
    /// The CA certificate for https URLs (`--ca-cert`; env `TIDEMARK_CA_CERT`).
    pub ca_cert: Option<PathBuf>,
}

/// The whole file. Unknown keys are refused, at the top level (a section
/// misspelt, or one of another program) as inside a section; the
/// environment is read for these sections only (other TIDEMARK_*
/// variables exist).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub server: ServerConfig,
    pub service: ServiceConfig,
    pub ops: OpsConfig,
    pub client: ClientConfig,
}

/// The environment variable that stands for each `[client]` setting; the
/// flags read them (clap `env`), so a flag beats the variable.
const CLIENT_ENV: [&str; 3] = [
    "TIDEMARK_CLIENT__SERVER",
    "TIDEMARK_TOKEN",
    "TIDEMARK_CA_CERT",
];

/// Before the flags are parsed: the `[client]` settings of the `--config`
/// file in `args`, and the `TIDEMARK_CLIENT__*` variables, become the
/// variables the flags read, where those are not set. So a flag beats
/// `TIDEMARK_TOKEN` and `TIDEMARK_CA_CERT`, which beat
/// `TIDEMARK_CLIENT__TOKEN` and `TIDEMARK_CLIENT__CA_CERT`, which beat the
/// file. A `[client]` section that is wrong is bad usage (its key named);
/// a file that cannot be read is left to [`load`], which says why. Runs
/// before any thread starts (it sets environment variables).
pub fn client_settings_into_env(args: &[std::ffi::OsString]) -> Result<(), String> {
    for (section, flag) in [
        ("TIDEMARK_CLIENT__TOKEN", "TIDEMARK_TOKEN"),
        ("TIDEMARK_CLIENT__CA_CERT", "TIDEMARK_CA_CERT"),
    ] {
        if let (Some(v), None) = (std::env::var_os(section), std::env::var_os(flag)) {
            std::env::set_var(flag, v);
        }
    }
    let mut path = None;
    let mut it = args.iter().filter_map(|a| a.to_str());
    while let Some(a) = it.next() {
        if a == "--config" {
            path = it.next().map(PathBuf::from);
        } else if let Some(p) = a.strip_prefix("--config=") {
            path = Some(PathBuf::from(p));
        }
    }
    let Some(path) = path.filter(|p| p.is_file()) else {
        return Ok(());
    };
    let file = Figment::from(Toml::file(&path));
    if !file.contains("client") {
        return Ok(());
    }
    #[derive(serde::Deserialize)]
    struct ClientFile {
        client: ClientConfig,
    }
    let client = file
        .extract::<ClientFile>()
        .map_err(|e| {
            format!(
                "invalid configuration: {}; fix it and run the command again",
                explain(e)
            )
        })?
        .client;
    let values = [
        client.server,
        client.token,
        client.ca_cert.map(|p| p.display().to_string()),
    ];
    for (name, value) in CLIENT_ENV.iter().zip(values) {
        if let (Some(v), None) = (value, std::env::var_os(name)) {
            std::env::set_var(name, v);
        }
    }
    Ok(())
}

/// The file's sections.
const SECTIONS: [&str; 4] = ["server", "service", "ops", "client"];

/// Refuses a `--config` path that is not a readable TOML file of known
/// sections, as bad usage naming what is wrong. Figment would read a
/// folder as an empty file, and skip a section it does not know: both ran
/// the command on defaults without a word.
fn check_sections(path: &Path) -> anyhow::Result<()> {
    let usage = |why: String| anyhow::Error::from(crate::cmd::Usage(why));
    if path.is_dir() {
        return Err(usage(format!(
            "--config {} is a folder; name the TOML file in it",
            path.display()
        )));
    }
    let top: figment::value::Dict = Figment::from(Toml::file(path)).extract().map_err(|e| {
        usage(format!(
            "invalid configuration in {}: {e}; fix it and run the command again",
            path.display()
        ))
    })?;
    let unknown: Vec<&str> = top
        .keys()
        .map(String::as_str)
        .filter(|k| !SECTIONS.contains(k))
        .collect();
    if !unknown.is_empty() {
        return Err(usage(format!(
            "invalid configuration in {}: unknown section or key {}; the file takes the sections {} only",
            path.display(),
            unknown.join(", "),
            SECTIONS.map(|s| format!("[{s}]")).join(", ")
        )));
    }
    Ok(())
}

/// Loads defaults, then the file (if given), then the environment.
pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
    let mut fig = Figment::from(Serialized::defaults(Config::default()));
    if let Some(path) = file {
        if !path.exists() {
            // Bad usage (exit 2, CONTRACT.md), not a failed operation.
            return Err(crate::cmd::Usage(format!(
                "config file {} does not exist; check the --config path",
                path.display()
            ))
            .into());
        }
        check_sections(path)?;
        fig = fig.merge(Toml::file(path));
    }
    fig = fig.merge(Env::prefixed("TIDEMARK_").split("__").filter(|k| {
        let k = k.as_str().to_ascii_lowercase();
        ["server.", "service.", "ops.", "client."]
            .iter()
            .any(|p| k.starts_with(p))
    }));
    // Bad usage too (exit 2): the operator's input, not a failed operation.
    fig.extract().map_err(|e| {
        crate::cmd::Usage(format!(
            "invalid configuration: {}; fix it and run the command again",
            explain(e)
        ))
        .into()
    })
}

/// A configuration error in the operator's words: each key as it is
/// written, in the file (`[server] listen`, and which file) or in the
/// environment (`TIDEMARK_SERVER__LISTEN`), and what is wrong with it.
fn explain(e: figment::Error) -> String {
    e.into_iter()
        .map(|e| {
            let path: Vec<&str> = e
                .path
                .iter()
                .map(String::as_str)
                .skip_while(|p| *p == "default")
                .collect();
            let env = e
                .metadata
                .as_ref()
                .is_some_and(|m| m.name.contains("environment"));
            let key = match path.split_first() {
                None => "the file".to_owned(),
                Some(_) if env => format!("TIDEMARK_{}", path.join("__").to_uppercase()),
                Some((section, [])) => format!("[{section}]"),
                Some((section, rest)) => format!("[{section}] {}", rest.join(".")),
            };
            let source = e
                .metadata
                .as_ref()
                .and_then(|m| m.source.as_ref())
                .filter(|_| !env)
                .map(|s| format!(" in {s}"))
                .unwrap_or_default();
            format!("{key}{source}: {}", e.kind)
        })
        .collect::<Vec<_>>()
        .join("; ")
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

    /// A misspelt section, and a folder given as the file, are refused as
    /// bad usage naming them; before, both ran on the defaults.
    #[test]
    fn unknown_sections_and_folders_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("t.toml", "[sever]\nlisten = \"127.0.0.1:9000\"\n")?;
            let e = load(Some(Path::new("t.toml"))).expect_err("a misspelt section");
            assert!(e.downcast_ref::<crate::cmd::Usage>().is_some(), "{e}");
            assert!(e.to_string().contains("sever"), "{e}");
            jail.create_file("u.toml", "top = 1\n[server]\nlisten = \"127.0.0.1:9000\"\n")?;
            let e = load(Some(Path::new("u.toml"))).expect_err("a top-level key");
            assert!(e.to_string().contains("top"), "{e}");
            std::fs::create_dir("conf").map_err(|e| e.to_string())?;
            let e = load(Some(Path::new("conf"))).expect_err("a folder");
            assert!(e.downcast_ref::<crate::cmd::Usage>().is_some(), "{e}");
            assert!(e.to_string().contains("folder"), "{e}");
            jail.create_file(
                "ok.toml",
                "[server]\nlisten = \"127.0.0.1:9000\"\n[ops]\nbatch = 5\n",
            )?;
            let c = load(Some(Path::new("ok.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.ops.batch, 5);
            Ok(())
        });
    }
}
