//! Who is "on this host": the loopback trust both servers give programs
//! on their own host (a DB server in protected mode, a service server's
//! quiesce notice), and the marks of a browser page of another site that
//! withhold it.

use axum::http::{header, HeaderMap, Uri};
use std::net::SocketAddr;

/// Whether protected mode trusts this caller: a program on this host
/// (loopback), not a browser page of another site ([`foreign_browser`]).
/// Every path that trusts loopback goes by this (the guard, the hot
/// route's record reads, `whoami`), so none can skip a check.
pub fn trusted_local(peer: SocketAddr, uri: &Uri, h: &HeaderMap) -> bool {
    peer.ip().to_canonical().is_loopback() && untrusted_local(uri, h).is_none()
}

/// Why a loopback request in protected mode is not trusted: it names
/// another host (an absolute-form target names it instead of `Host`), or
/// it comes from a page of another site ([`foreign_browser`]).
pub fn untrusted_local(uri: &Uri, h: &HeaderMap) -> Option<String> {
    uri.authority()
        .filter(|a| !loopback_host(a.as_str()))
        .map(|a| {
            format!(
                "a request for {:?}, which is not a loopback name",
                a.as_str()
            )
        })
        .or_else(|| foreign_browser(h))
}

/// Why a loopback request in protected mode is not trusted: a page of
/// another site, in a browser on this host, reaching the server (a
/// cross-site request, or DNS rebinding: another name pointed at this
/// host). Loopback trust is for the programs on the host, which reach it
/// under a loopback name (`localhost`, `127.0.0.1`, `[::1]`, or no `Host`
/// at all). A page reached by DNS rebinding names its own site in `Host`
/// and, for a plain-http same-origin `GET`, sends no other mark (no
/// `Origin`, no `Sec-Fetch-*`), so any other `Host` is refused; a browser
/// page under a loopback name is refused when its marks say it is another
/// site's. `None`: trusted.
pub fn foreign_browser(h: &HeaderMap) -> Option<String> {
    if crate::named_twice(h, header::HOST) {
        // Which one a proxy or this server would go by is anyone's guess
        // (RFC 9112 makes it a 400).
        return Some("a request with more than one Host header".into());
    }
    if crate::named_twice(h, header::ORIGIN) {
        // Only one is looked at below; a browser sends one.
        return Some("a request with more than one Origin header".into());
    }
    let host = h.get(header::HOST).map(|v| v.to_str().unwrap_or(""));
    if let Some(host) = host.filter(|host| !loopback_host(host)) {
        return Some(format!(
            "a request under the name {host:?}, which is not a loopback name (a web page reached by DNS rebinding looks like this)"
        ));
    }
    const SEC_FETCH_SITE: axum::http::HeaderName =
        axum::http::HeaderName::from_static("sec-fetch-site");
    if let Some(site) = h.get(&SEC_FETCH_SITE) {
        if matches!(site.as_bytes(), b"cross-site" | b"same-site") {
            return Some("a request a browser made for a page of another site".into());
        }
    }
    if let Some(origin) = h.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("null");
        let authority = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        if authority.is_none() || authority != host {
            return Some(format!("a request a browser made for a page of {origin:?}"));
        }
    }
    None
}

/// Whether `host` (a `Host` header: name or address, with or without a
/// port) names this host's loopback interface.
pub fn loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        // `[addr]` or `[addr]:port`, nothing else after the bracket.
        Some(rest) => match rest.split_once(']') {
            Some((addr, "")) => addr,
            Some((addr, port))
                if port
                    .strip_prefix(':')
                    .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit())) =>
            {
                addr
            }
            _ => return false,
        },
        None => host.rsplit_once(':').map_or(host, |(n, _)| n),
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    name.eq_ignore_ascii_case("localhost")
        || name
            .get(name.len().saturating_sub(10)..)
            .is_some_and(|end| end.eq_ignore_ascii_case(".localhost"))
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
