//! The lease loop: the only place a role changes.
//!
//! - A primary renews its lease every tick. If it cannot for 0.9 of a
//!   lease from the last renewal it sent (PostgreSQL unreachable, the
//!   process was paused), or the lease moved, it becomes a standby: first
//!   the fence (no write of ours commits), then the view. Every lease
//!   statement gets half a lease to answer (`bounded`).
//! - A standby reads the lease every tick. An expired or free lease is
//!   taken (a new term); a lease handed to it (a promote) is adopted.
//!   Before it serves as primary, it publishes every change committed
//!   under earlier terms (`tail::catch_up`) and re-reads the shared state.

use super::{tail, Cluster, View};
use crate::state::AppState;
use std::sync::Arc;
use std::time::Instant;
use tidemark_api::state::Role;
use tidemark_store::postgres::cluster::MemberReport;
use tidemark_store::StoreError;

/// Runs until shutdown; then gives the lease up if it holds it, so a
/// standby takes over at once instead of after the lease expires.
///
/// The first look at the lease happens at once, and `looked` fires after
/// it: the server is not ready before it knows whether it is the primary
/// (a lone instance would otherwise answer `no_primary` for a tick).
pub async fn run(
    app: Arc<AppState>,
    cluster: Arc<Cluster>,
    looked: tokio::sync::oneshot::Sender<()>,
) {
    let mut beat = 0u32;
    let beating = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut looked = Some(looked);
    let mut told_offline = false;
    loop {
        let view = cluster.view();
        match view.role {
            Role::Primary => {
                let sent = cluster.now_ms();
                let renewed = bounded(
                    &cluster,
                    cluster
                        .store
                        .lease_renew(&cluster.id, view.term, ttl_ms(&cluster)),
                )
                .await;
                match renewed {
                    Ok(true) => {
                        cluster.lease_held_for(sent, cluster.lease_ttl);
                        cluster.renewed_after_handover(sent);
                        if app.quiesce.offline() && !cluster.handing_over() {
                            // Bounded like a lease statement: a PostgreSQL
                            // cut off must not stop the loop's renewals and
                            // step-downs (nor shutdown).
                            let _ = tokio::time::timeout(
                                cluster.lease_ttl / 2,
                                hand_on_when_offline(&cluster, view.term, &mut told_offline),
                            )
                            .await;
                        }
                    }
                    Ok(false) => step_down(&cluster, "the lease moved to another instance"),
                    Err(e) if !cluster.lease_held() => {
                        step_down(&cluster, &format!("the lease could not be renewed: {e}"))
                    }
                    Err(e) => tracing::warn!(error = %e, "lease renewal failed; retrying"),
                }
            }
            Role::Standby => {
                if let Err(e) = follow(&app, &cluster).await {
                    tracing::debug!(error = %e, "lease check failed; retrying");
                }
            }
        }
        beat += 1;
        // Every third tick, and at once when the role changed; beside the
        // loop, so renewals keep their pace on a slow PostgreSQL.
        if (beat % 3 == 1 || cluster.view().role != view.role)
            && !beating.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            let (app, cluster, beating) = (app.clone(), cluster.clone(), beating.clone());
            tokio::spawn(async move {
                let _ =
                    tokio::time::timeout(cluster.lease_ttl / 2, heartbeat(&app, &cluster)).await;
                beating.store(false, std::sync::atomic::Ordering::SeqCst);
            });
        }
        if let Some(tx) = looked.take() {
            let _ = tx.send(());
        }
        tokio::select! {
            _ = app.shutdown.cancelled() => break,
            _ = tokio::time::sleep(cluster.tick()) => {}
            _ = cluster.lease_wake.notified() => {}
        }
    }
    let view = cluster.view();
    if view.role == Role::Primary {
        // Requests still in flight must not trust the lease any more: a
        // standby takes it as soon as it is released.
        cluster.lease_lost();
        match bounded(
            &cluster,
            cluster.store.lease_release(&cluster.id, view.term),
        )
        .await
        {
            Ok(true) => tracing::info!(term = view.term, "lease released at shutdown"),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not release the lease; it expires by itself")
            }
        }
    }
    let _ = bounded(&cluster, cluster.store.leave(&cluster.id)).await;
}

fn ttl_ms(cluster: &Cluster) -> u64 {
    cluster.lease_ttl.as_millis() as u64
}

/// A lease statement, given half a lease to answer: PostgreSQL cut off
/// (a partition, a hung connection) must not stop the loop from stepping
/// down when the lease runs out.
async fn bounded<T>(
    cluster: &Cluster,
    statement: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(cluster.lease_ttl / 2, statement).await {
        Ok(r) => {
            if r.is_ok() {
                cluster.reached_postgres();
            }
            r
        }
        Err(_) => Err(StoreError::Unavailable(format!(
            "PostgreSQL did not answer a lease statement within {} ms",
            ttl_ms(cluster) / 2
        ))),
    }
}

/// A primary that lost its lease: the fence first, so nothing of ours
/// commits any more, then the role.
fn step_down(cluster: &Cluster, why: &str) {
    cluster.lease_lost();
    let view = cluster.view();
    tracing::warn!(
        term = view.term,
        why,
        "no longer the primary; serving as a standby"
    );
    cluster.set_view(View {
        role: Role::Standby,
        term: view.term,
        primary: None,
    });
    cluster.tail_wake.notify_one();
}

/// The primary gave its lease to `to` (a promote): it is a standby now.
pub fn handed_over(cluster: &Cluster, term: u64, to: String) {
    cluster.lease_lost();
    tracing::info!(term, primary = %to, "lease handed over; serving as a standby");
    cluster.set_view(View {
        role: Role::Standby,
        term,
        primary: Some(to),
    });
    cluster.tail_wake.notify_one();
}

/// Hands the lease at `term` to `to` (a live member's id and URL), as a
/// promote does: `false` if it moved meanwhile (a failover). Until its end
/// is known, the read cache is off and streams are not vouched for.
pub async fn hand_over(
    cluster: &Cluster,
    term: u64,
    to_id: &str,
    to_url: &str,
) -> Result<bool, StoreError> {
    let guard = cluster.handover_started();
    let moved = cluster
        .store
        .lease_hand_over(&cluster.id, term, to_id, to_url, ttl_ms(cluster))
        .await?;
    if moved {
        handed_over(cluster, term + 1, to_url.to_owned());
    }
    guard.ended(true);
    Ok(moved)
}

/// A primary past its quiesce deadline refuses writes, and standbys
/// forward theirs to it: it hands the lease to a live standby that is not
/// quiescing, so the cluster takes writes again. With none, it keeps the
/// lease (writes wait for one) and says so once.
async fn hand_on_when_offline(cluster: &Cluster, term: u64, told: &mut bool) {
    let members = match cluster.store.members(live_within_ms(cluster)).await {
        Ok(m) => m,
        Err(e) => {
            tracing::debug!(error = %e, "members unreadable; handing on later");
            return;
        }
    };
    // A standby heard from within a lease (one that crashed a moment ago
    // would leave the cluster without a primary for a lease).
    let Some(to) = members.iter().find(|m| {
        m.id != cluster.id
            && m.url != cluster.url
            && m.quiesce.is_none()
            && m.role == "standby"
            && m.heartbeat_age_ms <= ttl_ms(cluster) as i64
    }) else {
        if !*told {
            *told = true;
            tracing::warn!("past its quiesce deadline, this primary refuses writes, and no live standby that is not quiescing can take the lease: start one, or cancel the notice (tidemark quiesce --cancel)");
        }
        return;
    };
    match hand_over(cluster, term, &to.id, &to.url).await {
        Ok(true) => {
            tracing::warn!(to = %to.url, "past its quiesce deadline: lease handed to a standby")
        }
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(error = %e, "handing the lease on at the quiesce deadline failed; retrying")
        }
    }
}

/// A standby's look at the lease: follow the primary, or take over.
async fn follow(app: &Arc<AppState>, cluster: &Arc<Cluster>) -> Result<(), StoreError> {
    let lease = bounded(cluster, cluster.store.lease()).await?;
    let term = if lease.held_by(&cluster.id) {
        // Handed to us by a promote.
        lease.term
    } else if (lease.holder.is_none() || lease.expires_in_ms <= 0) && !app.quiesce.offline() {
        // (An instance past its quiesce deadline takes no lease: it would
        // refuse the writes it was made primary for.)
        let acquired = bounded(
            cluster,
            cluster
                .store
                .lease_acquire(&cluster.id, &cluster.url, ttl_ms(cluster)),
        )
        .await?;
        match acquired {
            Some(l) => l.term,
            None => return Ok(()),
        }
    } else {
        cluster.set_view(View {
            role: Role::Standby,
            term: lease.term,
            primary: lease.url,
        });
        return Ok(());
    };
    take_over(app, cluster, term).await?;
    // A take-over can take long (the tail's catch-up): it reached
    // PostgreSQL throughout.
    cluster.reached_postgres();
    Ok(())
}

/// Becomes primary at `term`: fence, publish what earlier terms committed,
/// re-read the shared state, renew the lease, then serve.
async fn take_over(
    app: &Arc<AppState>,
    cluster: &Arc<Cluster>,
    term: u64,
) -> Result<(), StoreError> {
    let started = Instant::now();
    cluster.store.set_fence(Some((term, cluster.id.clone())));
    let ready = async {
        cluster.store.refresh_shared().await?;
        // Nobody else commits now: the tail reaches the end of the log.
        tail::catch_up(app).await?;
        // A transition the tail had not followed yet sends its event.
        tail::follow_recovery(app, &cluster.followed).await?;
        app.auth.reload().await?;
        // A schema version the tail had not told of yet.
        crate::schema_publish::follow_version(app).await;
        Ok::<_, StoreError>(())
    }
    .await;
    // The catch-up may have used much of the lease (a promote hands over
    // a short one): renewed before serving, so the first renewal of the
    // loop is not already too late and the promote does not bounce back.
    let renewed = match ready {
        Ok(()) => {
            let sent = cluster.now_ms();
            bounded(
                cluster,
                cluster
                    .store
                    .lease_renew(&cluster.id, term, ttl_ms(cluster)),
            )
            .await
            .map(|held| held.then_some(sent))
        }
        Err(e) => Err(e),
    };
    let renewed_at = match renewed {
        Ok(Some(at)) => at,
        Ok(None) => {
            cluster.store.set_fence(None);
            tracing::warn!(
                term,
                "the lease moved while taking over; serving as a standby"
            );
            return Ok(());
        }
        Err(e) => {
            cluster.store.set_fence(None);
            tracing::warn!(error = %e, term, "could not take over as primary; the lease will expire and be taken again");
            return Err(e);
        }
    };
    cluster.lease_held_for(renewed_at, cluster.lease_ttl);
    cluster.set_view(View {
        role: Role::Primary,
        term,
        primary: Some(cluster.url.clone()),
    });
    app.metrics.seq.set(app.hub.watermark() as i64);
    tracing::info!(
        term,
        took_ms = started.elapsed().as_millis() as u64,
        "this instance is now the primary"
    );
    // Beside the lease loop, which must go on renewing meanwhile.
    let app = app.clone();
    tokio::spawn(async move {
        // A crash between the last flag clear and the state change is
        // mended here.
        if let Err(e) = app.recovery.maybe_finish().await {
            tracing::warn!(error = %e, "recovery state check failed; will retry");
        }
        app.recovery.announce_settled(&app.hub).await;
        // A schema publish the old primary left unfinished ends on one
        // version.
        crate::schema_publish::resume_logged(&app).await;
    });
    Ok(())
}

async fn heartbeat(app: &Arc<AppState>, cluster: &Arc<Cluster>) {
    let view = cluster.view();
    let quiesce = app
        .quiesce
        .notice()
        .and_then(|n| serde_json::to_string(&n).ok());
    let report = MemberReport {
        id: &cluster.id,
        url: &cluster.url,
        role: view.role.as_str(),
        term: view.term,
        version: env!("CARGO_PKG_VERSION"),
        schema_version: app.store.schema().version,
        quiesce,
        services: serde_json::to_string(&app.schema.local_services()).ok(),
    };
    if let Err(e) = cluster.store.heartbeat(&report).await {
        tracing::debug!(error = %e, "heartbeat failed; retrying");
        return;
    }
    cluster.reached_postgres();
    let live = live_within_ms(cluster);
    match cluster.store.members(DOWN_SHOWN_MS.max(live)).await {
        Ok(all) => {
            let (up, down) = all
                .into_iter()
                .partition(|m| m.heartbeat_age_ms <= live as i64);
            *cluster.members.write() = up;
            *cluster.members_down.write() = down;
        }
        Err(e) => tracing::debug!(error = %e, "member list unreadable; retrying"),
    }
    if view.role == Role::Primary {
        if let Err(e) = cluster.store.vouch_prune().await {
            tracing::debug!(error = %e, "could not drop old vouches; retrying");
        }
    }
}

/// How long a member that stopped without leaving (a clean stop removes
/// its row) is still listed, as down.
pub const DOWN_SHOWN_MS: u64 = 10 * 60 * 1000;

/// A member is live if it reported within three leases.
pub fn live_within_ms(cluster: &Cluster) -> u64 {
    3 * ttl_ms(cluster).max(1000)
}
