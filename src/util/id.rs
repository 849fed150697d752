//! Random numbers for jitter and ids, and the relay's one instance id.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// A random number from the std hasher's per-process keys; enough for jitter
/// and instance ids, and saves a dependency.
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// 128 bits from the operating system's CSPRNG as 32 hex digits: for ids
/// that grant something to whoever presents them (Engine.IO sids, Socket.IO
/// recovery pids), which must not be guessable from others seen. Falls back
/// to [`random_u64`] only if the OS refuses, which Linux does not once booted.
pub fn secret_id() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::getrandom(&mut bytes).is_err() {
        bytes[..8].copy_from_slice(&random_u64().to_ne_bytes());
        bytes[8..].copy_from_slice(&random_u64().to_ne_bytes());
    }
    let mut out = String::with_capacity(32);
    for b in bytes {
        use std::fmt::Write;
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Identifies one running relay among several sharing a broker: it prefixes
/// connection ids and tags the liveness canary, so each relay recognises
/// its own probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceId(String);

impl InstanceId {
    /// A fresh random id (8 hex digits).
    pub fn random() -> Self {
        InstanceId(format!("{:08x}", random_u64() as u32))
    }

    /// The id's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_vary() {
        let ids: std::collections::HashSet<u64> = (0..100).map(|_| random_u64()).collect();
        assert_eq!(ids.len(), 100);
        let a = InstanceId::random();
        assert_eq!(a.as_str().len(), 8);
        assert_ne!(a, InstanceId::random());
    }

    #[test]
    fn secret_ids_are_128_bit_hex_and_differ() {
        let ids: std::collections::HashSet<String> = (0..100).map(|_| secret_id()).collect();
        assert_eq!(ids.len(), 100);
        assert!(ids
            .iter()
            .all(|i| i.len() == 32 && i.bytes().all(|b| b.is_ascii_hexdigit())));
    }
}
