//! `tidemark restore` (B3, B4, P4, P5).

use crate::cli::RestoreArgs;
use tidemark_backup::restore::{default_safety_dir, RestoreOptions};
use tidemark_server::ServerConfig;
use tidemark_telemetry::{say, Said};

pub async fn run(config: ServerConfig, a: RestoreArgs) -> anyhow::Result<()> {
    let engine = a
        .store
        .clone()
        .unwrap_or_else(|| config.store_name().to_owned());
    if super::store_kind(&engine)? == tidemark_server::StoreKind::Postgres {
        return run_postgres(config, a).await;
    }
    let data_dir = a.data_dir.clone().unwrap_or(config.data_dir.clone());
    let safety_to = if a.no_safety_backup {
        say(Said::Warning, format_args!(
            "--no-safety-backup: the current data in {} is not backed up first and cannot be recovered after this restore",
            data_dir.display()
        ));
        None
    } else {
        Some(
            a.safety_dir
                .clone()
                .unwrap_or_else(|| default_safety_dir(&data_dir)),
        )
    };
    outside_backup(
        &a.from,
        [
            ("data directory", Some(&data_dir)),
            ("--safety-dir", safety_to.as_ref()),
        ],
    )?;
    // The default sits beside the data directory (which is itself refused
    // if it lies inside another).
    if let (Some(to), Some(_)) = (&safety_to, &a.safety_dir) {
        super::backup::outside_data_dirs(to, "--safety-dir")?;
    }
    // Only a safety backup records it.
    let live_config_taken = safety_to.is_some();
    let live_config = match &safety_to {
        Some(_) => Some(
            super::backup::config_for_backup(
                config.clone(),
                super::backup::Pointed::DataDir(&data_dir),
            )
            .await?,
        ),
        None => None,
    };
    let opts = RestoreOptions {
        from: a.from.clone(),
        data_dir: data_dir.clone(),
        safety_to,
        cleanup: !a.no_cleanup,
        integrity_check: a.check_integrity,
        min_epoch: a.min_epoch.unwrap_or(0),
        live_config,
    };
    let bar = super::backup::progress_bar("restoring");
    let progress = |n: u64| bar.set_position(n);
    let report = tidemark_backup::restore::run(&opts, &progress).await?;
    bar.finish_and_clear();
    // Said only when a safety backup was taken (there was a live store).
    if live_config_taken && report.safety.is_some() {
        super::backup::note_settings_source(&config);
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "from": a.from.display().to_string(),
                "data_dir": data_dir.display().to_string(),
                "seq": report.manifest.seq,
                "backup_epoch": report.manifest.epoch,
                "previous_epoch": report.previous_epoch,
                "epoch": report.new_epoch,
                "state": "recovering",
                "safety_backup": report.safety.as_ref().map(|p| p.display().to_string()),
                "cleaned": report.cleaned,
                "needs_cleanup": report.needs_cleanup,
                "schema_carried": report.schema_carried,
                "access_carried": report.access_carried,
                "generation": report.generation.display().to_string(),
                "config_dir": report.config_dir.as_ref().map(|p| p.display().to_string()),
            }))?
        );
    } else {
        if let Some(s) = &report.safety {
            println!("safety backup of the previous state: {}", s.display());
            if a.safety_dir.is_none() {
                note_safety_backups(s);
            }
        }
        let epoch = match report.previous_epoch {
            Some(e) => format!("epoch {e} -> {}", report.new_epoch),
            None => format!(
                "epoch {} (no readable data was there before)",
                report.new_epoch
            ),
        };
        println!(
            "restored {} into {}: seq {}, {epoch}; the server will start in 'recovering'",
            a.from.display(),
            data_dir.display(),
            report.manifest.seq,
        );
        if let Some(c) = &report.config_dir {
            println!("configuration files restored into {}", c.display());
        }
        print_carried(&report.schema_carried, report.access_carried);
        if !report.cleaned.is_empty() {
            println!(
                "cleanup: removed the process information the backup carried over ({})",
                report.cleaned.join(", ")
            );
        }
    }
    if report.needs_cleanup {
        say(
            Said::Note,
            format_args!(
                "run 'tidemark cleanup --data-dir {}' before starting the server",
                data_dir.display()
            ),
        );
    }
    Ok(())
}

/// A restore writes its data directory (or, on PostgreSQL, the folder its
/// configuration files go to) and its safety copy: none may lie inside the
/// backup it reads (the backup would change under the restore, and take
/// the restored files for damage afterwards).
fn outside_backup<'a>(
    from: &std::path::Path,
    places: impl IntoIterator<Item = (&'a str, Option<&'a std::path::PathBuf>)>,
) -> anyhow::Result<()> {
    for (what, path) in places {
        if let Some(path) = path.filter(|p| tidemark_store::lock::lies_within(p, from)) {
            anyhow::bail!(
                "the {what} {} lies inside the backup {} being restored; nothing was changed: choose a {what} outside the backup",
                path.display(),
                from.display()
            );
        }
    }
    Ok(())
}

/// A restore drops and recreates its PostgreSQL schema whole, and stages
/// into `NAME_restoring` first: the name must be plain, leave room for
/// that suffix (63 bytes in all), and be one Tidemark may own (not
/// `public`, which would come back without its owner and grants).
fn check_restore_schema(schema: &str) -> anyhow::Result<()> {
    if let Some(why) = tidemark_store::postgres::target::unusable_schema(schema) {
        anyhow::bail!("{why}; nothing was changed");
    }
    if schema == "public" {
        anyhow::bail!(
            "--pg-schema 'public': a restore drops and recreates its schema, and 'public' would come back without its owner and grants; nothing was changed: restore into a schema of Tidemark's own (the default 'tidemark') and start the server with the same --pg-schema"
        );
    }
    Ok(())
}

/// `tidemark restore --store postgres`.
async fn run_postgres(config: ServerConfig, a: RestoreArgs) -> anyhow::Result<()> {
    let url = super::database_url(a.database_url.clone(), &config)?;
    let schema = a.pg_schema.clone().unwrap_or(config.pg_schema.clone());
    check_restore_schema(&schema)?;
    let safety_to = if a.no_safety_backup {
        say(Said::Warning, format_args!("--no-safety-backup: the current data in PostgreSQL schema '{schema}' is not backed up first and cannot be recovered after this restore"));
        None
    } else {
        Some(a.safety_dir.clone().unwrap_or_else(|| {
            default_safety_dir(&std::path::PathBuf::from(format!("tidemark-{schema}")))
        }))
    };
    outside_backup(
        &a.from,
        [
            ("--data-dir", a.data_dir.as_ref()),
            ("--safety-dir", safety_to.as_ref()),
        ],
    )?;
    let live_config_taken = safety_to.is_some();
    let live_config = match &safety_to {
        Some(_) => Some(
            super::backup::config_for_backup(
                config.clone(),
                super::backup::Pointed::Postgres {
                    url: &url,
                    schema: &schema,
                },
            )
            .await?,
        ),
        None => None,
    };
    let opts = tidemark_backup::restore_pg::PgRestoreOptions {
        from: a.from.clone(),
        database_url: url,
        schema: schema.clone(),
        safety_to,
        cleanup: !a.no_cleanup,
        integrity_check: a.check_integrity,
        min_epoch: a.min_epoch.unwrap_or(0),
        config_to: a.data_dir.clone(),
        live_config,
    };
    if a.data_dir.is_none() {
        say(Said::Note, "the backup's configuration files are not restored (no --data-dir to put them in); give --data-dir DIR to restore them beside the data");
    }
    let bar = super::backup::progress_bar("restoring");
    let progress = |n: u64| bar.set_position(n);
    let report = tidemark_backup::restore_pg::run(&opts, &progress).await?;
    bar.finish_and_clear();
    // Said only when a safety backup was taken (there was a live store).
    if live_config_taken && report.safety.is_some() {
        super::backup::note_settings_source(&config);
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "from": a.from.display().to_string(),
                "target": report.target,
                "seq": report.manifest.seq,
                "backup_epoch": report.manifest.epoch,
                "previous_epoch": report.previous_epoch,
                "epoch": report.new_epoch,
                "state": "recovering",
                "safety_backup": report.safety.as_ref().map(|p| p.display().to_string()),
                "cleaned": report.cleaned,
                "needs_cleanup": report.needs_cleanup,
                "schema_carried": report.schema_carried,
                "access_carried": report.access_carried,
                "config_dir": report.config_dir.as_ref().map(|p| p.display().to_string()),
            }))?
        );
        return Ok(());
    }
    if let Some(s) = &report.safety {
        println!("safety backup of the previous state: {}", s.display());
        if a.safety_dir.is_none() {
            note_safety_backups(s);
        }
    }
    let epoch = match report.previous_epoch {
        Some(e) => format!("epoch {e} -> {}", report.new_epoch),
        None => format!(
            "epoch {} (the schema held no store before)",
            report.new_epoch
        ),
    };
    println!(
        "restored {} into {}: seq {}, {epoch}; the server will start in 'recovering'",
        a.from.display(),
        report.target,
        report.manifest.seq,
    );
    print_carried(&report.schema_carried, report.access_carried);
    if !report.cleaned.is_empty() {
        println!(
            "cleanup: removed the process information the backup carried over ({})",
            report.cleaned.join(", ")
        );
    }
    if report.needs_cleanup {
        say(Said::Note, format_args!(
            "run 'tidemark cleanup --store postgres --database-url URL --pg-schema {schema}' before starting the server"
        ));
    }
    Ok(())
}

/// Says which schema versions published after the backup were kept.
fn print_carried(carried: &[u64], access: bool) {
    if let (Some(first), Some(last)) = (carried.first(), carried.last()) {
        println!(
            "schema: versions {first}..={last}, published after the backup, were published again on the restored data (the version only grows)"
        );
    }
    if access {
        println!("tokens and audit log: kept as the live store had them");
    } else {
        println!("tokens and audit log: the backup's (no live store, or one without tokens, to keep them from); revoke any token revoked since the backup again ('tidemark token list')");
    }
}

/// Safety backups are kept (each is a full copy, and which to drop is the
/// operator's call): past [`SAFETY_KEPT`] of them in the default folder
/// (restore's own: a `--safety-dir` may hold other backups too), says how
/// to prune. Counts manifests only; nothing is read or checked.
fn note_safety_backups(made: &std::path::Path) {
    let Some(root) = made.parent() else { return };
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    let kept = entries
        .flatten()
        .filter(|e| {
            e.path()
                .join(tidemark_backup::manifest::MANIFEST_FILE)
                .is_file()
        })
        .count();
    if kept > SAFETY_KEPT {
        say(
            Said::Note,
            format_args!(
                "{} holds {} safety backups, a full copy each; keep the newest with 'tidemark backup prune {} --keep {SAFETY_KEPT}'",
                root.display(),
                kept,
                root.display()
            ),
        );
    }
}

/// Safety backups past which a restore says how to prune them.
const SAFETY_KEPT: usize = 3;
