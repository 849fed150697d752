//! A client session, whatever transport carries it: its subscriptions
//! (mirrored from the hub, to answer limit errors without a round trip),
//! its token and what it grants, its `max_connections` slot and its end of
//! the hub queue.
//! Transports (the WebSocket driver today) are thin loops around it.

pub mod policy;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::auth::{self, Access};
use crate::ctx::{ConnName, Live, Permit};
use crate::hub::queue::{self, ConnShared, QueueRx};
use crate::hub::{Command, HubHandle, Resume, Welcome};
use crate::wire::Wire;
pub use policy::Refusal;

/// What a handshake that passed every check hands the session.
#[derive(Debug)]
pub struct Admitted {
    /// The connection's id.
    pub name: ConnName,
    /// Subscriptions asked for at the handshake, deduplicated.
    pub keys: Vec<(String, String)>,
    /// Firehose asked for at the handshake.
    pub all: bool,
    /// The token presented, kept to re-check it when tokens are reloaded.
    pub token: Option<String>,
    /// What the token allows, and until when.
    pub access: Access,
    /// The connection's `max_connections` slot, held as long as the session.
    pub permit: Permit,
    /// Where to resume from (`since=`), if asked.
    pub resume: Option<Resume>,
}

/// One registered client.
pub struct Session {
    name: ConnName,
    subs: HashSet<(String, String)>,
    all: bool,
    token: Option<String>,
    access: Access,
    queue: QueueRx,
    hub: HubHandle,
    live: Live,
    _permit: Permit,
}

impl Session {
    /// Registers with the hub, which makes the handshake's subscriptions
    /// live and then queues `welcome`. `None` when the hub has stopped
    /// (the relay is shutting down).
    pub async fn open(
        admitted: Admitted,
        wire: Wire,
        welcome: Welcome,
        hub: HubHandle,
        live: Live,
    ) -> Option<Session> {
        let limits = live.get().limits.clone();
        let (queue_tx, queue) = queue::queue(limits.send_queue, limits.send_queue_bytes);
        let registered = hub
            .send(Command::Register {
                id: admitted.name.num,
                wire,
                queue: queue_tx,
                keys: admitted.keys.clone(),
                all: admitted.all,
                welcome,
                resume: admitted.resume,
            })
            .await;
        registered.then(|| Session {
            name: admitted.name,
            subs: admitted.keys.into_iter().collect(),
            all: admitted.all,
            token: admitted.token,
            access: admitted.access,
            queue,
            hub,
            live,
            _permit: admitted.permit,
        })
    }

    /// The connection's id.
    pub fn name(&self) -> &ConnName {
        &self.name
    }

    /// The live config.
    pub fn live(&self) -> &Live {
        &self.live
    }

    /// Frames the hub queued for this session.
    pub fn queue(&mut self) -> &mut QueueRx {
        &mut self.queue
    }

    /// The control channel (close requests, shutdown, reload).
    pub fn control(&self) -> Arc<ConnShared> {
        self.queue.shared().clone()
    }

    /// The subscriptions, as the hub has them.
    pub fn subscriptions(&self) -> (Vec<(String, String)>, bool) {
        (self.subs.iter().cloned().collect(), self.all)
    }

    /// Mirrors subscriptions the hub added at registration (a recovered
    /// Socket.IO session's, [`crate::hub::Restore`]).
    pub fn restored(&mut self, keys: Vec<(String, String)>, all: bool) {
        self.subs.extend(keys);
        self.all |= all;
    }

    /// Whether the firehose is on.
    pub fn firehose(&self) -> bool {
        self.all
    }

    /// Applies a subscription change if [`policy`] allows it; `ack` is
    /// queued once the change is live, before any event it enabled.
    pub async fn change(
        &mut self,
        subscribe: bool,
        keys: Vec<(String, String)>,
        all: bool,
        ack: Option<Utf8Bytes>,
    ) -> Result<(), Refusal> {
        let config = self.live.get();
        policy::check(
            &self.subs,
            subscribe,
            &keys,
            all,
            &config,
            &self.access.grants,
        )?;
        for key in &keys {
            if subscribe {
                self.subs.insert(key.clone());
            } else {
                self.subs.remove(key);
            }
        }
        if all {
            self.all = subscribe;
        }
        // The hub only stops at shutdown, which the transport sees next.
        let _ = self
            .hub
            .send(Command::Change {
                id: self.name.num,
                subscribe,
                keys,
                all,
                ack,
            })
            .await;
        Ok(())
    }

    /// True when the reloaded config no longer accepts this session's
    /// token: a static token removed, a JWT that does not verify with the
    /// re-read key, or any token (or none) once one is needed.
    pub fn token_revoked(&self) -> bool {
        auth::authenticate(self.token.as_deref(), &self.live.get().auth).is_err()
    }

    /// When the session's token expires (a JWT's `exp`), as a timer deadline.
    pub fn expires_at(&self) -> Option<tokio::time::Instant> {
        deadline(self.access.expires?)
    }

    /// Leaves the hub; the `max_connections` slot is released with it.
    pub async fn close(self) {
        self.hub
            .send(Command::Unregister { id: self.name.num })
            .await;
    }
}

/// The timer instant of wall-clock time `at`: now when it has passed;
/// `None` when it is too far ahead for the clock to represent (no timer).
pub fn deadline(at: SystemTime) -> Option<tokio::time::Instant> {
    // The wall clock first: the deadline then errs late, never early.
    let wall = SystemTime::now();
    let now = tokio::time::Instant::now();
    match at.duration_since(wall) {
        Ok(ahead) => now.checked_add(ahead),
        Err(_) => Some(now),
    }
}
