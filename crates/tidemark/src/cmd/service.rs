//! `tidemark service`.

use crate::cli::ServiceArgs;
use tidemark_service::{Service, ServiceConfig};

pub async fn run(mut config: ServiceConfig, args: ServiceArgs) -> anyhow::Result<()> {
    if let Some(v) = args.db {
        config.db = v;
    }
    if let Err(e) = crate::cli::db_urls(&config.db) {
        super::usage!("--db: {e}");
    }
    if let Some(v) = args.id {
        config.id = v;
    }
    if !tidemark_api::schema::is_service_name(&config.id) {
        super::usage!("a service server needs --id NAME (1 to 128 bytes, not . or .., or TIDEMARK_SERVICE__ID): the DB server pushes changes to it, and quiesces it, by this name");
    }
    if let Some(v) = args.policy {
        config.policy = match v.parse() {
            Ok(p) => p,
            Err(e) => super::usage!("--policy: {e}"),
        };
    }
    if let Some(v) = args.listen {
        config.listen = v;
    }
    if let Some(v) = args.cache_dir {
        config.cache_dir = Some(v);
    }
    if let Some(v) = args.cache_capacity {
        config.cache_capacity = v;
    }
    if let Some(v) = args.latest_deadline_ms {
        config.latest_deadline_ms = v;
    }
    if args.ignore_schema_skew {
        config.ignore_schema_skew = true;
    }
    if args.tls_cert.is_some() {
        config.tls_cert = args.tls_cert;
        config.tls_key = args.tls_key;
    }
    if args.front_door.tls_client_ca.is_some() {
        config.tls_client_ca = args.front_door.tls_client_ca;
    }
    if let Some(n) = args.front_door.max_connections {
        config.max_connections = n;
    }
    config.front_door().check()?;
    let shutdown = crate::signals::shutdown_token();
    let service = Service::new(config.clone(), shutdown)?;
    let scheme = if config.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let listener = super::bind_scheme(&config.listen, "service server", scheme).await?;
    service.run(listener).await
}
