//! When a run destroys, how often it looks, and when it stops.

use std::time::Duration;

/// Passes allowed while each one still destroys sockets an earlier pass
/// could not (an SO_REUSEPORT group gives up one member per lookup).
pub const MAX_PASSES: u32 = 64;

/// When to destroy, how often to look, and when to stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Look once, destroy nothing: the report lists what would be destroyed.
    pub dry_run: bool,
    /// Look again after destroying (the verification dump). Without it the run
    /// ends after the first pass and what remains is unknown.
    pub verify: bool,
    /// Destroy passes before giving up on sockets that still match (extended
    /// while passes make progress, up to [`MAX_PASSES`]); `None` = no limit
    /// (the deadline or the window ends the run).
    pub passes: Option<u32>,
    /// Destroy nothing before this long after the start (the owner's chance to close).
    pub grace: Duration,
    /// Clean only once this long has passed since the last destroy and since
    /// the last look that saw a target, every look in between empty.
    pub settle: Duration,
    /// Stop (not clean) at this time after the start.
    pub deadline: Option<Duration>,
    /// Keep looking, and destroying new targets, until this time after the start.
    pub window: Option<Duration>,
    /// Time between looks while waiting (grace, settle, window).
    pub interval: Duration,
    /// Refuse a first look with more targets than this (nothing is destroyed),
    /// and do not send a later pass larger than this.
    pub max: Option<usize>,
}

impl Policy {
    /// A plain kill: destroy now, verify, up to three passes.
    pub fn kill() -> Policy {
        Policy {
            dry_run: false,
            verify: true,
            passes: Some(3),
            grace: Duration::ZERO,
            settle: Duration::ZERO,
            deadline: None,
            window: None,
            interval: crate::defaults::INTERVAL,
            max: None,
        }
    }
}
