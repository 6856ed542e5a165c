//! Tokens with roles, and who may call what (CONTRACT.md, Authentication).
//!
//! Invariants:
//! - A token is 256 random bits, shown once; the store keeps only its
//!   SHA-256 (in the store, so every instance over one PostgreSQL shares
//!   them). Checking a token compares digests in constant time.
//! - With no token created, the server serves loopback clients only
//!   (protected mode) and refuses to start on another address; tokens
//!   may be created from loopback without one until an admin token exists
//!   (the first token may have any role, and an admin can still follow).
//! - The probes never need a token.

use parking_lot::RwLock;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use tidemark_api::auth::{AccessRole, TokenCreated, TokenInfo};
use tidemark_store::{Store, StoreError};

/// Why a token asked for without one was refused: an admin token was
/// created while the request was sent.
pub const ADMIN_EXISTS: &str = "an admin token was created while this request was being sent, so tokens are now created with an admin token only; nothing was done: send it again with one";

/// Restores carry this note (and `SUBSCRIBERS`) over from the live store
/// (`tidemark_backup::access_forward`).
const NOTE: &str = "tokens";

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct TokenRecord {
    name: String,
    role: AccessRole,
    sha256: String,
    created_at: String,
    /// `sha256` decoded, compared on every request.
    #[serde(skip)]
    raw: [u8; 32],
}

impl TokenRecord {
    /// Decodes `sha256` into `raw`; a malformed digest matches no token.
    fn decoded(mut self) -> Self {
        let bytes = self.sha256.as_bytes();
        let ok = bytes.len() == 64
            && bytes.chunks(2).enumerate().all(|(i, pair)| {
                let v = std::str::from_utf8(pair)
                    .ok()
                    .and_then(|p| u8::from_str_radix(p, 16).ok());
                if let Some(v) = v {
                    self.raw[i] = v;
                }
                v.is_some()
            });
        if !ok {
            // No SHA-256 output is known to be this; the all-ones digest
            // stands for "matches nothing" in practice.
            self.raw = [0xff; 32];
        }
        self
    }
}

/// Why a token could not be created.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// A token with this name exists; revoke it first.
    #[error("a token named '{0}' exists already; revoke it first ('tidemark token revoke {0}') or pick another name")]
    Exists(String),
    /// The name is not usable.
    #[error("a token name is 1 to 64 letters, digits, '-', '_' or '.', beginning with a letter or digit ('loopback' stands for protected mode's callers)")]
    BadName,
    /// An admin token exists by now: tokens are made with one.
    #[error("{ADMIN_EXISTS}")]
    AdminExists,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a token was not revoked.
#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    /// No token has this name.
    #[error("no token named '{0}'; 'tidemark token list' shows them")]
    Unknown(String),
    /// It is the last admin token and other tokens remain: without it
    /// only a program on the server's host could manage tokens, by making
    /// one (an admin too) without any.
    #[error("token '{0}' is the last admin token, and other tokens remain: without it no token could manage tokens (only programs on the server's host could, making one without a token); create another admin token first ('tidemark token create --role admin --name NAME'), or revoke the other tokens first")]
    LastAdmin(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a subscriber name was not bound to a token.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum BindError {
    /// Another token bound it first.
    #[error("it belongs to token '{0}'")]
    Taken(String),
    /// The token holds this many names already.
    #[error("the token holds {0} subscriber names already")]
    TooMany(usize),
}

/// The tokens of one server, kept in the store and mirrored in memory.
pub struct Auth {
    store: Arc<dyn Store>,
    tokens: RwLock<Vec<TokenRecord>>,
    /// Watch subscriber name to the token that first used it.
    subscribers: RwLock<std::collections::BTreeMap<String, String>>,
    write: tokio::sync::Mutex<()>,
    /// Subscriber names one token may bind: every name costs memory here
    /// (its interest) and a rewrite of the stored bindings.
    max_per_token: usize,
    /// Bumped whenever the tokens change: open streams check that their
    /// caller is still one ([`Auth::still_valid`]).
    generation: tokio::sync::watch::Sender<u64>,
    /// When the last re-read for an unknown token started
    /// ([`Auth::reload_for_unknown`]); held while one runs.
    reread_at: tokio::sync::Mutex<Option<tokio::time::Instant>>,
}

/// The least time between the starts of two re-reads for unknown tokens.
const REREAD_GAP: std::time::Duration = std::time::Duration::from_millis(100);

const SUBSCRIBERS: &str = "subscribers";

/// The caller in protected mode (no token yet): a client on loopback.
pub const LOOPBACK: &str = "loopback";

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Equal in time independent of where the inputs differ.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Auth {
    pub async fn load(store: Arc<dyn Store>, max_per_token: usize) -> Result<Self, StoreError> {
        let tokens: Vec<TokenRecord> = match store.note(NOTE).await? {
            Some(text) => serde_json::from_str(&text).map_err(|e| {
                StoreError::Format(format!(
                    "the stored tokens are unreadable ({e}); restore them from a backup"
                ))
            })?,
            None => Vec::new(),
        };
        let tokens = tokens.into_iter().map(TokenRecord::decoded).collect();
        let subscribers = match store.note(SUBSCRIBERS).await? {
            Some(text) => serde_json::from_str(&text).unwrap_or_default(),
            None => Default::default(),
        };
        Ok(Auth {
            store,
            tokens: RwLock::new(tokens),
            subscribers: RwLock::new(subscribers),
            write: tokio::sync::Mutex::new(()),
            max_per_token: max_per_token.max(1),
            generation: tokio::sync::watch::Sender::new(0),
            reread_at: tokio::sync::Mutex::new(None),
        })
    }

    /// Waits for a re-read of the tokens that started after this call, for
    /// a token this instance does not know: over a shared PostgreSQL
    /// another instance may have just created it (a standby follows the
    /// tokens only every half second). One re-read runs at a time, and
    /// they start at least [`REREAD_GAP`] apart, so a stream of bad tokens
    /// costs the store at most ten reads a second; callers that arrive
    /// meanwhile share the next one. Whether the tokens were re-read.
    pub async fn reload_for_unknown(&self) -> bool {
        let asked = tokio::time::Instant::now();
        let mut last = self.reread_at.lock().await;
        if last.is_some_and(|t| t >= asked) {
            return true; // one that started after we asked has run
        }
        if let Some(t) = *last {
            tokio::time::sleep_until(t + REREAD_GAP).await;
        }
        *last = Some(tokio::time::Instant::now());
        match self.reload().await {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(error = %e, "could not re-read the tokens");
                false
            }
        }
    }

    /// Changes whenever the tokens do (created, revoked, reloaded).
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    fn changed(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// Whether `caller` (a token's name, or `loopback` in protected mode)
    /// may still call: its token was not revoked, or no token was created
    /// since. An open stream ends when this turns false.
    pub fn still_valid(&self, caller: &str) -> bool {
        let tokens = self.tokens.read();
        if tokens.is_empty() {
            return caller == LOOPBACK;
        }
        tokens.iter().any(|t| t.name == caller)
    }

    /// Returns once `caller` may call no longer ([`Auth::still_valid`]),
    /// or the tokens are gone (shutdown): an open stream ends then.
    /// `changes` is the stream's own [`Auth::changes`].
    pub async fn until_revoked(
        &self,
        changes: &mut tokio::sync::watch::Receiver<u64>,
        caller: &str,
    ) {
        while changes.changed().await.is_ok() {
            if !self.still_valid(caller) {
                return;
            }
        }
    }

    /// Whether subscriber `name` is bound to a token other than the one
    /// named `caller` (none is, with no token at all).
    pub fn held_by_another(&self, name: &str, caller: &str) -> bool {
        self.subscribers
            .read()
            .get(name)
            .is_some_and(|owner| owner != caller)
    }

    /// Whether subscriber `name` is bound to the token presented as `token`
    /// (a read registers interest under a name only for its owner).
    pub fn bound_to(&self, name: &str, token: &str) -> bool {
        let subscribers = self.subscribers.read();
        let Some(owner) = subscribers.get(name) else {
            return false;
        };
        self.find(token, |t| t.name == *owner).unwrap_or(false)
    }

    /// Re-reads the tokens and subscriber bindings another instance may
    /// have changed (a standby follows the primary's). Read under the
    /// writer lock: a create, revoke or binding of this instance between
    /// the read and the swap would be undone by it (a revoked token back).
    pub async fn reload(&self) -> Result<(), StoreError> {
        let _w = self.write.lock().await;
        let fresh = Auth::load(self.store.clone(), self.max_per_token).await?;
        let tokens = fresh.tokens.into_inner();
        let same = {
            let now = self.tokens.read();
            now.len() == tokens.len() && now.iter().zip(&tokens).all(|(a, b)| a.raw == b.raw)
        };
        *self.tokens.write() = tokens;
        *self.subscribers.write() = fresh.subscribers.into_inner();
        if !same {
            self.changed();
        }
        Ok(())
    }

    /// Binds watch subscriber `name` to the token named `token` on first
    /// use; refuses it to any other token afterwards, so nobody can take
    /// over another service server's stream (and the replay of what it
    /// holds), and refuses a token more than `max_per_token` names.
    pub async fn bind_subscriber(&self, name: &str, token: &str) -> Result<(), BindError> {
        let owned = |map: &std::collections::BTreeMap<String, String>| {
            map.get(name).map(|owner| {
                if owner == token {
                    Ok(())
                } else {
                    Err(BindError::Taken(owner.clone()))
                }
            })
        };
        if let Some(r) = owned(&self.subscribers.read()) {
            return r;
        }
        let _w = self.write.lock().await;
        let mut map = self.subscribers.read().clone();
        if let Some(r) = owned(&map) {
            return r;
        }
        if map.values().filter(|owner| *owner == token).count() >= self.max_per_token {
            return Err(BindError::TooMany(self.max_per_token));
        }
        map.insert(name.to_owned(), token.to_owned());
        match serde_json::to_string(&map) {
            Ok(text) => {
                if let Err(e) = self.store.set_note(SUBSCRIBERS, Some(text)).await {
                    tracing::warn!(error = %e, "could not store a subscriber binding; it holds until restart");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not store a subscriber binding; it holds until restart")
            }
        }
        *self.subscribers.write() = map;
        Ok(())
    }

    /// Whether any token exists (if not: protected mode).
    pub fn any(&self) -> bool {
        !self.tokens.read().is_empty()
    }

    /// Whether an admin token exists (if not: tokens are made from
    /// loopback without one).
    pub fn any_admin(&self) -> bool {
        self.tokens
            .read()
            .iter()
            .any(|t| t.role == AccessRole::Admin)
    }

    /// The name and role of `token`, if it is one of ours.
    pub fn check(&self, token: &str) -> Option<(String, AccessRole)> {
        self.find(token, |t| (t.name.clone(), t.role))
    }

    /// The role of `token`, if it is one of ours (no allocation: the hot
    /// read path asks this).
    pub fn role_of(&self, token: &str) -> Option<AccessRole> {
        self.find(token, |t| t.role)
    }

    fn find<T>(&self, token: &str, what: impl Fn(&TokenRecord) -> T) -> Option<T> {
        let d = digest(token);
        let mut found = None;
        // Every record is compared, so the time says nothing of which matched.
        for t in self.tokens.read().iter() {
            if ct_eq(&t.raw, &d) {
                found = Some(what(t));
            }
        }
        found
    }

    pub fn list(&self) -> Vec<TokenInfo> {
        self.tokens
            .read()
            .iter()
            .map(|t| TokenInfo {
                name: t.name.clone(),
                role: t.role,
                created_at: t.created_at.clone(),
            })
            .collect()
    }

    async fn save(&self, tokens: &[TokenRecord]) -> Result<(), StoreError> {
        self.store
            .set_note(NOTE, Some(serde_json::to_string(tokens)?))
            .await
    }

    /// Creates a token; its secret is returned this once.
    pub async fn create(&self, name: &str, role: AccessRole) -> Result<TokenCreated, TokenError> {
        self.create_checked(name, role, false).await
    }

    /// A token asked for without one by a loopback caller, before any
    /// admin token exists (the first token, of any role, or one after a
    /// first that was not an admin): refused if an admin token exists by
    /// now (created while this request was sent), under the same lock as
    /// the write, so two at once cannot both make one.
    pub async fn create_bootstrap(
        &self,
        name: &str,
        role: AccessRole,
    ) -> Result<TokenCreated, TokenError> {
        self.create_checked(name, role, true).await
    }

    async fn create_checked(
        &self,
        name: &str,
        role: AccessRole,
        bootstrap: bool,
    ) -> Result<TokenCreated, TokenError> {
        // A name is a path segment of `DELETE /v1/tokens/NAME`: "." or ".."
        // would be normalised away, so a name begins with a letter or digit.
        let ok = name.len() <= 64
            && name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !name.eq_ignore_ascii_case(LOOPBACK);
        if !ok {
            return Err(TokenError::BadName);
        }
        let _w = self.write.lock().await;
        let mut tokens = self.tokens.read().clone();
        if bootstrap && tokens.iter().any(|t| t.role == AccessRole::Admin) {
            return Err(TokenError::AdminExists);
        }
        if tokens.iter().any(|t| t.name == name) {
            return Err(TokenError::Exists(name.to_owned()));
        }
        let secret: [u8; 32] = rand::random();
        let token = format!("tm_{}", hex(&secret));
        tokens.push(
            TokenRecord {
                name: name.to_owned(),
                role,
                sha256: hex(&digest(&token)),
                created_at: chrono::Utc::now().to_rfc3339(),
                raw: [0; 32],
            }
            .decoded(),
        );
        self.save(&tokens).await?;
        *self.tokens.write() = tokens;
        self.changed();
        Ok(TokenCreated {
            name: name.to_owned(),
            role,
            token,
        })
    }

    /// Revokes a token; false if there was none by that name.
    pub async fn revoke(&self, name: &str) -> Result<(), RevokeError> {
        let _w = self.write.lock().await;
        let mut tokens = self.tokens.read().clone();
        let admin = |t: &TokenRecord| t.role == AccessRole::Admin;
        let Some(gone) = tokens.iter().find(|t| t.name == name) else {
            return Err(RevokeError::Unknown(name.to_owned()));
        };
        let was_admin = admin(gone);
        tokens.retain(|t| t.name != name);
        if was_admin && !tokens.is_empty() && !tokens.iter().any(admin) {
            return Err(RevokeError::LastAdmin(name.to_owned()));
        }
        self.save(&tokens).await?;
        *self.tokens.write() = tokens;
        self.changed();
        // Its subscriber names go with it: a name claimed by a token that
        // should not have had it is freed by revoking that token.
        let mut map = self.subscribers.read().clone();
        let bound = map.len();
        map.retain(|_, owner| owner != name);
        if map.len() != bound {
            self.store
                .set_note(
                    SUBSCRIBERS,
                    Some(serde_json::to_string(&map).map_err(StoreError::from)?),
                )
                .await?;
            *self.subscribers.write() = map;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tokens_are_stored_hashed_and_checked_by_role() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(tidemark_store::SqliteStore::open(dir.path(), "test").unwrap());
        let auth = Auth::load(store.clone(), 16).await.unwrap();
        assert!(!auth.any());
        let t = auth.create("ops-1", AccessRole::Ops).await.unwrap();
        assert!(t.token.starts_with("tm_") && t.token.len() == 3 + 64);
        assert!(matches!(
            auth.create("ops-1", AccessRole::Admin).await,
            Err(TokenError::Exists(_))
        ));
        for bad in ["bad name", ".", "..", "-x", "loopback", ""] {
            assert!(
                matches!(
                    auth.create(bad, AccessRole::Admin).await,
                    Err(TokenError::BadName)
                ),
                "{bad:?}"
            );
        }
        assert_eq!(
            auth.check(&t.token),
            Some(("ops-1".into(), AccessRole::Ops))
        );
        assert_eq!(auth.check("tm_wrong"), None);
        let stored = store.note(NOTE).await.unwrap().unwrap();
        assert!(!stored.contains(&t.token), "only the digest is stored");
        // Another instance over the same store sees it.
        let again = Auth::load(store, 16).await.unwrap();
        assert!(again.check(&t.token).is_some());
        again.revoke("ops-1").await.unwrap();
        assert!(matches!(
            again.revoke("ops-1").await,
            Err(RevokeError::Unknown(_))
        ));
        assert!(again.check(&t.token).is_none());
    }

    /// A token another instance created a moment ago is learned before it
    /// is refused, however soon after the last re-read it comes (the
    /// second was refused without a re-read before, inside 100 ms).
    #[tokio::test]
    async fn an_unknown_token_waits_for_a_fresh_read_of_the_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(tidemark_store::SqliteStore::open(dir.path(), "test").unwrap());
        let here = Auth::load(store.clone(), 16).await.unwrap();
        let there = Auth::load(store, 16).await.unwrap();
        for name in ["first", "second"] {
            let t = there.create(name, AccessRole::Reader).await.unwrap();
            assert!(here.check(&t.token).is_none(), "not followed yet");
            assert!(here.reload_for_unknown().await);
            assert!(here.check(&t.token).is_some(), "{name}");
        }
    }

    /// The last admin token goes only with the other tokens: revoked
    /// first, nobody could manage tokens again (found by an outside audit).
    #[tokio::test]
    async fn the_last_admin_token_is_revoked_only_after_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(tidemark_store::SqliteStore::open(dir.path(), "test").unwrap());
        let auth = Auth::load(store, 16).await.unwrap();
        auth.create("root", AccessRole::Admin).await.unwrap();
        auth.create("ops-1", AccessRole::Ops).await.unwrap();
        assert!(matches!(
            auth.revoke("root").await,
            Err(RevokeError::LastAdmin(_))
        ));
        assert!(auth.list().iter().any(|t| t.name == "root"), "kept");
        // With a second admin, or once it is the only token, it may go.
        auth.create("root-2", AccessRole::Admin).await.unwrap();
        auth.revoke("root").await.unwrap();
        auth.revoke("ops-1").await.unwrap();
        auth.revoke("root-2").await.unwrap();
        assert!(!auth.any(), "back to protected mode");
    }

    #[tokio::test]
    async fn revoking_a_token_frees_the_subscriber_names_it_claimed() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(tidemark_store::SqliteStore::open(dir.path(), "test").unwrap());
        let auth = Auth::load(store.clone(), 16).await.unwrap();
        auth.create("squatter", AccessRole::Reader).await.unwrap();
        auth.create("svc-2", AccessRole::Reader).await.unwrap();
        auth.bind_subscriber("svc-2", "squatter").await.unwrap();
        auth.bind_subscriber("other", "svc-2").await.unwrap();
        assert_eq!(
            auth.bind_subscriber("svc-2", "svc-2").await,
            Err(BindError::Taken("squatter".into()))
        );
        // A refusal of svc-2's token leaves the squatter's name alone.
        assert!(auth.held_by_another("svc-2", "svc-2"));
        assert!(!auth.held_by_another("svc-2", "squatter"));
        assert!(!auth.held_by_another("unbound", "svc-2"));
        auth.revoke("squatter").await.unwrap();
        assert_eq!(auth.bind_subscriber("svc-2", "svc-2").await, Ok(()));
        // Stored: another instance over the same store sees the same.
        let again = Auth::load(store, 16).await.unwrap();
        assert_eq!(again.bind_subscriber("svc-2", "svc-2").await, Ok(()));
        assert_eq!(
            again.bind_subscriber("other", "x").await,
            Err(BindError::Taken("svc-2".into())),
            "other tokens' names stay bound"
        );
    }

    #[tokio::test]
    async fn a_token_binds_a_limited_number_of_subscriber_names() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(tidemark_store::SqliteStore::open(dir.path(), "test").unwrap());
        let auth = Auth::load(store.clone(), 2).await.unwrap();
        auth.create("svc", AccessRole::Reader).await.unwrap();
        auth.bind_subscriber("a", "svc").await.unwrap();
        auth.bind_subscriber("b", "svc").await.unwrap();
        assert_eq!(
            auth.bind_subscriber("a", "svc").await,
            Ok(()),
            "its own again"
        );
        assert_eq!(
            auth.bind_subscriber("c", "svc").await,
            Err(BindError::TooMany(2))
        );
        assert_eq!(
            auth.bind_subscriber("c", "other").await,
            Ok(()),
            "per token"
        );
        let again = Auth::load(store, 2).await.unwrap();
        assert_eq!(
            again.bind_subscriber("c", "svc").await,
            Err(BindError::Taken("other".into()))
        );
    }

    #[tokio::test]
    async fn streams_learn_when_their_caller_is_no_longer_valid() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(tidemark_store::SqliteStore::open(dir.path(), "test").unwrap());
        let auth = Auth::load(store.clone(), 16).await.unwrap();
        let mut changes = auth.changes();
        assert!(auth.still_valid(LOOPBACK) && !auth.still_valid("svc"));
        let t = auth.create("svc", AccessRole::Reader).await.unwrap();
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        assert!(!auth.still_valid(LOOPBACK), "protected mode ended");
        assert!(auth.still_valid("svc"));
        auth.bind_subscriber("svc-1", "svc").await.unwrap();
        assert!(auth.bound_to("svc-1", &t.token));
        assert!(!auth.bound_to("svc-2", &t.token) && !auth.bound_to("svc-1", "tm_x"));
        // Revoked on another instance: its reload tells the streams here.
        let other = Auth::load(store, 16).await.unwrap();
        other.revoke("svc").await.unwrap();
        auth.reload().await.unwrap();
        assert!(changes.has_changed().unwrap());
        assert!(!auth.still_valid("svc"));
    }
}
