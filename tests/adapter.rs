//! SPEC §10, the Socket.IO adapter / emitter source, against the real
//! binary: a real Socket.IO server publishing through
//! `@socket.io/redis-adapter` 8 and a real `@socket.io/redis-emitter` 5, and
//! hand-made MessagePack for what those never send (hostile input, the
//! corpus replayed byte for byte, room broadcasts under SPEC §13's `room`
//! grants).

mod common;

use common::node::NodeProc;
use common::{http, ws_headers, Client, Redis, Relay, RelayOpts};
use rmpv::Value as Mp;
use serde_json::{json, Value};

/// The relay's `[redis]` lines for the adapter source (plus the test harness's fast probe).
const ADAPTER: &str =
    "socketio_adapter = true\nliveness_interval_ms = 200\nliveness_timeout_ms = 1000\n";

async fn relay_with_adapter(redis: &Redis) -> Relay {
    let opts = RelayOpts {
        redis_extra: ADAPTER.into(),
        ..Default::default()
    };
    Relay::start_with(&redis.url(), opts).await
}

/// `[uid, {type: 2, data: [name, ...args], nsp}, {rooms, except, flags}]`.
fn adapter_message(
    nsp: &str,
    name: &str,
    args: Vec<Mp>,
    rooms: &[&str],
    except: &[&str],
) -> Vec<u8> {
    let mut data = vec![Mp::from(name)];
    data.extend(args);
    let list = |l: &[&str]| Mp::Array(l.iter().map(|r| Mp::from(*r)).collect());
    let v = Mp::Array(vec![
        Mp::from("test-uid"),
        Mp::Map(vec![
            (Mp::from("type"), Mp::from(2)),
            (Mp::from("data"), Mp::Array(data)),
            (Mp::from("nsp"), Mp::from(nsp)),
        ]),
        Mp::Map(vec![
            (Mp::from("rooms"), list(rooms)),
            (Mp::from("except"), list(except)),
            (Mp::from("flags"), Mp::Map(Vec::new())),
        ]),
    ]);
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, &v).unwrap();
    out
}

/// JSON → MessagePack as notepack.io encodes a parsed JSON value.
fn to_mp(v: &Value) -> Mp {
    match v {
        Value::Null => Mp::Nil,
        Value::Bool(b) => Mp::from(*b),
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => Mp::from(u),
            (None, Some(i)) => Mp::from(i),
            _ => Mp::from(n.as_f64().unwrap()),
        },
        Value::String(s) => Mp::from(s.as_str()),
        Value::Array(a) => Mp::Array(a.iter().map(to_mp).collect()),
        Value::Object(o) => Mp::Map(
            o.iter()
                .map(|(k, v)| (Mp::from(k.as_str()), to_mp(v)))
                .collect(),
        ),
    }
}

/// The `(event, data)` pairs a native client gets up to the `end` event.
async fn native_until_end(c: &mut Client) -> Vec<(String, Value)> {
    let mut got = Vec::new();
    loop {
        let f = c.next_of_type("event").await;
        let name = f["event"].as_str().unwrap_or("").to_owned();
        if name == "end" {
            return got;
        }
        got.push((name, f["data"].clone()));
    }
}

/// The `(event, args)` pairs a socket.io-client gets up to `end`.
async fn sio_until_end(c: &mut NodeProc) -> Vec<(String, Vec<Value>)> {
    let mut got = Vec::new();
    loop {
        let (name, args) = c.next_event().await;
        if name == "end" {
            return got;
        }
        got.push((name, args));
    }
}

#[tokio::test]
async fn adapter_and_emitter_broadcasts_arrive_as_the_servers_own_clients_see_them() {
    let redis = Redis::start().await;
    let relay = relay_with_adapter(&redis).await;
    let (mut server, port) = NodeProc::sio_server(&redis.url()).await;
    // The reference: a socket.io-client of the Node server, in room r1.
    let mut reference = NodeProc::socketio(
        &format!("http://127.0.0.1:{port}"),
        json!({"query": {"rooms": "r1"}}),
    )
    .await;
    reference.wait_for("connect").await;
    // The relay's clients: room r1 and agent a1 (what routes the no-room emits).
    let mut sio = NodeProc::socketio(
        &format!("http://{}", relay.addr()),
        json!({"query": {"room": "r1", "agentId": "a1"}}),
    )
    .await;
    sio.wait_for("connect").await;
    // Polling only: attachments travel as `b<base64>` packets there.
    let mut polling = NodeProc::socketio(
        &format!("http://{}", relay.addr()),
        json!({"query": {"room": "r1", "agentId": "a1"}, "transports": ["polling"]}),
    )
    .await;
    polling.wait_for("connect").await;
    let mut native = relay.client("room=r1&agentId=a1").await;
    let mut outsider = relay.client("agentId=zz").await;

    let emits = [
        json!({"name": "agent:status", "args": [{"agentId": "a1", "n": 1}]}),
        json!({"name": "room:msg", "to": ["r1"], "args": ["hello", 2, {"x": [1, 2.5, null]}]}),
        json!({"name": "skipped", "except": ["r1"], "args": [{"agentId": "a1"}]}),
        json!({"name": "r2-only", "to": ["r2"], "args": [{"agentId": "a1"}]}),
        json!({"name": "admin", "nsp": "/admin", "args": [{"agentId": "a1"}]}),
        json!({"name": "bin", "args": [{"agentId": "a1"}, {"$bin": "AQID"}, {"nested": {"$bin": "/w=="}}]}),
        json!({"name": "date", "args": [{"agentId": "a1", "at": {"$date": 86_400_500}}]}),
        json!({"name": "no-args", "to": ["r1"], "args": []}),
        json!({"name": "from-emitter", "via": "emitter", "args": [{"agentId": "a1", "m": "x"}]}),
        json!({"name": "emitter-room", "via": "emitter", "to": ["r1", "r3"], "args": [5]}),
        json!({"name": "end", "args": [{"agentId": "a1"}]}),
    ];
    for (id, e) in emits.iter().enumerate() {
        let mut cmd = e.clone();
        cmd["cmd"] = json!("emit");
        cmd["id"] = json!(id);
        server.send(cmd).await;
        assert_eq!(server.wait_for("emitted").await["id"], id);
    }

    let want = sio_until_end(&mut reference).await;
    let names: Vec<&str> = want.iter().map(|(n, _)| n.as_str()).collect();
    // The reference server's own routing, which the relay must reproduce.
    assert_eq!(
        names,
        [
            "agent:status",
            "room:msg",
            "bin",
            "date",
            "no-args",
            "from-emitter",
            "emitter-room"
        ]
    );
    assert_eq!(
        sio_until_end(&mut sio).await,
        want,
        "relay's Socket.IO client"
    );
    assert_eq!(sio_until_end(&mut polling).await, want, "polling client");
    assert_eq!(
        want[2].1,
        [
            json!({"agentId": "a1"}),
            json!({"$bin": "AQID"}),
            json!({"nested": {"$bin": "/w=="}})
        ]
    );
    assert_eq!(
        want[3].1,
        [json!({"agentId": "a1", "at": "1970-01-02T00:00:00.500Z"})]
    );

    // Native clients: one argument as is, several as an array, binary as base64.
    let got = native_until_end(&mut native).await;
    let expected: Vec<(String, Value)> = vec![
        ("agent:status".into(), json!({"agentId": "a1", "n": 1})),
        (
            "room:msg".into(),
            json!(["hello", 2, {"x": [1, 2.5, null]}]),
        ),
        (
            "bin".into(),
            json!([{"agentId": "a1"}, "AQID", {"nested": "/w=="}]),
        ),
        (
            "date".into(),
            json!({"agentId": "a1", "at": "1970-01-02T00:00:00.500Z"}),
        ),
        ("no-args".into(), Value::Null),
        ("from-emitter".into(), json!({"agentId": "a1", "m": "x"})),
        ("emitter-room".into(), json!(5)),
    ];
    assert_eq!(got, expected);
    // An unrelated client got none of it: the first thing it sees is a later global event.
    redis.publish("claude-studio:global", "{}").await;
    assert_eq!(outsider.next_of_type("event").await["event"], "global");
    // The adapter publishes other namespaces on channels the relay does not
    // subscribe to; a message on `#/#` that names another one is counted.
    let admin = adapter_message("/admin", "x", vec![Mp::from(1)], &[], &[]);
    redis.publish("socket.io#/#", admin).await;
    redis.publish("claude-studio:global", "{}").await;
    assert_eq!(outsider.next_of_type("event").await["event"], "global");
    let other = "relay_invalid_payloads_total{kind=\"other_namespace\"}";
    assert_eq!(relay.metric(other).await, 1.0);
    assert_eq!(
        relay
            .metric("relay_invalid_payloads_total{kind=\"bad_msgpack\"}")
            .await,
        0.0
    );
}

#[tokio::test]
async fn hostile_messagepack_is_counted_and_dropped_and_the_source_carries_on() {
    let redis = Redis::start().await;
    let relay = relay_with_adapter(&redis).await;
    let mut c = relay.client("agentId=a1").await;
    let deep = {
        let mut v = Mp::from(1);
        for _ in 0..500 {
            v = Mp::Array(vec![v]);
        }
        v
    };
    let hostile: Vec<Vec<u8>> = vec![
        Vec::new(),
        vec![0x93, 0xa1],                   // truncated
        vec![0xdd, 0xff, 0xff, 0xff, 0xff], // a 4G-element array with no elements
        vec![0xdf, 0xff, 0xff, 0xff, 0xff], // a 4G-entry map likewise
        b"{\"not\":\"msgpack\"}".to_vec(),
        adapter_message("/", "deep", vec![deep], &[], &[]),
        {
            // An event name that is not a string.
            let v = Mp::Array(vec![
                Mp::from("u"),
                Mp::Map(vec![
                    (Mp::from("type"), Mp::from(2)),
                    (Mp::from("data"), Mp::Array(vec![Mp::from(42)])),
                ]),
            ]);
            let mut m = Vec::new();
            rmpv::encode::write_value(&mut m, &v).unwrap();
            m
        },
        // An extension type notepack.io never writes.
        adapter_message("/", "ext", vec![Mp::Ext(7, vec![1, 2])], &[], &[]),
    ];
    for h in &hostile {
        redis.publish("socket.io#/#", h).await;
    }
    let ok = adapter_message(
        "/",
        "after",
        vec![to_mp(&json!({"agentId": "a1"}))],
        &[],
        &[],
    );
    redis.publish("socket.io#/#", &ok).await;
    let f = c.next_of_type("event").await;
    assert_eq!(
        (f["event"].as_str(), &f["data"]),
        (Some("after"), &json!({"agentId": "a1"}))
    );
    assert_eq!(
        relay
            .metric("relay_invalid_payloads_total{kind=\"bad_msgpack\"}")
            .await,
        hostile.len() as f64
    );
    assert_eq!(relay.wait_health(200).await["redis"], "up");
    // Logged once (rate-limited), without the payload. The metric came
    // over HTTP; the log line reaches the test's stderr reader in its own
    // time, so wait for it rather than read a snapshot.
    relay.wait_log(0, "malformed adapter message").await;
    let logs = relay.log_text();
    assert!(!logs.contains("msgpack\\\"}"), "payload logged:\n{logs}");
}

#[tokio::test]
async fn the_corpus_through_the_adapter_is_delivered_as_through_the_json_pattern() {
    let redis = Redis::start().await;
    let opts = RelayOpts {
        redis_extra: ADAPTER.into(),
        extra: "[routing]\nfields = [\"agentId\", \"sessionId\", \"targetAgentId\"]\n".into(),
        ..Default::default()
    };
    let relay = Relay::start_with(&redis.url(), opts).await;
    let corpus: Vec<Value> = include_str!("../../shared/corpus/claude-studio-events.jsonl")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(corpus.len() > 5);
    let queries = [
        "agentId=dev_01",
        "sessionId=dev_01",
        "targetAgentId=dev_02",
        "all=true",
    ];
    let mut clients = Vec::new();
    for q in queries {
        clients.push(relay.client(q).await);
    }
    let mut conn = redis.conn().await;
    let mut per_source = Vec::new();
    for via_adapter in [false, true] {
        for e in &corpus {
            let name = e["event"].as_str().unwrap();
            if via_adapter {
                let m = adapter_message("/", name, vec![to_mp(&e["data"])], &[], &[]);
                conn.publish("socket.io#/#", m).await;
            } else {
                conn.publish(&format!("claude-studio:{name}"), e["data"].to_string())
                    .await;
            }
        }
        // A global end marker, through the same source.
        if via_adapter {
            conn.publish(
                "socket.io#/#",
                adapter_message("/", "end", vec![Mp::Nil], &[], &[]),
            )
            .await;
        } else {
            conn.publish("claude-studio:end", "null").await;
        }
        let mut got = Vec::new();
        for c in &mut clients {
            got.push(native_until_end(c).await);
        }
        per_source.push(got);
    }
    assert!(
        per_source[0].iter().all(|g| !g.is_empty()),
        "{:?}",
        per_source[0]
    );
    assert_eq!(per_source[0], per_source[1]);
}

#[tokio::test]
async fn the_adapter_is_off_by_default_and_room_is_then_not_a_routing_field() {
    let redis = Redis::start().await;
    let relay = Relay::start(&redis).await;
    let mut c = relay.client("room=r1").await;
    c.send_json(json!({"type": "subscribe", "room": "r1"}))
        .await;
    let r = c.next_of_type("error").await;
    assert_eq!(
        (&r["type"], &r["code"]),
        (&json!("error"), &json!("unknown_field")),
        "{r}"
    );
    redis
        .publish(
            "socket.io#/#",
            adapter_message("/", "x", vec![Mp::from(1)], &[], &[]),
        )
        .await;
    redis.publish("claude-studio:after", "{}").await;
    assert_eq!(c.next_of_type("event").await["event"], "after");
}

#[tokio::test]
async fn a_room_grant_admits_its_room_only_and_that_rooms_broadcasts_arrive() {
    let redis = Redis::start().await;
    let secret = "room-grant-secret-0123456789abcdefgh";
    let opts = RelayOpts {
        redis_extra: ADAPTER.into(),
        extra: format!("[auth.jwt]\nhs256_secret = \"{secret}\"\n"),
        ..Default::default()
    };
    let relay = Relay::start_with(&redis.url(), opts).await;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 60;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"exp": exp, "grants": {"room": ["project:7"]}}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    // `room` is grantable like any routing field: the URL outside it is 403.
    let path = format!("/ws?room=project:8&token={token}");
    let r = http(relay.addr(), "GET", &path, &ws_headers())
        .await
        .unwrap();
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("room=project:8"), "{}", r.body);
    let mut c = relay.client(&format!("room=project:7&token={token}")).await;
    assert_eq!(c.welcome["subscriptions"]["room"], json!(["project:7"]));
    c.send_json(json!({"type": "subscribe", "room": "project:8"}))
        .await;
    assert_eq!(c.next_of_type("error").await["code"], "forbidden");
    // io.to("project:7") arrives, io.to("project:8") does not.
    for (name, room) in [("in", "project:7"), ("out", "project:8")] {
        let m = adapter_message("/", name, vec![Mp::from(1)], &[room], &[]);
        redis.publish("socket.io#/#", m).await;
    }
    redis
        .publish(
            "socket.io#/#",
            adapter_message("/", "end", vec![], &[], &[]),
        )
        .await;
    assert_eq!(
        native_until_end(&mut c).await,
        vec![("in".to_owned(), json!(1))]
    );
}
