//! The library's error type. Every variant knows which documented exit code it maps to.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in sockkill's library.
///
/// All variants are "usage or environment" errors (exit code 2): a kill that
/// merely leaves sockets behind is not an error but a [`crate::KillReport`]
/// whose `remaining` is non-empty.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filter flag could not be parsed or makes no sense.
    #[error("invalid filter: {0}")]
    InvalidFilter(String),

    /// A kill filter matches (nearly) everything and `--allow-catch-all` was not given.
    #[error("refusing a catch-all kill filter: give --dst/--src with a prefix longer than /0, a port range narrower than 1-65535, or --pid (or --allow-catch-all)")]
    CatchAll,

    /// The filter matched more sockets than the `--max` guard allows.
    #[error(
        "filter matches {matched} sockets, more than --max {max}: nothing destroyed (raise --max if this is intended)"
    )]
    TooMany { matched: usize, max: usize },

    /// The namespace named by the user does not exist or is not a network namespace.
    #[error("network namespace {spec}: {reason}")]
    Netns { spec: String, reason: String },

    /// A process named with `--pid` (or found through HAProxy) cannot be read.
    #[error("process {pid}: {reason}")]
    Process { pid: u32, reason: String },

    /// The kernel refused SOCK_DESTROY with EPERM.
    #[error("permission denied destroying sockets: SOCK_DESTROY needs CAP_NET_ADMIN in the target network namespace{}", destroyed_note(*destroyed))]
    NoPermission { destroyed: usize },

    /// The kernel refused SOCK_DESTROY on an established socket with EOPNOTSUPP.
    #[error("this kernel cannot destroy TCP sockets (EOPNOTSUPP): it was built without CONFIG_INET_DIAG_DESTROY{}", destroyed_note(*destroyed))]
    DestroyUnsupported { destroyed: usize },

    /// A netlink socket operation failed.
    #[error("sock_diag netlink {op}: {source}")]
    Netlink {
        op: &'static str,
        #[source]
        source: io::Error,
    },

    /// The kernel answered with bytes we could not decode.
    #[error("malformed sock_diag reply: {0}")]
    Decode(String),

    /// Reading /proc failed.
    #[error("{}: {source}", path.display())]
    Proc {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// Talking to HAProxy failed or HAProxy refused a command.
    #[error("haproxy: {0}")]
    Haproxy(String),

    /// Anything else in the environment (threads, clocks, signals) that failed.
    #[error("{0}")]
    Other(String),
}

fn destroyed_note(destroyed: usize) -> String {
    if destroyed == 0 {
        " (nothing was destroyed)".to_string()
    } else {
        format!(" ({destroyed} sockets had been destroyed before this)")
    }
}

impl Error {
    /// The process exit code this error maps to (always 2: usage or environment error).
    pub fn exit_code(&self) -> i32 {
        2
    }

    pub(crate) fn netlink(op: &'static str, source: io::Error) -> Self {
        Error::Netlink { op, source }
    }
}

/// Result alias for the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;
