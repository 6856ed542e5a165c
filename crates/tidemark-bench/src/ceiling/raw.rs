//! The raw ceiling: one thread, one event loop (mio over epoll), no runtime
//! and no HTTP library, the way Redis serves its clients. Per request it
//! does little more than no HTTP server can skip: read the head, find the
//! key, look it up, write the answer (status line, `content-type`,
//! `content-length`, `date`, body); a readable connection is read until a
//! short read, and its answers go out in one write.
//!
//! Invariants: only what `bench compare` sends is understood (`GET`
//! heads without a body, pipelined or not); anything else closes the
//! connection. It is a measuring stick, never a server to run.

use bytes::Bytes;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::time::SystemTime;

const LISTENER: Token = Token(usize::MAX);
/// Read size: many pipelined heads at once.
const CHUNK: usize = 16 * 1024;

struct Conn {
    stream: TcpStream,
    /// Bytes read and not yet answered (a head split across reads).
    pending: Vec<u8>,
    /// Answers not yet written (the socket was full).
    out: Vec<u8>,
    /// Whether it is registered for writability (only while `out` waits):
    /// changed only when that changes, one `epoll_ctl` then, none per
    /// request.
    writing: bool,
}

/// Serves `map` (key → JSON body) on `listener` until the process ends.
pub fn serve(listener: std::net::TcpListener, map: &HashMap<String, Bytes>) -> anyhow::Result<()> {
    listener.set_nonblocking(true)?;
    let mut listener = TcpListener::from_std(listener);
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut events = Events::with_capacity(1024);
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut chunk = vec![0u8; CHUNK];
    let mut date = Date::default();
    loop {
        poll.poll(&mut events, None)?;
        date.refresh();
        for ev in events.iter() {
            if ev.token() == LISTENER {
                accept(&listener, &poll, &mut conns, &mut free)?;
                continue;
            }
            let i = ev.token().0;
            let Some(conn) = conns.get_mut(i).and_then(Option::as_mut) else {
                continue;
            };
            // A peer's FIN can come with its last data in one edge: it is
            // seen here, not by a read after it.
            let open = (!ev.is_readable() || read(conn, &mut chunk, map, &date))
                && flush(conn, &poll, Token(i))
                && !ev.is_read_closed();
            if !open {
                if let Some(mut c) = conns[i].take() {
                    let _ = poll.registry().deregister(&mut c.stream);
                }
                free.push(i);
            }
        }
    }
}

fn accept(
    listener: &TcpListener,
    poll: &Poll,
    conns: &mut Vec<Option<Conn>>,
    free: &mut Vec<usize>,
) -> anyhow::Result<()> {
    loop {
        let (mut stream, _) = match listener.accept() {
            Ok(s) => s,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            // Out of descriptors, or reset before it was accepted: the
            // others are served on.
            Err(_) => return Ok(()),
        };
        stream.set_nodelay(true)?;
        let i = free.pop().unwrap_or_else(|| {
            conns.push(None);
            conns.len() - 1
        });
        poll.registry()
            .register(&mut stream, Token(i), Interest::READABLE)?;
        conns[i] = Some(Conn {
            stream,
            pending: Vec::new(),
            out: Vec::new(),
            writing: false,
        });
    }
}

/// Reads what arrived and answers every whole head; false once the peer
/// left or sent what is not understood.
fn read(conn: &mut Conn, chunk: &mut [u8], map: &HashMap<String, Bytes>, date: &Date) -> bool {
    // Edge-triggered: read until a short read (what arrives later raises
    // a new event).
    loop {
        match conn.stream.read(chunk) {
            Ok(0) => return false,
            Ok(n) => {
                conn.pending.extend_from_slice(&chunk[..n]);
                if n < chunk.len() {
                    break;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
    let mut used = 0;
    while let Some(end) = find(&conn.pending[used..], b"\r\n\r\n") {
        let head = &conn.pending[used..used + end];
        let Some(path) = get_path(head) else {
            return false;
        };
        answer(path, map, date, &mut conn.out);
        used += end + 4;
    }
    conn.pending.drain(..used);
    true
}

/// Writes what is pending; false if the connection broke. A full socket
/// leaves the rest for its writable event.
fn flush(conn: &mut Conn, poll: &Poll, token: Token) -> bool {
    let mut sent = 0;
    while sent < conn.out.len() {
        match conn.stream.write(&conn.out[sent..]) {
            Ok(0) => return false,
            Ok(n) => sent += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
    conn.out.drain(..sent);
    let writing = !conn.out.is_empty();
    if writing == conn.writing {
        return true;
    }
    conn.writing = writing;
    let interest = if writing {
        Interest::READABLE | Interest::WRITABLE
    } else {
        Interest::READABLE
    };
    poll.registry()
        .reregister(&mut conn.stream, token, interest)
        .is_ok()
}

/// The path of a `GET … HTTP/1.1` head.
fn get_path(head: &[u8]) -> Option<&[u8]> {
    let line = head.split(|&b| b == b'\r').next()?;
    let rest = line.strip_prefix(b"GET ")?;
    let sp = rest.iter().position(|&b| b == b' ')?;
    Some(&rest[..sp])
}

fn answer(path: &[u8], map: &HashMap<String, Bytes>, date: &Date, out: &mut Vec<u8>) {
    let body: &[u8] = if path == b"/readyz" {
        b"ready"
    } else {
        let key = path.rsplit(|&b| b == b'/').next().unwrap_or_default();
        match std::str::from_utf8(key).ok().and_then(|k| map.get(k)) {
            Some(b) => b,
            None => {
                out.extend_from_slice(b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 15\r\ndate: ");
                out.extend_from_slice(date.text.as_bytes());
                out.extend_from_slice(b"\r\n\r\n{\"found\":false}");
                return;
            }
        }
    };
    out.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ");
    let _ = write!(out, "{}", body.len());
    out.extend_from_slice(b"\r\ndate: ");
    out.extend_from_slice(date.text.as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
}

/// The `date` header's value, rendered when the second changes.
#[derive(Default)]
struct Date {
    secs: u64,
    text: String,
}

impl Date {
    fn refresh(&mut self) {
        let now = SystemTime::now();
        let secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if secs != self.secs || self.text.is_empty() {
            self.secs = secs;
            self.text = httpdate::fmt_http_date(now);
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> HashMap<String, Bytes> {
        HashMap::from([("k1".to_owned(), Bytes::from_static(b"{\"a\":1}"))])
    }

    /// A connection to a raw ceiling serving `map()`.
    fn started() -> std::net::TcpStream {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || serve(listener, &map()));
        std::net::TcpStream::connect(addr).unwrap()
    }

    #[test]
    fn answers_a_hit_a_miss_and_readiness_with_hyper_s_headers() {
        let mut date = Date::default();
        date.refresh();
        let mut out = Vec::new();
        answer(b"/v1/records/subscriber/k1", &map(), &date, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 7\r\ndate: "
        ));
        assert!(text.ends_with("\r\n\r\n{\"a\":1}"));
        let mut out = Vec::new();
        answer(b"/v1/records/subscriber/k2", &map(), &date, &mut out);
        assert!(out.starts_with(b"HTTP/1.1 404 Not Found\r\n"));
        let mut out = Vec::new();
        answer(b"/readyz", &map(), &date, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("content-length: 5\r\n") && text.ends_with("\r\n\r\nready"));
    }

    #[test]
    fn pipelined_heads_are_answered_in_order_over_a_real_socket() {
        let mut s = started();
        s.write_all(b"GET /v1/records/t/k1 HTTP/1.1\r\nhost: x\r\n\r\nGET /v1/records/t/nope HTTP/1.1\r\nhost: x\r\n\r\nGET /v1/rec")
            .unwrap();
        s.write_all(b"ords/t/k1 HTTP/1.1\r\n\r\n").unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while got.windows(7).filter(|w| w == b"{\"a\":1}").count() < 2 {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8(got).unwrap();
        let statuses: Vec<&str> = text
            .match_indices("HTTP/1.1 ")
            .map(|(i, _)| &text[i + 9..i + 12])
            .collect();
        assert_eq!(statuses, ["200", "404", "200"]);
    }

    #[test]
    fn what_is_not_a_get_closes_the_connection() {
        let mut s = started();
        s.write_all(b"POST /x HTTP/1.1\r\n\r\n").unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(s.read(&mut buf).unwrap(), 0);
    }
}
