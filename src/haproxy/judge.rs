//! Which of HAProxy's sockets to the server's address are the named server's,
//! from HAProxy's own stream table.
//!
//! A candidate is a socket an HAProxy process holds whose peer is the
//! server's address. It is destroyed only when HAProxy attributes it to the
//! server (its stream's `srv=`), or HAProxy lists no stream for it (the
//! lingering sessions this tool exists for, idle pooled connections) and no
//! other server in the current worker's configuration has that address.
//! Sockets of another server are kept; unlisted sockets at a shared address
//! are left alone as unsure. A socket is attributed once (cached by cookie),
//! and HAProxy is asked only when an unattributed candidate exists — always
//! after the dump that found it, so a brand-new stream is in the table.

use std::collections::HashMap;
use std::net::SocketAddr;

use serde::Serialize;
use tracing::{debug, warn};

use super::api::Api;
use super::discovery::Worker;
use super::parse::{self, ServerState, Stream};
use crate::engine::enforce::{Class, Judge};
use crate::engine::owners::Holders;
use crate::error::{Error, Result};
use crate::filter::canonical_ip;
use crate::socket::TcpSocket;

/// Which sessions the run is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `--server BACKEND/SERVER`: that server's.
    Named {
        /// The backend.
        backend: String,
        /// The server.
        server: String,
    },
    /// `--addr` alone: every server at the address that the current worker
    /// no longer has configured there (typically removed by a reload).
    Gone,
}

/// A socket HAProxy closed by itself, and when it was first seen gone.
#[derive(Debug, Clone, Serialize)]
pub struct Closed {
    /// The socket.
    #[serde(flatten)]
    pub socket: TcpSocket,
    /// Milliseconds from the start.
    pub at_ms: u64,
}

/// The one rule for what is a target (see the module docs): pure, given the
/// target, the address and the current worker's configuration.
#[derive(Debug, Clone)]
pub struct Rule {
    target: Target,
    addr: SocketAddr,
    /// The current worker's servers (all backends).
    config: Vec<ServerState>,
}

impl Rule {
    /// The rule for `target` at `addr` under the current worker's `config`.
    pub fn new(target: Target, addr: SocketAddr, config: Vec<ServerState>) -> Rule {
        Rule { target, addr, config }
    }

    fn configured_at_addr(&self) -> impl Iterator<Item = &ServerState> {
        let ip = canonical_ip(self.addr.ip());
        let port = self.addr.port();
        self.config.iter().filter(move |s| s.addr.map(canonical_ip) == Some(ip) && (s.port == port || s.port == 0))
    }

    /// Whether server `be/srv`'s connections could go to this address: it is
    /// configured here, or the current configuration no longer has it.
    pub fn may_be_at_addr(&self, be: &str, srv: &str) -> bool {
        let mut configured = self.config.iter().filter(|s| s.backend == be && s.name == srv).peekable();
        configured.peek().is_none() || self.configured_at_addr().any(|s| s.backend == be && s.name == srv)
    }

    /// The verdict on one candidate from its stream's server (`be/srv`), or —
    /// `attributed` being `None` — from its absence (`unlisted_why` says why).
    pub fn decide(&self, attributed: Option<(&str, &str)>, unlisted_why: &str) -> Class {
        match (attributed, &self.target) {
            (Some((be, srv)), Target::Named { backend, server }) => {
                if be == backend && srv == server {
                    Class::Target
                } else {
                    Class::Keep(format!("HAProxy attributes it to {be}/{srv}"))
                }
            }
            (Some((be, srv)), Target::Gone) => {
                if self.configured_at_addr().any(|s| s.backend == be && s.name == srv) {
                    Class::Keep(format!("HAProxy attributes it to {be}/{srv}, still configured at {}", self.addr))
                } else {
                    Class::Target
                }
            }
            (None, target) => {
                let others: Vec<String> = self
                    .configured_at_addr()
                    .filter(|s| match target {
                        Target::Named { backend, server } => !(&s.backend == backend && &s.name == server),
                        Target::Gone => true,
                    })
                    .map(|s| format!("{}/{}", s.backend, s.name))
                    .collect();
                if others.is_empty() {
                    Class::Target
                } else {
                    Class::Unsure(format!("{unlisted_why}, and {} share the address", others.join(", ")))
                }
            }
        }
    }
}

/// Classifies HAProxy's sockets to one address (see the module docs).
pub struct HaproxyJudge {
    rule: Rule,
    holders: Holders,
    workers: Vec<Worker>,
    answering: u32,
    api: Api,
    master: Option<Api>,
    verdicts: HashMap<u64, Class>,
    /// Sockets HAProxy closed by itself.
    pub closed: Vec<Closed>,
    /// `show sess` answers asked for.
    pub tables_read: usize,
}

impl HaproxyJudge {
    /// A judge for sockets to `addr` held by `workers`; `api` reaches the
    /// answering worker, `master` (the master CLI) the others.
    pub fn new(
        target: Target,
        addr: SocketAddr,
        config: Vec<ServerState>,
        workers: Vec<Worker>,
        answering: u32,
        api: Api,
        master: Option<Api>,
    ) -> Result<HaproxyJudge> {
        let pids: Vec<u32> = workers.iter().map(|w| w.pid).collect();
        Ok(HaproxyJudge {
            rule: Rule::new(target, addr, config),
            holders: Holders::new(&pids)?,
            workers,
            answering,
            api,
            master,
            verdicts: HashMap::new(),
            closed: Vec::new(),
            tables_read: 0,
        })
    }

    /// The API of the answering worker (for the final `show stat`).
    pub fn api(&self) -> &Api {
        &self.api
    }

    /// Workers that exited during the run.
    pub fn exited(&mut self) -> &[u32] {
        self.holders.exited()
    }

    /// How often the workers' fd tables were read.
    pub fn fd_scans(&self) -> usize {
        self.holders.scans()
    }

    /// The stream table of `pid`, or why it cannot be had. Only a cancel
    /// request is an error: the run stops.
    fn table(&mut self, pid: u32) -> Result<std::result::Result<Vec<Stream>, String>> {
        let answer = if pid == self.answering {
            self.api.command("show sess")
        } else {
            let Some(master) = &self.master else {
                return Ok(Err(format!("HAProxy pid {pid} cannot be asked (no master CLI)")));
            };
            let inner = self.workers.iter().find(|w| w.pid == pid).map_or(pid, |w| w.inner_pid);
            master.command(&format!("@!{inner} show sess"))
        };
        self.tables_read += 1;
        Ok(match answer {
            Ok(text) => match parse::check_query("show sess", &text) {
                Ok(()) => Ok(parse::parse_sess(&text)),
                Err(e) => Err(format!("HAProxy pid {pid} gave no stream table ({e})")),
            },
            Err(e @ Error::Interrupted(_)) => return Err(e),
            Err(e) => Err(format!("HAProxy pid {pid} gave no stream table ({e})")),
        })
    }

    /// Finds who holds the sockets of `sockets` with an unknown inode. The
    /// cheap way first: the stream tables of the processes that can be asked,
    /// and one fd link per stream whose server could be at this address (one
    /// configured there, or one the configuration no longer has). Whatever is
    /// still unknown then costs a full read of the processes' fd tables.
    fn find_new_holders(
        &mut self,
        sockets: &[TcpSocket],
        tables: &mut HashMap<u32, std::result::Result<Vec<Stream>, String>>,
    ) -> Result<()> {
        let mut unknown: std::collections::HashSet<u32> =
            sockets.iter().map(|s| s.inode).filter(|i| !self.holders.knows(*i)).collect();
        let askable: Vec<u32> = self
            .workers
            .iter()
            .map(|w| w.pid)
            .filter(|&p| p == self.answering || self.master.is_some())
            .filter(|p| self.holders.pids().contains(p))
            .collect();
        for pid in askable {
            if unknown.is_empty() {
                break;
            }
            let table = self.table(pid)?;
            if let Ok(streams) = &table {
                for st in streams {
                    let (Some(fd), Some(be), Some(srv)) = (st.fd, st.backend.as_deref(), st.server.as_deref()) else {
                        continue;
                    };
                    if !self.rule.may_be_at_addr(be, srv) {
                        continue;
                    }
                    let Some(inode) = crate::procfs::socket_of_fd(pid, fd) else { continue };
                    if unknown.remove(&inode) {
                        self.holders.learn(inode, crate::engine::owners::Holding { pid, fd });
                    }
                }
            }
            tables.insert(pid, table);
        }
        if !unknown.is_empty() {
            debug!(count = unknown.len(), "sockets no stream table names: reading the fd tables");
            self.holders.refresh_for(sockets)?;
        }
        Ok(())
    }
}

impl Judge for HaproxyJudge {
    fn classify(&mut self, sockets: &mut [TcpSocket]) -> Result<Vec<Class>> {
        // Stream tables read during this look, by pid (each asked at most once).
        let mut tables: HashMap<u32, std::result::Result<Vec<Stream>, String>> = HashMap::new();
        if sockets.iter().any(|s| !self.holders.knows(s.inode)) {
            self.find_new_holders(sockets, &mut tables)?;
        }
        // Candidates without a verdict yet, by the process holding them.
        let mut pending: HashMap<u32, Vec<usize>> = HashMap::new();
        for (i, s) in sockets.iter_mut().enumerate() {
            let Some(holding) = self.holders.holder(s) else { continue };
            s.owners = self.holders.owners(s);
            if !self.verdicts.contains_key(&s.cookie()) {
                pending.entry(holding.pid).or_default().push(i);
            }
        }
        for (pid, idx) in pending {
            if let std::collections::hash_map::Entry::Vacant(slot) = tables.entry(pid) {
                slot.insert(self.table(pid)?);
            }
            let table = &tables[&pid];
            if let Err(why) = table {
                warn!(pid, why = %why, "no stream table: sockets of this process count as unlisted");
            }
            let by_fd: HashMap<u32, (&str, &str)> = table
                .as_ref()
                .map(|t| {
                    t.iter().filter_map(|s| Some((s.fd?, (s.backend.as_deref()?, s.server.as_deref()?)))).collect()
                })
                .unwrap_or_default();
            let unlisted_why = match table {
                Ok(_) => format!("HAProxy (pid {pid}) lists no stream for it"),
                Err(why) => why.clone(),
            };
            for i in idx {
                let s = &sockets[i];
                let attributed = self.holders.holder(s).and_then(|h| by_fd.get(&h.fd).copied());
                let class = self.rule.decide(attributed, &unlisted_why);
                debug!(cookie = s.cookie(), pid, ?attributed, ?class, "attributed");
                self.verdicts.insert(s.cookie(), class);
            }
        }
        Ok(sockets
            .iter()
            .map(|s| match self.holders.holder(s) {
                None => Class::Ignore,
                Some(_) => self.verdicts.get(&s.cookie()).cloned().unwrap_or(Class::Ignore),
            })
            .collect())
    }

    fn vanished(&mut self, sockets: Vec<TcpSocket>, at_ms: u64) {
        self.closed.extend(sockets.into_iter().map(|socket| Closed { socket, at_ms }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(be: &str, name: &str, addr: &str, port: u16) -> ServerState {
        ServerState { backend: be.into(), name: name.into(), addr: addr.parse().ok(), port }
    }

    fn named(be: &str, srv: &str) -> Target {
        Target::Named { backend: be.into(), server: srv.into() }
    }

    const WHY: &str = "no stream";

    #[test]
    fn named_server_attribution_decides() {
        let addr: SocketAddr = "10.88.0.11:9001".parse().unwrap();
        let shared = vec![server("be_a", "a1", "10.88.0.11", 9001), server("be_b", "b1", "10.88.0.11", 9001)];
        let r = Rule::new(named("be_a", "a1"), addr, shared.clone());
        assert_eq!(r.decide(Some(("be_a", "a1")), WHY), Class::Target);
        assert!(matches!(r.decide(Some(("be_b", "b1")), WHY), Class::Keep(why) if why.contains("be_b/b1")));
        // Unlisted at an address be_b/b1 shares: cannot tell, left alone.
        assert!(matches!(r.decide(None, WHY), Class::Unsure(why) if why.contains("be_b/b1") && why.starts_with(WHY)));
        // Unlisted, nobody else there: the lingering case, a target.
        let alone = Rule::new(named("be_a", "a1"), addr, vec![shared[0].clone()]);
        assert_eq!(alone.decide(None, WHY), Class::Target);
    }

    #[test]
    fn an_address_alone_means_servers_no_longer_configured_there() {
        let addr: SocketAddr = "127.0.0.11:9001".parse().unwrap();
        // A reload renamed s1 to s1b at the same address.
        let r = Rule::new(Target::Gone, addr, vec![server("be", "s1b", "127.0.0.11", 9001)]);
        assert_eq!(r.decide(Some(("be", "s1")), WHY), Class::Target);
        assert!(matches!(r.decide(Some(("be", "s1b")), WHY), Class::Keep(_)));
        assert!(matches!(r.decide(None, WHY), Class::Unsure(_)));
        // A reload removed it: nothing configured there any more.
        let gone = Rule::new(Target::Gone, addr, vec![server("be", "s2", "127.0.0.12", 9002)]);
        assert_eq!(gone.decide(None, WHY), Class::Target);
        // A server that uses the client's port (0) shares every port of its address.
        let any_port = Rule::new(Target::Gone, addr, vec![server("be", "p", "127.0.0.11", 0)]);
        assert!(matches!(any_port.decide(None, WHY), Class::Unsure(_)));
        // IPv4-mapped addresses are the IPv4 ones.
        let mapped = Rule::new(
            Target::Gone,
            "[::ffff:127.0.0.11]:9001".parse().unwrap(),
            vec![server("be", "s1b", "127.0.0.11", 9001)],
        );
        assert!(matches!(mapped.decide(None, WHY), Class::Unsure(_)));
    }

    #[test]
    fn which_streams_could_hold_a_socket_to_the_address() {
        let addr: SocketAddr = "127.0.0.11:9001".parse().unwrap();
        let r = Rule::new(
            Target::Gone,
            addr,
            vec![server("be", "s1", "127.0.0.11", 9001), server("be", "s2", "127.0.0.12", 9002)],
        );
        assert!(r.may_be_at_addr("be", "s1"));
        assert!(!r.may_be_at_addr("be", "s2"));
        assert!(r.may_be_at_addr("be", "removed_by_a_reload"));
    }
}
