//! Which server HAProxy says a connection belongs to, from its two tables:
//! `show sess` (streams: `srv=` and the server-side connection's fd) and
//! `show fd` (every connection, streams or not — idle pools, connections an
//! idle keep-alive client session owns, idle h2 — with `sv=` and its ports).
//! Both are joined to a socket by the fd that holds it in that process
//! (/proc/PID/fd), and `show fd` also by the ports it prints.
//!
//! Cost: HAProxy builds these answers on its own threads, so each process is
//! asked as narrowly as its version allows, and never twice about one socket
//! (verdicts are cached by cookie in the classifier): a few unattributed
//! connections cost one `show fd <fd>` each; more cost one table; 3.2+
//! narrows `show sess` to the named server's streams. Every read is counted
//! with its size in the report (`tables_read`).

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::api::Api;
use super::discovery::Worker;
use super::parse::{self, FdConn, ServerState, Stream};
use crate::error::{Error, Result};

/// Up to this many unattributed connections in a process are asked about one
/// `show fd <fd>` at a time; more cost one whole table.
pub const FEW: usize = 16;

/// Who HAProxy says a connection is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A stream's server (`show sess`: `srv=`).
    Stream(String, String),
    /// The connection's own server (`show fd`: `sv=`): streams or not.
    Connection(String, String),
}

impl Source {
    /// `(backend, server)`.
    pub fn server(&self) -> (&str, &str) {
        match self {
            Source::Stream(b, s) | Source::Connection(b, s) => (b, s),
        }
    }

    /// Which table said so.
    pub fn table(&self) -> &'static str {
        match self {
            Source::Stream(..) => "show sess",
            Source::Connection(..) => "show fd",
        }
    }
}

/// One candidate connection of a process: its fd there and its ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// The fd holding it in the process.
    pub fd: u32,
    /// Our local port (HAProxy's side).
    pub lport: u16,
    /// The server's port.
    pub rport: u16,
}

/// HAProxy tables read during a run: how many answers, and their bytes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Tables {
    /// Per process (our pid) and command (`show sess`, `show sess server`,
    /// `show fd`, `show fd <fd>`).
    pub reads: Vec<TableRead>,
}

/// One kind of read from one process.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TableRead {
    /// Our pid of the process.
    pub pid: u32,
    /// The command (fd numbers and server names left out).
    pub command: &'static str,
    /// How many times it was sent.
    pub count: usize,
    /// Bytes of the answers.
    pub bytes: usize,
}

impl Tables {
    fn add(&mut self, pid: u32, command: &'static str, bytes: usize) {
        match self.reads.iter_mut().find(|r| r.pid == pid && r.command == command) {
            Some(r) => {
                r.count += 1;
                r.bytes += bytes;
            }
            None => self.reads.push(TableRead { pid, command, count: 1, bytes }),
        }
    }
}

/// Reaches HAProxy's processes: the answering worker directly, the others
/// through the master CLI (`@!<pid> ...`).
pub struct Attributor {
    api: Api,
    master: Option<Api>,
    workers: Vec<Worker>,
    answering: u32,
    /// The answering worker's version, and each process's where it differs
    /// (what each understands: `show fd s`, `show sess server`, the `sv=` order).
    version: String,
    versions: HashMap<u32, String>,
    tables: Tables,
}

/// A table that could not be had, and why (the sockets it would have named
/// count as unlisted). Not an error of the run: the classifier decides what an
/// unlisted socket is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unavailable {
    /// An old worker, and no master CLI to reach it through.
    NoMasterCli {
        /// Our pid of the process.
        pid: u32,
    },
    /// HAProxy refused the command (an old worker without that server, `level user`).
    Refused {
        /// Our pid of the process.
        pid: u32,
        /// The command, without its arguments.
        command: &'static str,
        /// HAProxy's refusal.
        why: String,
    },
    /// The stats socket is no longer answered by the current worker it was
    /// (another process answered, or it is stopping): HAProxy reloaded.
    Reloaded {
        /// Our pid of the process that was the current worker.
        pid: u32,
        /// Who answered instead.
        why: String,
    },
    /// No answer: the connection failed, or the answer did not come in time.
    NoAnswer {
        /// Our pid of the process.
        pid: u32,
        /// The command, without its arguments.
        command: &'static str,
        /// What went wrong.
        why: String,
    },
}

impl Unavailable {
    /// Our pid of the process whose table it is.
    pub fn pid(&self) -> u32 {
        match self {
            Unavailable::NoMasterCli { pid }
            | Unavailable::Refused { pid, .. }
            | Unavailable::Reloaded { pid, .. }
            | Unavailable::NoAnswer { pid, .. } => *pid,
        }
    }
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unavailable::NoMasterCli { pid } => write!(f, "HAProxy pid {pid} cannot be asked (no master CLI)"),
            Unavailable::Refused { pid, command, why } => {
                write!(f, "HAProxy pid {pid} answered `{command}` with a refusal ({why})")
            }
            Unavailable::NoAnswer { pid, command, why } => write!(f, "HAProxy pid {pid} gave no `{command}` ({why})"),
            Unavailable::Reloaded { pid, why } => write!(
                f,
                "HAProxy reloaded during the run: pid {pid} is no longer the worker answering the stats socket ({why}); run again"
            ),
        }
    }
}

impl Attributor {
    /// Tables of `workers`; `api` reaches `answering`, `master` the others;
    /// `version` is the answering worker's, `versions` any process's known.
    pub fn new(
        api: Api,
        master: Option<Api>,
        workers: Vec<Worker>,
        answering: u32,
        version: &str,
        versions: HashMap<u32, String>,
    ) -> Attributor {
        Attributor { api, master, workers, answering, version: version.to_string(), versions, tables: Tables::default() }
    }

    /// `pid`'s version (an old worker may run an older binary after an
    /// upgrade: `show fd s` there dumps fd 0 alone, without an error).
    fn version_of(&self, pid: u32) -> &str {
        match self.versions.get(&pid) {
            Some(v) if pid != self.answering => v,
            _ => &self.version,
        }
    }

    /// `show fd`'s `sv=` is `SERVER/BACKEND` in `pid` (2.4).
    fn server_first(&self, pid: u32) -> bool {
        parse::fd_server_first(self.version_of(pid))
    }

    /// The answering worker's API.
    pub fn api(&self) -> &Api {
        &self.api
    }

    /// What was read so far.
    pub fn tables(&self) -> &Tables {
        &self.tables
    }

    /// Sends `cmd` to `pid`, counted under `label`. Only a cancel request is an
    /// error; anything else is why the table is unavailable.
    fn ask(&mut self, pid: u32, cmd: &str, label: &'static str) -> Result<std::result::Result<String, Unavailable>> {
        let answer = if pid == self.answering {
            // One connection is answered by one process: `show info` first says
            // which, and whether a reload has made it an old worker since.
            let inner = self.workers.iter().find(|w| w.pid == pid).map_or(pid, |w| w.inner_pid);
            match self.api.command(&format!("show info;{cmd}")) {
                Ok(text) => {
                    self.tables.add(pid, label, text.len());
                    let rest = match parse::split_pinned(&text) {
                        Some(((p, false), rest)) if p == inner => rest,
                        Some(((p, stopping), _)) => {
                            let why = match stopping {
                                true => format!("it is stopping (HAProxy pid {p})"),
                                false => format!("HAProxy pid {p} answered, not {inner}"),
                            };
                            return Ok(Err(Unavailable::Reloaded { pid, why }));
                        }
                        None => return Ok(Err(Unavailable::NoAnswer { pid, command: label, why: "no `show info` before the answer".into() })),
                    };
                    return Ok(match parse::check_query(cmd, rest) {
                        Ok(()) => Ok(rest.to_string()),
                        Err(e) => Err(Unavailable::Refused { pid, command: label, why: e.to_string() }),
                    });
                }
                Err(e @ Error::Interrupted(_)) => return Err(e),
                Err(e) => return Ok(Err(Unavailable::NoAnswer { pid, command: label, why: e.to_string() })),
            }
        } else {
            let Some(master) = &self.master else {
                return Ok(Err(Unavailable::NoMasterCli { pid }));
            };
            let inner = self.workers.iter().find(|w| w.pid == pid).map_or(pid, |w| w.inner_pid);
            master.command(&format!("@!{inner} {cmd}"))
        };
        match answer {
            Ok(text) => {
                self.tables.add(pid, label, text.len());
                Ok(match parse::check_query(cmd, &text) {
                    Ok(()) => Ok(text),
                    Err(e) => Err(Unavailable::Refused { pid, command: label, why: e.to_string() }),
                })
            }
            Err(e @ Error::Interrupted(_)) => Err(e),
            Err(e) => Ok(Err(Unavailable::NoAnswer { pid, command: label, why: e.to_string() })),
        }
    }

    /// `pid`'s streams; with `server` on 3.2+, only that server's.
    pub fn streams(
        &mut self,
        pid: u32,
        server: Option<(&str, &str)>,
    ) -> Result<std::result::Result<Vec<Stream>, Unavailable>> {
        // `show sess server B/S` exists from 3.2.
        if let (Some((b, s)), true) = (server, parse::version_at_least(self.version_of(pid), 3, 2)) {
            match self.ask(pid, &format!("show sess server {b}/{s}"), "show sess server")? {
                Ok(text) => return Ok(Ok(parse::parse_sess(&text))),
                // An old worker without that server: its whole table instead.
                Err(why) => tracing::debug!(pid, why = %why, "no narrowed stream table"),
            }
        }
        Ok(self.ask(pid, "show sess", "show sess")?.map(|t| parse::parse_sess(&t)))
    }

    /// `pid`'s own configuration (`show servers state`): an old worker's
    /// is the one it was started with.
    pub fn servers_state(&mut self, pid: u32) -> Result<std::result::Result<Vec<ServerState>, Unavailable>> {
        Ok(match self.ask(pid, "show servers state", "show servers state")? {
            Ok(text) => parse::parse_servers_state(&text)
                .map_err(|e| Unavailable::NoAnswer { pid, command: "show servers state", why: e.to_string() }),
            Err(why) => Err(why),
        })
    }

    /// `pid`'s whole connection table (server-side connections only, where
    /// the version can say so), as text.
    fn fd_table(&mut self, pid: u32) -> Result<std::result::Result<String, Unavailable>> {
        // `show fd s` (server-side connections only) exists from 2.8.
        let cmd = if parse::version_at_least(self.version_of(pid), 2, 8) { "show fd s" } else { "show fd" };
        self.ask(pid, cmd, "show fd")
    }

    /// `pid`'s server-side connections (`show fd`, `back=1`).
    pub fn connections(&mut self, pid: u32) -> Result<std::result::Result<Vec<FdConn>, Unavailable>> {
        let server_first = self.server_first(pid);
        Ok(self.fd_table(pid)?.map(|t| parse::parse_fd(&t, server_first).into_iter().filter(|c| c.back).collect()))
    }

    /// `show fd` lines for `candidates` of `pid`: one `show fd <fd>` each when
    /// few, else one table (server-side connections only, where the version
    /// can say so). A line whose ports are not the candidate's is dropped (the
    /// fd was reused since /proc was read).
    pub fn fd_lines(
        &mut self,
        pid: u32,
        candidates: &[Candidate],
    ) -> Result<std::result::Result<HashMap<u32, FdConn>, Unavailable>> {
        let mut texts = Vec::new();
        if candidates.len() <= FEW {
            for c in candidates {
                match self.ask(pid, &format!("show fd {}", c.fd), "show fd <fd>")? {
                    Ok(t) => texts.push(t),
                    Err(why) => return Ok(Err(why)),
                }
            }
        } else {
            match self.fd_table(pid)? {
                Ok(t) => texts.push(t),
                Err(why) => return Ok(Err(why)),
            }
        }
        let wanted: BTreeMap<u32, Candidate> = candidates.iter().map(|c| (c.fd, *c)).collect();
        let mut out = HashMap::new();
        let server_first = self.server_first(pid);
        for conn in texts.iter().flat_map(|t| parse::parse_fd(t, server_first)) {
            let Some(c) = wanted.get(&conn.fd) else { continue };
            let ports_match = conn.lport.is_none_or(|p| p == c.lport) && conn.rport.is_none_or(|p| p == c.rport);
            if conn.back && ports_match {
                out.insert(conn.fd, conn);
            }
        }
        Ok(Ok(out))
    }
}
