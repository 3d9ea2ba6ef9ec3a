//! What `sockkill haproxy` is asked to do ([`Options`]), and the loop's
//! policy made from it (checked once, into a `Plan`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::audit::AuditLog;
use crate::cancel::Cancel;
use crate::defaults;
use crate::engine::Policy;
use crate::error::{Error, HaproxyError, Result};

/// The grace period when commands are sent to HAProxy and none is given.
pub const DEFAULT_GRACE: Duration = defaults::GRACE;
/// The deadline when none is given (or grace + settle, or the window + settle, when longer).
pub const DEFAULT_DEADLINE: Duration = defaults::DEADLINE;

/// What to do; see `sockkill haproxy --help`.
#[derive(Debug, Clone)]
pub struct Options {
    /// The worker's stats socket (`PATH` or `HOST:PORT`).
    pub socket: String,
    /// The master CLI socket (`-S`); found from the master's command line when not given.
    pub master_socket: Option<String>,
    /// `(backend, server)`.
    pub server: Option<(String, String)>,
    /// The server's address, when given explicitly.
    pub addr: Option<SocketAddr>,
    /// `--lingering`: no server named; every backend connection any process
    /// holds whose server is gone from the current configuration or moved
    /// to another address (see `sockkill haproxy --help`).
    pub lingering: bool,
    /// With `lingering`: also end the connections of servers in maintenance.
    pub include_maint: bool,
    /// HAProxy processes to act for, instead of discovering them.
    pub pids: Vec<u32>,
    /// The processes' network namespace, instead of theirs from /proc.
    pub netns: Option<String>,
    /// Send no state-changing command to HAProxy; only enforce.
    pub no_shutdown: bool,
    /// Change nothing, destroy nothing: report what lingers now.
    pub dry_run: bool,
    /// How long HAProxy gets to close the sessions itself; `None`: [`DEFAULT_GRACE`]
    /// when commands are sent to HAProxy, none when nothing is (`--addr` alone,
    /// `--no-shutdown`): then HAProxy was asked for nothing and closes nothing.
    pub grace: Option<Duration>,
    /// Clean only once no target was seen, and nothing destroyed, for this long.
    pub settle: Duration,
    /// Give up (not clean) this long after the start; `None`: [`DEFAULT_DEADLINE`],
    /// or grace + settle (with `--for`: the window + settle) when longer.
    pub deadline: Option<Duration>,
    /// Timeout for connecting to HAProxy and for each answer.
    pub api_timeout: Duration,
    /// Time between looks.
    pub poll: Duration,
    /// Keep enforcing until this long after the start.
    pub window: Option<Duration>,
    /// Refuse (before any command is sent) when more targets than this match,
    /// and send no later pass larger than this.
    pub max: Option<usize>,
    /// Stops the run early when raised.
    pub cancel: Option<Cancel>,
    /// Records every destroyed socket.
    pub audit: Option<Arc<AuditLog>>,
}

impl Options {
    /// Options for `socket` and a target, with the command line's defaults.
    pub fn new(socket: impl Into<String>) -> Options {
        Options {
            socket: socket.into(),
            master_socket: None,
            server: None,
            addr: None,
            lingering: false,
            include_maint: false,
            pids: Vec::new(),
            netns: None,
            no_shutdown: false,
            dry_run: false,
            grace: None,
            settle: defaults::SETTLE,
            deadline: None,
            api_timeout: defaults::API_TIMEOUT,
            poll: defaults::INTERVAL,
            window: None,
            max: Some(defaults::MAX),
            cancel: None,
            audit: None,
        }
    }

    /// Whether state-changing commands will be sent to HAProxy.
    pub fn sends_commands(&self) -> bool {
        self.server.is_some() && !self.no_shutdown && !self.dry_run
    }

    /// The grace period in effect (see [`Options::grace`]).
    pub fn grace(&self) -> Duration {
        self.grace.unwrap_or(if self.sends_commands() { DEFAULT_GRACE } else { Duration::ZERO })
    }

    /// The loop's policy from these options, checked once. Errors when no
    /// server is named, or the deadline leaves no room to ever be judged clean.
    pub fn policy(&self) -> Result<Policy> {
        let chosen = [self.server.is_some() || self.addr.is_some(), self.lingering].iter().filter(|c| **c).count();
        if chosen == 0 {
            return Err(HaproxyError::NoTarget.into());
        }
        if chosen > 1 {
            return Err(Error::Usage("--lingering finds its servers itself: it takes no --server or --addr".into()));
        }
        if self.include_maint && !self.lingering {
            return Err(Error::Usage("--include-maint is a --lingering option".into()));
        }
        if self.poll.is_zero() || self.api_timeout.is_zero() || self.window.is_some_and(|w| w.is_zero()) {
            return Err(Error::Usage(
                "the poll interval, the API timeout and the --for window must be longer than 0".into(),
            ));
        }
        let grace = self.grace();
        let floor = grace.saturating_add(self.settle);
        let deadline = match self.deadline {
            Some(d) if d < floor => {
                return Err(Error::Usage(format!(
                "--deadline {d:?} is shorter than --grace + --settle ({floor:?}): nothing could ever be judged clean"
            )))
            }
            Some(d) => d,
            None => match self.window {
                Some(w) => w.saturating_add(self.settle).max(floor),
                None => DEFAULT_DEADLINE.max(floor),
            },
        };
        Ok(Policy {
            dry_run: self.dry_run,
            verify: true,
            passes: None,
            grace,
            settle: self.settle,
            deadline: Some(deadline),
            window: self.window,
            interval: self.poll,
            max: self.max,
        })
    }
}
