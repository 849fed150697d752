//! TLS listeners (SPEC §14) on the real binary: `wss://` and `https://` for
//! the routes of §4, §10 and §11, what a plain client gets on a TLS port,
//! the certificate the relay presents (checked by a client with its own
//! root store), SIGHUP re-reading the pair, the handshake timeout, `--check`
//! and socket activation. Certificates are made here with rcgen.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{free_port, Redis, Relay, RelayOpts, TempDir, WAIT};
use futures_util::StreamExt;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The log level the harness writes, for configs written by hand here.
const LOG: &str = "[log]\nformat = \"json\"\nlevel = \"studio_relay=debug,info\"\n";

// ---------------------------------------------------------------------------
// Certificates

/// A test certificate authority.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `names`, written as `<stem>.pem` / `<stem>.key` in `dir`;
    /// `expired` makes it valid only in 2020.
    fn leaf(&self, dir: &Path, stem: &str, names: &[&str], expired: bool) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2020, 12, 31);
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (c, k) = (
            dir.join(format!("{stem}.pem")),
            dir.join(format!("{stem}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (path(&c), path(&k))
    }
}

fn path(p: &Path) -> String {
    p.to_str().unwrap().to_owned()
}

/// `tls_cert` / `tls_key` lines for a `[[listeners]]` table.
fn tls_keys(cert: &str, key: &str) -> String {
    format!("tls_cert = {cert:?}\ntls_key = {key:?}\n")
}

/// A relay with a plain listener first (the harness's health checks use it)
/// and a TLS one second, serving `cert` / `key`. `redis: None` runs it
/// against a port where nothing listens (no Redis needed).
async fn tls_relay(redis: Option<&Redis>, cert: &str, key: &str, extra: &str) -> Relay {
    let url = match redis {
        Some(r) => r.url(),
        None => format!("redis://127.0.0.1:{}", free_port()),
    };
    Relay::start_with(
        &url,
        RelayOpts {
            listeners: 2,
            listener_keys: vec![String::new(), tls_keys(cert, key)],
            extra: extra.to_owned(),
            wait_redis: redis.is_some(),
            ..Default::default()
        },
    )
    .await
}

// ---------------------------------------------------------------------------
// Clients

/// A client config trusting only `ca_pem`, offering `alpn`.
fn client_config(ca_pem: &str, tls12_only: bool, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in rustls_pki_types_certs(ca_pem) {
        roots.add(cert).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

fn rustls_pki_types_certs(pem: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap()
}

/// A TLS connection to `addr` checking the server as `name` against `config`.
async fn tls_connect_with(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    name: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_owned()).unwrap();
    tokio::time::timeout(WAIT, TlsConnector::from(config).connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("tls handshake timed out"))?
}

/// A TLS connection to `addr` as `localhost`, trusting `ca_pem`.
async fn tls_connect(addr: SocketAddr, ca_pem: &str) -> std::io::Result<TlsStream<TcpStream>> {
    tls_connect_with(
        addr,
        client_config(ca_pem, false, &[b"http/1.1"]),
        "localhost",
    )
    .await
}

/// The rustls certificate error under a failed client handshake.
fn certificate_error(e: &std::io::Error) -> rustls::CertificateError {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(c)) => c.clone(),
        _ => panic!("not a certificate error: {e:?}"),
    }
}

/// One HTTP/1.1 request over `stream` (`Connection: close`): status, body.
async fn request_over<S>(
    mut stream: S,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    stream.flush().await.unwrap();
    let mut buf = Vec::new();
    // A peer that closes without close_notify is an error to rustls only
    // after everything before it was read; what was read is kept.
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut buf))
        .await
        .expect("no answer within the wait");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body.to_owned())
}

/// `GET path` over a fresh TLS connection trusting `ca_pem`.
async fn https_get(addr: SocketAddr, ca_pem: &str, path: &str) -> (u16, String) {
    let stream = tls_connect(addr, ca_pem).await.unwrap();
    request_over(stream, "GET", path, &[], b"").await
}

type Wss = WebSocketStream<TlsStream<TcpStream>>;

/// A `wss://` connection to `/ws?{query}`; returns it with its welcome.
async fn wss_connect(addr: SocketAddr, ca_pem: &str, query: &str) -> (Wss, Value) {
    let stream = tls_connect(addr, ca_pem).await.unwrap();
    let url = format!("wss://localhost:{}/ws?{query}", addr.port());
    let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(url, stream))
        .await
        .expect("upgrade timed out")
        .unwrap();
    let welcome = next_json(&mut ws).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    (ws, welcome)
}

async fn next_json(ws: &mut Wss) -> Value {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no frame within the wait")
            .expect("stream ended")
            .expect("read error");
        if let Message::Text(t) = msg {
            return serde_json::from_str(t.as_str()).unwrap();
        }
    }
}

/// The JSON `listening` log line of `addr`.
fn listening_line(relay: &Relay, addr: SocketAddr) -> Value {
    relay
        .log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["message"] == "listening" && v["addr"] == addr.to_string())
        .unwrap_or_else(|| panic!("no listening line for {addr}:\n{}", relay.log_text()))
}

// ---------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn wss_and_https_serve_every_route() {
    let dir = TempDir::new();
    let ca = Ca::new("studio-relay test CA");
    let (cert, key) = ca.leaf(&dir.0, "server", &["localhost", "127.0.0.1"], false);
    let redis = Redis::start().await;
    let relay = tls_relay(
        Some(&redis),
        &cert,
        &key,
        "[publish]\nenabled = true\ntokens = [\"pub-token\"]\n",
    )
    .await;
    let tls = relay.addrs[1];

    // The start log says which listener is TLS, and where to point clients.
    let line = listening_line(&relay, tls);
    assert_eq!(line["tls"], true, "{line}");
    assert_eq!(line["url"], format!("wss://{tls}/ws"), "{line}");
    assert_eq!(
        line["socketio"],
        format!("https://{tls}/socket.io/"),
        "{line}"
    );
    assert_eq!(listening_line(&relay, relay.addrs[0])["tls"], false);

    // https /healthz with TLS 1.3 and with TLS 1.2; ALPN settles on HTTP/1.1.
    let (status, body) = https_get(tls, &ca.pem, "/healthz").await;
    assert_eq!(status, 200, "{body}");
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "ok");
    for (tls12_only, version) in [
        (false, rustls::ProtocolVersion::TLSv1_3),
        (true, rustls::ProtocolVersion::TLSv1_2),
    ] {
        let config = client_config(&ca.pem, tls12_only, &[b"h2", b"http/1.1"]);
        let stream = tls_connect_with(tls, config, "localhost").await.unwrap();
        let (_, conn) = stream.get_ref();
        assert_eq!(conn.protocol_version(), Some(version));
        assert_eq!(conn.alpn_protocol(), Some(&b"http/1.1"[..]));
        let (status, _) = request_over(stream, "GET", "/healthz", &[], b"").await;
        assert_eq!(status, 200, "{version:?}");
    }
    // The certificate is valid for the IP address too.
    let stream = tls_connect_with(tls, client_config(&ca.pem, false, &[]), "127.0.0.1")
        .await
        .unwrap();
    assert_eq!(
        request_over(stream, "GET", "/metrics", &[], b"").await.0,
        200
    );
    let (status, metrics) = https_get(tls, &ca.pem, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("relay_handshake_rejections_total{reason=\"tls\"} 0"),
        "{metrics}"
    );
    // HTTP/1.1 is the only protocol: a client that offers only h2 is refused.
    let h2_only = client_config(&ca.pem, false, &[b"h2"]);
    assert!(tls_connect_with(tls, h2_only, "localhost").await.is_err());
    assert_eq!(https_get(tls, &ca.pem, "/nope").await.0, 404);

    // wss:// /ws: the welcome, then an event published on Redis.
    let (mut ws, welcome) = wss_connect(tls, &ca.pem, "agentId=a1").await;
    assert_eq!(welcome["subscriptions"]["agentId"][0], "a1");
    assert_eq!(
        redis
            .publish("claude-studio:agent:status", r#"{"agentId":"a1","n":1}"#)
            .await,
        1
    );
    let event = next_json(&mut ws).await;
    assert_eq!(
        (&event["type"], &event["event"], &event["data"]["n"]),
        (&"event".into(), &"agent:status".into(), &1.into()),
        "{event}"
    );

    // POST /publish over https reaches the same client.
    let stream = tls_connect(tls, &ca.pem).await.unwrap();
    let (status, body) = request_over(
        stream,
        "POST",
        "/publish",
        &[("Authorization", "Bearer pub-token")],
        br#"{"event":"agent:status","data":{"agentId":"a1","n":2}}"#,
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert!(body.contains(r#""accepted":1"#), "{body}");
    assert_eq!(next_json(&mut ws).await["data"]["n"], 2);

    // Socket.IO over https: the Engine.IO open packet.
    let (status, body) = https_get(tls, &ca.pem, "/socket.io/?EIO=4&transport=polling").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("0{") && body.contains("\"sid\""), "{body}");
}

#[tokio::test]
async fn plain_http_and_plain_websocket_to_a_tls_port_are_closed() {
    let dir = TempDir::new();
    let ca = Ca::new("studio-relay test CA");
    let (cert, key) = ca.leaf(&dir.0, "server", &["localhost"], false);
    let relay = tls_relay(None, &cert, &key, "").await;
    let tls = relay.addrs[1];

    // Plain HTTP: no HTTP answer, the connection ends (a TLS alert at most).
    let mut s = TcpStream::connect(tls).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let ended = tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await;
    assert!(ended.is_ok(), "the relay kept a plain HTTP client open");
    assert!(
        !buf.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );

    // A plain WebSocket client fails its handshake.
    let plain_ws = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::connect_async(format!("ws://{tls}/ws")),
    )
    .await
    .expect("plain websocket connect hung");
    assert!(
        plain_ws.is_err(),
        "a plain websocket was upgraded on a TLS port"
    );

    // Logged at debug, counted, and the relay serves the next TLS client.
    let logged = relay.wait_log(0, "tls handshake failed").await;
    assert_eq!(logged["level"], "DEBUG", "{logged}");
    let (status, _) = https_get(tls, &ca.pem, "/healthz").await;
    assert_eq!(status, 503, "healthz without Redis");
    // The relay counts a failure after the client has seen it end.
    let series = "relay_handshake_rejections_total{reason=\"tls\"}";
    let deadline = Instant::now() + WAIT;
    loop {
        let metrics = common::http(relay.addrs[0], "GET", "/metrics", &[])
            .await
            .unwrap()
            .body;
        let counted = common::metric_value(&metrics, series);
        if counted == Some(2.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{series} is {counted:?}:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !relay.log_text().contains("panicked"),
        "{}",
        relay.log_text()
    );
}

#[tokio::test]
async fn the_configured_certificate_is_presented() {
    let dir = TempDir::new();
    let ca = Ca::new("studio-relay test CA");

    // For another host name: refused as such, accepted for that name.
    let (cert, key) = ca.leaf(&dir.0, "other", &["other.example"], false);
    let relay = tls_relay(None, &cert, &key, "").await;
    let e = tls_connect(relay.addrs[1], &ca.pem).await.unwrap_err();
    let c = certificate_error(&e);
    assert!(
        matches!(
            c,
            rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. }
        ),
        "{c:?}"
    );
    let config = client_config(&ca.pem, false, &[b"http/1.1"]);
    let ok = tls_connect_with(relay.addrs[1], config, "other.example").await;
    assert_eq!(
        request_over(ok.unwrap(), "GET", "/healthz", &[], b"")
            .await
            .0,
        503
    );

    // Expired: refused as expired.
    let (cert, key) = ca.leaf(&dir.0, "expired", &["localhost"], true);
    let relay = tls_relay(None, &cert, &key, "").await;
    let e = tls_connect(relay.addrs[1], &ca.pem).await.unwrap_err();
    let c = certificate_error(&e);
    assert!(
        matches!(
            c,
            rustls::CertificateError::Expired | rustls::CertificateError::ExpiredContext { .. }
        ),
        "{c:?}"
    );
}

#[tokio::test]
async fn sighup_rereads_the_pair_and_keeps_it_when_the_new_one_is_bad() {
    let dir = TempDir::new();
    let ca1 = Ca::new("first CA");
    let ca2 = Ca::new("second CA");
    let (cert, key) = ca1.leaf(&dir.0, "server", &["localhost"], false);
    let relay = tls_relay(None, &cert, &key, "").await;
    let tls = relay.addrs[1];
    assert!(tls_connect(tls, &ca1.pem).await.is_ok());
    let (mut open_ws, _) = wss_connect(tls, &ca1.pem, "").await;

    // A new pair from the second CA at the same paths (a renewal).
    ca2.leaf(&dir.0, "server", &["localhost"], false);
    let from = relay.log_len();
    let outcome = relay.reload("studio_relay=debug,info", "").await;
    assert_eq!(outcome["message"], "config reloaded", "{outcome}");
    relay.wait_log(from, "tls certificate reloaded").await;
    let e = tls_connect(tls, &ca1.pem).await.unwrap_err();
    assert_eq!(
        certificate_error(&e),
        rustls::CertificateError::UnknownIssuer
    );
    assert_eq!(https_get(tls, &ca2.pem, "/healthz").await.0, 503);

    // A key that is not the certificate's: the reload is refused, naming
    // the file, and handshakes still present the second CA's certificate.
    let (_, foreign_key) = ca2.leaf(&dir.0, "foreign", &["localhost"], false);
    std::fs::copy(&foreign_key, &key).unwrap();
    let outcome = relay.reload("studio_relay=debug,info", "").await;
    assert_eq!(outcome["level"], "ERROR", "{outcome}");
    assert!(
        outcome["message"]
            .as_str()
            .unwrap()
            .starts_with("reload failed"),
        "{outcome}"
    );
    let said = outcome.to_string();
    assert!(
        said.contains(&key) && said.contains("does not match"),
        "{said}"
    );
    assert!(
        !said.contains("PRIVATE KEY"),
        "key material in the log: {said}"
    );
    assert_eq!(https_get(tls, &ca2.pem, "/healthz").await.0, 503);

    // New paths in the file apply too: back to the first CA, elsewhere.
    let (cert3, key3) = ca1.leaf(&dir.0, "moved", &["localhost"], false);
    let from = relay.log_len();
    let text = relay
        .base_config
        .replace(&format!("{cert:?}"), &format!("{cert3:?}"))
        .replace(&format!("{key:?}"), &format!("{key3:?}"));
    assert!(text.contains(&cert3) && text.contains(&key3));
    let outcome = relay.reload_raw(&format!("{text}{LOG}")).await;
    assert_eq!(outcome["message"], "config reloaded", "{outcome}");
    relay.wait_log(from, "tls certificate reloaded").await;
    assert_eq!(https_get(tls, &ca1.pem, "/healthz").await.0, 503);

    // The connection made before the reloads is still served.
    futures_util::SinkExt::send(&mut open_ws, Message::Text(r#"{"type":"ping"}"#.into()))
        .await
        .unwrap();
    assert_eq!(next_json(&mut open_ws).await["type"], "pong");
    assert!(!relay.log_text().contains("PRIVATE KEY"));
}

#[tokio::test]
async fn a_client_that_never_says_hello_is_closed_after_the_handshake_timeout() {
    const TIMEOUT: Duration = Duration::from_millis(1500);
    let dir = TempDir::new();
    let ca = Ca::new("studio-relay test CA");
    let (cert, key) = ca.leaf(&dir.0, "server", &["localhost"], false);
    let limits = format!("[limits]\nhandshake_timeout_ms = {}\n", TIMEOUT.as_millis());
    let relay = tls_relay(None, &cert, &key, &limits).await;
    let tls = relay.addrs[1];

    let started = Instant::now();
    let mut silent = TcpStream::connect(tls).await.unwrap();
    // The silent client holds no one up: the accept loop serves the next
    // TLS client while it waits.
    assert_eq!(https_get(tls, &ca.pem, "/healthz").await.0, 503);
    let served = started.elapsed();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(WAIT, silent.read(&mut byte))
        .await
        .expect("the silent client was never closed");
    let closed = started.elapsed();
    assert!(matches!(read, Ok(0)), "{read:?}");
    assert!(served < TIMEOUT, "served after {served:?}");
    assert!(
        closed >= TIMEOUT,
        "closed after {closed:?}, before the timeout"
    );
    let logged = relay.wait_log(0, "tls handshake failed").await;
    assert_eq!(logged["error"], "timed out", "{logged}");
}

#[test]
fn check_loads_the_pair_and_names_the_file_at_fault() {
    let dir = TempDir::new();
    let ca = Ca::new("studio-relay test CA");
    let (cert, key) = ca.leaf(&dir.0, "server", &["localhost"], false);
    let (_, other_key) = ca.leaf(&dir.0, "other", &["localhost"], false);
    let missing = path(&dir.0.join("missing.key"));
    let check = |keys: &str| {
        let file = dir.0.join("relay.toml");
        std::fs::write(
            &file,
            format!("[[listeners]]\nbind = \"127.0.0.1:4443\"\n{keys}"),
        )
        .unwrap();
        let out = Command::new(common::bin())
            .arg("--check")
            .arg("--config")
            .arg(&file)
            .env_remove("REDIS_URL")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (code, stdout, stderr) = check(&tls_keys(&cert, &key));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("127.0.0.1:4443 (tls)"), "{stdout}");

    let (code, _, stderr) = check(&tls_keys(&cert, &missing));
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains(":4:") && stderr.contains(&format!("listeners[0].tls_key: {missing}: ")),
        "{stderr}"
    );

    let (code, _, stderr) = check(&tls_keys(&cert, &other_key));
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains(&format!(
            "listeners[0].tls_key: {other_key}: private key does not match"
        )),
        "{stderr}"
    );

    let (code, _, stderr) = check(&tls_keys(&missing, &key));
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains(&format!("listeners[0].tls_cert: {missing}: ")),
        "{stderr}"
    );

    let (code, _, stderr) = check(&format!("tls_cert = {cert:?}\n"));
    assert_eq!(code, Some(2));
    assert!(stderr.contains("listeners[0].tls_key: "), "{stderr}");
}

/// `systemd-socket-activate` holds the TLS port and passes it as fd 3; the
/// `[[listeners]]` entry with that address makes it a TLS listener.
#[tokio::test]
async fn an_inherited_socket_speaks_tls_when_its_entry_has_a_pair() {
    if Command::new("systemd-socket-activate")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("skipped: systemd-socket-activate is not installed (apt-get install systemd)");
        return;
    }
    let dir = TempDir::new();
    let ca = Ca::new("studio-relay test CA");
    let (cert, key) = ca.leaf(&dir.0, "server", &["localhost"], false);
    let inherited: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = dir.0.join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "[redis]\nurl = \"redis://127.0.0.1:{}\"\n[[listeners]]\nbind = \"{inherited}\"\n{}{LOG}",
            free_port(),
            tls_keys(&cert, &key)
        ),
    )
    .unwrap();
    let child = Command::new("systemd-socket-activate")
        .args(["--listen", &inherited.to_string(), "--"])
        .arg(common::bin())
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Reap(child);
    let stderr = child.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let wait_line = |what: &str| -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no {what:?}"));
            if line.contains(what) {
                return line;
            }
        }
    };
    wait_line("Listening on");
    // The first connection starts the relay, which handshakes on fd 3.
    let (status, _) = https_get(inherited, &ca.pem, "/healthz").await;
    assert_eq!(status, 503, "healthz without Redis, over TLS");
    let listening: Value = serde_json::from_str(&wait_line("\"listening\"")).unwrap();
    assert_eq!(listening["addr"], inherited.to_string());
    assert_eq!(listening["tls"], true, "{listening}");
    let pid = child.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    assert_eq!(child.0.wait().unwrap().code(), Some(0));
}
