//! The one place that decides whether a subscription change is allowed:
//! the firehose switch and `max_subscriptions`. The handshake (URL, query)
//! and client frames of every protocol ask here, so the rule cannot drift
//! between paths; per-agent grants will join it.

use std::collections::HashSet;

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
}

/// Checks a change against the config. `held` are the subscriptions the
/// session holds now (empty at the handshake); unsubscribing is always
/// allowed; re-subscribing to a held value adds nothing; the firehose does
/// not count toward the limit. The firehose check comes first.
pub fn check(
    held: &HashSet<(String, String)>,
    subscribe: bool,
    keys: &[(String, String)],
    all: bool,
    config: &Config,
) -> Result<(), Refusal> {
    if !subscribe {
        return Ok(());
    }
    if all && !config.routing.allow_firehose {
        return Err(Refusal::FirehoseDisabled);
    }
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

    #[test]
    fn limit_counts_new_distinct_keys_only() {
        let mut c = Config::default();
        c.limits.max_subscriptions = 2;
        let held: HashSet<_> = [k("a")].into();
        assert_eq!(
            check(&held, true, &[k("a"), k("b"), k("b")], false, &c),
            Ok(())
        );
        assert!(matches!(
            check(&held, true, &[k("b"), k("c")], false, &c),
            Err(Refusal::TooManySubscriptions {
                held: 1,
                adding: 2,
                max: 2
            })
        ));
        assert_eq!(
            check(&held, false, &[k("x"), k("y"), k("z")], true, &c),
            Ok(())
        );
        assert_eq!(check(&HashSet::new(), true, &[], true, &c), Ok(()));
    }

    #[test]
    fn firehose_switch_comes_first() {
        let mut c = Config::default();
        c.routing.allow_firehose = false;
        c.limits.max_subscriptions = 0;
        assert_eq!(
            check(&HashSet::new(), true, &[k("a")], true, &c),
            Err(Refusal::FirehoseDisabled)
        );
        assert!(check(&HashSet::new(), false, &[], true, &c).is_ok());
    }
}
