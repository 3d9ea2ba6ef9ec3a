//! The road every command takes: collect (one kernel-filtered dump), classify
//! (through a classifier), destroy (cookie-exact, batched, acknowledged), and look
//! again, under a policy — in one loop (`run`), shared by `kill` and the
//! HAProxy mode — and the [`Verdict`] of the whole.

mod classify;
mod collect;
mod destroy;
mod ledger;
mod policy;
mod session;
mod verdict;
crate::internal! {
    /// Which processes hold which sockets, cheaply enough to ask on every poll.
    mod owners;
}
crate::internal! {
    /// The enforcement loop: its rules as a pure state machine, and the driver.
    mod run;
}

pub use ledger::{Entry, Ledger, Spared};
pub use run::{End, RunReport, Summary};
pub use verdict::{verdict_and_clean, Verdict};

#[cfg(feature = "testing")]
pub use self::{
    classify::{Class, Classifier},
    collect::dump_family,
    destroy::DestroyPass,
    policy::{Policy, MAX_PASSES},
    session::{Engine, Query},
};
#[cfg(not(feature = "testing"))]
pub(crate) use self::{
    classify::{Class, Classifier},
    destroy::DestroyPass,
    policy::Policy,
    session::{Engine, Query},
};
