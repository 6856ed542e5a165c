//! A minimal RESP2 client: enough for GET, SET, pipelines and PING.

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;

/// One Redis connection.
pub struct Redis {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: BufWriter<tokio::net::tcp::OwnedWriteHalf>,
}

/// A reply, flattened to what the benchmark needs.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    Ok,
    Bulk(Option<Vec<u8>>),
    Int(i64),
    Array(usize),
}

fn encode(buf: &mut Vec<u8>, args: &[&[u8]]) {
    buf.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        buf.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        buf.extend_from_slice(a);
        buf.extend_from_slice(b"\r\n");
    }
}

impl Redis {
    pub async fn connect(addr: &str) -> anyhow::Result<Self> {
        let s = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to redis at {addr}"))?;
        s.set_nodelay(true)?;
        let (r, w) = s.into_split();
        Ok(Self {
            reader: BufReader::new(r),
            writer: BufWriter::new(w),
        })
    }

    pub async fn cmd(&mut self, args: &[&[u8]]) -> anyhow::Result<Reply> {
        let mut buf = Vec::new();
        encode(&mut buf, args);
        self.writer.write_all(&buf).await?;
        self.writer.flush().await?;
        self.reply().await
    }

    /// Sends many commands at once, then reads every reply.
    pub async fn pipeline(&mut self, cmds: &[Vec<&[u8]>]) -> anyhow::Result<()> {
        let mut buf = Vec::new();
        for c in cmds {
            encode(&mut buf, c);
        }
        self.writer.write_all(&buf).await?;
        self.writer.flush().await?;
        for _ in cmds {
            self.reply().await?;
        }
        Ok(())
    }

    /// Reads a reply; for arrays, only the header (callers read elements).
    pub async fn reply(&mut self) -> anyhow::Result<Reply> {
        let mut line = Vec::new();
        self.reader.read_until(b'\n', &mut line).await?;
        anyhow::ensure!(line.len() >= 3, "redis closed the connection");
        let text = std::str::from_utf8(&line[1..line.len() - 2])?;
        match line[0] {
            b'+' => Ok(Reply::Ok),
            b'-' => anyhow::bail!("redis error: {text}"),
            b':' => Ok(Reply::Int(text.parse()?)),
            b'$' => {
                let n: i64 = text.parse()?;
                if n < 0 {
                    return Ok(Reply::Bulk(None));
                }
                let mut data = vec![0; n as usize + 2];
                self.reader.read_exact(&mut data).await?;
                data.truncate(n as usize);
                Ok(Reply::Bulk(Some(data)))
            }
            b'*' => Ok(Reply::Array(text.parse::<i64>()?.max(0) as usize)),
            other => anyhow::bail!("unexpected redis reply type {:?}", other as char),
        }
    }
}
