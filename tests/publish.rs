//! SPEC §10 `POST /publish`: every answer, delivery through Redis to every
//! relay and straight to this relay's hub, no Redis at all, the corpus
//! delivered exactly as when published on Redis, and tokens kept out of logs.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::{bin, request, Client, HttpResponse, Redis, Relay, RelayOpts, TempDir};

const TOKEN: &str = "pub-s3cret-token-0001";
const WRONG: &str = "pub-wrong-token-9999";

fn publish_section(to: &str, extra: &str) -> String {
    format!("[publish]\nenabled = true\ntokens = [\"{TOKEN}\"]\nto = \"{to}\"\n{extra}")
}

async fn start(redis: &Redis, section: &str) -> Relay {
    Relay::with_extra(redis, section).await
}

/// POST /publish with `Authorization: Bearer token` (when given).
async fn post(addr: SocketAddr, token: Option<&str>, body: &[u8]) -> HttpResponse {
    post_with(addr, token, body, &[]).await
}

async fn post_with(
    addr: SocketAddr,
    token: Option<&str>,
    body: &[u8],
    headers: &[(&str, &str)],
) -> HttpResponse {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut h: Vec<(&str, &str)> = headers.to_vec();
    if let Some(a) = &auth {
        h.push(("Authorization", a));
    }
    request(addr, "POST", "/publish", &h, body, common::WAIT)
        .await
        .unwrap()
}

/// Writes `raw` as the whole request and reads the answer.
async fn raw(addr: SocketAddr, raw: &[u8]) -> HttpResponse {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(common::WAIT, s.read_to_end(&mut buf))
        .await
        .expect("no answer")
        .unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    HttpResponse {
        status: head.split_whitespace().nth(1).unwrap().parse().unwrap(),
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

fn chunked(token: &str, chunks: &[&[u8]]) -> Vec<u8> {
    let mut r = format!(
        "POST /publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for c in chunks {
        r.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        r.extend_from_slice(c);
        r.extend_from_slice(b"\r\n");
    }
    r.extend_from_slice(b"0\r\n\r\n");
    r
}

fn body_json(r: &HttpResponse) -> Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {} {}", r.status, r.body))
}

fn header<'a>(r: &'a HttpResponse, name: &str) -> Option<&'a str> {
    r.head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The next event frame (skipping pings and the like).
async fn next_event(c: &mut Client) -> Value {
    c.next_of_type("event").await
}

/// The raw text of every event frame up to and including the one named `end`.
async fn frames_until(c: &mut Client, end: &str) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        let text = c.next_text().await;
        let v: Value = serde_json::from_str(&text).unwrap();
        if v["type"] != "event" {
            continue;
        }
        let done = v["event"] == end;
        out.push(text);
        if done {
            return out;
        }
    }
}

#[tokio::test]
async fn every_refusal_has_its_status_and_publishes_nothing() {
    let redis = Redis::start().await;
    let relay = start(&redis, &publish_section("redis", "max_body_bytes = 1024\n")).await;
    let mut c = relay.client("all=true").await;
    let marker = "payload-marker-7f3a";

    // 401: no token, a wrong one, the wrong scheme.
    for auth in [None, Some(WRONG), Some("")] {
        let r = post(relay.addr(), auth, br#"{"event":"x"}"#).await;
        assert_eq!(r.status, 401, "{auth:?}: {}", r.body);
        assert_eq!(header(&r, "www-authenticate"), Some("Bearer"));
        assert_eq!(body_json(&r)["error"], "unauthorized");
    }
    let basic = format!("Basic {TOKEN}");
    let r = post_with(
        relay.addr(),
        None,
        br#"{"event":"x"}"#,
        &[("Authorization", &basic)],
    )
    .await;
    assert_eq!(r.status, 401);

    // 405 with Allow: POST.
    for m in ["GET", "PUT", "DELETE", "OPTIONS"] {
        let r = request(relay.addr(), m, "/publish", &[], b"", common::WAIT)
            .await
            .unwrap();
        assert_eq!(r.status, 405, "{m}");
        assert_eq!(header(&r, "allow"), Some("POST"), "{m}");
    }

    // 400: each bad body names its fault.
    let bad: Vec<(Vec<u8>, &str, Option<usize>)> = vec![
        (b"\xff\xfe".to_vec(), "not_utf8", None),
        (b"".to_vec(), "bad_json", None),
        (b"{\"event\":".to_vec(), "bad_json", None),
        (b"\"agent:status\"".to_vec(), "bad_body", None),
        (b"17".to_vec(), "bad_body", None),
        (b"{}".to_vec(), "bad_event", None),
        (b"{\"event\":\"\"}".to_vec(), "bad_event", None),
        (b"{\"event\":5}".to_vec(), "bad_event", None),
        (b"{\"event\":\"a b\"}".to_vec(), "bad_event", None),
        (b"{\"event\":\"a*\"}".to_vec(), "bad_event", None),
        (
            b"{\"event\":\"__studio_relay__\"}".to_vec(),
            "bad_event",
            None,
        ),
        (
            b"{\"event\":\"a\",\"payload\":{}}".to_vec(),
            "bad_event",
            None,
        ),
        // All or nothing: the valid first element is not published.
        (
            format!("[{{\"event\":\"ok\",\"data\":{{\"m\":\"{marker}\"}}}},3]").into_bytes(),
            "bad_event",
            Some(1),
        ),
        (
            format!("[{{\"event\":\"ok\",\"data\":\"{marker}\"}},{{\"data\":1}}]").into_bytes(),
            "bad_event",
            Some(1),
        ),
    ];
    for (body, code, index) in &bad {
        let r = post(relay.addr(), Some(TOKEN), body).await;
        let what = String::from_utf8_lossy(body);
        assert_eq!(r.status, 400, "{what}: {}", r.body);
        assert_eq!(header(&r, "content-type"), Some("application/json"));
        let v = body_json(&r);
        assert_eq!(v["error"], *code, "{what}: {v}");
        assert!(!v["message"].as_str().unwrap().is_empty(), "{v}");
        assert_eq!(
            v["index"].as_u64().map(|i| i as usize),
            *index,
            "{what}: {v}"
        );
    }

    // 413 on Content-Length alone: no body is sent, none is waited for.
    let head = format!(
        "POST /publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 1025\r\nConnection: close\r\n\r\n"
    );
    let r = raw(relay.addr(), head.as_bytes()).await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(body_json(&r)["error"], "too_large");
    // 413 on a chunked body, counted while read.
    let chunk = [b' '; 400];
    let r = raw(relay.addr(), &chunked(TOKEN, &[&chunk, &chunk, &chunk])).await;
    assert_eq!(r.status, 413, "{}", r.body);
    // Exactly at the limit is fine, chunked too.
    let at_limit = format!(
        "{{\"event\":\"pad\",\"data\":\"{}\"}}",
        "p".repeat(1024 - 25)
    );
    assert_eq!(at_limit.len(), 1024);
    let (a, b) = at_limit.as_bytes().split_at(500);
    let r = raw(relay.addr(), &chunked(TOKEN, &[a, b])).await;
    assert_eq!((r.status, body_json(&r)), (202, json!({"accepted": 1})));
    assert_eq!(next_event(&mut c).await["event"], "pad");
    let r = post(relay.addr(), Some(TOKEN), at_limit.as_bytes()).await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(next_event(&mut c).await["event"], "pad");

    // An empty array is accepted, with nothing to publish.
    let r = post(relay.addr(), Some(TOKEN), b"[]").await;
    assert_eq!((r.status, body_json(&r)), (202, json!({"accepted": 0})));
    // Content-Type is not checked: curl -d sends a form type.
    let r = post_with(
        relay.addr(),
        Some(TOKEN),
        br#"{"event":"typed","data":{"agentId":"a1"}}"#,
        &[("Content-Type", "application/x-www-form-urlencoded")],
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    // Nothing refused above reached the client: the next event is this one.
    let v = next_event(&mut c).await;
    assert_eq!(
        v,
        json!({"type":"event","event":"typed","data":{"agentId":"a1"}})
    );

    let m = relay.metrics().await;
    for (reason, n) in [
        ("unauthorized", 4.0),
        ("too_large", 2.0),
        ("not_utf8", 1.0),
        ("bad_json", 2.0),
        ("bad_body", 2.0),
        ("bad_event", 9.0),
    ] {
        let series = format!("relay_publish_rejections_total{{reason=\"{reason}\"}}");
        assert_eq!(common::metric_value(&m, &series), Some(n), "{series}\n{m}");
    }
    assert_eq!(
        common::metric_value(&m, "relay_source_messages_total{source=\"publish\"}"),
        Some(3.0),
        "{m}"
    );

    // Neither token nor payload ever reaches the log, even at debug.
    let logs = relay.log_text();
    assert!(logs.contains("publish refused"), "refusals are logged");
    for secret in [TOKEN, WRONG, marker] {
        assert!(!logs.contains(secret), "{secret} in logs:\n{logs}");
    }
}

#[tokio::test]
async fn disabled_is_404_like_any_unknown_path() {
    let redis = Redis::start().await;
    let relay = Relay::start(&redis).await;
    let unknown = post(relay.addr(), Some(TOKEN), b"{}").await;
    let r = request(relay.addr(), "POST", "/nope", &[], b"{}", common::WAIT)
        .await
        .unwrap();
    assert_eq!((unknown.status, &unknown.body), (404, &r.body));
    let r = request(relay.addr(), "GET", "/publish", &[], b"", common::WAIT)
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    assert!(!relay.metrics().await.contains("source=\"publish\""));
}

#[tokio::test]
async fn to_redis_reaches_the_clients_of_every_relay_routed_by_agent_id() {
    let redis = Redis::start().await;
    let a = start(&redis, &publish_section("redis", "")).await;
    let b = start(&redis, "").await;
    let mut a1 = a.client("agentId=a1").await;
    let mut b1 = b.client("agentId=a1").await;
    let mut b2 = Client::connect(b.addrs[1], "agentId=a2").await;
    let body = json!([
        {"event": "agent:status", "data": {"agentId": "a1", "status": "busy"}},
        {"event": "agent:status", "data": {"agentId": "a2", "status": "idle"}},
        {"event": "ping", "data": {"t": 1}},
    ]);
    let r = post(a.addr(), Some(TOKEN), body.to_string().as_bytes()).await;
    assert_eq!((r.status, body_json(&r)), (202, json!({"accepted": 3})));
    let busy =
        json!({"type":"event","event":"agent:status","data":{"agentId":"a1","status":"busy"}});
    let idle =
        json!({"type":"event","event":"agent:status","data":{"agentId":"a2","status":"idle"}});
    let ping = json!({"type":"event","event":"ping","data":{"t":1}});
    for c in [&mut a1, &mut b1] {
        assert_eq!(next_event(c).await, busy);
        assert_eq!(next_event(c).await, ping);
    }
    assert_eq!(next_event(&mut b2).await, idle);
    assert_eq!(next_event(&mut b2).await, ping);
    // It went through Redis: the other relay counted it as a Redis message.
    assert_eq!(
        b.metric("relay_source_messages_total{source=\"redis\"}")
            .await,
        3.0
    );
    assert_eq!(
        a.metric("relay_source_messages_total{source=\"publish\"}")
            .await,
        3.0
    );
}

#[tokio::test]
async fn to_local_is_delivered_by_this_relay_only() {
    let redis = Redis::start().await;
    let a = start(&redis, &publish_section("local", "")).await;
    let b = start(&redis, "").await;
    let mut ca = a.client("agentId=a1").await;
    let mut cb = b.client("agentId=a1").await;
    let r = post(
        a.addr(),
        Some(TOKEN),
        br#"{"event":"agent:status","data":{"agentId":"a1","n":1}}"#,
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let v = next_event(&mut ca).await;
    assert_eq!(v["data"], json!({"agentId":"a1","n":1}));
    // Then one on Redis: the other relay's first event is that one.
    assert!(
        redis
            .publish("claude-studio:after", r#"{"agentId":"a1"}"#)
            .await
            >= 2
    );
    assert_eq!(next_event(&mut cb).await["event"], "after");
    assert_eq!(next_event(&mut ca).await["event"], "after");
    assert_eq!(
        b.metric("relay_source_messages_total{source=\"redis\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn without_redis_publish_is_the_only_source() {
    let opts = RelayOpts {
        extra: publish_section("local", ""),
        ..Default::default()
    };
    let relay = Relay::start_with("", opts).await;
    let (status, health) = relay.health().await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["redis"], "off", "{health}");
    assert_eq!(health["status"], "ok", "{health}");
    let mut c = relay.client("sessionId=s1").await;
    let r = post(
        relay.addr(),
        Some(TOKEN),
        br#"[{"event":"message:new","data":{"sessionId":"s1","text":"hi"}},{"event":"message:new","data":{"sessionId":"s2"}},{"event":"done"}]"#,
    )
    .await;
    assert_eq!((r.status, body_json(&r)), (202, json!({"accepted": 3})));
    assert_eq!(
        next_event(&mut c).await["data"],
        json!({"sessionId":"s1","text":"hi"})
    );
    assert_eq!(
        next_event(&mut c).await,
        json!({"type":"event","event":"done","data":null})
    );
}

#[tokio::test]
async fn redis_down_is_a_prompt_503_and_the_publisher_reconnects() {
    let mut redis = Redis::start().await;
    let relay = start(&redis, &publish_section("redis", "")).await;
    let mut c = relay.client("all=true").await;
    redis.kill();
    relay.wait_health(503).await;
    let t = Instant::now();
    let r = post(relay.addr(), Some(TOKEN), br#"{"event":"lost"}"#).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(body_json(&r)["error"], "unavailable");
    assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());
    redis.restart().await;
    relay.wait_health(200).await;
    // fred reconnects on its own backoff: wait for the publisher to be back.
    let deadline = Instant::now() + common::WAIT;
    loop {
        let r = post(relay.addr(), Some(TOKEN), br#"{"event":"back"}"#).await;
        if r.status == 202 {
            break;
        }
        assert_eq!(r.status, 503, "{}", r.body);
        assert!(Instant::now() < deadline, "publisher never reconnected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The first event after the outage is "back", never "lost".
    let v = next_event(&mut c).await;
    assert_eq!(v["event"], "back", "{v}");
}

/// Claude Studio's event shapes, as `(event, raw data text)`.
fn corpus() -> Vec<(String, String)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/corpus/claude-studio-events.jsonl"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|_| {
        // A few of the same shapes, when the shared corpus is not checked out.
        [
            r#"{"event":"agent:status-changed","data":{"agentId":"dev_01","status":"busy"}}"#,
            r#"{"event":"message:new","data":{"sessionId":"dev_01","projectId":"proj_7","message":{"role":"assistant","content":"x"}}}"#,
            r#"{"event":"agent:mention-received","data":{"targetAgentId":"reviewer_02","projectId":"proj_7"}}"#,
            r#"{"event":"workflow:aborted","data":{"threadId":"th_42","status":"aborted"}}"#,
            r#"{"event":"ping","data":{"timestamp":1764497000000}}"#,
        ]
        .join("\n")
    });
    let events: Vec<(String, String)> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: BTreeMap<String, Box<RawValue>> = serde_json::from_str(l).unwrap();
            let event: String = serde_json::from_str(v["event"].get()).unwrap();
            (event, v["data"].get().to_owned())
        })
        .collect();
    assert!(events.len() >= 5);
    events
}

#[tokio::test]
async fn the_corpus_arrives_the_same_through_publish_and_through_redis() {
    let redis = Redis::start().await;
    let routing = "[routing]\nfields = [\"agentId\", \"sessionId\", \"targetAgentId\", \"threadId\", \"projectId\"]\n";
    let local = start(
        &redis,
        &format!("{routing}{}", publish_section("local", "")),
    )
    .await;
    let remote = start(
        &redis,
        &format!("{routing}{}", publish_section("redis", "")),
    )
    .await;
    let queries = [
        "agentId=dev_01",
        "sessionId=dev_01",
        "targetAgentId=reviewer_02",
        "threadId=th_42",
        "projectId=proj_7",
        "agentId=reviewer_02&sessionId=dev_01",
        "all=true",
        "",
    ];
    let mut on_local = Vec::new();
    let mut on_remote = Vec::new();
    for q in queries {
        on_local.push(local.client(q).await);
        on_remote.push(remote.client(q).await);
    }
    let events = corpus();
    let body = |end: &str| {
        let items: Vec<String> = events
            .iter()
            .map(|(e, d)| format!("{{\"event\":{},\"data\":{d}}}", json!(e)))
            .chain([format!("{{\"event\":\"{end}\"}}")])
            .collect();
        format!("[{}]", items.join(","))
    };

    // 1. PUBLISH on Redis, as app servers do.
    let mut conn = redis.conn().await;
    let mut items: Vec<(String, String)> = events
        .iter()
        .map(|(e, d)| (format!("claude-studio:{e}"), d.clone()))
        .collect();
    items.push(("claude-studio:end:redis".into(), "null".into()));
    conn.publish_many(&items).await;
    let mut via_redis = Vec::new();
    for c in on_local.iter_mut().chain(on_remote.iter_mut()) {
        via_redis.push(frames_until(c, "end:redis").await);
    }
    // Routing did something: not everyone got everything.
    let sizes: Vec<usize> = via_redis.iter().map(Vec::len).collect();
    assert!(sizes.iter().min() < sizes.iter().max(), "{sizes:?}");

    // 2. POST to the local relay: only its own clients, byte for byte the same.
    let r = post(local.addr(), Some(TOKEN), body("end:local").as_bytes()).await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(body_json(&r)["accepted"], events.len() + 1);
    for (i, c) in on_local.iter_mut().enumerate() {
        let mut got = frames_until(c, "end:local").await;
        let mut want = via_redis[i].clone();
        got.pop();
        want.pop();
        assert_eq!(got, want, "client {:?}", queries[i]);
    }

    // 3. POST to the relay that re-publishes: every relay's clients.
    let r = post(remote.addr(), Some(TOKEN), body("end:remote").as_bytes()).await;
    assert_eq!(r.status, 202, "{}", r.body);
    for (i, c) in on_local.iter_mut().chain(on_remote.iter_mut()).enumerate() {
        let mut got = frames_until(c, "end:remote").await;
        let mut want = via_redis[i].clone();
        got.pop();
        want.pop();
        assert_eq!(got, want, "client {i} {:?}", queries[i % queries.len()]);
    }
}

#[tokio::test]
async fn publish_tokens_apply_on_reload() {
    let redis = Redis::start().await;
    let relay = start(&redis, &publish_section("local", "")).await;
    let body = br#"{"event":"x"}"#;
    assert_eq!(post(relay.addr(), Some(TOKEN), body).await.status, 202);
    let outcome = relay
        .reload(
            "studio_relay=debug,info",
            "[publish]\nenabled = true\nto = \"local\"\ntokens = [\"rotated-token\"]\n",
        )
        .await;
    assert_eq!(outcome["message"], "config reloaded", "{outcome}");
    assert_eq!(post(relay.addr(), Some(TOKEN), body).await.status, 401);
    assert_eq!(
        post(relay.addr(), Some("rotated-token"), body).await.status,
        202
    );
    // Turning it off needs a restart: said so, and it stays on.
    let from = relay.log_len();
    let outcome = relay
        .reload(
            "studio_relay=debug,info",
            "[publish]\nenabled = false\ntokens = [\"rotated-token\"]\nto = \"local\"\n",
        )
        .await;
    assert_eq!(outcome["message"], "config reloaded", "{outcome}");
    let warn = relay
        .wait_log(from, "changed in the file; needs a restart")
        .await;
    assert_eq!(warn["key"], "publish.enabled", "{warn}");
    assert_eq!(
        post(relay.addr(), Some("rotated-token"), body).await.status,
        202
    );
    assert!(!relay.log_text().contains("rotated-token"));
}

#[tokio::test]
async fn tokenless_publishing_is_loopback_only_and_refuses_other_web_pages() {
    let dir = TempDir::new();
    let path = dir.0.join("relay.toml");
    std::fs::write(
        &path,
        "[[listeners]]\nbind = \"0.0.0.0:4456\"\n[publish]\nenabled = true\n",
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .args(["--check", "--config", path.to_str().unwrap()])
        .env_remove("REDIS_URL")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(":4:11: publish.enabled: ") && err.contains("0.0.0.0:4456"),
        "{err}"
    );
    std::fs::write(&path, "[redis]\nurl = \"\"\n[publish]\nenabled = true\n").unwrap();
    let out = std::process::Command::new(bin())
        .args(["--check", "--config", path.to_str().unwrap()])
        .env_remove("REDIS_URL")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("publish.to: "), "{err}");

    // Loopback listeners and no tokens: no token needed, but a page on
    // another site (a browser sends its Origin) may not publish.
    let opts = RelayOpts {
        extra: "[publish]\nenabled = true\nto = \"local\"\n".into(),
        ..Default::default()
    };
    let relay = Relay::start_with("", opts).await;
    let mut c = relay.client("").await;
    let evil = post_with(
        relay.addr(),
        None,
        br#"{"event":"evil"}"#,
        &[
            ("Origin", "https://evil.example"),
            ("Content-Type", "text/plain"),
        ],
    )
    .await;
    assert_eq!(evil.status, 403, "{}", evil.body);
    assert_eq!(body_json(&evil)["error"], "forbidden_origin");
    let r = post_with(
        relay.addr(),
        None,
        br#"{"event":"devtools"}"#,
        &[("Origin", "http://localhost:5173")],
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let r = post(relay.addr(), None, br#"{"event":"curl"}"#).await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(next_event(&mut c).await["event"], "devtools");
    assert_eq!(next_event(&mut c).await["event"], "curl");
}
