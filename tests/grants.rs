//! SPEC §13 signed per-agent grants against the real binary: HS256, EdDSA
//! and ES256 tokens made here (jsonwebtoken; the key pairs from rcgen), on
//! every path — the `/ws` URL (403), the subscribe frame (`forbidden`),
//! Socket.IO CONNECT (`44 forbidden`) and the subscribe emit (ack
//! `forbidden`) with the real socket.io-client — the 401s of tokens that do
//! not verify, expiry at `exp`, reloads of the key, static tokens beside
//! JWTs, and recovery under narrower grants.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::node::{events_until_marker, NodeProc};
use common::{http, request, ws_headers, Client, Redis, Relay, TempDir, WAIT};
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const CH: &str = "claude-studio:agent:status";
const SECRET: &str = "grants-test-secret-0123456789abcdef";
const OTHER_SECRET: &str = "another-secret-for-the-reload-0123456789";
const FORBIDDEN: &str = "relay_handshake_rejections_total{reason=\"forbidden\"}";
const UNAUTHORIZED: &str = "relay_handshake_rejections_total{reason=\"unauthorized\"}";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An `[auth.jwt]` key and a way to sign with it.
struct Signer {
    /// The TOML for the relay.
    section: String,
    alg: Algorithm,
    key: EncodingKey,
    /// The public key PEM (EdDSA), for the algorithm-confusion token.
    public_pem: String,
    _dir: Option<TempDir>,
}

impl Signer {
    fn hs256(secret: &str) -> Signer {
        Signer {
            section: format!("[auth.jwt]\nhs256_secret = \"{secret}\"\n"),
            alg: Algorithm::HS256,
            key: EncodingKey::from_secret(secret.as_bytes()),
            public_pem: String::new(),
            _dir: None,
        }
    }

    /// A fresh Ed25519 pair; the relay reads the public half from a file.
    fn eddsa(extra: &str) -> Signer {
        Signer::public_key(&rcgen::PKCS_ED25519, Algorithm::EdDSA, extra)
    }

    /// A fresh P-256 pair (ES256), the relay telling the algorithm from
    /// the key file alone.
    fn es256() -> Signer {
        Signer::public_key(&rcgen::PKCS_ECDSA_P256_SHA256, Algorithm::ES256, "")
    }

    fn public_key(kind: &'static rcgen::SignatureAlgorithm, alg: Algorithm, extra: &str) -> Signer {
        let pair = rcgen::KeyPair::generate_for(kind).unwrap();
        let dir = TempDir::new();
        let path = dir.0.join("jwt.pub.pem");
        std::fs::write(&path, pair.public_key_pem()).unwrap();
        Signer {
            section: format!(
                "[auth.jwt]\npublic_key_file = \"{}\"\n{extra}",
                path.display()
            ),
            alg,
            key: match alg {
                Algorithm::EdDSA => EncodingKey::from_ed_der(&pair.serialize_der()),
                _ => EncodingKey::from_ec_der(&pair.serialize_der()),
            },
            public_pem: pair.public_key_pem(),
            _dir: Some(dir),
        }
    }

    fn sign(&self, claims: Value) -> String {
        jsonwebtoken::encode(&Header::new(self.alg), &claims, &self.key).unwrap()
    }

    /// A token valid for a minute with `grants`.
    fn grants(&self, grants: Value) -> String {
        self.sign(json!({"exp": now() + 60, "grants": grants}))
    }
}

/// Unpadded base64url, for the hand-made `alg: none` token.
fn b64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// A `/ws` handshake that is expected to be refused: its status and body.
async fn refused(addr: SocketAddr, query: &str) -> (u16, String) {
    let r = http(addr, "GET", &format!("/ws?{query}"), &ws_headers())
        .await
        .unwrap();
    (r.status, r.body)
}

/// Publishes `payloads` then a global marker; the events `c` got before the marker.
async fn native_until_marker(redis: &Redis, c: &mut Client, payloads: &[Value]) -> Vec<Value> {
    for p in payloads {
        redis.publish(CH, p.to_string()).await;
    }
    redis.publish("claude-studio:marker", "{}").await;
    let mut got = Vec::new();
    loop {
        let f = c.next_of_type("event").await;
        if f["event"] == "marker" {
            return got;
        }
        got.push(f["data"].clone());
    }
}

/// Grants for agent `a1` (and any session) on the `/ws` paths: URL, frames,
/// delivery. Returns how many `forbidden` refusals it caused.
async fn native_paths(redis: &Redis, relay: &Relay, signer: &Signer) -> f64 {
    let token = signer.grants(json!({"agentId": ["a1"], "sessionId": ["*"]}));
    // The URL: granted values connect, others are 403 naming them.
    let mut c = relay.client(&format!("agentId=a1&token={token}")).await;
    assert_eq!(c.welcome["subscriptions"]["agentId"], json!(["a1"]));
    let (status, body) = refused(
        relay.addr(),
        &format!("agentId=a1&agentId=a2&token={token}"),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("forbidden") && body.contains("agentId=a2"),
        "{body}"
    );
    let (status, body) = refused(relay.addr(), &format!("all=true&token={token}")).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("firehose"), "{body}");
    // Frames: outside the grants is `forbidden`, "*" grants any session.
    c.send_json(json!({"type": "subscribe", "agentId": "a2"}))
        .await;
    let e = c.next_of_type("error").await;
    assert_eq!(e["code"], "forbidden", "{e}");
    assert!(e["message"].as_str().unwrap().contains("agentId=a2"), "{e}");
    c.send_json(json!({"type": "subscribe", "sessionId": "s1", "agentId": "a3"}))
        .await;
    assert_eq!(
        c.next_of_type("error").await["code"],
        "forbidden",
        "whole frame"
    );
    c.send_json(json!({"type": "subscribe", "all": true})).await;
    assert_eq!(c.next_of_type("error").await["code"], "forbidden");
    let ack = c.subscribe(json!({"sessionId": "any-session"})).await;
    assert_eq!(ack["sessionId"], "any-session");
    // Delivery: what it holds and global events, nothing else.
    let got = native_until_marker(
        redis,
        &mut c,
        &[
            json!({"agentId": "a2", "n": 1}),
            json!({"agentId": "a1", "n": 2}),
            json!({"sessionId": "any-session", "n": 3}),
            json!({"global": true}),
        ],
    )
    .await;
    assert_eq!(
        got,
        [
            json!({"agentId": "a1", "n": 2}),
            json!({"sessionId": "any-session", "n": 3}),
            json!({"global": true})
        ]
    );
    // The header carries a JWT as well as the query does.
    let bearer = format!("Bearer {token}");
    let c2 = Client::try_connect(relay.addr(), "agentId=a1", &[("Authorization", &bearer)])
        .await
        .unwrap();
    assert_eq!(c2.welcome["subscriptions"]["agentId"], json!(["a1"]));
    // The firehose, when granted.
    let fire = signer.grants(json!({"all": true}));
    let mut f = relay.client(&format!("all=true&token={fire}")).await;
    assert_eq!(f.welcome["all"], true);
    let got = native_until_marker(redis, &mut f, &[json!({"agentId": "zz"})]).await;
    assert_eq!(got, [json!({"agentId": "zz"})]);
    5.0
}

/// The same grants over Socket.IO with the real client: CONNECT `auth`
/// subscriptions (44 forbidden) and subscribe emits (ack forbidden).
async fn socketio_paths(redis: &Redis, relay: &Relay, signer: &Signer) -> f64 {
    let url = format!("http://{}", relay.addr());
    let token = signer.grants(json!({"agentId": ["a1"], "sessionId": ["*"]}));
    let mut c = NodeProc::socketio(&url, json!({"auth": {"token": token, "agentId": "a1"}})).await;
    c.wait_for("connect").await;
    c.send(
        json!({"cmd": "emitWithAck", "id": 1, "name": "subscribe", "args": [{"agentId": "a2"}]}),
    )
    .await;
    let ack = c.wait_for("ack").await;
    assert_eq!(ack["args"][0]["error"], "forbidden", "{ack}");
    assert!(
        ack["args"][0]["message"]
            .as_str()
            .unwrap()
            .contains("agentId=a2"),
        "{ack}"
    );
    c.send(json!({"cmd": "emitWithAck", "id": 2, "name": "subscribe", "args": [{"all": true}]}))
        .await;
    assert_eq!(c.wait_for("ack").await["args"][0]["error"], "forbidden");
    c.send(
        json!({"cmd": "emitWithAck", "id": 3, "name": "subscribe", "args": [{"sessionId": "s7"}]}),
    )
    .await;
    assert_eq!(c.wait_for("ack").await["args"], json!([{"ok": true}]));
    let got = events_until_marker(
        redis,
        &mut c,
        &[
            json!({"agentId": "a2"}),
            json!({"agentId": "a1"}),
            json!({"sessionId": "s7"}),
            json!({"plain": "global"}),
        ],
    )
    .await;
    assert_eq!(
        got,
        [
            json!({"agentId": "a1"}),
            json!({"sessionId": "s7"}),
            json!({"plain": "global"})
        ]
    );
    // CONNECT asking for more than the grants, in `auth` or in the query
    // (the token coming only in `auth`): refused `forbidden`.
    for opts in [
        json!({"auth": {"token": token, "agentId": ["a1", "a2"]}, "reconnection": false}),
        json!({"auth": {"token": token, "all": true}, "reconnection": false}),
        json!({"auth": {"token": token}, "query": {"agentId": "a2"}, "reconnection": false}),
    ] {
        let mut r = NodeProc::socketio(&url, opts.clone()).await;
        assert_eq!(
            r.wait_for("connect_error").await["message"],
            "forbidden",
            "{opts}"
        );
    }
    // A token in the handshake query is checked there: 403 before any session.
    let r = request(
        relay.addr(),
        "GET",
        &format!("/socket.io/?EIO=4&transport=polling&agentId=a2&token={token}"),
        &[],
        b"",
        WAIT,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 403, "{}", r.body);
    6.0
}

#[tokio::test]
async fn hs256_grants_on_every_path() {
    let redis = Redis::start().await;
    let signer = Signer::hs256(SECRET);
    let relay = Relay::with_extra(&redis, &signer.section).await;
    let mut refusals = native_paths(&redis, &relay, &signer).await;
    refusals += socketio_paths(&redis, &relay, &signer).await;
    assert_eq!(relay.metric(FORBIDDEN).await, refusals);
    // Nothing it did was a 401.
    let text = relay.metrics().await;
    assert_eq!(
        common::metric_value(&text, UNAUTHORIZED).unwrap_or(0.0),
        0.0
    );
}

#[tokio::test]
async fn es256_grants_on_every_path() {
    let redis = Redis::start().await;
    let signer = Signer::es256();
    let relay = Relay::with_extra(&redis, &signer.section).await;
    let mut refusals = native_paths(&redis, &relay, &signer).await;
    refusals += socketio_paths(&redis, &relay, &signer).await;
    assert_eq!(relay.metric(FORBIDDEN).await, refusals);
    // An EdDSA token is refused by an ES256 key (401, not a grant check).
    let other = Signer::eddsa("");
    let token = other.grants(json!({"agentId": ["a1"]}));
    let (status, body) = refused(relay.addr(), &format!("agentId=a1&token={token}")).await;
    assert_eq!(status, 401, "{body}");
}

#[tokio::test]
async fn eddsa_grants_on_every_path() {
    let redis = Redis::start().await;
    let signer = Signer::eddsa("");
    let relay = Relay::with_extra(&redis, &signer.section).await;
    let mut refusals = native_paths(&redis, &relay, &signer).await;
    refusals += socketio_paths(&redis, &relay, &signer).await;
    assert_eq!(relay.metric(FORBIDDEN).await, refusals);
}

#[tokio::test]
async fn tokens_that_do_not_verify_are_401() {
    let redis = Redis::start().await;
    let signer = Signer::eddsa("issuer = \"studio\"\naudience = \"relay\"\n");
    let relay = Relay::with_extra(&redis, &signer.section).await;
    let exp = now() + 60;
    let good = json!({"exp": exp, "iss": "studio", "aud": "relay", "grants": {"agentId": ["a1"]}});
    let ok = signer.sign(good.clone());
    relay.client(&format!("agentId=a1&token={ok}")).await;

    let with = |patch: Value| {
        let mut c = good.clone();
        for (k, v) in patch.as_object().unwrap() {
            match v {
                Value::Null => c.as_object_mut().unwrap().remove(k),
                v => c.as_object_mut().unwrap().insert(k.clone(), v.clone()),
            };
        }
        c
    };
    let other = Signer::eddsa("");
    let payload = b64url(with(json!({})).to_string().as_bytes());
    let confused = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &good,
        &EncodingKey::from_secret(signer.public_pem.as_bytes()),
    )
    .unwrap();
    let bad = [
        ("expired", signer.sign(with(json!({"exp": now() - 1})))),
        ("nbf ahead", signer.sign(with(json!({"nbf": now() + 30})))),
        (
            "wrong issuer",
            signer.sign(with(json!({"iss": "elsewhere"}))),
        ),
        ("no issuer", signer.sign(with(json!({"iss": null})))),
        ("wrong audience", signer.sign(with(json!({"aud": "other"})))),
        ("no audience", signer.sign(with(json!({"aud": null})))),
        ("wrong key", other.sign(good.clone())),
        (
            "alg none",
            format!("{}.{payload}.", b64url(br#"{"alg":"none","typ":"JWT"}"#)),
        ),
        ("algorithm confusion", confused),
        ("no exp", signer.sign(with(json!({"exp": null})))),
        ("garbage", "not.a.jwt".to_owned()),
    ];
    for (what, token) in &bad {
        let (status, body) = refused(relay.addr(), &format!("agentId=a1&token={token}")).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert!(
            !body.contains(token.as_str()),
            "{what}: the token is not echoed"
        );
    }
    assert_eq!(relay.metric(UNAUTHORIZED).await, bad.len() as f64);
    assert!(!relay.log_text().contains(&ok), "tokens are never logged");
}

#[tokio::test]
async fn static_tokens_still_grant_everything_beside_jwts() {
    let redis = Redis::start().await;
    let signer = Signer::hs256(SECRET);
    let extra = format!("[auth]\ntokens = [\"static-1\"]\n{}", signer.section);
    let relay = Relay::with_extra(&redis, &extra).await;
    let mut s = relay.client("all=true&token=static-1").await;
    assert_eq!(s.welcome["all"], true);
    s.subscribe(json!({"agentId": "anyone"})).await;
    let got = native_until_marker(&redis, &mut s, &[json!({"agentId": "x"})]).await;
    assert_eq!(got, [json!({"agentId": "x"})]);
    let jwt = signer.grants(json!({"agentId": ["a1"]}));
    relay.client(&format!("agentId=a1&token={jwt}")).await;
    assert_eq!(
        refused(relay.addr(), &format!("agentId=a9&token={jwt}"))
            .await
            .0,
        403
    );
    assert_eq!(refused(relay.addr(), "agentId=a1").await.0, 401);
    assert_eq!(
        refused(relay.addr(), "agentId=a1&token=static-2").await.0,
        401
    );
    // And over Socket.IO, a static token in `auth`.
    let url = format!("http://{}", relay.addr());
    let mut c = NodeProc::socketio(&url, json!({"auth": {"token": "static-1", "all": true}})).await;
    c.wait_for("connect").await;
}

/// Asserts the close of a connection whose token expired at `exp` (unix
/// seconds): 1008 `token expired`, after `exp` and not long after.
fn assert_expired_close(code: u16, reason: &str, exp: u64) {
    let at = SystemTime::now();
    assert_eq!((code, reason), (1008, "token expired"));
    let exp = UNIX_EPOCH + Duration::from_secs(exp);
    assert!(at >= exp, "closed {:?} before exp", exp.duration_since(at));
    let late = at.duration_since(exp).unwrap();
    assert!(late < Duration::from_secs(2), "closed {late:?} after exp");
}

type RawWs =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next close frame of a raw websocket, answering Engine.IO pings.
async fn raw_close(ws: &mut RawWs) -> (u16, String) {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no close")
        {
            Some(Ok(Message::Close(Some(f)))) => {
                return (u16::from(f.code), f.reason.as_str().to_owned())
            }
            Some(Ok(Message::Text(t))) if t.as_str() == "2" => {
                ws.send(Message::Text("3".into())).await.unwrap()
            }
            Some(Ok(_)) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    }
}

async fn raw_text(ws: &mut RawWs) -> String {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) => return t.as_str().to_owned(),
            Some(Ok(_)) => continue,
            other => panic!("no text frame: {other:?}"),
        }
    }
}

/// A websocket-only Socket.IO session, CONNECTed with `auth`.
async fn sio_ws(addr: SocketAddr, auth: Value) -> (RawWs, String) {
    let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert!(raw_text(&mut ws).await.starts_with('0'));
    ws.send(Message::Text(format!("40{auth}").into()))
        .await
        .unwrap();
    let reply = raw_text(&mut ws).await;
    (ws, reply)
}

#[tokio::test]
async fn a_token_expiring_while_connected_is_closed_1008_at_exp() {
    let redis = Redis::start().await;
    let signer = Signer::hs256(SECRET);
    let relay = Relay::with_extra(&redis, &signer.section).await;
    // Whole seconds: at least two ahead, so the handshakes finish first.
    let exp = now() + 3;
    let token = signer.sign(json!({"exp": exp, "grants": {"agentId": ["a1"]}}));
    let mut native = relay.client(&format!("agentId=a1&token={token}")).await;
    let (mut sio, reply) = sio_ws(relay.addr(), json!({"token": token, "agentId": "a1"})).await;
    assert!(reply.starts_with("40{\"sid\""), "{reply}");
    // A polling session: its pending poll is answered with a close packet.
    let open = request(
        relay.addr(),
        "GET",
        &format!("/socket.io/?EIO=4&transport=polling&token={token}"),
        &[],
        b"",
        WAIT,
    )
    .await
    .unwrap();
    let sid = serde_json::from_str::<Value>(&open.body[1..]).unwrap()["sid"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    let post = request(relay.addr(), "POST", &path, &[], b"40", WAIT)
        .await
        .unwrap();
    assert_eq!(post.status, 200);
    let first = request(relay.addr(), "GET", &path, &[], b"", WAIT)
        .await
        .unwrap();
    assert!(first.body.starts_with("40"), "{}", first.body);

    let poll = tokio::spawn({
        let (addr, path) = (relay.addr(), path.clone());
        async move { request(addr, "GET", &path, &[], b"", WAIT).await.unwrap() }
    });
    let (code, reason) = native.expect_close().await;
    assert_expired_close(code, &reason, exp);
    let (code, reason) = raw_close(&mut sio).await;
    assert_expired_close(code, &reason, exp);
    let r = poll.await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "1"), "close packet");
    let after = request(relay.addr(), "GET", &path, &[], b"", WAIT)
        .await
        .unwrap();
    assert_eq!(after.status, 400, "the session ended: {}", after.body);
    // At exp itself a new handshake with it is refused.
    assert_eq!(
        refused(relay.addr(), &format!("agentId=a1&token={token}"))
            .await
            .0,
        401
    );
}

#[tokio::test]
async fn a_reload_with_a_new_secret_closes_old_tokens_1008_and_new_ones_work() {
    let redis = Redis::start().await;
    let old = Signer::hs256(SECRET);
    let new = Signer::hs256(OTHER_SECRET);
    let extra = format!("[auth]\ntokens = [\"static-1\"]\n{}", old.section);
    let relay = Relay::with_extra(&redis, &extra).await;
    let token = old.grants(json!({"agentId": ["a1"]}));
    let mut native = relay.client(&format!("agentId=a1&token={token}")).await;
    let (mut sio, _) = sio_ws(relay.addr(), json!({"token": token})).await;
    let mut holder = relay.client("token=static-1").await;
    let outcome = relay
        .reload(
            "studio_relay=debug,info",
            &format!("[auth]\ntokens = [\"static-1\"]\n{}", new.section),
        )
        .await;
    assert_eq!(outcome["message"], "config reloaded", "{outcome}");
    assert_eq!(
        native.expect_close().await,
        (1008, "token revoked".to_owned())
    );
    assert_eq!(raw_close(&mut sio).await.0, 1008);
    // The static token's connection stays.
    holder.send_json(json!({"type": "ping"})).await;
    assert_eq!(holder.next_of_type("pong").await["type"], "pong");
    assert_eq!(
        refused(relay.addr(), &format!("agentId=a1&token={token}"))
            .await
            .0,
        401
    );
    let fresh = new.grants(json!({"agentId": ["a1"]}));
    relay.client(&format!("agentId=a1&token={fresh}")).await;
    assert!(
        !relay.log_text().contains(OTHER_SECRET),
        "secrets are never logged"
    );
}

#[tokio::test]
async fn recovery_is_refused_when_the_new_token_does_not_grant_what_was_held() {
    let redis = Redis::start().await;
    let signer = Signer::hs256(SECRET);
    let extra = format!("[history]\nsize = 1000\n{}", signer.section);
    let relay = Relay::with_extra(&redis, &extra).await;
    let url = format!("http://{}", relay.addr());
    let wide = signer.grants(json!({"agentId": ["a1", "a2"]}));
    let narrow = signer.grants(json!({"agentId": ["a1"]}));
    for (back_with, recovered) in [(&narrow, false), (&wide, true)] {
        let mut c = NodeProc::socketio(
            &url,
            json!({"auth": {"token": wide, "agentId": "a1"}, "transports": ["websocket"]}),
        )
        .await;
        let connect = c.wait_for("connect").await;
        c.send(json!({"cmd": "emitWithAck", "id": 1, "name": "subscribe", "args": [{"agentId": "a2"}]}))
            .await;
        assert_eq!(c.wait_for("ack").await["args"], json!([{"ok": true}]));
        let pid = connect["pid"].as_str().unwrap().to_owned();
        // Killed, not disconnected: the session is parked under its pid.
        let status = std::process::Command::new("kill")
            .args(["-9", &c.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        drop(c);
        let deadline = tokio::time::Instant::now() + WAIT;
        while relay
            .metric("relay_socketio_sessions_open{transport=\"websocket\"}")
            .await
            != 0.0
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "session never ended"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut back = NodeProc::socketio(
            &url,
            json!({"auth": {"token": back_with, "pid": pid}, "transports": ["websocket"]}),
        )
        .await;
        let again = back.wait_for("connect").await;
        // A fresh socket.io-client never had this pid, so its own
        // `recovered` flag stays false; the relay's answer is the sid: the
        // old one when recovered, a new one (and relay:gap) when not.
        if recovered {
            assert_eq!(again["id"], connect["id"], "{again}");
            let got = events_until_marker(&redis, &mut back, &[json!({"agentId": "a2"})]).await;
            assert_eq!(got, [json!({"agentId": "a2"})]);
        } else {
            assert_ne!(again["id"], connect["id"], "{again}");
            let (name, _) = back.next_event().await;
            assert_eq!(name, "relay:gap");
            let got = events_until_marker(&redis, &mut back, &[json!({"agentId": "a2"})]).await;
            assert!(got.is_empty(), "a2 is not granted: {got:?}");
        }
    }
}
