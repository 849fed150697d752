//! `rediss://` with a private CA and a client certificate (SPEC §10's
//! `redis.tls_ca` / `tls_cert` / `tls_key`), against a real redis-server
//! with `tls-auth-clients yes` and certificates made by rcgen.

mod common;

use std::path::Path;

use common::{Redis, Relay, RelayOpts};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// Writes ca.pem, server.{pem,key}, client.{pem,key} into `dir`.
fn certificates(dir: &Path) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "studio-relay test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let write = |name: &str, text: String| std::fs::write(dir.join(name), text).unwrap();
    write("ca.pem", ca.pem());
    for who in ["server", "client"] {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        write(&format!("{who}.pem"), cert.pem());
        write(&format!("{who}.key"), key.serialize_pem());
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn rediss_with_a_private_ca_and_a_client_certificate() {
    let dir = std::env::temp_dir().join(format!("studio-relay-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    certificates(&dir);
    let p = |f: &str| dir.join(f).to_str().unwrap().to_owned();
    let tls_port = free_port();
    let redis = Redis::start_with(vec![
        "--tls-port".into(),
        tls_port.to_string(),
        "--tls-cert-file".into(),
        p("server.pem"),
        "--tls-key-file".into(),
        p("server.key"),
        "--tls-ca-cert-file".into(),
        p("ca.pem"),
        "--tls-auth-clients".into(),
        "yes".into(),
    ])
    .await;
    let url = format!("rediss://127.0.0.1:{tls_port}");
    let tls = format!(
        "liveness_interval_ms = 200\nliveness_timeout_ms = 1000\ntls_ca = {:?}\ntls_cert = {:?}\ntls_key = {:?}\n",
        p("ca.pem"),
        p("client.pem"),
        p("client.key")
    );
    let relay = Relay::start_with(
        &url,
        RelayOpts {
            redis_extra: tls,
            ..Default::default()
        },
    )
    .await;
    // Healthy means subscribed and the canary came back, over TLS.
    assert_eq!(relay.wait_health(200).await["redis"], "up");
    let mut c = relay.client("agentId=a1").await;
    // Published on the plain port, delivered through the relay's TLS subscription.
    redis
        .publish("claude-studio:agent:status", r#"{"agentId":"a1","s":1}"#)
        .await;
    let f = c.next_of_type("event").await;
    assert_eq!(f["data"]["s"], 1);

    // Without the client certificate the server refuses the handshake:
    // the relay stays down, saying so, rather than connecting in clear.
    let no_cert = Relay::start_with(
        &url,
        RelayOpts {
            redis_extra: format!("tls_ca = {:?}\n", p("ca.pem")),
            wait_redis: false,
            ..Default::default()
        },
    )
    .await;
    let warned = no_cert
        .wait_log(0, "redis unavailable; retrying with backoff")
        .await;
    assert!(
        warned["reason"].as_str().unwrap_or("").contains("connect"),
        "{warned}"
    );
    let (status, health) = no_cert.health().await;
    assert_eq!(
        (status, &health["redis"]),
        (503, &serde_json::json!("down"))
    );
    std::fs::remove_dir_all(&dir).ok();
}
