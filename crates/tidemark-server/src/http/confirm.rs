//! Waiting, before a write is answered, until every standby that vouches
//! to its service servers has followed it (S3, P9; see `cluster::vouch`).

use super::error::HttpError;
use super::AppState;
use crate::cluster::vouch::Covers;
use tidemark_api::ErrorCode;

/// An instance of a cluster that committed: waits until every standby that
/// vouches to its service servers has published `covers`, or its vouch has
/// run out (S3, P9: a standby frozen after vouching never has a change
/// served outdated once it is acknowledged). Also after a step down
/// between the commit and now. At once on a single server.
pub async fn standbys_confirmed(app: &AppState, covers: Covers) -> Result<(), HttpError> {
    let Some(cluster) = &app.cluster else {
        return Ok(());
    };
    cluster
        .gate
        .confirmed(covers)
        .await
        .map_err(|e| HttpError::new(ErrorCode::StoreUnavailable, e.to_string()).retry_after(1))
}

/// [`standbys_confirmed`] for the shared state as written now (flags,
/// tokens): the generation is read after the write returned.
pub async fn shared_confirmed(app: &AppState) -> Result<(), HttpError> {
    let Some(cluster) = &app.cluster else {
        return Ok(());
    };
    let gen = cluster.store.shared_gen().await?;
    standbys_confirmed(app, Covers::Shared(gen)).await
}
