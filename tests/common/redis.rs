//! A private redis-server process, and a minimal RESP connection to it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as TokioBufReader};
use tokio::net::TcpStream;

use super::{free_port, TempDir};

/// A private redis-server; killed on drop.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    dir: TempDir,
}

impl Redis {
    pub async fn start() -> Redis {
        for _ in 0..5 {
            let mut r = Redis {
                port: free_port(),
                child: None,
                dir: TempDir::new(),
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

/// A minimal RESP client for publishing.
pub struct RedisConn {
    r: TokioBufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
}

impl RedisConn {
    pub async fn connect(port: u16) -> std::io::Result<RedisConn> {
        let s = tokio::time::timeout(
            Duration::from_secs(1),
            TcpStream::connect(("127.0.0.1", port)),
        )
        .await
        .map_err(|_| std::io::Error::other("connect timeout"))??;
        let (r, w) = s.into_split();
        Ok(RedisConn {
            r: TokioBufReader::new(r),
            w,
        })
    }

    fn encode(args: &[&[u8]]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    async fn read_reply(&mut self) -> std::io::Result<String> {
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(5), self.r.read_line(&mut line))
            .await
            .map_err(|_| std::io::Error::other("reply timeout"))??;
        if let Some(len) = line.strip_prefix('$') {
            let n: i64 = len.trim().parse().unwrap_or(-1);
            if n >= 0 {
                let mut buf = vec![0; n as usize + 2];
                self.r.read_exact(&mut buf).await?;
                return Ok(String::from_utf8_lossy(&buf[..n as usize]).into_owned());
            }
        }
        Ok(line.trim_end().to_owned())
    }

    pub async fn command(&mut self, args: &[&[u8]]) -> std::io::Result<String> {
        self.w.write_all(&Self::encode(args)).await?;
        self.read_reply().await
    }

    pub async fn publish(&mut self, channel: &str, payload: impl AsRef<[u8]>) -> i64 {
        let reply = self
            .command(&[b"PUBLISH", channel.as_bytes(), payload.as_ref()])
            .await
            .unwrap();
        reply.trim_start_matches(':').parse().unwrap()
    }

    /// Pipelines many PUBLISHes, then reads every reply.
    pub async fn publish_many(&mut self, items: &[(String, String)]) {
        let mut buf = Vec::new();
        for (c, p) in items {
            buf.extend(Self::encode(&[b"PUBLISH", c.as_bytes(), p.as_bytes()]));
        }
        self.w.write_all(&buf).await.unwrap();
        for _ in items {
            self.read_reply().await.unwrap();
        }
    }
}
