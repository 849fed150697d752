//! Leaf helpers that hold no relay state: jittered backoff, random ids,
//! Redis glob patterns, a rate limiter for log lines.

pub mod backoff;
pub mod base64;
pub mod id;
pub mod pattern;
pub mod pem;
pub mod ratelimit;
