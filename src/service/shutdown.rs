//! The one shutdown signal every task awaits, and what ends the process.

pub use tokio_util::sync::CancellationToken;

/// Exit code for a forced exit (second signal during the drain).
pub const EXIT_FORCED: i32 = 1;

/// Ends the process at once, without draining (a second SIGTERM/SIGINT).
pub fn force_exit() -> ! {
    tracing::warn!("second shutdown signal: exiting without drain");
    std::process::exit(EXIT_FORCED)
}
