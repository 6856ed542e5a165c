//! A request head, as the fast path reads it: whole, a `GET` over HTTP/1.1
//! with no body, or hyper's.

use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};
use tidemark_api::ErrorCode;

/// Headers a head taken here may have.
const MAX_HEADERS: usize = 32;
/// Headers any request may have (hyper's own limit).
pub const MOST_HEADERS: usize = 100;

/// What one parsed head is (on the stack for one request: boxing the head
/// would cost an allocation each).
#[allow(clippy::large_enum_variant)]
pub enum Head {
    /// Not whole yet.
    Partial,
    /// A head this path may answer, and its length in bytes.
    Plain(Parts, usize),
    /// Anything else: hyper's.
    Hyper,
    /// Not a request hyper would take either: a malformed head, a path
    /// that is no URI, too many headers. Hyper answers those with an empty
    /// body; here they get the JSON error (CONTRACT.md: every error has
    /// one), with this code and reason.
    Bad(ErrorCode, String),
}

/// Parses the head at the start of `buf`.
pub fn parse(buf: &[u8]) -> Head {
    if buf.is_empty() {
        return Head::Partial;
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Head::Partial,
        // Hyper takes more headers than this path, up to its own limit.
        Err(httparse::Error::TooManyHeaders) => return too_many_headers(buf),
        Err(e) => {
            return Head::Bad(
                ErrorCode::BadRequest,
                format!("a malformed request head: {e}"),
            )
        }
    };
    if let Some(why) = bad_framing(req.headers, req.version == Some(1)) {
        return Head::Bad(ErrorCode::BadRequest, why);
    }
    if req.method != Some("GET") || req.version != Some(1) {
        return Head::Hyper;
    }
    let Some(path) = req.path.filter(|p| p.starts_with('/')) else {
        return Head::Hyper;
    };
    let Ok(uri) = Uri::try_from(path) else {
        return Head::Bad(
            ErrorCode::BadRequest,
            "a request path that is not a valid URI (percent-encode bytes outside ASCII)".into(),
        );
    };
    let mut map = HeaderMap::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            return Head::Hyper;
        };
        // A body, a protocol switch, or connection management: hyper's.
        if name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || name == header::EXPECT
            || name == header::UPGRADE
            || name == header::CONNECTION
        {
            return Head::Hyper;
        }
        map.append(name, value);
    }
    // No `ConnectInfo` extension: the hot route is given the peer itself.
    let mut request = Request::new(());
    *request.method_mut() = Method::GET;
    *request.uri_mut() = uri;
    *request.headers_mut() = map;
    Head::Plain(request.into_parts().0, len)
}

/// Why a head's body framing is one hyper 1.x refuses (with an empty
/// body), if it is, by hyper's own rules for a request (`proto/h1/role.rs`):
/// a `Content-Length` before any `Transfer-Encoding` must be digits only,
/// the whole value, and equal to any other (one after it is ignored); a
/// `Transfer-Encoding` needs HTTP/1.1, and the last one's last comma piece
/// must be `chunked` (RFC 9112, 6.3: else the length cannot be known).
/// `None`: hyper's to frame.
fn bad_framing(headers: &[httparse::Header<'_>], http11: bool) -> Option<String> {
    let mut length: Option<u64> = None;
    let mut chunked: Option<bool> = None;
    let mut last_coding = String::new();
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if !http11 {
                return Some(
                    "a Transfer-Encoding in an HTTP/1.0 request, which cannot have one; send HTTP/1.1, or the body with a Content-Length".into(),
                );
            }
            let text = String::from_utf8_lossy(h.value);
            let last = text.rsplit(',').next().unwrap_or("").trim();
            chunked = Some(last.eq_ignore_ascii_case("chunked"));
            last_coding = last.to_owned();
        } else if h.name.eq_ignore_ascii_case("content-length") && chunked.is_none() {
            let digits = !h.value.is_empty() && h.value.iter().all(u8::is_ascii_digit);
            let n = digits
                .then(|| std::str::from_utf8(h.value).ok()?.parse::<u64>().ok())
                .flatten();
            match (n, length) {
                (None, _) => {
                    return Some(format!(
                        "a Content-Length of {:?}, which is not a byte count (digits only, one value); send one Content-Length with the body's size",
                        String::from_utf8_lossy(h.value)
                    ))
                }
                (Some(n), Some(l)) if n != l => {
                    return Some(
                        "two Content-Length values that differ; send one Content-Length with the body's size".into(),
                    )
                }
                (Some(n), _) => length = Some(n),
            }
        }
    }
    match chunked {
        Some(false) => Some(format!(
            "a Transfer-Encoding ending in {last_coding:?}, not chunked, so the body's length cannot be known; send the body chunked, or with a Content-Length"
        )),
        _ => None,
    }
}

/// A head with more headers than this path takes: hyper's, unless it has
/// more than hyper takes either.
fn too_many_headers(buf: &[u8]) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MOST_HEADERS];
    match httparse::Request::new(&mut headers).parse(buf) {
        Err(httparse::Error::TooManyHeaders) => Head::Bad(
            ErrorCode::HeadersTooLarge,
            format!("a request with more than {MOST_HEADERS} headers; send fewer headers"),
        ),
        _ => Head::Hyper,
    }
}

/// What a head that is still partial at the fast path's limit is refused
/// as: its request line, or its headers, is too long.
pub fn too_long(buf: &[u8]) -> Head {
    let kib = buf.len() / 1024;
    if buf.windows(2).any(|w| w == b"\r\n") {
        Head::Bad(
            ErrorCode::HeadersTooLarge,
            format!("a request head over {kib} KiB; send fewer or smaller headers"),
        )
    } else {
        Head::Bad(
            ErrorCode::UriTooLong,
            format!("a request line over {kib} KiB; shorten the path or query"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain_len(head: &[u8]) -> Option<usize> {
        match parse(head) {
            Head::Plain(_, len) => Some(len),
            _ => None,
        }
    }

    #[test]
    fn only_bodiless_http11_gets_are_taken_here() {
        let get = b"GET /v1/records/t/k HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(plain_len(get), Some(get.len()));
        // Pipelined: the first head only.
        let two = [&get[..], &get[..]].concat();
        assert_eq!(plain_len(&two), Some(get.len()));
        assert!(matches!(parse(&get[..get.len() - 2]), Head::Partial));
        assert!(matches!(parse(b""), Head::Partial));
        for hyper in [
            &b"GET /a HTTP/1.0\r\n\r\n"[..],
            b"POST /a HTTP/1.1\r\ncontent-length: 0\r\n\r\n",
            b"HEAD /a HTTP/1.1\r\n\r\n",
            b"GET /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
            b"GET /a HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
            b"GET /a HTTP/1.1\r\nconnection: close\r\n\r\n",
            b"GET /a HTTP/1.1\r\nupgrade: websocket\r\n\r\n",
            b"GET /a HTTP/1.1\r\nexpect: 100-continue\r\n\r\n",
            b"GET http://x/a HTTP/1.1\r\n\r\n",
            // A Content-Length after a Transfer-Encoding: ignored by hyper.
            b"POST /a HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: x\r\n\r\n",
            b"POST /a HTTP/1.1\r\ntransfer-encoding: gzip, Chunked\r\n\r\n",
        ] {
            assert!(
                matches!(parse(hyper), Head::Hyper),
                "{}",
                String::from_utf8_lossy(hyper)
            );
        }
        // What hyper would refuse with an empty 400: refused here, with a
        // reason for the JSON error.
        for bad in [
            &b"GET /a HTTP/1.1\r\nbad header\r\n\r\n"[..],
            b"GARBAGE\r\n\r\n",
            b"GET /a\xff HTTP/1.1\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            // Body framing hyper refuses with an empty 400.
            b"POST /a HTTP/1.1\r\ncontent-length: 5, 5\r\n\r\n",
            b"POST /a HTTP/1.1\r\ntransfer-encoding: chunked,\r\n\r\n",
            b"POST /a HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n",
            b"POST /a HTTP/1.1\r\ntransfer-encoding: chunked\r\ntransfer-encoding: gzip\r\n\r\n",
            b"POST /a HTTP/1.1\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
            b"POST /a HTTP/1.1\r\ncontent-length: 99999999999999999999\r\n\r\n",
            b"POST /a HTTP/1.1\r\ncontent-length: +5\r\n\r\n",
            b"POST /a HTTP/1.1\r\ntransfer-encoding: xchunked\r\n\r\n",
            b"POST /a HTTP/1.1\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
        ] {
            assert!(
                matches!(parse(bad), Head::Bad(ErrorCode::BadRequest, _)),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let head = match parse(b"GET /p?q=1 HTTP/1.1\r\nX-A: 1\r\nx-a: 2\r\n\r\n") {
            Head::Plain(head, _) => head,
            _ => panic!("a plain head"),
        };
        assert_eq!(head.uri.path(), "/p");
        assert_eq!(head.uri.query(), Some("q=1"));
        assert_eq!(head.headers.get_all("x-a").iter().count(), 2);
    }
}
