//! The one place that decides whether a subscription change is allowed:
//! the firehose switch, the token's grants (SPEC §13) and
//! `max_subscriptions`. The handshake (URL, query), Socket.IO CONNECT and
//! recovery, and client frames of every protocol ask here, so the rule
//! cannot drift between paths.

use std::collections::HashSet;

use crate::auth::{Denied, Grants};
use crate::config::Config;

/// Why a subscription change is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The firehose was asked for while `routing.allow_firehose` is false.
    #[error("the firehose (all=true) is disabled on this relay")]
    FirehoseDisabled,
    /// The change would hold more than `limits.max_subscriptions`.
    #[error("holding {held} subscriptions, {adding} more would exceed max_subscriptions {max}")]
    TooManySubscriptions {
        /// Subscriptions held before the change.
        held: usize,
        /// New ones the change adds.
        adding: usize,
        /// The limit.
        max: usize,
    },
    /// The token's grants do not cover a subscription (SPEC §13).
    #[error("{0}")]
    Forbidden(#[from] Denied),
}

/// Checks a change against the config and the session's grants. `held`
/// are the subscriptions the session holds now (empty at the handshake);
/// unsubscribing is always allowed; re-subscribing to a held value adds
/// nothing; the firehose does not count toward the limit. The firehose
/// switch comes first, then the grants, then the limit.
pub fn check(
    held: &HashSet<(String, String)>,
    subscribe: bool,
    keys: &[(String, String)],
    all: bool,
    config: &Config,
    grants: &Grants,
) -> Result<(), Refusal> {
    if !subscribe {
        return Ok(());
    }
    firehose_switch(all, config)?;
    authorize(grants, subscribe, keys, all)?;
    limit(held, keys, config)
}

/// The config's own rules without the grants: what a handshake URL is
/// checked against before the token is known (its 400s come before the
/// Origin and token checks, SPEC §9); [`authorize`] follows the token.
pub fn limits(
    held: &HashSet<(String, String)>,
    subscribe: bool,
    keys: &[(String, String)],
    all: bool,
    config: &Config,
) -> Result<(), Refusal> {
    if !subscribe {
        return Ok(());
    }
    firehose_switch(all, config)?;
    limit(held, keys, config)
}

/// The grants alone: whether every key and the firehose, if asked, are
/// covered. Unsubscribing needs no grant.
pub fn authorize(
    grants: &Grants,
    subscribe: bool,
    keys: &[(String, String)],
    all: bool,
) -> Result<(), Refusal> {
    if !subscribe {
        return Ok(());
    }
    grants.check(keys, all).map_err(Refusal::Forbidden)
}

fn firehose_switch(all: bool, config: &Config) -> Result<(), Refusal> {
    if all && !config.routing.allow_firehose {
        return Err(Refusal::FirehoseDisabled);
    }
    Ok(())
}

fn limit(
    held: &HashSet<(String, String)>,
    keys: &[(String, String)],
    config: &Config,
) -> Result<(), Refusal> {
    let adding = keys
        .iter()
        .filter(|k| !held.contains(*k))
        .collect::<HashSet<_>>()
        .len();
    let max = config.limits.max_subscriptions;
    if held.len() + adding > max {
        return Err(Refusal::TooManySubscriptions {
            held: held.len(),
            adding,
            max,
        });
    }
    Ok(())
}

impl From<Refusal> for crate::wire::studio::FrameError {
    fn from(r: Refusal) -> Self {
        use crate::wire::studio::ErrorCode;
        let code = match r {
            Refusal::FirehoseDisabled => ErrorCode::FirehoseDisabled,
            Refusal::TooManySubscriptions { .. } => ErrorCode::TooManySubscriptions,
            Refusal::Forbidden(_) => ErrorCode::Forbidden,
        };
        crate::wire::studio::FrameError {
            code,
            message: r.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(v: &str) -> (String, String) {
        ("agentId".into(), v.into())
    }

    fn all() -> Grants {
        Grants::everything()
    }

    #[test]
    fn grants_come_after_the_switch_and_before_the_limit() {
        let mut c = Config::default();
        c.limits.max_subscriptions = 1;
        let g =
            Grants::from_claims(Some(&serde_json::json!({"agentId": ["a", "b"]})), None).unwrap();
        let none = HashSet::new();
        assert_eq!(check(&none, true, &[k("a")], false, &c, &g), Ok(()));
        assert_eq!(
            check(&none, true, &[k("a"), k("x")], false, &c, &g),
            Err(Refusal::Forbidden(Denied::Subscription {
                field: "agentId".into(),
                value: "x".into()
            }))
        );
        assert!(matches!(
            check(&none, true, &[k("a"), k("b")], false, &c, &g),
            Err(Refusal::TooManySubscriptions { .. })
        ));
        assert_eq!(
            check(&none, true, &[], true, &c, &g),
            Err(Refusal::Forbidden(Denied::Firehose))
        );
        assert_eq!(check(&none, false, &[k("x")], true, &c, &g), Ok(()));
        c.routing.allow_firehose = false;
        assert_eq!(
            check(&none, true, &[k("x")], true, &c, &g),
            Err(Refusal::FirehoseDisabled)
        );
        assert_eq!(limits(&none, true, &[k("x")], false, &c), Ok(()));
        assert!(authorize(&g, true, &[k("x")], false).is_err());
        let e = crate::wire::studio::FrameError::from(Refusal::Forbidden(Denied::Firehose));
        assert_eq!(e.code.as_str(), "forbidden");
    }

    #[test]
    fn limit_counts_new_distinct_keys_only() {
        let mut c = Config::default();
        c.limits.max_subscriptions = 2;
        let held: HashSet<_> = [k("a")].into();
        assert_eq!(
            check(&held, true, &[k("a"), k("b"), k("b")], false, &c, &all()),
            Ok(())
        );
        assert!(matches!(
            check(&held, true, &[k("b"), k("c")], false, &c, &all()),
            Err(Refusal::TooManySubscriptions {
                held: 1,
                adding: 2,
                max: 2
            })
        ));
        assert_eq!(
            check(&held, false, &[k("x"), k("y"), k("z")], true, &c, &all()),
            Ok(())
        );
        assert_eq!(check(&HashSet::new(), true, &[], true, &c, &all()), Ok(()));
    }

    #[test]
    fn firehose_switch_comes_first() {
        let mut c = Config::default();
        c.routing.allow_firehose = false;
        c.limits.max_subscriptions = 0;
        assert_eq!(
            check(&HashSet::new(), true, &[k("a")], true, &c, &all()),
            Err(Refusal::FirehoseDisabled)
        );
        assert!(check(&HashSet::new(), false, &[], true, &c, &all()).is_ok());
    }
}
