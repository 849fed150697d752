//! An in-process source: whatever its [`MemoryPublisher`] publishes goes to
//! the hub as if a broker had delivered it, decoded as studio JSON. For
//! tests that exercise the hub and real listeners without a broker process.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::decode::studio_json;
use super::{Ingest, Source, SourceCtx, SourceRun};
use crate::event::GapReason;

/// Capacity between a publisher and the source task.
const QUEUE: usize = 1024;

enum Item {
    Publish(String, String),
    Gap(GapReason),
}

/// The source half, given to the relay.
pub struct MemorySource {
    rx: mpsc::Receiver<Item>,
    up: watch::Receiver<bool>,
}

/// The publishing half, kept by the test.
#[derive(Clone)]
pub struct MemoryPublisher {
    tx: mpsc::Sender<Item>,
    up: Arc<watch::Sender<bool>>,
}

/// A connected pair; the source starts up (healthy).
pub fn pair() -> (MemorySource, MemoryPublisher) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let (up_tx, up) = watch::channel(true);
    (
        MemorySource { rx, up },
        MemoryPublisher {
            tx,
            up: Arc::new(up_tx),
        },
    )
}

impl MemoryPublisher {
    /// Publishes `payload` as event `name`; false once the relay stopped.
    pub async fn publish(&self, name: &str, payload: &str) -> bool {
        self.tx
            .send(Item::Publish(name.to_owned(), payload.to_owned()))
            .await
            .is_ok()
    }

    /// Makes every connection see a gap, as after a broker reconnect.
    pub async fn gap(&self, reason: GapReason) -> bool {
        self.tx.send(Item::Gap(reason)).await.is_ok()
    }

    /// Sets the health the source reports.
    pub fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }
}

impl Source for MemorySource {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn run(self: Box<Self>, ctx: SourceCtx, shutdown: CancellationToken) -> SourceRun {
        Box::pin(async move {
            let MemorySource { mut rx, mut up } = *self;
            ctx.health.set(*up.borrow_and_update());
            loop {
                let item = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    changed = up.changed() => {
                        if changed.is_ok() {
                            ctx.health.set(*up.borrow_and_update());
                        }
                        continue;
                    }
                    item = rx.recv() => match item {
                        Some(item) => item,
                        None => break,
                    },
                };
                let ingest = match item {
                    Item::Publish(name, payload) => {
                        let fields = ctx.live.get().routing.shared_fields();
                        Ingest::Event(studio_json::decode(
                            &name,
                            &payload,
                            &fields,
                            Instant::now(),
                        ))
                    }
                    Item::Gap(reason) => Ingest::Gap(reason),
                };
                if ctx.ingest.send(ingest).await.is_err() {
                    break;
                }
            }
            ctx.health.set(false);
        })
    }
}
