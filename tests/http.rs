//! SPEC §4 and §9: HTTP answers and handshake refusals, in their order.

mod common;

use common::{http, ws_headers, Redis, Relay};

fn with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut h = ws_headers();
    h.extend_from_slice(extra);
    h
}

#[tokio::test]
async fn healthz_metrics_404_405() {
    let redis = Redis::start().await;
    let relay = Relay::start(&redis).await;
    let _c = relay.client("agentId=a").await;
    let _d = common::Client::connect(relay.addrs[1], "").await;

    let (status, body) = relay.health().await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ok");
    assert_eq!(body["redis"], "up");
    assert_eq!(body["connections"], 2, "counted across listeners: {body}");

    let r = http(relay.addr(), "GET", "/metrics", &[]).await.unwrap();
    assert_eq!(r.status, 200);
    assert!(r
        .head
        .to_ascii_lowercase()
        .contains("content-type: application/openmetrics-text"));
    assert!(r.body.contains("relay_redis_up 1"), "{}", r.body);
    let open: f64 = relay
        .addrs
        .iter()
        .map(|a| {
            common::metric_value(
                &r.body,
                &format!("relay_connections_open{{listener=\"{a}\"}}"),
            )
            .unwrap()
        })
        .sum();
    assert_eq!(open, 2.0);

    assert_eq!(
        http(relay.addr(), "GET", "/nope", &[])
            .await
            .unwrap()
            .status,
        404
    );
    assert_eq!(
        http(relay.addr(), "GET", "/", &[]).await.unwrap().status,
        404
    );
    let r = http(relay.addr(), "POST", "/healthz", &[("Content-Length", "0")])
        .await
        .unwrap();
    assert_eq!(r.status, 405);
    assert!(r.head.to_ascii_lowercase().contains("allow: get"));
    assert_eq!(
        http(relay.addr(), "DELETE", "/metrics", &[])
            .await
            .unwrap()
            .status,
        405
    );
    assert_eq!(
        http(
            relay.addr(),
            "POST",
            "/ws",
            &with(&[("Content-Length", "0")])
        )
        .await
        .unwrap()
        .status,
        405
    );
    assert_eq!(
        http(relay.addr(), "HEAD", "/healthz", &[])
            .await
            .unwrap()
            .status,
        200
    );
    // /healthz is not a WebSocket endpoint and /ws is not plain HTTP.
    assert_eq!(
        http(relay.addr(), "GET", "/ws", &[]).await.unwrap().status,
        400
    );
}

#[tokio::test]
async fn healthz_is_503_while_redis_is_down_at_boot_and_websockets_still_work() {
    // Nothing listens on this port: Redis is down from the start.
    let port = common::free_port();
    let relay = Relay::start_without_redis(port).await;
    let (status, body) = relay.health().await;
    assert_eq!(status, 503);
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["redis"], "down");
    let mut c = relay.client("agentId=a").await;
    c.send_json(serde_json::json!({"type":"ping"})).await;
    assert_eq!(c.next_json().await["type"], "pong");
    assert!(relay.metrics().await.contains("relay_redis_up 0"));
}

#[tokio::test]
async fn refusals_in_spec_order() {
    let redis = Redis::start().await;
    let relay = Relay::with_extra(&redis, "[auth]\ntokens = [\"sekret-token\", \"other\"]\n[security]\nallowed_origins = [\"https://studio.example\"]\n[limits]\nmax_connections = 1\nmax_subscriptions = 2\n").await;
    let a = relay.addr();
    let get = |path: &'static str, h: Vec<(&'static str, &'static str)>| async move {
        http(a, "GET", path, &h).await.unwrap()
    };

    // 400 not a WebSocket request comes before everything else on /ws.
    let r = get("/ws", vec![("Origin", "https://evil.example")]).await;
    assert_eq!(r.status, 400);
    let r = get(
        "/ws",
        vec![
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Version", "8"),
            ("Sec-WebSocket-Key", "x"),
        ],
    )
    .await;
    assert_eq!(r.status, 400);
    // 400 for the URL comes before Origin.
    let r = get(
        "/ws?agentId=a&agentId=b&agentId=c",
        with(&[("Origin", "https://evil.example")]),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("max_subscriptions"), "{}", r.body);
    let r = get("/ws?all=maybe", ws_headers()).await;
    assert_eq!(r.status, 400);
    let r = get("/ws?agentId=", ws_headers()).await;
    assert_eq!(r.status, 400);
    // 403 Origin before 401 token.
    let r = get("/ws", with(&[("Origin", "https://evil.example")])).await;
    assert_eq!(r.status, 403);
    // 401: missing, then wrong.
    let r = get("/ws", with(&[("Origin", "https://studio.example")])).await;
    assert_eq!(r.status, 401);
    let r = get("/ws?token=wrong", ws_headers()).await;
    assert_eq!(r.status, 401);
    let r = get("/ws", with(&[("Authorization", "Bearer sekret-tokeN")])).await;
    assert_eq!(r.status, 401);

    // Accepted: token in the query, no Origin header at all (CLI client).
    let _held = common::Client::connect(a, "token=sekret-token").await;
    // 503 at capacity, after the token check passed (header form).
    let r = get("/ws", with(&[("Authorization", "Bearer other")])).await;
    assert_eq!(r.status, 503);
    // Token check still comes first at capacity.
    let r = get("/ws", ws_headers()).await;
    assert_eq!(r.status, 401);

    let m = relay.metrics().await;
    for (reason, n) in [
        ("bad_request", 5.0),
        ("origin", 1.0),
        ("unauthorized", 4.0),
        ("capacity", 1.0),
    ] {
        let got = common::metric_value(
            &m,
            &format!("relay_handshake_rejections_total{{reason=\"{reason}\"}}"),
        );
        assert_eq!(got, Some(n), "{reason}");
    }
    let logs = relay.log_text();
    assert!(
        !logs.contains("sekret-token"),
        "tokens must never be logged"
    );
}

#[tokio::test]
async fn allowed_origin_and_bearer_header_connect() {
    let redis = Redis::start().await;
    let relay = Relay::with_extra(
        &redis,
        "[auth]\ntokens = [\"t1\"]\n[security]\nallowed_origins = [\"https://studio.example\"]\n",
    )
    .await;
    let c = common::Client::try_connect(
        relay.addr(),
        "agentId=a",
        &[
            ("Origin", "https://studio.example"),
            ("Authorization", "Bearer t1"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(c.welcome["subscriptions"]["agentId"][0], "a");
}

/// An operator whose browser fails to connect must see why at `info`, and
/// every refusal — also those hyper answers itself for an oversized head —
/// is counted.
#[tokio::test]
async fn refusals_are_logged_at_info_and_all_of_them_are_counted() {
    let redis = Redis::start().await;
    let relay = Relay::start_with(
        &redis.url(),
        common::RelayOpts {
            extra: "[auth]\ntokens = [\"sekret-token\"]\n".into(),
            log_level: "info".into(),
            ..Default::default()
        },
    )
    .await;
    let from = relay.log_len();
    let r = http(
        relay.addr(),
        "GET",
        "/ws?token=wrong-token-value",
        &ws_headers(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 401);
    let line = relay.wait_log(from, "handshake refused").await;
    assert_eq!(line["level"], "INFO", "{line}");
    assert_eq!(line["reason"], "unauthorized");
    assert!(
        line["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{line}"
    );
    assert!(
        !relay.log_text().contains("wrong-token-value"),
        "a token reached the log"
    );

    // Distinct invalid byte strings must not collapse into U+FFFD.
    let r = http(
        relay.addr(),
        "GET",
        "/ws?agentId=%ff%fe&token=sekret-token",
        &ws_headers(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400);
    assert!(r.body.contains("UTF-8"), "{}", r.body);

    // One huge header (hyper: 431 or 400) and a huge query: refused by
    // hyper before routing, counted all the same.
    let big = "x".repeat(70 * 1024);
    let r = http(relay.addr(), "GET", "/ws", &[("X-Big", big.as_str())]).await;
    assert!(r.map_or(true, |r| r.status == 431 || r.status == 400));
    let r = http(
        relay.addr(),
        "GET",
        &format!("/ws?agentId={big}"),
        &ws_headers(),
    )
    .await;
    assert!(r.map_or(true, |r| r.status == 431
        || r.status == 400
        || r.status == 414));
    let deadline = std::time::Instant::now() + common::WAIT;
    loop {
        let bad = relay
            .metric("relay_handshake_rejections_total{reason=\"bad_request\"}")
            .await;
        if bad >= 3.0 {
            assert_eq!(bad, 3.0);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "bad_request count stuck at {bad}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        relay
            .metric("relay_handshake_rejections_total{reason=\"unauthorized\"}")
            .await,
        1.0
    );
}

/// SPEC §3/§9 as changed: with `allowed_origins` unset only pages on this
/// machine connect (a site the user visits cannot read the relay from
/// their browser); `"*"` admits any; `:*` is any port. Native WebSocket
/// and Socket.IO polling (its CORS headers) follow the same list.
#[tokio::test]
async fn the_default_admits_loopback_pages_only_and_star_admits_any() {
    let redis = Redis::start().await;
    let relay = Relay::start(&redis).await;
    let a = relay.addr();
    for (origin, want) in [
        ("https://evil.example", 403),
        ("http://localhost.evil.example", 403),
        ("null", 403),
        ("http://localhost:5173", 101),
        ("http://127.0.0.1:8080", 101),
        ("https://[::1]:3000", 101),
        ("http://localhost", 101),
    ] {
        assert_eq!(ws_status(a, origin).await, want, "{origin}");
        let r = http(
            a,
            "GET",
            "/socket.io/?EIO=4&transport=polling",
            &[("Origin", origin)],
        )
        .await
        .unwrap();
        let cors = r
            .head
            .to_ascii_lowercase()
            .contains(&format!("access-control-allow-origin: {origin}"));
        assert_eq!(
            (r.status == 200, cors),
            (want == 101, want == 101),
            "{origin}: {}",
            r.head
        );
    }
    // No Origin (curl, a server, Node's socket.io-client): accepted. Each
    // refused Origin was counted three times (two /ws tries, one poll).
    common::Client::try_connect(a, "", &[]).await.unwrap();
    assert_eq!(
        relay
            .metric("relay_handshake_rejections_total{reason=\"origin\"}")
            .await,
        9.0
    );

    let relay = Relay::with_extra(&redis, "[security]\nallowed_origins = [\"*\"]\n").await;
    for origin in ["https://evil.example", "null", "http://localhost:1"] {
        assert_eq!(ws_status(relay.addr(), origin).await, 101, "{origin}");
    }
    let relay = Relay::with_extra(
        &redis,
        "[security]\nallowed_origins = [\"https://studio.example:*\"]\n",
    )
    .await;
    for (origin, want) in [
        ("https://studio.example:8443", 101),
        ("https://studio.example", 101),
        ("http://studio.example:8443", 403),
        ("http://localhost:5173", 403),
    ] {
        assert_eq!(ws_status(relay.addr(), origin).await, want, "{origin}");
    }
}

/// 101 when a WebSocket from `origin` opens, else the refusal's status.
async fn ws_status(a: std::net::SocketAddr, origin: &'static str) -> u16 {
    if common::Client::try_connect(a, "", &[("Origin", origin)])
        .await
        .is_ok()
    {
        return 101;
    }
    http(a, "GET", "/ws", &with(&[("Origin", origin)]))
        .await
        .unwrap()
        .status
}
