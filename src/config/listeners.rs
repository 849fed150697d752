//! `[[listeners]]`: the addresses to bind, with errors that say what is
//! wrong with an address rather than only that it does not parse.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::{Checked, Invalid};

/// Default listener when the file configures none.
pub const DEFAULT_BIND: &str = "127.0.0.1:4456";

/// Port used in examples when the user's own port is unusable.
const EXAMPLE_PORT: u16 = 4456;

/// One `[[listeners]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Address to bind, `IP:PORT`.
    #[serde(deserialize_with = "deserialize_bind")]
    pub bind: SocketAddr,
}

/// Ports 0 (any free port) aside, no address may be bound twice.
pub(super) fn validate(listeners: &[ListenerConfig]) -> Checked {
    let mut seen = Vec::new();
    for (i, l) in listeners.iter().enumerate() {
        // Port 0 means "any free port": several of those never clash.
        if l.bind.port() != 0 && seen.contains(&l.bind) {
            return Err(Invalid::new(
                format!("listeners[{i}].bind"),
                format!("{} is listed twice", l.bind),
            ));
        }
        seen.push(l.bind);
    }
    Ok(Vec::new())
}

// std's parser has one message for every mistake; parsing the string here
// lets the message name the wrong part, and as the error still arises while
// the value is deserialized, toml gives it the value's position.
fn deserialize_bind<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    parse_bind(&text).map_err(de::Error::custom)
}

/// `IP:PORT`, or a message naming the part that is wrong.
fn parse_bind(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if text.trim() != text && text.trim().parse::<SocketAddr>().is_ok() {
        return Err("remove the spaces around the address".into());
    }
    let generic = || {
        format!(
            "invalid socket address syntax: expected IP:PORT, e.g. 127.0.0.1:{EXAMPLE_PORT} or [::1]:{EXAMPLE_PORT}"
        )
    };
    // Split into host and port the way a reader would, before judging either.
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err(generic());
        };
        if host.parse::<Ipv6Addr>().is_err() {
            return Err(format!(
                "{host:?} is not an IPv6 address (brackets are for IPv6, e.g. [::1]:{EXAMPLE_PORT})"
            ));
        }
        match after.strip_prefix(':') {
            Some(port) => (host, port),
            None if after.is_empty() => (host, ""),
            None => return Err(generic()),
        }
    } else if let Ok(ip) = text.parse::<IpAddr>() {
        return Err(match ip {
            IpAddr::V4(_) => format!("missing port, e.g. {ip}:{EXAMPLE_PORT}"),
            // `::1:9311` is itself a valid IPv6 address: whether its last
            // group was meant as the port cannot be told, so no echo.
            IpAddr::V6(_) => format!(
                "an IPv6 address goes in brackets, followed by the port, e.g. [::1]:{EXAMPLE_PORT}"
            ),
        });
    } else if let Some((host, port)) = text.rsplit_once(':') {
        if looks_like_ipv6(host) {
            return Err(format!(
                "an IPv6 address goes in brackets before the port, e.g. [::1]:{EXAMPLE_PORT}"
            ));
        }
        (host, port)
    } else if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        ("", text)
    } else {
        (text, "")
    };

    let example_port = port.parse::<u16>().unwrap_or(EXAMPLE_PORT);
    if host.is_empty() {
        return Err(format!(
            "missing IP address, e.g. 127.0.0.1:{example_port} (loopback) or 0.0.0.0:{example_port} (every interface)"
        ));
    }
    let Ok(ip) = host.parse::<IpAddr>() else {
        if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err(format!("{host:?} is not a valid IPv4 address"));
        }
        if host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b))
        {
            return Err(format!(
                "hostnames are not accepted, use an IP address (e.g. 127.0.0.1:{example_port} or [::1]:{example_port})"
            ));
        }
        return Err(generic());
    };
    if port.is_empty() {
        let example = SocketAddr::from((ip, EXAMPLE_PORT));
        return Err(format!("missing port, e.g. {example}"));
    }
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("port {port:?} is not a number"));
    }
    if port.parse::<u16>().is_err() {
        return Err(format!("port {port} is out of range (0–65535)"));
    }
    Err(generic())
}

/// Hex groups and colons, maybe an embedded IPv4 tail or a `%zone`.
fn looks_like_ipv6(host: &str) -> bool {
    let address = host.split('%').next().unwrap_or(host);
    address.contains(':')
        && address
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
}

// `[listeners]` (one table) where `[[listeners]]` (a list of them) is meant
// is an easy slip; serde alone would only say "expected a sequence".
pub(super) fn deserialize_listeners<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Vec<ListenerConfig>, D::Error> {
    struct Listeners;

    impl<'de> Visitor<'de> for Listeners {
        type Value = Vec<ListenerConfig>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of [[listeners]] tables")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
            while let Some(l) = seq.next_element()? {
                out.push(l);
            }
            Ok(out)
        }

        fn visit_map<A: MapAccess<'de>>(self, _map: A) -> Result<Self::Value, A::Error> {
            Err(de::Error::custom(
                "write [[listeners]] (double brackets: one table per listener), not [listeners]",
            ))
        }
    }

    d.deserialize_seq(Listeners)
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;

    #[test]
    fn bad_bind_address() {
        let e =
            parse("[[listeners]]\nbind = \"127.0.0.1:4456\"\n[[listeners]]\nbind = \"nohost\"\n")
                .unwrap_err();
        assert_eq!(e.key, "listeners[1].bind");
        assert_eq!(e.line, 4);
    }

    #[test]
    fn duplicate_listener_is_rejected_at_its_position() {
        let e =
            parse("[[listeners]]\nbind = \"127.0.0.1:1\"\n[[listeners]]\nbind = \"127.0.0.1:1\"\n")
                .unwrap_err();
        assert_eq!(e.key, "listeners[1].bind");
        assert_eq!((e.line, e.column), (4, 8));
    }

    #[test]
    fn several_port_zero_listeners_are_not_duplicates() {
        let l =
            parse("[[listeners]]\nbind = \"127.0.0.1:0\"\n[[listeners]]\nbind = \"127.0.0.1:0\"\n")
                .unwrap();
        assert_eq!(l.config.listeners.len(), 2);
    }

    #[test]
    fn bind_errors_say_what_is_wrong_at_the_value() {
        for (bind, wanted) in [
            ("127.0.0.1:99999", "port 99999 is out of range (0–65535)"),
            ("[::1]:70000", "port 70000 is out of range"),
            (
                "localhost:9311",
                "hostnames are not accepted, use an IP address (e.g. 127.0.0.1:9311 or [::1]:9311)",
            ),
            ("relay.example.com:80", "hostnames are not accepted"),
            ("localhost", "hostnames are not accepted"),
            ("127.0.0.1", "missing port, e.g. 127.0.0.1:4456"),
            ("127.0.0.1:", "missing port"),
            ("[::1]", "missing port"),
            (
                "::1",
                "an IPv6 address goes in brackets, followed by the port",
            ),
            ("4456", "missing IP address, e.g. 127.0.0.1:4456"),
            ("::1:9311", "brackets"),
            ("fe80::1%eth0:1", "brackets"),
            ("127.0.0.1:http", "port \"http\" is not a number"),
            (":4456", "missing IP address"),
            ("300.1.2.3:80", "\"300.1.2.3\" is not a valid IPv4 address"),
            ("[localhost]:80", "is not an IPv6 address"),
            (" 127.0.0.1:80", "remove the spaces"),
            ("http://127.0.0.1:80", "invalid socket address syntax"),
            ("", "missing IP address"),
            ("127.0.0.1:80/ws", "port \"80/ws\" is not a number"),
        ] {
            let e = parse(&format!("[[listeners]]\nbind = \"{bind}\"\n")).unwrap_err();
            assert_eq!(
                (e.key.as_str(), e.line, e.column),
                ("listeners[0].bind", 2, 8),
                "{bind}"
            );
            assert!(e.message.contains(wanted), "{bind:?}: {e}");
        }
    }

    #[test]
    fn valid_binds_still_parse() {
        for bind in ["127.0.0.1:4456", "0.0.0.0:0", "[::1]:9311", "[::]:65535"] {
            assert_eq!(parse_bind(bind), Ok(bind.parse().unwrap()), "{bind}");
        }
    }

    #[test]
    fn single_bracket_listeners_table_is_explained() {
        let e = parse("[listeners]\nbind = \"127.0.0.1:1\"\n").unwrap_err();
        assert_eq!(e.key, "listeners");
        assert!(e.message.contains("[[listeners]]"), "{e}");
        let l = parse("listeners = [{ bind = \"127.0.0.1:1\" }]\n").unwrap();
        assert_eq!(l.config.listeners.len(), 1);
        let l = parse("listeners = []\n").unwrap();
        assert!(l.config.listeners.is_empty());
    }
}
