//! The library's error types.
//!
//! An error says what went wrong and keeps its cause (`source()`), not which
//! exit code it gives: that depends on what the run had done when it
//! happened (see [`crate::Verdict`]). [`Error::kind`] names each thing a
//! caller may act on (`error_kind` in the JSON documents).

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong in sockkill's library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filter flag could not be parsed or makes no sense.
    #[error("invalid filter: {0}")]
    InvalidFilter(String),

    /// ss's filter words (`state ...`, `dst ... or ...`) could not be parsed.
    #[error("invalid filter expression: {message}")]
    FilterExpr {
        /// What was expected, and the words read up to the one that failed.
        message: String,
        /// The word that failed (none at the end of the words).
        word: Option<String>,
    },

    /// A command-line value other than a filter is unusable.
    #[error("{0}")]
    Usage(String),

    /// A kill filter matches (nearly) everything and `--allow-catch-all` was not given.
    #[error("refusing a catch-all kill filter: give --dst/--src prefixes that leave out part of every address family, a port range that leaves out some ports, --pid or --cgroup, or an expression that narrows as they do (a `not` alone never does) (or --allow-catch-all)")]
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

    /// The namespace named by the user is unusable (not there, not a network namespace).
    #[error("network namespace {spec}: {reason}")]
    Netns {
        /// How the user named it.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },

    /// Entering, creating or inspecting a network namespace failed.
    #[error("network namespace {spec}: {op}: {source}")]
    NetnsIo {
        /// How the user named it (or `new` for a private one).
        spec: String,
        /// What was being done.
        op: &'static str,
        /// The system's error.
        #[source]
        source: io::Error,
    },

    /// A process named with `--pid` (or found through HAProxy) does not exist.
    #[error("process {pid}: no such process")]
    NoProcess {
        /// The pid.
        pid: u32,
    },

    /// A process's /proc entries cannot be read.
    #[error("process {pid}: {}: {source}", path.display())]
    Process {
        /// The pid.
        pid: u32,
        /// The file.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: io::Error,
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
        op: NetlinkOp,
        /// The system's error.
        #[source]
        source: io::Error,
    },

    /// The kernel answered with bytes we could not decode.
    #[error("malformed sock_diag reply: {0}")]
    Decode(String),

    /// A file (in /proc, or one given by the user) could not be read or written.
    #[error("{}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: io::Error,
    },

    /// `--cgroup`: the path is not a cgroup v2 directory, or cgroup v2 is not there.
    #[error("cgroup {path}: {reason}")]
    Cgroup {
        /// As given.
        path: String,
        /// What is wrong.
        reason: String,
    },

    /// `--dev`: no such interface in the target namespace.
    #[error("interface {name}: {reason}")]
    Interface {
        /// As given.
        name: String,
        /// What is wrong.
        reason: String,
    },

    /// Talking to HAProxy failed, or HAProxy refused or answered something unknown.
    #[error("haproxy: {0}")]
    Haproxy(#[from] HaproxyError),

    /// The audit log cannot be used (a FIFO, a device, a directory...).
    #[error("audit log {}: {reason}", path.display())]
    AuditPath {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// Opening, writing or syncing the audit log failed.
    #[error("audit log {}: {op}: {source}", path.display())]
    Audit {
        /// The file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The system's error.
        #[source]
        source: io::Error,
    },

    /// The metrics textfile cannot be replaced (its directory is missing, it is not a regular file...).
    #[error("metrics file {}: {reason}", path.display())]
    MetricsPath {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// Writing the metrics textfile failed.
    #[error("metrics file {}: {source}", path.display())]
    Metrics {
        /// The file.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: io::Error,
    },

    /// A signal (or the caller's cancel request) stopped the run.
    #[error("interrupted by a signal{0}")]
    Interrupted(&'static str),

    /// The system refused something sockkill needs of it (a socket pair, a signal handler).
    #[error("{what}: {source}")]
    System {
        /// What was asked for.
        what: &'static str,
        /// The system's error.
        #[source]
        source: io::Error,
    },

    /// A bug: a thread panicked, or a part broke its contract.
    #[error("internal error: {0}")]
    Internal(String),
}

/// What went wrong talking to HAProxy.
#[derive(Debug, thiserror::Error)]
pub enum HaproxyError {
    /// The stats socket path does not exist.
    #[error("socket {}: no such file", path.display())]
    NoSocket {
        /// The path.
        path: PathBuf,
    },

    /// The stats socket path is not a socket.
    #[error("{} is not a unix socket (it is {kind})", path.display())]
    NotSocket {
        /// The path.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },

    /// Connecting failed.
    #[error("connecting to {endpoint}: {source}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// The system's error.
        #[source]
        source: io::Error,
    },

    /// No connection or no answer within the timeout.
    #[error("{} {endpoint}: no answer within {after:?} (--api-timeout)", command.as_deref().map_or("connecting to".to_string(), |c| format!("`{c}` to")))]
    Timeout {
        /// The endpoint.
        endpoint: String,
        /// The command (`None`: while connecting).
        command: Option<String>,
        /// The timeout.
        after: Duration,
    },

    /// Sending a command or reading its answer failed.
    #[error("`{command}` to {endpoint}: {source}")]
    Io {
        /// The endpoint.
        endpoint: String,
        /// The command.
        command: String,
        /// The system's error.
        #[source]
        source: io::Error,
    },

    /// The answer is not UTF-8 text.
    #[error("`{command}` to {endpoint}: the answer is not text")]
    NotText {
        /// The endpoint.
        endpoint: String,
        /// The command.
        command: String,
    },

    /// HAProxy refused the command (`No such server.`, `Permission denied`...).
    #[error("`{command}` refused: {answer}{hint}")]
    Refused {
        /// The command.
        command: String,
        /// HAProxy's answer (its first line).
        answer: String,
        /// What usually helps.
        hint: &'static str,
    },

    /// HAProxy answered something this version of sockkill does not know.
    #[error("unexpected answer to `{command}`: {answer:?}")]
    Unexpected {
        /// The command.
        command: String,
        /// The answer (its first 80 characters).
        answer: String,
    },

    /// An answer does not have the shape of its command's answer.
    #[error("unexpected `{command}` answer: {why}")]
    Malformed {
        /// The command.
        command: &'static str,
        /// What is wrong with it.
        why: String,
    },

    /// Neither `--server`, `--addr` nor `--lingering`.
    #[error("give --server BACKEND/SERVER, --addr IP:PORT or --lingering")]
    NoTarget,

    /// `--server`: no such backend.
    #[error("no backend {backend} (`show servers state`)")]
    NoBackend {
        /// The backend.
        backend: String,
    },

    /// `--server`: no such server in the backend.
    #[error("no server {server} in backend {backend} (`show servers state`)")]
    NoServer {
        /// The backend.
        backend: String,
        /// The server.
        server: String,
    },

    /// `--server`: its address cannot be used as a filter.
    #[error("server {backend}/{server} {why}: give --addr IP:PORT")]
    NoAddress {
        /// The backend.
        backend: String,
        /// The server.
        server: String,
        /// Why (port 0, no address).
        why: &'static str,
    },

    /// HAProxy's processes cannot be found or told apart.
    #[error("{0}")]
    Topology(String),

    /// A table the run cannot do without could not be had (and why).
    #[error("{0}")]
    Unavailable(String),
}

/// The netlink operation that failed, for callers that act on which one
/// (a dump the kernel refused is retried another way; one it found too
/// busy is not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetlinkOp {
    /// Creating the socket.
    Socket,
    /// Binding it.
    Bind,
    /// Connecting it to the kernel.
    Connect,
    /// Reading its address.
    GetSockName,
    /// Setting a buffer size.
    SetSockOpt,
    /// Sending requests.
    Send,
    /// Receiving replies.
    Recv,
    /// A socket dump (the kernel's answer to it).
    Dump,
    /// Looking up a unix socket's peer.
    UnixLookup,
}

impl std::fmt::Display for NetlinkOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NetlinkOp::Socket => "socket",
            NetlinkOp::Bind => "bind",
            NetlinkOp::Connect => "connect",
            NetlinkOp::GetSockName => "getsockname",
            NetlinkOp::SetSockOpt => "setsockopt",
            NetlinkOp::Send => "send",
            NetlinkOp::Recv => "recv",
            NetlinkOp::Dump => "dump",
            NetlinkOp::UnixLookup => "unix socket lookup",
        })
    }
}

impl Error {
    pub(crate) fn netlink(op: NetlinkOp, source: io::Error) -> Self {
        Error::Netlink { op, source }
    }

    pub(crate) fn system(what: &'static str, source: io::Error) -> Self {
        Error::System { what, source }
    }

    /// What kind of error this is, for scripts: the JSON's `error_kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::InvalidFilter(_) | Error::FilterExpr { .. } => "invalid_filter",
            Error::Usage(_) => "usage",
            Error::CatchAll => "catch_all",
            Error::TooMany { .. } => "too_many",
            Error::PassTooLarge { .. } => "pass_too_large",
            Error::Netns { .. } | Error::NetnsIo { .. } => "netns",
            Error::NoProcess { .. } | Error::Process { .. } => "process",
            Error::NoPermission => "permission",
            Error::DestroyUnsupported => "unsupported",
            Error::Netlink { .. } | Error::Decode(_) => "netlink",
            Error::File { .. } => "proc",
            Error::Cgroup { .. } => "cgroup",
            Error::Interface { .. } => "interface",
            Error::Haproxy(e) => e.kind(),
            Error::AuditPath { .. } | Error::Audit { .. } => "audit_log",
            Error::MetricsPath { .. } | Error::Metrics { .. } => "metrics_file",
            Error::Interrupted(_) => "interrupted",
            Error::System { .. } => "system",
            Error::Internal(_) => "internal",
        }
    }
}

impl HaproxyError {
    /// What kind of error this is, for scripts.
    pub fn kind(&self) -> &'static str {
        match self {
            HaproxyError::NoSocket { .. }
            | HaproxyError::NotSocket { .. }
            | HaproxyError::Connect { .. }
            | HaproxyError::Io { .. } => "haproxy_unreachable",
            HaproxyError::Timeout { .. } => "haproxy_timeout",
            HaproxyError::Refused { .. } => "haproxy_refused",
            HaproxyError::NotText { .. } | HaproxyError::Unexpected { .. } | HaproxyError::Malformed { .. } => {
                "haproxy_answer"
            }
            HaproxyError::NoTarget
            | HaproxyError::NoBackend { .. }
            | HaproxyError::NoServer { .. }
            | HaproxyError::NoAddress { .. } => "haproxy_server",
            HaproxyError::Topology(_) => "haproxy_processes",
            HaproxyError::Unavailable(_) => "haproxy_answer",
        }
    }
}

/// Result alias for the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_kept() {
        let e = Error::Haproxy(HaproxyError::Io {
            endpoint: "/run/haproxy.sock".into(),
            command: "show sess".into(),
            source: io::Error::from_raw_os_error(libc::ECONNRESET),
        });
        let cause = std::error::Error::source(&e).and_then(std::error::Error::source);
        let io = cause.and_then(|c| c.downcast_ref::<io::Error>()).expect("the io::Error is kept");
        assert_eq!(io.raw_os_error(), Some(libc::ECONNRESET));
        assert_eq!(e.kind(), "haproxy_unreachable");
        assert!(e.to_string().starts_with("haproxy: `show sess` to /run/haproxy.sock: "), "{e}");
    }

    #[test]
    fn timeouts_name_the_command_or_the_connect() {
        let t = |command: Option<&str>| HaproxyError::Timeout {
            endpoint: "lb:9999".into(),
            command: command.map(str::to_string),
            after: Duration::from_secs(2),
        };
        assert_eq!(t(None).to_string(), "connecting to lb:9999: no answer within 2s (--api-timeout)");
        assert_eq!(t(Some("show info")).to_string(), "`show info` to lb:9999: no answer within 2s (--api-timeout)");
    }
}
