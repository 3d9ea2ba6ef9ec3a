//! The library's error type.
//!
//! An error says what went wrong, not which exit code it gives: that depends
//! on what the run had done when it happened (see [`crate::engine::Report::exit_code`]).

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in sockkill's library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filter flag could not be parsed or makes no sense.
    #[error("invalid filter: {0}")]
    InvalidFilter(String),

    /// A command-line value other than a filter is unusable.
    #[error("{0}")]
    Usage(String),

    /// A kill filter matches (nearly) everything and `--allow-catch-all` was not given.
    #[error("refusing a catch-all kill filter: give --dst/--src prefixes that leave out part of every address family, a port range that leaves out some ports, or --pid (or --allow-catch-all)")]
    CatchAll,

    /// The first look matched more sockets than the `--max` guard allows.
    #[error(
        "filter matches {matched} sockets, more than --max {max}: nothing destroyed (raise --max if this is intended)"
    )]
    TooMany {
        /// Targets found.
        matched: usize,
        /// The limit.
        max: usize,
    },

    /// A later pass would have destroyed more sockets than `--max`; it was not sent.
    #[error("a destroy pass would have destroyed {count} sockets, more than --max {max}: it was not sent")]
    PassTooLarge {
        /// Targets of the pass.
        count: usize,
        /// The limit.
        max: usize,
    },

    /// The namespace named by the user does not exist or is not a network namespace.
    #[error("network namespace {spec}: {reason}")]
    Netns {
        /// How the user named it.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A process named with `--pid` (or found through HAProxy) cannot be read.
    #[error("process {pid}: {reason}")]
    Process {
        /// The pid.
        pid: u32,
        /// What is wrong.
        reason: String,
    },

    /// The kernel refused SOCK_DESTROY with EPERM.
    #[error("permission denied destroying sockets: SOCK_DESTROY needs CAP_NET_ADMIN in the target network namespace")]
    NoPermission,

    /// The kernel refused SOCK_DESTROY on a live socket with EOPNOTSUPP.
    #[error("this kernel cannot destroy TCP sockets (EOPNOTSUPP): it was built without CONFIG_INET_DIAG_DESTROY")]
    DestroyUnsupported,

    /// A netlink socket operation failed.
    #[error("sock_diag netlink {op}: {source}")]
    Netlink {
        /// The operation.
        op: &'static str,
        /// The system's error.
        #[source]
        source: io::Error,
    },

    /// The kernel answered with bytes we could not decode.
    #[error("malformed sock_diag reply: {0}")]
    Decode(String),

    /// Reading /proc failed.
    #[error("{}: {source}", path.display())]
    Proc {
        /// The file.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: io::Error,
    },

    /// Talking to HAProxy failed, or HAProxy refused or answered something unknown.
    #[error("haproxy: {0}")]
    Haproxy(String),

    /// The audit log could not be opened or written.
    #[error("audit log {}: {reason}", path.display())]
    Audit {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },

    /// The metrics textfile cannot be written.
    #[error("metrics file {}: {reason}", path.display())]
    Metrics {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },

    /// A signal (or the caller's cancel request) stopped the run.
    #[error("interrupted by a signal{0}")]
    Interrupted(&'static str),

    /// Anything else in the environment (threads, clocks) that failed.
    #[error("{0}")]
    Other(String),
}

impl Error {
    pub(crate) fn netlink(op: &'static str, source: io::Error) -> Self {
        Error::Netlink { op, source }
    }
}

/// Result alias for the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;
