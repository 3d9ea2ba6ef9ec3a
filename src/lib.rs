//! sockkill: find TCP sockets by address through the kernel's sock_diag
//! netlink interface and destroy them (`SOCK_DESTROY`), exactly and verifiably.
//!
//! The data takes one road: [`Filter`] → [`Query`] (kernel bytecode) →
//! [`Engine::collect`] (one dump per family) → a [`Judge`] (which sockets are
//! targets) → [`Engine::destroy`] (cookie-exact, acknowledged) → look again,
//! all in one loop ([`engine::Run`]) → [`engine::Report`].
//!
//! The entry point for a program (or a test in someone's CI) is [`kill`]: a
//! namespace and a filter in, a report out.
//!
//! ```no_run
//! use sockkill::{kill, Filter, KillOptions, Netns, filter::parse_cidr};
//! # fn main() -> sockkill::Result<()> {
//! let ns = Netns::open("my-test-ns")?;
//! let filter = Filter { dst: vec![parse_cidr("10.0.0.7")?], ..Filter::default() };
//! let report = kill(Some(&ns), filter, &KillOptions::default())?;
//! assert_eq!(report.report.summary.remaining, Some(0));
//! # Ok(()) }
//! ```
#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod audit;
pub mod cancel;
pub mod check;
pub mod diag;
pub mod engine;
pub mod error;
pub mod filter;
pub mod haproxy;
mod kill;
pub mod metrics;
pub mod netns;
pub mod procfs;
mod socket;

pub use cancel::Cancel;
pub use diag::Outcome;
pub use engine::{Engine, Judge, Query};
pub use error::{Error, Result};
pub use filter::{Family, Filter, PortRange, StateSet, TcpState};
pub use kill::{kill, list, KillOptions, KillReport, OwnerJudge};
pub use netns::Netns;
pub use socket::TcpSocket;
