//! Running as a service: the one shutdown signal, Unix signals, systemd's
//! notify protocol, and logging.

pub mod logging;
pub mod notify;
pub mod shutdown;
pub mod signals;
