//! The part of studio-relay-bench other crates use: [`resp`], the minimal
//! RESP2 client (encoder, incremental parser, AUTH). The load generator
//! itself is the binary (`src/main.rs`); the root crate's black-box tests
//! publish through `resp` (a dev-dependency), so there is one RESP client.
#![forbid(unsafe_code)]

pub mod resp;
