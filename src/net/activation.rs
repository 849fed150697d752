//! systemd socket activation: sockets passed in `LISTEN_FDS` take the place
//! of the configured listeners with the same address; the rest are bound as
//! usual. Turning a raw fd into an [`OwnedFd`] is `unsafe` and happens in
//! `main.rs`; everything here is safe code over owned sockets.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;

use socket2::{Socket, Type};

/// An inherited fd that cannot serve as a listener.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    /// Not a listening TCP socket (e.g. `ListenDatagram=` or a unix socket).
    #[error("socket passed by the service manager (fd {fd}) is not a listening TCP socket: {why}")]
    NotTcpListener {
        /// The fd number, as systemd passed it.
        fd: i32,
        /// What is wrong with it.
        why: String,
    },
}

/// Checks that an inherited fd is a listening TCP socket; returns it with
/// its address.
pub fn tcp_listener(
    fd: OwnedFd,
    number: i32,
) -> Result<(TcpListener, SocketAddr), ActivationError> {
    let bad = |why: String| ActivationError::NotTcpListener { fd: number, why };
    let socket = Socket::from(fd);
    match socket.r#type() {
        Ok(Type::STREAM) => {}
        Ok(other) => return Err(bad(format!("socket type {other:?}, need SOCK_STREAM"))),
        Err(e) => return Err(bad(e.to_string())),
    }
    let Some(addr) = socket
        .local_addr()
        .map_err(|e| bad(e.to_string()))?
        .as_socket()
    else {
        return Err(bad(
            "not an IPv4/IPv6 socket (ListenStream= needs an address or a port)".into(),
        ));
    };
    match socket.is_listener() {
        Ok(true) => {}
        Ok(false) => return Err(bad("socket is not listening".into())),
        Err(e) => return Err(bad(e.to_string())),
    }
    Ok((socket.into(), addr))
}

/// Where each listener comes from.
#[derive(Debug)]
pub struct Plan {
    /// Configured addresses to bind ourselves, with their index in the
    /// configured list, in config order.
    pub bind: Vec<(usize, SocketAddr)>,
    /// Inherited sockets to serve, with their addresses and the index of
    /// the configured listener they stand for (`None`: the config does not
    /// name it), configured ones first (in config order), then the rest.
    pub inherited: Vec<(TcpListener, SocketAddr, Option<usize>)>,
    /// Addresses of inherited sockets that no `[[listeners]]` entry names.
    pub unconfigured: Vec<SocketAddr>,
}

/// Matches inherited sockets to configured listeners by exact address.
///
/// `configured` is the effective listener list; `explicit` is false when the
/// file names no `[[listeners]]` (the built-in default applies). Then the
/// inherited sockets replace the default instead of being added to it: the
/// socket unit is the operator's statement of where to listen, and binding
/// 127.0.0.1:4456 beside a systemd-held `0.0.0.0:4456` would fail anyway.
/// Inherited sockets the config does not name are served too (a socket unit
/// that systemd keeps listening on but nobody accepts from would hang its
/// clients); the caller logs them. The index kept with each socket is how
/// the caller finds the entry's other settings (its TLS pair).
pub fn plan(
    configured: &[SocketAddr],
    explicit: bool,
    inherited: Vec<(TcpListener, SocketAddr)>,
) -> Plan {
    let mut pool: Vec<_> = inherited.into_iter().map(Some).collect();
    let mut plan = Plan {
        bind: Vec::new(),
        inherited: Vec::new(),
        unconfigured: Vec::new(),
    };
    if explicit || pool.is_empty() {
        for (index, addr) in configured.iter().enumerate() {
            let found = pool
                .iter_mut()
                .find(|slot| slot.as_ref().is_some_and(|(_, a)| a == addr))
                .and_then(Option::take);
            match found {
                Some((l, a)) => plan.inherited.push((l, a, Some(index))),
                None => plan.bind.push((index, *addr)),
            }
        }
    }
    for (l, addr) in pool.into_iter().flatten() {
        if explicit {
            plan.unconfigured.push(addr);
        }
        plan.inherited.push((l, addr, None));
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener() -> (TcpListener, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        (l, a)
    }

    #[test]
    fn inherited_sockets_replace_matching_listeners_and_the_rest_are_bound() {
        let (la, a) = listener();
        let (lc, c) = listener();
        let b: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let p = plan(&[b, a], true, vec![(lc, c), (la, a)]);
        assert_eq!(p.bind, vec![(0, b)]);
        let got: Vec<(SocketAddr, Option<usize>)> =
            p.inherited.iter().map(|(_, a, i)| (*a, *i)).collect();
        assert_eq!(
            got,
            vec![(a, Some(1)), (c, None)],
            "configured first (with their config index), then unconfigured"
        );
        assert_eq!(p.unconfigured, vec![c]);
    }

    #[test]
    fn with_default_listeners_only_the_inherited_ones_are_served() {
        let (la, a) = listener();
        let default: SocketAddr = crate::config::DEFAULT_BIND.parse().unwrap();
        let p = plan(&[default], false, vec![(la, a)]);
        assert!(p.bind.is_empty());
        assert_eq!(p.inherited.len(), 1);
        assert_eq!((p.inherited[0].1, p.inherited[0].2), (a, None));
        assert!(p.unconfigured.is_empty());
    }

    #[test]
    fn nothing_inherited_binds_everything() {
        let a: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let p = plan(&[a], false, Vec::new());
        assert_eq!(p.bind, vec![(0, a)]);
        assert!(p.inherited.is_empty());
    }

    #[test]
    fn only_listening_tcp_sockets_are_accepted() {
        let (l, a) = listener();
        let (ok, addr) = tcp_listener(OwnedFd::from(l), 3).unwrap();
        assert_eq!((ok.local_addr().unwrap(), addr), (a, a));

        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let err = tcp_listener(OwnedFd::from(udp), 4).unwrap_err().to_string();
        assert!(err.contains("fd 4") && err.contains("SOCK_STREAM"), "{err}");

        let connected = {
            let (l, a) = listener();
            let s = std::net::TcpStream::connect(a).unwrap();
            drop(l);
            s
        };
        let err = tcp_listener(OwnedFd::from(connected), 5)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not listening"), "{err}");
    }
}
