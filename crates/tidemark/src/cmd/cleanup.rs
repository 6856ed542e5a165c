//! `tidemark cleanup` (B6).

use crate::cli::CleanupArgs;
use tidemark_server::config::StoreKind;
use tidemark_server::ServerConfig;

pub async fn run(config: ServerConfig, a: CleanupArgs) -> anyhow::Result<()> {
    let postgres = match a.store.as_deref() {
        Some("postgres") => true,
        Some("sqlite") => false,
        Some(other) => super::usage!("--store must be 'sqlite' or 'postgres', not '{other}'"),
        // An explicit data directory is the embedded engine's.
        None => a.data_dir.is_none() && config.store == StoreKind::Postgres,
    };
    let (what, removed) = if postgres {
        let Some(url) = a
            .database_url
            .or_else(|| config.database_url.as_ref().map(|s| s.0.clone()))
        else {
            super::usage!(
                "--store postgres needs --database-url URL (or TIDEMARK_SERVER__DATABASE_URL)"
            );
        };
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
        println!("{what}: removed {}; ready to start", removed.join(", "));
    }
    Ok(())
}
