//! `tidemark cleanup` (B6).

use crate::cli::CleanupArgs;
use tidemark_server::ServerConfig;

pub async fn run(config: ServerConfig, a: CleanupArgs) -> anyhow::Result<()> {
    let dir = a.data_dir.unwrap_or(config.data_dir);
    let removed = tidemark_backup::cleanup::run(&dir).await?;
    if removed.is_empty() {
        println!(
            "{}: no process information to clean up; ready to start",
            dir.display()
        );
    } else {
        println!(
            "{}: removed {}; ready to start",
            dir.display(),
            removed.join(", ")
        );
    }
    Ok(())
}
