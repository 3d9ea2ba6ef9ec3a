//! Which of HAProxy's sockets to the server's address are the named server's.
//!
//! A candidate is a socket an HAProxy process holds whose peer is the
//! server's address. HAProxy names its server through one of its two tables
//! ([`super::attribution`]): a stream's `srv=` (`show sess`), or the
//! connection's own `sv=` (`show fd`: idle pools, connections an idle client
//! session owns, idle h2 — everything without a stream). A named socket
//! follows one rule whichever table named it; a socket neither table names
//! is *unlisted*. The rule ([`Rule`]) is pure and unit-tested. A socket is
//! attributed once (cached by cookie), and HAProxy is asked only when an
//! unattributed candidate exists — always after the dump that found it, so a
//! brand-new stream is in the table. Who holds a socket (the fd that joins it
//! to HAProxy's tables) comes from /proc, which costs HAProxy nothing.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use serde::Serialize;
use tracing::{debug, warn};

use super::api::Api;
use super::attribution::{Attributor, Candidate, Source, Tables};
use super::discovery::Topology;
use super::parse::{ServerState, Stream};
use crate::engine::owners::Holders;
use crate::engine::{Class, Judge};
use crate::error::Result;
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

/// Whose process holds a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// The worker answering the stats socket: its configuration is the one
    /// `show servers state` printed.
    Current,
    /// Another process (an old worker after a reload): its configuration may differ.
    Other,
}

/// The one rule for what is a target: pure, given the target, the address
/// and the current worker's configuration.
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

    fn is_configured(&self, be: &str, srv: &str) -> bool {
        self.config.iter().any(|s| s.backend == be && s.name == srv)
    }

    /// `(backend, server)` as printed, or swapped when only the swapped pair
    /// is configured (`show fd` printed `SERVER/BACKEND` before 2.5).
    pub fn orient<'a>(&self, a: &'a str, b: &'a str) -> (&'a str, &'a str) {
        if !self.is_configured(a, b) && self.is_configured(b, a) {
            (b, a)
        } else {
            (a, b)
        }
    }

    /// The verdict on one candidate held by `holder`, from the server a table
    /// named (`named`), or — `None` — from no table naming it (`why`).
    pub fn decide(&self, named: Option<&Source>, holder: Holder, why: &str) -> Class {
        let others = |exclude: Option<(&str, &str)>| -> Vec<String> {
            self.configured_at_addr()
                .filter(|s| exclude.is_none_or(|(b, n)| !(s.backend == b && s.name == n)))
                .map(|s| format!("{}/{}", s.backend, s.name))
                .collect()
        };
        match (named, &self.target) {
            (Some(src), Target::Named { backend, server }) => {
                let (be, srv) = src.server();
                if be == backend && srv == server {
                    Class::Target
                } else {
                    Class::OtherServer(format!("HAProxy attributes it to {be}/{srv} (`{}`)", src.table()))
                }
            }
            (Some(src), Target::Gone) => {
                let (be, srv) = src.server();
                if self.configured_at_addr().any(|s| s.backend == be && s.name == srv) {
                    Class::OtherServer(format!(
                        "HAProxy attributes it to {be}/{srv} (`{}`), still configured at {}",
                        src.table(),
                        self.addr
                    ))
                } else {
                    Class::Target
                }
            }
            (None, Target::Named { backend, server }) => {
                let others = others(Some((backend.as_str(), server.as_str())));
                if others.is_empty() {
                    Class::Target
                } else {
                    Class::Ambiguous(format!("{why}, and {} share the address", others.join(", ")))
                }
            }
            (None, Target::Gone) => {
                let others = others(None);
                match (others.is_empty(), holder) {
                    (true, _) => Class::Target,
                    // The current worker's configuration is the truth for the current worker:
                    // a connection of its own to this address is one of these servers'.
                    (false, Holder::Current) => Class::OtherServer(format!(
                        "{why}; the current worker's configuration has {} at {}",
                        others.join(", "),
                        self.addr
                    )),
                    (false, Holder::Other) => {
                        Class::Ambiguous(format!("{why}, and {} share the address", others.join(", ")))
                    }
                }
            }
        }
    }
}

/// Classifies HAProxy's sockets to one address (see the module docs).
pub struct HaproxyJudge {
    rule: Rule,
    holders: Holders,
    answering: u32,
    attributor: Attributor,
    verdicts: HashMap<u64, Class>,
    /// Sockets HAProxy closed by itself.
    pub closed: Vec<Closed>,
}

/// A process's stream table as read during one look (each asked at most once per look).
type StreamTables = HashMap<u32, std::result::Result<Vec<Stream>, String>>;

impl HaproxyJudge {
    /// A judge for sockets to `addr` held by the processes of `topo`; `api`
    /// reaches the answering worker, `master` (the master CLI) the others.
    pub fn new(
        target: Target,
        addr: SocketAddr,
        config: Vec<ServerState>,
        topo: &Topology,
        version: &str,
        api: Api,
        master: Option<Api>,
    ) -> Result<HaproxyJudge> {
        let pids: Vec<u32> = topo.workers.iter().map(|w| w.pid).collect();
        let answering = topo.answering.pid;
        Ok(HaproxyJudge {
            rule: Rule::new(target, addr, config),
            holders: Holders::new(&pids)?,
            answering,
            attributor: Attributor::new(api, master, topo.workers.clone(), answering, version),
            verdicts: HashMap::new(),
            closed: Vec::new(),
        })
    }

    /// The API of the answering worker (for the final `show stat`).
    pub fn api(&self) -> &Api {
        self.attributor.api()
    }

    /// The HAProxy tables read so far, and their size.
    pub fn tables(&self) -> &Tables {
        self.attributor.tables()
    }

    /// Workers that exited during the run.
    pub fn exited(&mut self) -> &[u32] {
        self.holders.exited()
    }

    /// How often the workers' fd tables were read.
    #[cfg(any(test, feature = "testing"))]
    pub fn fd_scans(&self) -> usize {
        self.holders.scans()
    }

    /// The named server, for narrowed questions.
    fn named(&self) -> Option<(String, String)> {
        match &self.rule.target {
            Target::Named { backend, server } => Some((backend.clone(), server.clone())),
            Target::Gone => None,
        }
    }

    /// Attributes the candidates `idx` of `sockets` that process `pid` holds.
    fn attribute(
        &mut self,
        pid: u32,
        sockets: &[TcpSocket],
        idx: &[usize],
        tables: &mut StreamTables,
    ) -> Result<Vec<(usize, Option<Source>, String)>> {
        let fd_of = |s: &TcpSocket| self.holders.holder(s).map(|h| h.fd);
        let candidates: Vec<(usize, Candidate)> = idx
            .iter()
            .filter_map(|&i| {
                let s = &sockets[i];
                Some((i, Candidate { fd: fd_of(s)?, lport: s.local().port(), rport: s.peer().port() }))
            })
            .collect();
        let mut named: HashMap<u32, Source> = HashMap::new();
        let mut why = format!("no HAProxy table of pid {pid} names it");
        // Streams first: a table already read in this look, or — when many are
        // unattributed — one read (narrowed to the named server where possible).
        if !tables.contains_key(&pid) && candidates.len() > super::attribution::FEW {
            let named_server = self.named();
            let t = self.attributor.streams(pid, named_server.as_ref().map(|(b, s)| (b.as_str(), s.as_str())))?;
            tables.insert(pid, t);
        }
        match tables.get(&pid) {
            Some(Ok(streams)) => {
                let wanted: HashSet<u32> = candidates.iter().map(|(_, c)| c.fd).collect();
                for st in streams {
                    if let (Some(fd), Some(be), Some(srv)) = (st.fd, &st.backend, &st.server) {
                        if wanted.contains(&fd) {
                            named.insert(fd, Source::Stream(be.clone(), srv.clone()));
                        }
                    }
                }
            }
            Some(Err(e)) => {
                warn!(pid, why = %e, "no stream table");
                why = e.clone();
            }
            None => {}
        }
        // Then the connection table for what no stream names.
        let rest: Vec<Candidate> =
            candidates.iter().filter(|(_, c)| !named.contains_key(&c.fd)).map(|(_, c)| *c).collect();
        if !rest.is_empty() {
            match self.attributor.fd_lines(pid, &rest)? {
                Ok(lines) => {
                    for (fd, conn) in lines {
                        if let Some((a, b)) = &conn.server {
                            let (be, srv) = self.rule.orient(a, b);
                            named.insert(fd, Source::Connection(be.to_string(), srv.to_string()));
                        }
                    }
                }
                Err(e) => {
                    warn!(pid, why = %e, "no connection table");
                    why = e;
                }
            }
        }
        Ok(candidates.into_iter().map(|(i, c)| (i, named.get(&c.fd).cloned(), why.clone())).collect())
    }
}

impl Judge for HaproxyJudge {
    fn classify(&mut self, sockets: &mut [TcpSocket]) -> Result<Vec<Class>> {
        let mut tables = StreamTables::new();
        // A socket never seen before: who holds it, from /proc (our time, not
        // HAProxy's: its tables are asked only to attribute, and narrowly).
        self.holders.refresh_for(sockets)?;
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
            let holder = if pid == self.answering { Holder::Current } else { Holder::Other };
            for (i, source, why) in self.attribute(pid, sockets, &idx, &mut tables)? {
                let class = self.rule.decide(source.as_ref(), holder, &why);
                debug!(cookie = sockets[i].cookie(), pid, ?source, ?class, "attributed");
                self.verdicts.insert(sockets[i].cookie(), class);
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

    fn stream(be: &str, srv: &str) -> Source {
        Source::Stream(be.into(), srv.into())
    }

    fn conn(be: &str, srv: &str) -> Source {
        Source::Connection(be.into(), srv.into())
    }

    const WHY: &str = "no table names it";

    #[test]
    fn named_server_attribution_decides_whichever_table_named_it() {
        let addr: SocketAddr = "10.88.0.11:9001".parse().unwrap();
        let shared = vec![server("be_a", "a1", "10.88.0.11", 9001), server("be_b", "b1", "10.88.0.11", 9001)];
        let r = Rule::new(named("be_a", "a1"), addr, shared.clone());
        for h in [Holder::Current, Holder::Other] {
            assert_eq!(r.decide(Some(&stream("be_a", "a1")), h, WHY), Class::Target);
            assert_eq!(r.decide(Some(&conn("be_a", "a1")), h, WHY), Class::Target);
            assert!(matches!(r.decide(Some(&stream("be_b", "b1")), h, WHY), Class::OtherServer(w) if w.contains("be_b/b1") && w.contains("show sess")));
            assert!(matches!(r.decide(Some(&conn("be_b", "b1")), h, WHY), Class::OtherServer(w) if w.contains("show fd")));
            // Unlisted at an address be_b/b1 shares: cannot tell, left alone.
            assert!(matches!(r.decide(None, h, WHY), Class::Ambiguous(w) if w.contains("be_b/b1") && w.starts_with(WHY)));
        }
        // Unlisted, nobody else there: the lingering case, a target.
        let alone = Rule::new(named("be_a", "a1"), addr, vec![shared[0].clone()]);
        assert_eq!(alone.decide(None, Holder::Other, WHY), Class::Target);
    }

    #[test]
    fn an_address_alone_means_servers_no_longer_configured_there() {
        let addr: SocketAddr = "127.0.0.11:9001".parse().unwrap();
        // A reload renamed s1 to s1b at the same address.
        let r = Rule::new(Target::Gone, addr, vec![server("be", "s1b", "127.0.0.11", 9001)]);
        assert_eq!(r.decide(Some(&stream("be", "s1")), Holder::Other, WHY), Class::Target);
        assert_eq!(r.decide(Some(&conn("be", "s1")), Holder::Other, WHY), Class::Target);
        assert!(matches!(r.decide(Some(&conn("be", "s1b")), Holder::Other, WHY), Class::OtherServer(_)));
        // An old worker's unlisted socket: it may have had another server there.
        assert!(matches!(r.decide(None, Holder::Other, WHY), Class::Ambiguous(_)));
        // The current worker's own unlisted socket is its configured server's.
        assert!(matches!(r.decide(None, Holder::Current, WHY), Class::OtherServer(w) if w.contains("be/s1b")));
        // A reload removed it: nothing configured there any more.
        let gone = Rule::new(Target::Gone, addr, vec![server("be", "s2", "127.0.0.12", 9002)]);
        assert_eq!(gone.decide(None, Holder::Other, WHY), Class::Target);
        assert_eq!(gone.decide(None, Holder::Current, WHY), Class::Target);
        // A server that uses the client's port (0) shares every port of its address.
        let any_port = Rule::new(Target::Gone, addr, vec![server("be", "p", "127.0.0.11", 0)]);
        assert!(matches!(any_port.decide(None, Holder::Other, WHY), Class::Ambiguous(_)));
        // IPv4-mapped addresses are the IPv4 ones.
        let mapped = Rule::new(
            Target::Gone,
            "[::ffff:127.0.0.11]:9001".parse().unwrap(),
            vec![server("be", "s1b", "127.0.0.11", 9001)],
        );
        assert!(matches!(mapped.decide(None, Holder::Other, WHY), Class::Ambiguous(_)));
    }

    #[test]
    fn fd_names_are_oriented_by_the_configuration() {
        let r = Rule::new(Target::Gone, "127.0.0.11:9001".parse().unwrap(), vec![server("be", "s1", "127.0.0.11", 9001)]);
        assert_eq!(r.orient("be", "s1"), ("be", "s1"));
        assert_eq!(r.orient("s1", "be"), ("be", "s1"));
        // Neither pair known (a removed server): as printed.
        assert_eq!(r.orient("be", "gone"), ("be", "gone"));
    }
}
