//! An answer, written as hyper writes it.

use axum::http::{header, Response};
use bytes::Bytes;
use std::io::Write;
use std::time::SystemTime;

/// Appends `resp` as HTTP/1.1 to `out`, as hyper writes it.
pub fn encode(resp: &Response<Bytes>, out: &mut Vec<u8>) {
    let status = resp.status();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in resp.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !resp.headers().contains_key(header::CONTENT_LENGTH) {
        let _ = write!(out, "content-length: {}\r\n", resp.body().len());
    }
    out.extend_from_slice(b"date: ");
    date(|d| out.extend_from_slice(d));
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(resp.body());
}

/// The `date` header's value, rendered once a second per thread.
fn date<R>(f: impl FnOnce(&[u8]) -> R) -> R {
    use std::cell::RefCell;
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs {
            *d = (secs, httpdate::fmt_http_date(now));
        }
        f(d.1.as_bytes())
    })
}

/// Whether an answer closes its connection.
pub fn closes(resp: &Response<Bytes>) -> bool {
    resp.headers()
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"close"))
}
