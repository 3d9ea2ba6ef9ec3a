//! Everything that knows the kernel's sock_diag bytes, and nothing else.

pub mod bytecode;
#[cfg(test)]
mod bytecode_sim;
pub mod netlink;
pub mod wire;

pub use netlink::{DumpStatus, SockDiag, DESTROY_BATCH};
pub use wire::DumpSpec;

/// What became of one socket a destroy was aimed at (or, in a dry run, would be).
///
/// `SockDiag::destroy` answers `Destroyed`, `AlreadyGone`, `Failed` or
/// `Unacknowledged`; the engine turns an `AlreadyGone` whose socket the next
/// dump still shows into `NotFound`, and uses `WouldDestroy` for dry runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Dry run: it would have been destroyed.
    WouldDestroy,
    /// The kernel destroyed it.
    Destroyed,
    /// ENOENT, and no later dump shows it: it closed before the destroy arrived
    /// (or its cookie belongs to an older socket on the same 4-tuple).
    AlreadyGone,
    /// ENOENT although it is still there: the kernel's lookup for the destroy
    /// reaches another socket with the same addresses (a member of an
    /// SO_REUSEPORT listener group other than the one the lookup selects).
    NotFound,
    /// The kernel refused with this errno.
    Failed(i32),
    /// No ack came back (receive buffer overflow); the next dump tells whether it is gone.
    Unacknowledged,
}

impl Outcome {
    /// The errno of a refused destroy.
    pub fn errno(self) -> Option<i32> {
        match self {
            Outcome::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// Why the kernel refused it (`EPERM (Operation not permitted)`), for a refused destroy.
    pub fn error_text(self) -> Option<String> {
        self.errno().map(errno_text)
    }

    /// The word used for it in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::WouldDestroy => "would_destroy",
            Outcome::Destroyed => "destroyed",
            Outcome::AlreadyGone => "already_gone",
            Outcome::NotFound => "not_found",
            Outcome::Failed(_) => "failed",
            Outcome::Unacknowledged => "unacknowledged",
        }
    }
}

/// `ENOENT (No such file or directory)` style text for an errno.
pub fn errno_text(errno: i32) -> String {
    let e = nix::errno::Errno::from_raw(errno);
    format!("{e:?} ({})", e.desc())
}

impl serde::Serialize for Outcome {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}
