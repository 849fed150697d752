//! SIGTERM/SIGINT → shutdown (a second one exits at once); SIGHUP → reload.

use futures_util::StreamExt;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_tokio::Signals;

use super::shutdown::{self, CancellationToken};

/// Registers the handlers. Must be called inside the runtime.
pub fn install() -> std::io::Result<Signals> {
    Signals::new([SIGTERM, SIGINT, SIGHUP])
}

/// Serves signals until the process ends: the first SIGTERM/SIGINT cancels
/// `shutdown`, the next exits; each SIGHUP calls `reload`.
pub async fn handle(mut signals: Signals, shutdown: CancellationToken, mut reload: impl FnMut()) {
    while let Some(signal) = signals.next().await {
        match signal {
            SIGHUP => {
                tracing::info!(signal = "SIGHUP", "reload requested");
                reload();
            }
            SIGTERM | SIGINT => {
                if shutdown.is_cancelled() {
                    shutdown::force_exit();
                }
                tracing::info!(
                    signal = if signal == SIGTERM {
                        "SIGTERM"
                    } else {
                        "SIGINT"
                    },
                    "shutdown requested"
                );
                shutdown.cancel();
            }
            _ => {}
        }
    }
}
