//! Event payloads: built by the publisher, recognised cheaply by the receivers.
//!
//! Every payload is a JSON object whose first keys are at fixed, easily found
//! places, so a receiver never needs a JSON parser:
//!
//! ```text
//! {"seq":123,"ts":456789,"agentId":"a17","pad":"xxxx…"}   routed / firehose event
//! {"seq":1,"ts":456789,"bcast":1,"pad":"xxxx…"}             broadcast (no agentId)
//! ```
//!
//! `seq` is per agent (1, 2, 3… for each agentId) and, for broadcasts, the
//! broadcast's id. `ts` is nanoseconds since the process's monotonic base
//! ([`now_ns`]); publisher and receivers live in the same process. The `pad`
//! string brings the payload to the requested size. JSON.parse + stringify
//! (the Socket.IO peer) keeps key order and these integers exactly.

use std::io::Write;
use std::sync::OnceLock;
use std::time::Instant;

static BASE: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the process's monotonic base.
pub fn now_ns() -> u64 {
    let base = BASE.get_or_init(Instant::now);
    u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Who an event is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    /// Agent index `k` (agentId `a<k>`).
    Agent(u32),
    /// No agentId: a global event every client receives.
    Broadcast,
}

/// What a receiver extracts from a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ev {
    pub seq: u64,
    pub ts: u64,
    pub dest: Dest,
}

/// Appends one payload of (at least) `size` bytes to `out`.
pub fn write_payload(out: &mut Vec<u8>, dest: Dest, seq: u64, ts: u64, size: usize) {
    let start = out.len();
    // Writing into a Vec cannot fail.
    let _ = match dest {
        Dest::Agent(a) => write!(
            out,
            "{{\"seq\":{seq},\"ts\":{ts},\"agentId\":\"a{a}\",\"pad\":\""
        ),
        Dest::Broadcast => write!(out, "{{\"seq\":{seq},\"ts\":{ts},\"bcast\":1,\"pad\":\""),
    };
    let used = out.len() - start + 2; // + closing `"}`
    let pad = size.saturating_sub(used);
    out.resize(out.len() + pad, b'x');
    out.extend_from_slice(b"\"}");
}

/// Appends the `@socket.io/redis-adapter` message for `io.emit(event,
/// payload)` with the same payload as [`write_payload`] (as MessagePack:
/// the relay turns it back into that JSON, key order kept), so the
/// receivers read adapter-sourced events unchanged.
pub fn write_adapter_message(
    out: &mut Vec<u8>,
    event: &str,
    dest: Dest,
    seq: u64,
    ts: u64,
    size: usize,
) {
    let mut json = Vec::new();
    write_payload(&mut json, dest, seq, ts, size);
    // Everything after `"pad":"` up to the closing `"}`.
    let pad_len = json.len() - find(&json, b"\"pad\":\"").map_or(json.len() - 2, |i| i + 7) - 2;
    let str_head = |out: &mut Vec<u8>, len: usize| match len {
        0..=31 => out.push(0xa0 | len as u8),
        32..=255 => out.extend_from_slice(&[0xd9, len as u8]),
        256..=65535 => {
            out.push(0xda);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(0xdb);
            out.extend_from_slice(&(len as u32).to_be_bytes());
        }
    };
    let key = |out: &mut Vec<u8>, k: &str| {
        str_head(out, k.len());
        out.extend_from_slice(k.as_bytes());
    };
    // [uid, {type: 2, data: [event, payload], nsp: "/"}, {rooms: [], except: []}]
    out.push(0x93);
    key(out, "bench");
    out.push(0x83);
    key(out, "type");
    out.push(0x02);
    key(out, "data");
    out.push(0x92);
    key(out, event);
    out.push(0x84);
    key(out, "seq");
    out.push(0xcf);
    out.extend_from_slice(&seq.to_be_bytes());
    key(out, "ts");
    out.push(0xcf);
    out.extend_from_slice(&ts.to_be_bytes());
    match dest {
        Dest::Agent(a) => {
            key(out, "agentId");
            key(out, &format!("a{a}"));
        }
        Dest::Broadcast => {
            key(out, "bcast");
            out.push(0x01);
        }
    }
    key(out, "pad");
    str_head(out, pad_len);
    out.resize(out.len() + pad_len, b'x');
    key(out, "nsp");
    key(out, "/");
    out.push(0x82);
    key(out, "rooms");
    out.push(0x90);
    key(out, "except");
    out.push(0x90);
}

/// The payload length `write_payload` would produce (needed up front for the
/// RESP bulk-string header).
pub fn payload_len(dest: Dest, seq: u64, ts: u64, size: usize) -> usize {
    let fixed = match dest {
        // {"seq": , "ts": , "agentId":"a ", "pad":" "}
        Dest::Agent(a) => 7 + 6 + 13 + 9 + 2 + digits(u64::from(a)),
        // {"seq": , "ts": , "bcast":1 , "pad":" "}
        Dest::Broadcast => 7 + 6 + 10 + 8 + 2,
    } + digits(seq)
        + digits(ts);
    fixed.max(size)
}

fn digits(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 10 {
        v /= 10;
        n += 1;
    }
    n
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_u64(b: &[u8]) -> Option<(u64, usize)> {
    let mut v: u64 = 0;
    let mut n = 0;
    for &c in b {
        if !c.is_ascii_digit() {
            break;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
        n += 1;
    }
    (n > 0).then_some((v, n))
}

/// Finds our payload in a frame (any envelope: studio, Socket.IO, ws, raw
/// RESP payload) and extracts seq, ts and destination. `None` for anything
/// else (welcome, gap, pings…). Only the first 512 bytes are searched: every
/// envelope puts the payload well within that.
pub fn parse_event(frame: &[u8]) -> Option<Ev> {
    parse_keyed(frame, &PLAIN).or_else(|| parse_keyed(frame, &ESCAPED))
}

/// The keys [`parse_event`] looks for, with JSON's quote as sent or as
/// `\"` inside a JSON string (Pusher's `data` is a string).
struct Keys {
    seq: &'static [u8],
    ts: &'static [u8],
    agent: &'static [u8],
    bcast: &'static [u8],
}

const PLAIN: Keys = Keys {
    seq: b"{\"seq\":",
    ts: b",\"ts\":",
    agent: b",\"agentId\":\"a",
    bcast: b",\"bcast\":1",
};

const ESCAPED: Keys = Keys {
    seq: b"{\\\"seq\\\":",
    ts: b",\\\"ts\\\":",
    agent: b",\\\"agentId\\\":\\\"a",
    bcast: b",\\\"bcast\\\":1",
};

fn parse_keyed(frame: &[u8], k: &Keys) -> Option<Ev> {
    let head = &frame[..frame.len().min(512)];
    let mut p = find(head, k.seq)? + k.seq.len();
    let (seq, n) = parse_u64(frame.get(p..)?)?;
    p += n;
    if !frame.get(p..)?.starts_with(k.ts) {
        return None;
    }
    p += k.ts.len();
    let (ts, n) = parse_u64(frame.get(p..)?)?;
    p += n;
    let rest = frame.get(p..)?;
    let dest = if let Some(r) = rest.strip_prefix(k.agent) {
        let (a, _) = parse_u64(r)?;
        Dest::Agent(u32::try_from(a).ok()?)
    } else if rest.starts_with(k.bcast) {
        Dest::Broadcast
    } else {
        return None;
    };
    Some(Ev { seq, ts, dest })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_in_every_envelope() {
        for dest in [Dest::Agent(17), Dest::Broadcast] {
            for size in [0, 10, 100, 1024] {
                let mut p = Vec::new();
                write_payload(&mut p, dest, 123, 9_876_543_210, size);
                assert_eq!(p.len(), payload_len(dest, 123, 9_876_543_210, size));
                assert!(p.len() >= size);
                let v: serde_json::Value = serde_json::from_slice(&p).expect("valid JSON");
                assert_eq!(v["seq"], 123);
                let ev = Ev {
                    seq: 123,
                    ts: 9_876_543_210,
                    dest,
                };
                assert_eq!(parse_event(&p), Some(ev));
                let s = String::from_utf8(p).expect("utf8");
                let studio = format!(r#"{{"type":"event","event":"bench","data":{s}}}"#);
                let sio = format!(r#"42["bench",{s}]"#);
                let ws = format!(r#"{{"event":"bench","data":{s}}}"#);
                let pusher =
                    serde_json::json!({"event": "bench", "channel": "a1", "data": s}).to_string();
                for f in [studio, sio, ws, pusher] {
                    assert_eq!(parse_event(f.as_bytes()), Some(ev));
                }
            }
        }
        assert_eq!(
            parse_event(br#"{"type":"welcome","connectionId":"x"}"#),
            None
        );
        assert_eq!(parse_event(br#"{"seq":1,"ts":x}"#), None);
        assert_eq!(parse_event(b""), None);
    }
}
