//! The caller's part of the loop: which sockets of a look are targets.

use crate::error::Result;
use crate::socket::TcpSocket;

/// What a [`Classifier`] makes of one socket of a look. The words are the
/// report's (`other_server`, `ambiguous`): the HAProxy mode is where they
/// come from, and a socket is called the same from the engine to the JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Class {
    /// Destroy it.
    Target,
    /// Not something this run is about (e.g. held by another process): not reported.
    Ignore,
    /// Left alone on purpose: its owner attributes it to something else (another
    /// server). Reported with the reason; it does not affect the verdict.
    OtherServer(String),
    /// Left alone because it cannot be told apart from what must be kept.
    /// Reported with the reason; the run is not clean while one remains.
    Ambiguous(String),
}

/// Which sockets of a look are targets, and what to make of targets that
/// disappeared without a destroy of the run's.
pub trait Classifier {
    /// One class per socket of `sockets` (a fresh look), in order. May fill
    /// in `owners`. An error ends the run (with its report).
    fn classify(&mut self, sockets: &mut [TcpSocket]) -> Result<Vec<Class>>;

    /// Targets of the previous look that are gone and were not destroyed by
    /// this run (their owner closed them), `at_ms` after the start.
    fn vanished(&mut self, _sockets: Vec<TcpSocket>, _at_ms: u64) {}

    /// Asked when the run would end quiet (and once after a dry run's look):
    /// whether the sockets' owner still names targets that no look found
    /// (HAProxy's streams of the server). `Some(why)` keeps the run going —
    /// quiet counts again from now — and, if it still holds when the run
    /// ends, makes the verdict ambiguous with `why` as its reason.
    fn doubt(&mut self) -> Result<Option<String>> {
        Ok(None)
    }
}
