//! sockkill: find TCP sockets by address through the kernel's sock_diag
//! netlink interface and destroy them (`SOCK_DESTROY`), exactly and verifiably.
//!
//! The data takes one road: [`Filter`] → [`Query`] (kernel bytecode) →
//! [`Engine::collect`] (dump) → [`Engine::kill`] (cookie-exact destroys, re-dump
//! until nothing matches) → [`KillReport`].
//!
//! ```no_run
//! use sockkill::{Engine, Filter, KillOptions, Query, filter::parse_cidr};
//! # fn main() -> sockkill::Result<()> {
//! let filter = Filter { dst: vec![parse_cidr("10.0.0.7")?], ..Filter::default() };
//! let mut engine = Engine::open(None)?;
//! let report = engine.kill(&Query::new(filter)?, &KillOptions::default())?;
//! assert_eq!(report.summary.remaining, Some(0));
//! # Ok(()) }
//! ```
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod audit;
pub mod check;
pub mod cli;
pub mod diag;
pub mod engine;
pub mod error;
pub mod filter;
pub mod haproxy;
pub mod metrics;
pub mod netns;
pub mod procfs;
pub mod report;
mod sock;

pub use engine::{Acted, Engine, KillOptions, KillReport, KillSummary, Outcome, Query};
pub use error::{Error, Result};
pub use filter::{Family, Filter, PortRange, StateSet, TcpState};
pub use netns::Netns;
pub use sock::Socket;
