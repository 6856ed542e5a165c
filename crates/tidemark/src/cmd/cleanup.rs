//! `tidemark cleanup` (B6).

use crate::cli::CleanupArgs;
use tidemark_server::config::StoreKind;
use tidemark_server::ServerConfig;

pub async fn run(config: ServerConfig, a: CleanupArgs) -> anyhow::Result<()> {
    let postgres = match a.store.as_deref() {
        Some(flag) => super::store_kind(flag)? == StoreKind::Postgres,
        // An explicit data directory is the embedded engine's.
        None => a.data_dir.is_none() && config.store == StoreKind::Postgres,
    };
    let (what, removed) = if postgres {
        let url = super::database_url(a.database_url, &config)?;
        let schema = a.pg_schema.unwrap_or(config.pg_schema);
        let removed = tidemark_backup::cleanup::run_pg(&url, &schema).await?;
        (format!("PostgreSQL schema '{schema}'"), removed)
    } else {
        let dir = a.data_dir.unwrap_or(config.data_dir);
        let removed = tidemark_backup::cleanup::run(&dir).await?;
        (dir.display().to_string(), removed)
    };
    if removed.is_empty() {
        println!("{what}: no process information to clean up; ready to start");
    } else {
        println!(
            "{what}: removed the process information of the last server that ran on it ({}; an online backup carries it over); ready to start",
            removed.join(", ")
        );
    }
    Ok(())
}
