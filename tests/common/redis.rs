//! A private redis-server process, and a connection to it that speaks RESP
//! through the bench's client (`studio_relay_bench::resp`).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::{Buf, BytesMut};
use studio_relay_bench::resp::{self, Item};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::{free_port, TempDir};

/// A private redis-server; killed on drop.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    dir: TempDir,
    extra: Vec<String>,
}

impl Redis {
    pub async fn start() -> Redis {
        Self::start_with(Vec::new()).await
    }

    /// Starts with extra `redis-server` arguments (a TLS port, say); the
    /// plain port stays, for the harness's own connections.
    pub async fn start_with(extra: Vec<String>) -> Redis {
        for _ in 0..5 {
            let mut r = Redis {
                port: free_port(),
                child: None,
                dir: TempDir::new(),
                extra: extra.clone(),
            };
            r.spawn();
            if r.wait_ready().await {
                return r;
            }
        }
        panic!("redis-server did not start");
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir.0.to_str().unwrap(),
            ])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        self.child = Some(child);
    }

    /// Ready once PING gets any reply; false if the process exits first or
    /// 5 s pass (port taken, say).
    async fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(_)) = child.try_wait() {
                    return false;
                }
            }
            if let Ok(mut c) = RedisConn::connect(self.port).await {
                if c.command(&[b"PING"]).await.is_ok() {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// The temp directory it runs in (for certificates and the like).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir.0
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port.
    pub async fn restart(&mut self) {
        self.kill();
        for _ in 0..50 {
            self.spawn();
            if self.wait_ready().await {
                return;
            }
            self.kill();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("redis-server did not restart on port {}", self.port);
    }

    /// Sends `SIG{sig}` (STOP, CONT, …) to the server.
    pub fn signal(&self, sig: &str) {
        super::signal(self.pid(), sig);
    }

    pub async fn conn(&self) -> RedisConn {
        RedisConn::connect(self.port).await.unwrap()
    }

    /// PUBLISH; returns the number of receivers Redis reported.
    pub async fn publish(&self, channel: &str, payload: impl AsRef<[u8]>) -> i64 {
        self.conn().await.publish(channel, payload).await
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_ref() {
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
        }
        self.kill();
    }
}

/// One reply, as much of it as the tests look at.
#[derive(Debug)]
pub enum Reply {
    Int(i64),
    Error(String),
    /// A simple or bulk string, nil, or an array.
    Other,
}

/// A RESP connection for publishing: the bench's encoder and frame parser
/// over one TCP stream.
pub struct RedisConn {
    stream: TcpStream,
    buf: BytesMut,
    /// Encoded commands, reused.
    out: Vec<u8>,
}

impl RedisConn {
    pub async fn connect(port: u16) -> anyhow::Result<RedisConn> {
        let stream = tokio::time::timeout(
            Duration::from_secs(1),
            TcpStream::connect(("127.0.0.1", port)),
        )
        .await
        .context("connect timeout")??;
        Ok(RedisConn {
            stream,
            buf: BytesMut::with_capacity(4096),
            out: Vec::new(),
        })
    }

    /// Reads the next reply (a Redis error is `Ok(Reply::Error)`).
    async fn read_reply(&mut self) -> anyhow::Result<Reply> {
        let (frame, used) = tokio::time::timeout(
            Duration::from_secs(5),
            resp::read_frame(&mut self.stream, &mut self.buf),
        )
        .await
        .context("reply timeout")??;
        let reply = match (frame.is_array, frame.items[0]) {
            (false, Item::Int(n)) => Reply::Int(n),
            (false, Item::Error(a, b)) => {
                Reply::Error(String::from_utf8_lossy(&self.buf[a..b]).into_owned())
            }
            _ => Reply::Other,
        };
        self.buf.advance(used);
        Ok(reply)
    }

    /// Sends one command; its reply's strings (a bulk or simple string, or
    /// the strings of an array of up to four; nil and numbers left out).
    pub async fn strings(&mut self, args: &[&[u8]]) -> anyhow::Result<Vec<String>> {
        self.out.clear();
        resp::command(&mut self.out, args);
        self.stream.write_all(&self.out).await?;
        let (frame, used) = tokio::time::timeout(
            Duration::from_secs(5),
            resp::read_frame(&mut self.stream, &mut self.buf),
        )
        .await
        .context("reply timeout")??;
        let mut out = Vec::new();
        for item in &frame.items[..frame.len.clamp(1, 4)] {
            match *item {
                Item::Bulk(a, b) | Item::Simple(a, b) => {
                    out.push(String::from_utf8_lossy(&self.buf[a..b]).into_owned())
                }
                Item::Error(a, b) => {
                    let e = String::from_utf8_lossy(&self.buf[a..b]).into_owned();
                    self.buf.advance(used);
                    anyhow::bail!("{e}");
                }
                Item::Int(_) | Item::Nil => {}
            }
        }
        self.buf.advance(used);
        Ok(out)
    }

    /// Sends one command and reads its reply.
    pub async fn command(&mut self, args: &[&[u8]]) -> anyhow::Result<Reply> {
        self.out.clear();
        resp::command(&mut self.out, args);
        self.stream.write_all(&self.out).await?;
        self.read_reply().await
    }

    pub async fn publish(&mut self, channel: &str, payload: impl AsRef<[u8]>) -> i64 {
        match self
            .command(&[b"PUBLISH", channel.as_bytes(), payload.as_ref()])
            .await
            .unwrap()
        {
            Reply::Int(n) => n,
            other => panic!("PUBLISH answered {other:?}"),
        }
    }

    /// Pipelines many PUBLISHes, then reads every reply.
    pub async fn publish_many(&mut self, items: &[(String, String)]) {
        self.out.clear();
        for (c, p) in items {
            resp::command(&mut self.out, &[b"PUBLISH", c.as_bytes(), p.as_bytes()]);
        }
        self.stream.write_all(&self.out).await.unwrap();
        for _ in items {
            self.read_reply().await.unwrap();
        }
    }
}
