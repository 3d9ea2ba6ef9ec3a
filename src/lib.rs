//! sockkill: find TCP sockets by address through the kernel's sock_diag
//! netlink interface and destroy them (`SOCK_DESTROY`), exactly and verifiably.
//!
//! The data takes one road: a [`Filter`] → kernel bytecode → one dump (both
//! families in one walk where the kernel allows) → which sockets are targets →
//! cookie-exact, acknowledged destroys → look again, all in one loop → a
//! report whose [`Verdict`] gives the exit code, `clean`, the metrics and
//! the audit log's end.
//!
//! The entry points: [`kill`] and [`list`] (a namespace and a filter in, a
//! report out) and [`haproxy::run`] (the HAProxy safety net).
//!
//! ```no_run
//! use sockkill::{kill, Filter, KillOptions, Netns, filter::parse_cidr};
//! # fn main() -> sockkill::Result<()> {
//! let ns = Netns::open("my-test-ns")?;
//! let filter = Filter { dst: vec![parse_cidr("10.0.0.7")?], ..Filter::default() };
//! let report = kill(Some(&ns), filter, &KillOptions::default())?;
//! assert!(report.report.verdict().clean());
//! # Ok(()) }
//! ```
#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

/// A module that is part of the library's API only for this crate's own tests
/// and benchmarks (feature `testing`).
macro_rules! internal {
    ($(#[$m:meta])* mod $name:ident;) => {
        #[cfg(feature = "testing")]
        $(#[$m])*
        pub mod $name;
        #[cfg(not(feature = "testing"))]
        $(#[$m])*
        pub(crate) mod $name;
    };
}
pub(crate) use internal;

pub mod audit;
pub mod cancel;
pub mod cgroup;
pub mod check;
pub mod defaults;
internal! {
    /// The kernel's sock_diag bytes and the netlink socket.
    mod diag;
}
pub mod engine;
pub mod error;
pub mod filter;
pub mod haproxy;
mod kill;
pub mod metrics;
pub mod netns;
internal! {
    /// What /proc says about processes and sockets.
    mod procfs;
}
mod socket;
mod sys;
#[cfg(feature = "testing")]
pub mod testing;

pub use cancel::Cancel;
pub use diag::Outcome;
pub use engine::{RunReport, Verdict};
pub use error::{Error, HaproxyError, Result};
pub use filter::{Family, Filter, PortRange, StateSet, TcpState};
pub use kill::{kill, list, KillOptions, KillPlan, KillReport};
pub use netns::Netns;
pub use procfs::Owner;
pub use socket::TcpSocket;
