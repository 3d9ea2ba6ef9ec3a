//! Test support for this crate's own tests and benchmarks (feature
//! `testing`): a connection farm and property-test generators. Not part of
//! the library's API.

pub mod farm;
pub mod strategies;
