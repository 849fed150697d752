//! What a connection may subscribe to (SPEC §13): everything (no auth, or
//! a static token), or the `grants` claim of its JWT — per routing field a
//! list of allowed values (`"*"` = any value) and whether the firehose is
//! allowed. Pure; [`session::policy`](crate::session::policy) asks it on
//! every path.

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde_json::{Map, Value};

/// The value that grants every value of a field.
pub const ANY: &str = "*";

/// The key, inside `grants` (or as a top-level claim), that allows the firehose.
pub const FIREHOSE_KEY: &str = "all";

/// What a connection may subscribe to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grants(Scope);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Scope {
    /// No auth configured, or a static token: every subscription.
    Everything,
    /// A JWT's grants.
    Limited {
        firehose: bool,
        fields: HashMap<String, Allowed>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Allowed {
    /// `"*"` was among the values.
    Any,
    /// Exactly these values.
    Values(HashSet<String>),
}

/// A subscription the grants do not cover.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The firehose, without `"all": true`.
    #[error("the firehose (all=true) is not granted by this token")]
    Firehose,
    /// A value of a field the grants do not list.
    #[error("{field}={value} is not granted by this token")]
    Subscription {
        /// The routing field.
        field: String,
        /// The value asked for.
        value: String,
    },
}

/// Why a `grants` claim cannot be read; the token is refused as invalid
/// rather than guessed at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantsError {
    /// `grants` is not a JSON object.
    #[error("the grants claim must be an object")]
    NotAnObject,
    /// `all` is not a boolean.
    #[error("grants.all must be true or false")]
    Firehose,
    /// A field's values are not a string or an array of strings.
    #[error("grants.{0} must be a string or an array of strings")]
    Values(String),
}

impl Grants {
    /// Every subscription (no auth configured, or a static token).
    pub fn everything() -> Self {
        Grants(Scope::Everything)
    }

    /// Only global events: a JWT without a `grants` claim.
    pub fn nothing() -> Self {
        Grants(Scope::Limited {
            firehose: false,
            fields: HashMap::new(),
        })
    }

    /// Reads a JWT's `grants` claim and its top-level `all` claim, if any.
    /// Each field maps to a string or an array of strings; `"all": true`
    /// (in `grants`, or top-level) allows the firehose. Fields that are not
    /// routing fields are kept and simply never match a subscription.
    pub fn from_claims(
        grants: Option<&Value>,
        top_all: Option<&Value>,
    ) -> Result<Self, GrantsError> {
        let empty = Map::new();
        let map = match grants {
            None | Some(Value::Null) => &empty,
            Some(Value::Object(m)) => m,
            Some(_) => return Err(GrantsError::NotAnObject),
        };
        let flag = |v: Option<&Value>| match v {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(GrantsError::Firehose),
        };
        let firehose = flag(map.get(FIREHOSE_KEY))? | flag(top_all)?;
        let mut fields = HashMap::with_capacity(map.len());
        for (field, v) in map.iter().filter(|(k, _)| *k != FIREHOSE_KEY) {
            let bad = || GrantsError::Values(field.clone());
            let values: Vec<&str> = match v {
                Value::String(s) => vec![s.as_str()],
                Value::Array(a) => a
                    .iter()
                    .map(|x| x.as_str().ok_or_else(bad))
                    .collect::<Result<_, _>>()?,
                _ => return Err(bad()),
            };
            let allowed = if values.contains(&ANY) {
                Allowed::Any
            } else {
                Allowed::Values(values.into_iter().map(str::to_owned).collect())
            };
            fields.insert(field.clone(), allowed);
        }
        Ok(Grants(Scope::Limited { firehose, fields }))
    }

    /// True for a static token's (or an open relay's) unlimited grants.
    pub fn is_everything(&self) -> bool {
        matches!(self.0, Scope::Everything)
    }

    /// Whether `field=value` may be subscribed to.
    pub fn allows(&self, field: &str, value: &str) -> bool {
        match &self.0 {
            Scope::Everything => true,
            Scope::Limited { fields, .. } => match fields.get(field) {
                Some(Allowed::Any) => true,
                Some(Allowed::Values(v)) => v.contains(value),
                None => false,
            },
        }
    }

    /// Whether the firehose may be turned on.
    pub fn allows_firehose(&self) -> bool {
        match &self.0 {
            Scope::Everything => true,
            Scope::Limited { firehose, .. } => *firehose,
        }
    }

    /// The first of a change's subscriptions the grants refuse: the
    /// firehose first, then the keys in the order given.
    pub fn check(&self, keys: &[(String, String)], all: bool) -> Result<(), Denied> {
        if all && !self.allows_firehose() {
            return Err(Denied::Firehose);
        }
        match keys.iter().find(|(f, v)| !self.allows(f, v)) {
            Some((field, value)) => Err(Denied::Subscription {
                field: field.clone(),
                value: value.clone(),
            }),
            None => Ok(()),
        }
    }
}

impl fmt::Display for Grants {
    /// A summary for debug logs: which fields, never their values.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Scope::Everything => f.write_str("everything"),
            Scope::Limited { firehose, fields } => {
                let mut names: Vec<&str> = fields.keys().map(String::as_str).collect();
                names.sort_unstable();
                write!(f, "fields [{}], firehose {firehose}", names.join(", "))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn k(f: &str, v: &str) -> (String, String) {
        (f.into(), v.into())
    }

    fn grants(v: Value) -> Grants {
        Grants::from_claims(Some(&v), None).unwrap()
    }

    #[test]
    fn values_stars_and_unlisted_fields() {
        let g = grants(json!({"agentId": ["dev_01", "dev_02"], "room": ["*"], "sessionId": "s1"}));
        assert!(g.allows("agentId", "dev_01"));
        assert!(!g.allows("agentId", "dev_03"));
        assert!(!g.allows("agentId", "Dev_01"), "values compare exactly");
        assert!(g.allows("room", "project:7") && g.allows("room", ""));
        assert!(g.allows("sessionId", "s1") && !g.allows("sessionId", "s2"));
        assert!(!g.allows("userId", "u"), "an unlisted field grants nothing");
        assert!(!g.allows_firehose());
        assert!(!g.is_everything());
        assert_eq!(
            g.check(&[k("agentId", "dev_02"), k("room", "x")], false),
            Ok(())
        );
        assert_eq!(
            g.check(
                &[k("agentId", "dev_01"), k("agentId", "dev_09"), k("x", "y")],
                false
            ),
            Err(Denied::Subscription {
                field: "agentId".into(),
                value: "dev_09".into()
            })
        );
        assert_eq!(g.check(&[], true), Err(Denied::Firehose));
        assert_eq!(g.check(&[], false), Ok(()));
    }

    #[test]
    fn a_star_among_values_allows_any() {
        let g = grants(json!({"agentId": ["a", "*"]}));
        assert!(g.allows("agentId", "zzz"));
    }

    #[test]
    fn firehose_inside_grants_or_top_level() {
        assert!(grants(json!({"all": true})).allows_firehose());
        assert!(!grants(json!({"all": false})).allows_firehose());
        let top = Grants::from_claims(None, Some(&json!(true))).unwrap();
        assert!(top.allows_firehose());
        assert!(!top.allows("agentId", "a"), "the firehose grants no field");
        assert_eq!(top.check(&[], true), Ok(()));
    }

    #[test]
    fn no_claim_grants_only_global_events() {
        let g = Grants::from_claims(None, None).unwrap();
        assert_eq!(g, Grants::nothing());
        assert!(!g.allows("agentId", "a") && !g.allows_firehose());
        assert!(Grants::from_claims(Some(&Value::Null), None).is_ok());
    }

    #[test]
    fn malformed_claims_are_errors() {
        for (bad, err) in [
            (json!(["agentId"]), GrantsError::NotAnObject),
            (json!("x"), GrantsError::NotAnObject),
            (json!({"all": "yes"}), GrantsError::Firehose),
            (json!({"agentId": 5}), GrantsError::Values("agentId".into())),
            (
                json!({"agentId": ["a", 5]}),
                GrantsError::Values("agentId".into()),
            ),
            (
                json!({"agentId": {"a": 1}}),
                GrantsError::Values("agentId".into()),
            ),
        ] {
            assert_eq!(Grants::from_claims(Some(&bad), None), Err(err), "{bad}");
        }
        assert_eq!(
            Grants::from_claims(None, Some(&json!(1))),
            Err(GrantsError::Firehose)
        );
    }

    #[test]
    fn everything_allows_everything() {
        let g = Grants::everything();
        assert!(g.is_everything() && g.allows("any", "thing") && g.allows_firehose());
        assert_eq!(g.check(&[k("x", "y")], true), Ok(()));
    }

    #[test]
    fn display_names_fields_not_values() {
        let g = grants(json!({"room": ["secret-room"], "agentId": ["a"]}));
        let s = g.to_string();
        assert_eq!(s, "fields [agentId, room], firehose false");
    }
}
