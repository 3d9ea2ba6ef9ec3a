//! The HAProxy safety net: a client of the engine that knows HAProxy's runtime
//! API and its processes. The engine knows HAProxy only through the classifier it
//! is given (and the words `other_server`/`ambiguous` of its report).
//!
//! Rooms: `options` (what to do, checked once into a plan), `run` (discover →
//! shut down → enforce), `report`, `wait` (HAProxy's `wait` on its own
//! thread), `target` (the target rule and the classifier), `places` (where a
//! server's connections are), `attribution` (HAProxy's two tables),
//! `discovery` (processes, namespaces), `api`, `parse`.

crate::internal! {
    /// The runtime API client.
    mod api;
}
crate::internal! {
    /// HAProxy's two tables, joined to sockets.
    mod attribution;
}
crate::internal! {
    /// HAProxy's processes and namespaces.
    mod discovery;
}
crate::internal! {
    /// The target rule and the classifier that applies it.
    mod target;
}
crate::internal! {
    /// Parsers for the runtime API's answers.
    mod parse;
}
crate::internal! {
    /// Where a server's connections are: the places a run watches.
    mod places;
}
crate::internal! {
    /// The lingering sweep: what is gone, moved or in maintenance.
    mod lingering;
}
mod options;
mod report;
mod run;
mod wait;

pub use attribution::{TableRead, Tables};
pub use discovery::Worker;
pub use lingering::{Lingering, Lingers};
pub use options::{Options, DEFAULT_DEADLINE, DEFAULT_GRACE};
pub use parse::WaitAnswer;
pub use report::{HaproxySummary, LingeringReport, Report};
pub use run::{run, Plan};
pub use target::Closed;
