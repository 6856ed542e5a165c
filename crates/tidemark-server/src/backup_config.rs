//! What a backup carries of a DB server's configuration (B1): the
//! effective settings and the `--config` file it started with, secrets
//! redacted. Online backups fetch it (`GET /v1/backup/config`); offline and
//! safety backups, made by the program itself, build it here too.

use crate::config::ServerConfig;

/// `{"effective": {…}, "file": {"path", "content"} | null}`.
pub async fn for_backup(config: &ServerConfig) -> std::io::Result<serde_json::Value> {
    let mut effective = serde_json::to_value(config).unwrap_or_default();
    if let Some(url) = effective.get_mut("database_url") {
        if !url.is_null() {
            *url = "***".into();
        }
    }
    let file = match &config.config_file {
        Some(path) => {
            let content = tokio::fs::read_to_string(path).await.map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "cannot read the server's config file {}: {e}",
                        path.display()
                    ),
                )
            })?;
            let content = redact_tokens(&redact_keyword_passwords(&redact_url_passwords(&content)));
            serde_json::json!({"path": path.display().to_string(), "content": content})
        }
        None => serde_json::Value::Null,
    };
    Ok(serde_json::json!({"effective": effective, "file": file}))
}

/// `text` with the password of every URL in it (`scheme://user:PASSWORD@`)
/// replaced by `***`: the config file goes into online backups, and an admin
/// token must not hand out the database's own password.
fn redact_url_passwords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        // The authority ends at a path, a quote or whitespace.
        let end = tail
            .find(|c: char| c == '/' || c == '"' || c == '\'' || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(userinfo_end) => {
                let userinfo = &authority[..userinfo_end];
                match userinfo.find(':') {
                    Some(colon) => {
                        out.push_str(&userinfo[..colon]);
                        out.push_str(":***");
                    }
                    None => out.push_str(userinfo),
                }
                out.push_str(&authority[userinfo_end..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// `text` with every `password=VALUE` (a libpq keyword connection string,
/// `host=db password=secret`, or a URL's `?password=`) replaced by
/// `password=***`; the value ends at whitespace, a quote or `&`.
fn redact_keyword_passwords(text: &str) -> String {
    const KEY: &str = "password=";
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    while let Some(found) = lower[at..].find(KEY) {
        let value = at + found + KEY.len();
        out.push_str(&text[at..value]);
        let end = text[value..]
            .find(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == '&')
            .map_or(text.len(), |e| value + e);
        if end > value {
            out.push_str("***");
        }
        at = end;
    }
    out.push_str(&text[at..]);
    out
}

/// `text` with every Tidemark token (`tm_` and 64 hex digits, wherever it
/// stands: `[client] token = …`, a comment, glued to a word) replaced by
/// `tm_***`. A token
/// is a stronger secret than the database password, and backups are often
/// kept with wider access than the live host; a restored config names the
/// token to set again instead.
fn redact_tokens(text: &str) -> String {
    const PREFIX: &str = "tm_";
    const DIGITS: usize = 64;
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(PREFIX) {
        let after = &rest[at + PREFIX.len()..];
        let digits = after.bytes().take_while(u8::is_ascii_hexdigit).count();
        // Whatever comes before it: a secret missed costs more than a
        // look-alike hidden.
        out.push_str(&rest[..at + PREFIX.len()]);
        if digits >= DIGITS {
            out.push_str("***");
            rest = &after[digits..];
        } else {
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_are_redacted_wherever_they_stand() {
        let token = format!("tm_{}", "ab12".repeat(16));
        let text = format!(
            "[client]\ntoken = \"{token}\"\n# was {token}\nname = \"tm_table\"\nx{token}\n{token}a\n"
        );
        assert_eq!(
            super::redact_tokens(&text),
            "[client]\ntoken = \"tm_***\"\n# was tm_***\nname = \"tm_table\"\nxtm_***\ntm_***\n"
        );
    }

    #[test]
    fn keyword_passwords_are_redacted_too() {
        let text = "database_url = \"host=db user=tm password=s3cret dbname=tm\"\nurl = \"postgres://db/tm?user=tm&Password=x&sslmode=require\"\nempty = 'password='\n";
        assert_eq!(
            super::redact_keyword_passwords(text),
            "database_url = \"host=db user=tm password=*** dbname=tm\"\nurl = \"postgres://db/tm?user=tm&Password=***&sslmode=require\"\nempty = 'password='\n"
        );
    }

    #[test]
    fn url_passwords_are_redacted_and_nothing_else_changes() {
        let text = "listen = \"127.0.0.1:7070\"\ndatabase_url = \"postgres://tm:s3cr:et@db.example:5432/tm?sslmode=require\"\n# postgresql://ops@host/db has no password\nother = 'http://a:b@c/d' x://@y\n";
        assert_eq!(
            super::redact_url_passwords(text),
            "listen = \"127.0.0.1:7070\"\ndatabase_url = \"postgres://tm:***@db.example:5432/tm?sslmode=require\"\n# postgresql://ops@host/db has no password\nother = 'http://a:***@c/d' x://@y\n"
        );
        let plain = "[server]\nlisten = \"0.0.0.0:7070\"\n";
        assert_eq!(super::redact_url_passwords(plain), plain);
    }
}
