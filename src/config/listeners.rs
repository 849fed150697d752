//! `[[listeners]]`: the addresses to bind, with errors that say what is
//! wrong with an address rather than only that it does not parse, and each
//! listener's TLS certificate and key (SPEC §14), loaded here so `--check`
//! and a reload refuse a pair that would not serve.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::{Checked, Invalid};
use crate::net::tls::{self, TlsError};

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
    /// PEM certificate chain (leaf first); with `tls_key`, the port speaks
    /// TLS only. `""` = plain.
    #[serde(default)]
    pub tls_cert: String,
    /// PEM private key of `tls_cert`'s leaf. `""` = plain.
    #[serde(default)]
    pub tls_key: String,
}

impl ListenerConfig {
    /// A plain listener on `bind`.
    pub fn plain(bind: SocketAddr) -> Self {
        ListenerConfig {
            bind,
            tls_cert: String::new(),
            tls_key: String::new(),
        }
    }

    /// True when this port speaks TLS (both files named; `validate` refuses
    /// one without the other).
    pub fn is_tls(&self) -> bool {
        !self.tls_cert.is_empty() && !self.tls_key.is_empty()
    }
}

/// Ports 0 (any free port) aside, no address may be bound twice; a TLS
/// pair is complete and loads.
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
        validate_tls(i, l)?;
    }
    Ok(Vec::new())
}

/// Names the missing half of a pair, or the file that does not load.
fn validate_tls(i: usize, l: &ListenerConfig) -> Result<(), Invalid> {
    match (l.tls_cert.is_empty(), l.tls_key.is_empty()) {
        (true, true) => return Ok(()),
        (false, true) => {
            return Err(Invalid::new(
                format!("listeners[{i}].tls_key"),
                "tls_cert is set without tls_key: set both (TLS on this port) or neither",
            ))
        }
        (true, false) => {
            return Err(Invalid::new(
                format!("listeners[{i}].tls_cert"),
                "tls_key is set without tls_cert: set both (TLS on this port) or neither",
            ))
        }
        (false, false) => {}
    }
    tls::server_config(&l.tls_cert, &l.tls_key)
        .map(drop)
        .map_err(|e| {
            let key = match e {
                TlsError::Cert(_) => "tls_cert",
                TlsError::Key(_) | TlsError::Mismatch { .. } => "tls_key",
            };
            Invalid::new(format!("listeners[{i}].{key}"), e.to_string())
        })
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

    /// A self-signed pair in the temp dir, and a key that is not its own.
    fn pair(tag: &str) -> (String, String, String, impl Drop) {
        struct Cleanup(Vec<std::path::PathBuf>);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                for p in &self.0 {
                    let _ = std::fs::remove_file(p);
                }
            }
        }
        let base = std::env::temp_dir().join(format!(
            "studio-relay-listener-{tag}-{}-{}",
            std::process::id(),
            crate::util::id::random_u64()
        ));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let paths: Vec<_> = ["pem", "key", "other.key"]
            .iter()
            .map(|ext| base.with_extension(ext))
            .collect();
        std::fs::write(&paths[0], cert.pem()).unwrap();
        std::fs::write(&paths[1], key.serialize_pem()).unwrap();
        std::fs::write(
            &paths[2],
            rcgen::KeyPair::generate().unwrap().serialize_pem(),
        )
        .unwrap();
        let s = |i: usize| paths[i].to_str().unwrap().to_owned();
        let out = (s(0), s(1), s(2));
        (out.0, out.1, out.2, Cleanup(paths))
    }

    #[test]
    fn a_tls_pair_loads_and_marks_the_listener() {
        let (cert, key, _, _files) = pair("ok");
        let l = parse(&format!(
            "[[listeners]]\nbind = \"127.0.0.1:1\"\n[[listeners]]\nbind = \"127.0.0.1:2\"\ntls_cert = {cert:?}\ntls_key = {key:?}\n"
        ))
        .unwrap();
        let tls: Vec<bool> = l.config.listeners.iter().map(|l| l.is_tls()).collect();
        assert_eq!(tls, vec![false, true]);
        assert!(
            l.config.summary().contains("127.0.0.1:2 (tls)"),
            "{}",
            l.config.summary()
        );
    }

    #[test]
    fn half_a_pair_names_the_missing_key() {
        let e =
            parse("[[listeners]]\nbind = \"127.0.0.1:1\"\ntls_cert = \"/c.pem\"\n").unwrap_err();
        assert_eq!(e.key, "listeners[0].tls_key");
        assert!(e.message.contains("without tls_key"), "{e}");
        let e = parse("[[listeners]]\nbind = \"127.0.0.1:1\"\ntls_key = \"/k.pem\"\n").unwrap_err();
        assert_eq!(e.key, "listeners[0].tls_cert");
    }

    #[test]
    fn a_pair_that_does_not_load_names_the_file_at_its_key() {
        let (cert, key, other, _files) = pair("bad");
        let text = |c: &str, k: &str| {
            format!("[[listeners]]\nbind = \"127.0.0.1:1\"\ntls_cert = {c:?}\ntls_key = {k:?}\n")
        };
        let e = parse(&text("/nonexistent/c.pem", &key)).unwrap_err();
        assert_eq!((e.key.as_str(), e.line), ("listeners[0].tls_cert", 3));
        assert!(e.message.starts_with("/nonexistent/c.pem: "), "{e}");
        let e = parse(&text(&cert, "/nonexistent/k.pem")).unwrap_err();
        assert_eq!((e.key.as_str(), e.line), ("listeners[0].tls_key", 4));
        assert!(e.message.starts_with("/nonexistent/k.pem: "), "{e}");
        let e = parse(&text(&cert, &other)).unwrap_err();
        assert_eq!(e.key, "listeners[0].tls_key");
        assert!(
            e.message
                .starts_with(&format!("{other}: private key does not match")),
            "{e}"
        );
    }

    #[test]
    fn turning_tls_on_needs_a_restart_but_new_paths_do_not() {
        let (cert, key, _, _files) = pair("shape");
        let plain = parse("[[listeners]]\nbind = \"127.0.0.1:1\"\n")
            .unwrap()
            .config;
        let tls_text = format!(
            "[[listeners]]\nbind = \"127.0.0.1:1\"\ntls_cert = {cert:?}\ntls_key = {key:?}\n"
        );
        let tls = parse(&tls_text).unwrap().config;
        assert_eq!(plain.restart_only_changes(&tls), vec!["listeners"]);
        let mut moved = tls.clone();
        moved.listeners[0].tls_cert = "/elsewhere/cert.pem".into();
        assert!(tls.restart_only_changes(&moved).is_empty());
        // No [[listeners]] is the same as the default listener, plain.
        let none = parse("").unwrap().config;
        let default = parse("[[listeners]]\nbind = \"127.0.0.1:4456\"\n")
            .unwrap()
            .config;
        assert!(none.restart_only_changes(&default).is_empty());
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
