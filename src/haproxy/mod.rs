//! The HAProxy safety net: a client of the engine that knows HAProxy's runtime
//! API and its processes. The engine never knows HAProxy exists.

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
    /// The target rule and the judge.
    mod judge;
}
crate::internal! {
    /// Parsers for the runtime API's answers.
    mod parse;
}
crate::internal! {
    /// Where a server's connections are: the places a run watches.
    mod places;
}
mod safety_net;

pub use attribution::{TableRead, Tables};
pub use discovery::Worker;
pub use judge::Closed;
pub use parse::WaitAnswer;
pub use safety_net::{run, HaproxySummary, Options, Plan, Report, DEFAULT_DEADLINE, DEFAULT_GRACE};
