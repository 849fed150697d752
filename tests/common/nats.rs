//! A private nats-server process on a free port, killed on drop, and a
//! publishing client (async-nats, the relay's own NATS crate).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::free_port;

/// A private nats-server; killed on drop.
pub struct NatsServer {
    pub port: u16,
    child: Option<Child>,
}

impl NatsServer {
    pub async fn start() -> NatsServer {
        for _ in 0..5 {
            let mut n = NatsServer {
                port: free_port(),
                child: None,
            };
            n.spawn();
            if n.wait_ready().await {
                return n;
            }
            n.kill();
        }
        panic!("nats-server did not start");
    }

    /// A port where no server runs yet; [`NatsServer::restart`] starts one there.
    pub fn not_started() -> NatsServer {
        NatsServer {
            port: free_port(),
            child: None,
        }
    }

    fn spawn(&mut self) {
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server must be installed (apt-get install nats-server)");
        self.child = Some(child);
    }

    /// Ready once a connection gets the server's `INFO` greeting; false if
    /// the process exits first or 5 s pass (port taken, say).
    async fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(_)) = child.try_wait() {
                    return false;
                }
            }
            if greets(self.port).await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts (again) on the same port.
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
        panic!("nats-server did not restart on port {}", self.port);
    }

    /// A publishing client, connected.
    pub async fn client(&self) -> async_nats::Client {
        tokio::time::timeout(super::WAIT, async_nats::connect(self.url()))
            .await
            .expect("nats connect timed out")
            .expect("nats connect")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Publishes each `(subject, payload)` in order and waits until the server has them.
pub async fn publish(client: &async_nats::Client, items: &[(&str, &[u8])]) {
    for (subject, payload) in items {
        client
            .publish(subject.to_string(), bytes::Bytes::copy_from_slice(payload))
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
}

async fn greets(port: u16) -> bool {
    let Ok(Ok(mut s)) = tokio::time::timeout(
        Duration::from_secs(1),
        TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    else {
        return false;
    };
    let mut buf = [0u8; 4];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), s.read_exact(&mut buf)).await,
        Ok(Ok(_)) if &buf == b"INFO"
    )
}
