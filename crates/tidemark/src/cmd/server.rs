//! `tidemark server`.

use crate::cli::ServerArgs;
use tidemark_server::config::Secret;
use tidemark_server::{Server, ServerConfig, StoreKind};

pub async fn run(mut config: ServerConfig, args: ServerArgs) -> anyhow::Result<()> {
    if let Some(l) = args.listen {
        config.listen = l;
    }
    if let Some(d) = args.data_dir {
        config.data_dir = d;
    }
    if let Some(s) = args.store {
        config.store = match s.as_str() {
            "sqlite" => StoreKind::Sqlite,
            "postgres" => StoreKind::Postgres,
            other => anyhow::bail!("--store must be 'sqlite' or 'postgres', not '{other}'"),
        };
    }
    if let Some(u) = args.database_url {
        config.database_url = Some(Secret(u));
    }
    if let Some(s) = args.pg_schema {
        config.pg_schema = s;
    }
    if config.store == StoreKind::Postgres && config.database_url.is_none() {
        anyhow::bail!(
            "--store postgres needs --database-url URL (or TIDEMARK_SERVER__DATABASE_URL)"
        );
    }
    let shutdown = crate::signals::shutdown_token();
    let server = Server::open(config.clone(), shutdown).await?;
    let listener = super::bind(&config.listen, "DB server").await?;
    server.run(listener).await
}
