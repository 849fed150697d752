//! The checks every client handshake passes, in SPEC §9's refusal order
//! after the protocol's own "is this a valid request" check: the query
//! (subscriptions, limits), the Origin, the token, the token's grants
//! (SPEC §13), then capacity (or draining). Each refusal is a status, a
//! metric reason and a one-line reason for the body.

use std::collections::HashSet;
use std::sync::Arc;

use hyper::header;
use hyper::{HeaderMap, StatusCode};

use crate::auth::{self, Access};
use crate::config::Config;
use crate::ctx::{Admission, Permit};
use crate::hub::Resume;
use crate::session::policy;

/// `relay_handshake_rejections_total` reason for a new session refused
/// because the relay is draining (503, where `capacity` would be).
pub const SHUTTING_DOWN: &str = "shutting_down";

/// A refused handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// HTTP status.
    pub status: StatusCode,
    /// `relay_handshake_rejections_total{reason}`.
    pub reason: &'static str,
    /// What to tell the client (never contains the token).
    pub why: String,
}

impl Refused {
    /// A 400 with `why`.
    pub fn bad_request(why: impl Into<String>) -> Self {
        Refused {
            status: StatusCode::BAD_REQUEST,
            reason: "bad_request",
            why: why.into(),
        }
    }
}

/// A handshake that passed the shared checks.
#[derive(Debug)]
pub struct Checked {
    /// What the query asked for.
    pub query: Query,
    /// The token presented (header first, then `token=`); `None` with
    /// [`TokenRule::MayComeLater`] means it must still come.
    pub token: Option<String>,
    /// What the token allows; `None` while it must still come.
    pub access: Option<Access>,
    /// The session's `max_connections` slot.
    pub permit: Permit,
}

/// Whether the handshake must carry the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRule {
    /// `/ws`: no valid token, no connection.
    Required,
    /// Socket.IO: a token may still come in the CONNECT packet's `auth`, so
    /// only a presented, wrong one is refused here.
    MayComeLater,
}

/// Runs the shared checks on a request's query and headers.
pub fn check(
    query: &str,
    headers: &HeaderMap,
    config: &Config,
    admission: &Arc<Admission>,
    rule: TokenRule,
) -> Result<Checked, Refused> {
    let query = parse_query(query, config).map_err(Refused::bad_request)?;
    let origin = headers
        .get(header::ORIGIN)
        .map(|v| v.to_str().unwrap_or("\u{0}"));
    if !auth::origin_allowed(origin, &config.security.allowed_origins) {
        return Err(Refused {
            status: StatusCode::FORBIDDEN,
            reason: "origin",
            why: "origin not allowed".into(),
        });
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(auth::bearer)
        .map(str::to_owned)
        .or_else(|| query.token.clone());
    let deferred = rule == TokenRule::MayComeLater && token.is_none();
    let access = match deferred {
        true => None,
        false => Some(
            auth::authenticate(token.as_deref(), &config.auth).map_err(|e| Refused {
                status: StatusCode::UNAUTHORIZED,
                reason: "unauthorized",
                // Says why (expired, bad signature…), never the token.
                why: e.to_string(),
            })?,
        ),
    };
    if let Some(access) = &access {
        policy::authorize(&access.grants, true, &query.keys, query.all).map_err(|r| Refused {
            status: StatusCode::FORBIDDEN,
            reason: "forbidden",
            why: format!("forbidden: {r}"),
        })?;
    }
    if admission.is_closed() {
        return Err(Refused {
            status: StatusCode::SERVICE_UNAVAILABLE,
            reason: SHUTTING_DOWN,
            why: "relay is shutting down".into(),
        });
    }
    let Some(permit) = admission.try_acquire(config.limits.max_connections) else {
        return Err(Refused {
            status: StatusCode::SERVICE_UNAVAILABLE,
            reason: "capacity",
            why: "too many connections".into(),
        });
    };
    Ok(Checked {
        query,
        token,
        access,
        permit,
    })
}

/// What a handshake URL asks for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Query {
    /// Initial subscriptions, deduplicated, in URL order.
    pub keys: Vec<(String, String)>,
    /// Firehose on.
    pub all: bool,
    /// `token=` if given.
    pub token: Option<String>,
    /// `since=<epoch>:<offset>` if given (SPEC §12). One that does not
    /// parse is kept as a position no relay has, so the client is told
    /// `recovered:false` and refetches rather than being refused.
    pub since: Option<Resume>,
}

/// Reads `<epoch>:<offset>`.
fn parse_since(v: &str) -> Resume {
    v.rsplit_once(':')
        .and_then(|(epoch, offset)| {
            Some(Resume {
                epoch: epoch.to_owned(),
                offset: offset.parse().ok()?,
                restore: None,
            })
        })
        .unwrap_or(Resume {
            epoch: String::new(),
            offset: 0,
            restore: None,
        })
}

/// Parses a handshake query against the config (SPEC §4, §9). Parameters
/// that are neither routing fields nor `all`/`token` are ignored, so cache
/// busters and client-library extras do not break the handshake; a value
/// that is not UTF-8 once percent-decoded is refused rather than mangled
/// (distinct byte strings must not collapse into one subscription).
pub fn parse_query(query: &str, config: &Config) -> Result<Query, String> {
    let mut q = Query::default();
    let mut seen = HashSet::new();
    let fields = config.routable_fields();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = decode_component(k).map_err(|()| {
            "a query parameter name is not valid UTF-8 after percent-decoding".to_owned()
        })?;
        let known = k == "all" || k == "token" || k == "since" || fields.contains(&k);
        if !known {
            continue;
        }
        let v = decode_component(v)
            .map_err(|()| format!("{k}= is not valid UTF-8 after percent-decoding"))?;
        if k == "all" {
            q.all = match v.as_str() {
                "true" | "1" => true,
                "false" | "0" => false,
                other => return Err(format!("all={other:?}: expected true, 1, false or 0")),
            };
        } else if k == "token" {
            if q.token.is_none() {
                q.token = Some(v);
            }
        } else if k == "since" {
            if q.since.is_none() {
                q.since = Some(parse_since(&v));
            }
        } else {
            if v.is_empty() {
                return Err(format!("{k}= needs a value"));
            }
            let key = (k, v);
            if seen.insert(key.clone()) {
                q.keys.push(key);
            }
        }
    }
    policy::limits(&HashSet::new(), true, &q.keys, q.all, config).map_err(|r| match r {
        policy::Refusal::TooManySubscriptions { adding, max, .. } => {
            format!("{adding} subscriptions asked for; max_subscriptions is {max}")
        }
        other => other.to_string(),
    })?;
    Ok(q)
}

/// `application/x-www-form-urlencoded` decoding of one name or value:
/// `+` is a space, `%XX` a byte (a malformed escape stays as written, as
/// browsers do), and the bytes must be UTF-8.
fn decode_component(s: &str) -> Result<String, ()> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| ())
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// The `Sec-WebSocket-Key` of a valid RFC 6455 upgrade request.
pub fn websocket_key(version: hyper::Version, h: &HeaderMap) -> Result<String, &'static str> {
    let has_token = |name: header::HeaderName, token: &str| {
        h.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if version < hyper::Version::HTTP_11 {
        return Err("WebSocket needs HTTP/1.1");
    }
    if !has_token(header::UPGRADE, "websocket") || !has_token(header::CONNECTION, "upgrade") {
        return Err("not a WebSocket upgrade request (Upgrade: websocket, Connection: Upgrade)");
    }
    if h.get(header::SEC_WEBSOCKET_VERSION)
        .map(hyper::header::HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err("Sec-WebSocket-Version must be 13");
    }
    match h
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
    {
        Some(k) if !k.trim().is_empty() => Ok(k.trim().to_owned()),
        _ => Err("missing Sec-WebSocket-Key"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing() {
        let c = Config::default();
        let q = parse_query(
            "agentId=a%201&agentId=a+1&sessionId=s&all=1&token=t&x=y",
            &c,
        )
        .unwrap();
        assert_eq!(
            q.keys,
            vec![
                ("agentId".into(), "a 1".into()),
                ("sessionId".into(), "s".into())
            ]
        );
        assert!(q.all);
        assert_eq!(q.token.as_deref(), Some("t"));
        assert!(parse_query("all=yes", &c).is_err());
        assert!(parse_query("agentId=", &c).is_err());
        assert_eq!(parse_query("", &c).unwrap(), Query::default());
        let mut c2 = Config::default();
        c2.limits.max_subscriptions = 1;
        assert!(parse_query("agentId=a&agentId=b", &c2)
            .unwrap_err()
            .contains("max_subscriptions"));
        c2.routing.allow_firehose = false;
        assert!(parse_query("all=true", &c2).is_err());
        assert!(parse_query("all=false", &c2).is_ok());
    }

    #[test]
    fn invalid_utf8_after_decoding_is_refused_not_mangled() {
        let c = Config::default();
        let e = parse_query("agentId=%ff%fe", &c).unwrap_err();
        assert!(e.contains("agentId") && e.contains("UTF-8"), "{e}");
        assert_eq!(
            parse_query("agentId=%C3%A9", &c).unwrap().keys,
            vec![("agentId".into(), "é".into())]
        );
        // Unknown parameters are ignored, whatever their bytes.
        assert!(parse_query("x=%ff", &c).is_ok());
        // A malformed escape is kept as written.
        assert_eq!(
            parse_query("agentId=%zz%4", &c).unwrap().keys,
            vec![("agentId".into(), "%zz%4".into())]
        );
    }
}
