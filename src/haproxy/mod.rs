//! The HAProxy safety net: a client of the engine that knows HAProxy's runtime
//! API and its processes. The engine never knows HAProxy exists.

pub mod api;
pub mod discovery;
pub mod judge;
pub mod parse;
pub mod safety_net;

pub use safety_net::{run, Options, Report};
