//! Listening sockets: binding the configured addresses, or taking the
//! ones systemd passed ([`activation`]), and the TLS pair of a listener
//! that has one ([`tls`]).

pub mod activation;
pub mod tls;

use std::net::SocketAddr;

use tokio::net::TcpListener;

/// Accept backlog: tokio's default (1024) overflows when thousands of
/// clients reconnect at once (e.g. after a relay restart); the kernel caps
/// it at `net.core.somaxconn` anyway.
const LISTEN_BACKLOG: u32 = 4096;

/// Failure to get a listening socket.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener address could not be bound. The OS error is part of the
    /// message, not a `source`, so `{:#}` chains do not print it twice.
    #[error("cannot bind listener {addr}: {error}{hint}", hint = bind_hint(error))]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The OS error.
        error: std::io::Error,
    },
    /// An inherited socket could not be set up for the runtime.
    #[error("cannot use the socket passed for {addr}: {error}")]
    Inherited {
        /// The socket's address.
        addr: SocketAddr,
        /// The OS error.
        error: std::io::Error,
    },
    /// A listener's TLS pair no longer loads (it did when the config was
    /// checked a moment before: the files changed in between).
    #[error("cannot load the TLS certificate for listener {addr}: {error}")]
    Tls {
        /// The configured address.
        addr: SocketAddr,
        /// What is wrong with the pair.
        error: tls::TlsError,
    },
}

/// One listening socket ready to serve.
#[derive(Debug)]
pub struct Listener {
    /// The socket.
    pub socket: TcpListener,
    /// Its bound address (port 0 resolved).
    pub addr: SocketAddr,
    /// Index of the `[[listeners]]` entry it serves (`None`: a socket
    /// passed by systemd that the config does not name, served plain).
    pub config: Option<usize>,
}

fn bind_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            " (another process, perhaps another relay, holds the port)"
        }
        std::io::ErrorKind::AddrNotAvailable => " (no interface of this host has that address)",
        std::io::ErrorKind::PermissionDenied => " (ports below 1024 need privileges)",
        _ => "",
    }
}

/// Binds `addr` with SO_REUSEADDR (a restart must not wait out TIME_WAIT
/// sockets) and a deep backlog; returns the socket and its bound address.
pub fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let err = |error| StartError::Bind { addr, error };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    let listener = socket.listen(LISTEN_BACKLOG).map_err(err)?;
    let local = listener.local_addr().map_err(err)?;
    Ok((listener, local))
}

/// The listeners for `configured` addresses: inherited sockets replace the
/// ones with the same address (see [`activation::plan`]), the rest are
/// bound. Each keeps the index of its configured entry. Must run inside the
/// runtime.
pub fn listeners(
    configured: &[SocketAddr],
    explicit: bool,
    inherited: Vec<(std::net::TcpListener, SocketAddr)>,
) -> Result<Vec<Listener>, StartError> {
    let plan = activation::plan(configured, explicit, inherited);
    let mut out = Vec::new();
    for (std_listener, addr, config) in plan.inherited {
        let listener = std_listener
            .set_nonblocking(true)
            .and_then(|()| TcpListener::from_std(std_listener))
            .map_err(|error| StartError::Inherited { addr, error })?;
        if plan.unconfigured.contains(&addr) {
            tracing::warn!(addr = %addr, "socket passed by systemd is not in [[listeners]]; serving it anyway");
        } else {
            tracing::info!(addr = %addr, "using socket passed by systemd");
        }
        out.push(Listener {
            socket: listener,
            addr,
            config,
        });
    }
    for (index, addr) in plan.bind {
        let (socket, addr) = bind(addr)?;
        out.push(Listener {
            socket,
            addr,
            config: Some(index),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_taken_port_says_so_once() {
        let (_held, addr) = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let e = bind(addr).unwrap_err();
        let text = format!("{:#}", anyhow::Error::from(e));
        assert!(
            text.contains(&addr.to_string()) && text.contains("another process"),
            "{text}"
        );
        assert_eq!(text.matches("os error").count(), 1, "{text}");
    }
}
