//! `[[listeners]]`: the addresses to bind.

use std::net::SocketAddr;

use serde::Deserialize;

use super::{Checked, Invalid};

/// Default listener when the file configures none.
pub const DEFAULT_BIND: &str = "127.0.0.1:4456";

/// One `[[listeners]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Address to bind, `IP:PORT`.
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

#[cfg(test)]
mod tests {
    use super::super::parse;

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
}
