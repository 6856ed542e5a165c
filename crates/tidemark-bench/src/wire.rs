//! Minimal request/response loops over raw sockets, for the comparison's
//! load generator: one request in flight per connection, the request bytes
//! built once per key, the response framed by its length and not parsed
//! further. The same care for HTTP (like `wrk`) and for RESP (like
//! `redis-benchmark`), so neither side's client is the heavier one.

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A plain or a TLS connection.
enum Stream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// One connection and its receive buffer.
pub struct Wire {
    stream: Stream,
    buf: Vec<u8>,
}

impl Wire {
    pub async fn connect(addr: &str) -> anyhow::Result<Self> {
        let stream = tcp(addr).await?;
        Ok(Self {
            stream: Stream::Tcp(stream),
            buf: Vec::with_capacity(4096),
        })
    }

    /// A TLS connection to `addr`, whose certificate `tls` must accept for
    /// the name `127.0.0.1`.
    pub async fn connect_tls(addr: &str, tls: &tokio_rustls::TlsConnector) -> anyhow::Result<Self> {
        let stream = tcp(addr).await?;
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
        let stream = tls
            .connect(name, stream)
            .await
            .with_context(|| format!("TLS handshake with {addr}"))?;
        Ok(Self {
            stream: Stream::Tls(Box::new(stream)),
            buf: Vec::with_capacity(4096),
        })
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        let n = match &mut self.stream {
            Stream::Tcp(s) => s.read_buf(&mut self.buf).await?,
            Stream::Tls(s) => s.read_buf(&mut self.buf).await?,
        };
        anyhow::ensure!(n > 0, "the server closed the connection");
        Ok(())
    }

    async fn send(&mut self, req: &[u8]) -> anyhow::Result<()> {
        match &mut self.stream {
            Stream::Tcp(s) => s.write_all(req).await?,
            Stream::Tls(s) => s.write_all(req).await?,
        }
        Ok(())
    }

    /// Sends `req` and reads one HTTP/1.1 response (Content-Length framed);
    /// returns its status.
    pub async fn http(&mut self, req: &[u8]) -> anyhow::Result<u16> {
        self.buf.clear();
        self.send(req).await?;
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..end]).context("response head")?;
                let status: u16 = head
                    .get(9..12)
                    .and_then(|s| s.parse().ok())
                    .context("response status")?;
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .context("a response without Content-Length")?;
                let need = end + 4 + len;
                while self.buf.len() < need {
                    self.fill().await?;
                }
                return Ok(status);
            }
            self.fill().await?;
        }
    }

    /// Sends one RESP command and reads a bulk-string reply; returns
    /// whether the key existed.
    pub async fn resp_bulk(&mut self, req: &[u8]) -> anyhow::Result<bool> {
        self.buf.clear();
        self.send(req).await?;
        loop {
            if let Some(end) = find(&self.buf, b"\r\n") {
                anyhow::ensure!(
                    self.buf.first() == Some(&b'$'),
                    "redis: {}",
                    String::from_utf8_lossy(&self.buf[..end])
                );
                let n: i64 = std::str::from_utf8(&self.buf[1..end])?.parse()?;
                if n < 0 {
                    return Ok(false);
                }
                let need = end + 2 + n as usize + 2;
                while self.buf.len() < need {
                    self.fill().await?;
                }
                return Ok(true);
            }
            self.fill().await?;
        }
    }
}

async fn tcp(addr: &str) -> anyhow::Result<TcpStream> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `GET path` with a Host header, as bytes.
pub fn http_get(host: &str, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes()
}

/// `GET path` with a Host header and a bearer token, as bytes.
pub fn http_get_with_token(host: &str, path: &str, token: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\r\n")
        .into_bytes()
}

/// A RESP `GET key`, as bytes.
pub fn resp_get(key: &str) -> Vec<u8> {
    format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len()).into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_an_http_response_split_across_reads() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut b = [0u8; 1024];
            for _ in 0..2 {
                let _ = s.read(&mut b).await.unwrap();
                s.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 5\r\n\r\nab")
                    .await
                    .unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                s.write_all(b"cde").await.unwrap();
            }
        });
        let mut w = Wire::connect(&addr).await.unwrap();
        let req = http_get(&addr, "/x");
        assert_eq!(w.http(&req).await.unwrap(), 404);
        assert_eq!(
            w.http(&req).await.unwrap(),
            404,
            "the body was consumed whole"
        );
    }
}
