//! Asking the other live instances of a cluster on a caller's behalf: a
//! service server's quiesce notice by name goes to whichever instance its
//! watch stream is open on (S8).
//!
//! Invariants: a request asked on is marked `tidemark-forwarded`
//! ([`super::forward::FORWARDED`]), and one so marked is never asked on
//! again, so no request goes round; it carries the caller's own token, so
//! each instance checks the caller's role itself; the members are read
//! from PostgreSQL when asked (one that just joined is in the heartbeat's
//! list only a tick later).

use super::forward::FORWARDED;
use super::Cluster;
use axum::http::{header, HeaderMap, Method};
use bytes::Bytes;
use std::time::Duration;

/// How long one instance is given to answer.
const EACH: Duration = Duration::from_secs(5);

/// What one instance said.
#[derive(Debug)]
pub enum Answer {
    Gave(u16, serde_json::Value),
    /// No answer (down, hung, not HTTP): what went wrong.
    Unreached(String),
}

/// The instances in `answers` that could not be asked, each with why.
pub fn unreached(answers: &[(String, Answer)]) -> Vec<String> {
    answers
        .iter()
        .filter_map(|(url, a)| match a {
            Answer::Unreached(why) => Some(format!("{url} ({why})")),
            Answer::Gave(..) => None,
        })
        .collect()
}

/// Whether this request was asked on by another instance.
pub fn forwarded(headers: &HeaderMap) -> bool {
    headers.contains_key(FORWARDED)
}

/// Sends `method path` with `body` to each other live instance in turn, as
/// forwarded and with the caller's `Authorization` and `Content-Type`;
/// stops after an answer `stop` accepts. Each instance's URL and answer.
pub async fn others(
    cluster: &Cluster,
    method: Method,
    path: &str,
    headers: &HeaderMap,
    body: Bytes,
    mut stop: impl FnMut(u16, &serde_json::Value) -> bool,
) -> Vec<(String, Answer)> {
    let live = super::lease::live_within_ms(cluster);
    let members = match cluster.store.members(live).await {
        Ok(all) => all
            .into_iter()
            .filter(|m| m.heartbeat_age_ms <= live as i64)
            .collect(),
        Err(_) => cluster.members.read().clone(),
    };
    let mut out = Vec::new();
    for url in members
        .into_iter()
        .map(|m| m.url)
        .filter(|u| *u != cluster.url)
    {
        let mut req = cluster
            .http
            .request(
                method.clone(),
                format!("{}{path}", url.trim_end_matches('/')),
            )
            .header(FORWARDED, "1")
            .timeout(EACH)
            .body(body.clone());
        for name in [header::AUTHORIZATION, header::CONTENT_TYPE] {
            if let Some(v) = headers.get(&name) {
                req = req.header(name, v.clone());
            }
        }
        let answer = match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                match resp.json().await {
                    Ok(v) => Answer::Gave(status, v),
                    Err(e) => Answer::Unreached(format!("{status}, {e}")),
                }
            }
            Err(e) => Answer::Unreached(e.to_string()),
        };
        let done = matches!(&answer, Answer::Gave(s, v) if stop(*s, v));
        if let Answer::Unreached(why) = &answer {
            tracing::warn!(%url, %why, "could not ask another instance on a caller's behalf");
        }
        out.push((url, answer));
        if done {
            break;
        }
    }
    out
}
