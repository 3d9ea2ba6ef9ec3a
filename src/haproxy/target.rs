//! Which of HAProxy's sockets are the named server's (or, with `--addr`
//! alone, a server's no longer configured at that address).
//!
//! A candidate is a socket an HAProxy process holds whose peer is at one of
//! the run's places ([`super::places`]): the server's configured address,
//! `--addr`, and wherever HAProxy's tables name a connection of the server
//! ([`HaproxyClassifier::locate`], and again each time the run would end quiet:
//! [`Classifier::doubt`]). HAProxy names its server through one of its two tables
//! ([`super::attribution`]): a stream's `srv=` (`show sess`), or the
//! connection's own `sv=` (`show fd`: idle pools, connections an idle client
//! session owns, idle h2 — everything without a stream). A named socket
//! follows one rule whichever table named it; a socket neither table names
//! is *unlisted*. The rule ([`Rule`]) is pure and unit-tested. A socket is
//! attributed once (cached by cookie), and HAProxy is asked only when an
//! unattributed candidate exists — always after the dump that found it, so a
//! brand-new stream is in the table. Who holds a socket (the fd that joins it
//! to HAProxy's tables) comes from /proc, which costs HAProxy nothing.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::{debug, info, warn};

use super::api::Api;
use super::attribution::{Attributor, Candidate, Source, Tables, Unavailable};
use super::discovery::Topology;
use super::lingering::{self, Sweep, SweepRule};
use super::parse::{self, ServerState, Stream};
use super::places::{self, At, Place, Places};
use crate::engine::owners::Holders;
use crate::engine::{Class, Engine, Classifier, Query};
use crate::error::Result;
use crate::filter::{canonical_ip, Filter};
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

/// The one rule for what is a target: pure, given the target, the current
/// worker's configuration and the ports HAProxy listens on (a printed port
/// may be an offset of one).
#[derive(Debug, Clone)]
pub struct Rule {
    target: Target,
    /// The current worker's servers (all backends).
    config: Vec<ServerState>,
    /// The ports HAProxy's processes listen on.
    listening: Vec<u16>,
}

impl Rule {
    /// The rule for `target` under the current worker's `config`.
    pub fn new(target: Target, config: Vec<ServerState>, listening: Vec<u16>) -> Rule {
        Rule { target, config, listening }
    }

    /// The current worker's servers at `peer`, surely or maybe (a port
    /// offset); a server whose check or agent goes there is there too.
    fn configured_at(&self, peer: SocketAddr) -> impl Iterator<Item = (&ServerState, At)> {
        self.config.iter().filter_map(move |s| {
            let at = places::server_at(s, peer, &self.listening).or_else(|| s.checks.contains(&peer).then_some(At::Exactly));
            at.map(|at| (s, at))
        })
    }

    fn is_configured(&self, be: &str, srv: &str) -> bool {
        self.config.iter().any(|s| s.backend == be && s.name == srv)
    }

    /// Whether HAProxy listens on `port` (a socket on it is a client's connection in).
    pub fn listens_on(&self, port: u16) -> bool {
        self.listening.contains(&port)
    }

    /// The named server's configuration, when the target names one.
    pub fn named_server(&self) -> Option<&ServerState> {
        match &self.target {
            Target::Named { backend, server } => self.config.iter().find(|s| &s.backend == backend && &s.name == server),
            Target::Gone => None,
        }
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

    /// The verdict on one candidate to `peer` held by `holder`, from the
    /// server a table named (`named`), or — `None` — from no table naming it (`why`).
    pub fn decide(&self, named: Option<&Source>, holder: Holder, why: &str, peer: SocketAddr) -> Class {
        let others = |exclude: Option<(&str, &str)>| -> Vec<String> {
            self.configured_at(peer)
                .filter(|(s, _)| exclude.is_none_or(|(b, n)| !(s.backend == b && s.name == n)))
                .map(|(s, at)| match at {
                    At::Exactly => format!("{}/{}", s.backend, s.name),
                    At::Maybe => format!("{}/{} (if its port {} is an offset)", s.backend, s.name, s.port),
                })
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
                let same_ip = |s: &ServerState| s.addr.map(canonical_ip) == Some(canonical_ip(peer.ip()));
                if self.configured_at(peer).any(|(s, _)| s.backend == be && s.name == srv) {
                    Class::OtherServer(format!(
                        "HAProxy attributes it to {be}/{srv} (`{}`), still configured at {peer}",
                        src.table()
                    ))
                } else if let Some(s) = self.config.iter().find(|s| s.backend == be && s.name == srv && same_ip(s)) {
                    // Its address, another port: moved by port, or an offset of a listener
                    // not seen (paused, in another namespace). Not sure: left alone, said.
                    Class::Ambiguous(format!(
                        "HAProxy attributes it to {be}/{srv} (`{}`), still configured at {}:{} (its port may be an offset)",
                        src.table(),
                        peer.ip(),
                        s.port
                    ))
                } else {
                    Class::Target
                }
            }
            (None, Target::Named { backend, server }) => {
                let others = others(Some((backend.as_str(), server.as_str())));
                // At its own address and port; a port-0 server's "any port" only
                // for the current worker, whose configuration is the one printed
                // (an old worker may have had another server at that address).
                let mine = self.configured_at(peer).any(|(s, at)| {
                    &s.backend == backend && &s.name == server && at == At::Exactly && (s.port != 0 || holder == Holder::Current)
                });
                match (mine, others.is_empty()) {
                    (true, true) => Class::Target,
                    (true, false) => Class::Ambiguous(format!("{why}, and {} share the address", others.join(", "))),
                    (false, _) => Class::Ambiguous(format!(
                        "{why}, and {backend}/{server} is not configured at {peer} (its connections were found there by HAProxy's tables){}",
                        if others.is_empty() { String::new() } else { format!("; {} are", others.join(", ")) }
                    )),
                }
            }
            (None, Target::Gone) => {
                let others = others(None);
                match (others.is_empty(), holder) {
                    (true, _) => Class::Target,
                    // The current worker's configuration is the truth for the current worker:
                    // a connection of its own to this address is one of these servers'.
                    (false, Holder::Current) => Class::OtherServer(format!(
                        "{why}; the current worker's configuration has {} at {peer}",
                        others.join(", ")
                    )),
                    (false, Holder::Other) => {
                        Class::Ambiguous(format!("{why}, and {} share the address", others.join(", ")))
                    }
                }
            }
        }
    }
}

/// Classifies HAProxy's sockets at the run's places (see the module docs).
pub struct HaproxyClassifier {
    rule: Rule,
    holders: Holders,
    answering: u32,
    attributor: Attributor,
    verdicts: HashMap<u64, Class>,
    /// Where the run looks; shared with the kernel side, which builds its query from them.
    places: Rc<RefCell<Places>>,
    /// A sock_diag session of its own, for the whole-table dump that finds
    /// where the sockets HAProxy names are.
    engine: Engine,
    /// Inodes of HAProxy's sockets at the places at the last look: a stream
    /// whose socket is among them needs no dump to be found.
    seen: HashSet<u32>,
    /// The last doubt and when it was asked: HAProxy's tables are read again
    /// at most once a second however often the loop would end quiet.
    last_doubt: Option<(Instant, Option<String>)>,
    /// The lingering sweep's rule, which replaces `rule` for every socket;
    /// and the processes it could not ask (nothing of theirs was judged, so
    /// the run cannot say nothing lingers).
    swept: Option<SweepRule>,
    unasked: Vec<String>,
    /// The sweep's old-worker streams of gone or moved servers without a socket.
    socketless: Vec<lingering::Socketless>,
    /// When the sweep was made, and when the current configuration was last read again.
    swept_at: Option<Instant>,
    refreshed_at: Option<Instant>,
    /// How each socket the sweep's rule decided was attributed: decided again,
    /// without asking HAProxy, when the configuration changes.
    attributions: HashMap<u64, Attribution>,
    /// Set once a reload is seen: nothing is judged any more.
    reloaded: Option<String>,
    /// A server moved during the run and its old address was added as a
    /// place no look has covered yet: not quiet.
    moved_during: bool,
    /// Sockets HAProxy closed by itself.
    pub closed: Vec<Closed>,
}

/// Where a server printed at `a` may have connections: there, and (the
/// printed port being maybe an offset) at each listening port plus or minus it.
fn places_of(a: SocketAddr, listening: &[u16]) -> Vec<Place> {
    let mut out = vec![Place::of(a)];
    for l in listening {
        for p in [l.checked_add(a.port()), l.checked_sub(a.port())].into_iter().flatten().filter(|&p| p != 0) {
            out.push(Place::of(SocketAddr::new(a.ip(), p)));
        }
    }
    out
}

/// How often, at most, a doubt reads HAProxy's tables and the kernel's.
const DOUBT_EVERY: Duration = Duration::from_secs(1);

/// Why no table names a socket.
#[derive(Debug, Clone)]
enum Unlisted {
    /// The tables were read and do not name it.
    NotNamed {
        /// Our pid of the process holding it.
        pid: u32,
    },
    /// A table could not be had.
    Unavailable(Unavailable),
}

impl std::fmt::Display for Unlisted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unlisted::NotNamed { pid } => write!(f, "no HAProxy table of pid {pid} names it"),
            Unlisted::Unavailable(u) => write!(f, "{u}"),
        }
    }
}

/// What a socket's verdict under the sweep's rule was made from.
#[derive(Debug, Clone)]
struct Attribution {
    pid: u32,
    named: Option<((String, String), &'static str)>,
    why: String,
    peer: SocketAddr,
}

/// One candidate, attributed: the server a table names, or why none does.
struct Attributed {
    /// Its index in the look's sockets.
    index: usize,
    /// The server a table names.
    named: Option<Source>,
    /// Why none does, when `named` is `None`.
    unlisted: Unlisted,
    /// Why the name cannot be judged now: `show fd` named it away from its
    /// server's address and the stream table that would tell could not be read.
    unsure: Option<String>,
}

/// What HAProxy's tables say of the named server in one look at every process.
#[derive(Debug, Default)]
struct Named {
    /// Per process: the fds of the server's connections.
    fds: Vec<(u32, HashSet<u32>)>,
    /// Streams naming the server, per process: `(pid, all, live)` — live:
    /// the server side still queued, connecting or connected.
    streams: Vec<(u32, usize, usize)>,
    /// Processes whose tables could not be read, and why.
    unavailable: Vec<Unavailable>,
}

impl HaproxyClassifier {
    /// A classifier under `rule` for the sockets at `places` held by the
    /// processes of `topo` (watched through `holders`); `api` reaches the
    /// answering worker, `master` (the master CLI) the others; `engine` is
    /// the classifier's own sock_diag session.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        rule: Rule,
        places: Rc<RefCell<Places>>,
        holders: Holders,
        engine: Engine,
        topo: &Topology,
        version: &str,
        api: Api,
        master: Option<Api>,
    ) -> HaproxyClassifier {
        let answering = topo.answering.pid;
        HaproxyClassifier {
            rule,
            holders,
            answering,
            attributor: Attributor::new(api, master, topo.workers.clone(), answering, version, topo.versions.clone()),
            verdicts: HashMap::new(),
            places,
            engine,
            seen: HashSet::new(),
            last_doubt: None,
            swept: None,
            unasked: Vec::new(),
            socketless: Vec::new(),
            swept_at: None,
            refreshed_at: None,
            attributions: HashMap::new(),
            reloaded: None,
            moved_during: false,
            closed: Vec::new(),
        }
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

    /// The named server, for narrowed questions.
    fn named(&self) -> Option<(String, String)> {
        match &self.rule.target {
            Target::Named { backend, server } => Some((backend.clone(), server.clone())),
            Target::Gone => None,
        }
    }

    /// The lingering sweep over every process ([`lingering::sweep`]): its
    /// rule replaces the target rule for every socket the run sees, and the
    /// places of whatever is enforced are watched.
    pub fn sweep(&mut self, include_maint: bool) -> Result<Sweep> {
        let mut found = lingering::sweep(
            &mut self.attributor,
            &mut self.holders,
            &mut self.engine,
            &self.rule.config,
            &self.rule.listening,
            self.answering,
            include_maint,
        )?;
        self.swept = found.rule.take();
        self.swept_at = Some(Instant::now());
        self.unasked = found.unasked.clone();
        for l in found.lingering.iter().filter(|l| l.enforced) {
            self.places.borrow_mut().add(Place::of(l.address));
        }
        // Where a socketless stream would connect again: watched, and doubted below.
        // (and, the printed port being maybe an offset, each listening port plus or minus it).
        for a in found.socketless.iter().filter_map(|s| s.address) {
            for place in places_of(a, &self.rule.listening) {
                self.places.borrow_mut().add(place);
            }
        }
        self.socketless = found.socketless.clone();
        Ok(found)
    }

    /// Finds the named server's connections wherever they are, by HAProxy's
    /// own tables (`show sess` and `show fd` of every process), and adds
    /// their places. Returns the places added.
    pub fn locate(&mut self) -> Result<Vec<Place>> {
        let named = self.ask_named(true)?;
        self.place_fds(&named.fds)
    }

    /// Reads every process's tables for the named server: its streams (and
    /// the fds of those whose server side is live), and with `connections` its `show fd` connections too.
    fn ask_named(&mut self, connections: bool) -> Result<Named> {
        match self.named() {
            Some((be, srv)) => self.ask_named_for((&be, &srv), connections),
            None => Ok(Named::default()),
        }
    }

    /// [`Self::ask_named`] for the server `(be, srv)`.
    fn ask_named_for(&mut self, (be, srv): (&str, &str), connections: bool) -> Result<Named> {
        let mut out = Named::default();
        let (be, srv) = (be.to_string(), srv.to_string());
        for pid in self.holders.pids() {
            let mut fds = HashSet::new();
            match self.attributor.streams(pid, Some((&be, &srv)))? {
                Ok(streams) => {
                    let named: Vec<&Stream> = streams
                        .iter()
                        .filter(|st| st.backend.as_ref() == Some(&be) && st.server.as_ref() == Some(&srv))
                        .collect();
                    // Only a live server side holds a socket of the server.
                    let live: Vec<&&Stream> = named.iter().filter(|st| st.server_side_live()).collect();
                    fds.extend(live.iter().filter_map(|st| st.fd));
                    if !named.is_empty() {
                        out.streams.push((pid, named.len(), live.len()));
                    }
                }
                Err(why) => out.unavailable.push(why),
            }
            if connections {
                match self.attributor.connections(pid)? {
                    Ok(conns) => fds.extend(conns.into_iter().filter_map(|c| {
                        let (a, b) = c.server.as_ref()?;
                        (self.rule.orient(a, b) == (be.as_str(), srv.as_str())).then_some(c.fd)
                    })),
                    Err(why) => out.unavailable.push(why),
                }
            }
            if !fds.is_empty() {
                out.fds.push((pid, fds));
            }
        }
        Ok(out)
    }

    /// Where the sockets behind `fds` (per process) are: one dump of the
    /// whole table, joined by inode. Adds their places; returns the new ones.
    fn place_fds(&mut self, fds: &[(u32, HashSet<u32>)]) -> Result<Vec<Place>> {
        if fds.is_empty() {
            return Ok(Vec::new());
        }
        self.holders.scan()?;
        let mut inodes: HashSet<u32> = HashSet::new();
        for (pid, wanted) in fds {
            let held = self.holders.fds_of(*pid);
            inodes.extend(wanted.iter().filter_map(|fd| held.get(fd).copied()));
        }
        // A socket the last look saw at a place is found already.
        inodes.retain(|i| !self.seen.contains(i));
        if inodes.is_empty() {
            return Ok(Vec::new());
        }
        let everything = Query::new(Filter::default())?;
        let mut added = Vec::new();
        for s in self.engine.collect(&everything)?.iter().filter(|s| inodes.contains(&s.inode)) {
            let place = Place::of(s.peer());
            if self.places.borrow_mut().add(place) {
                info!(%place, "HAProxy's tables name a connection of the server here: watched too");
                added.push(place);
            }
        }
        Ok(added)
    }

    /// Attributes the candidates `idx` of `sockets` that process `pid` holds.
    fn attribute(
        &mut self,
        pid: u32,
        sockets: &[TcpSocket],
        idx: &[usize],
    ) -> Result<Vec<Attributed>> {
        let fd_of = |s: &TcpSocket| self.holders.holder(s).map(|h| h.fd);
        let candidates: Vec<(usize, Candidate)> = idx
            .iter()
            .filter_map(|&i| {
                let s = &sockets[i];
                Some((i, Candidate { fd: fd_of(s)?, lport: s.local().port(), rport: s.peer().port() }))
            })
            .collect();
        let mut named: HashMap<u32, Source> = HashMap::new();
        let mut why = Unlisted::NotNamed { pid };
        // Streams first, when many are unattributed: one read (narrowed to the
        // named server where the version can); a few cost one `show fd` line each.
        let streams_read = candidates.len() > super::attribution::FEW;
        let streams = if streams_read {
            let named_server = self.named();
            Some(self.attributor.streams(pid, named_server.as_ref().map(|(b, s)| (b.as_str(), s.as_str())))?)
        } else {
            None
        };
        match streams {
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
                why = Unlisted::Unavailable(e);
            }
            None => {}
        }
        let streams_failed = matches!(&why, Unlisted::Unavailable(_)).then(|| why.to_string());
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
                    why = Unlisted::Unavailable(e);
                }
            }
        }
        let (unsure, unread) = match (streams_read, streams_failed) {
            (false, _) => self.name_by_streams(pid, sockets, &candidates, &mut named)?,
            // The stream table could not be read: what only a stream would judge
            // otherwise is not judged this look.
            (true, Some(e)) => (self.streams_matter(pid, sockets, &candidates, &named).into_iter().map(|(fd, _)| fd).collect(), e),
            (true, None) => (HashSet::new(), String::new()),
        };
        Ok(candidates
            .into_iter()
            .map(|(index, c)| Attributed {
                index,
                named: named.get(&c.fd).cloned(),
                unlisted: why.clone(),
                unsure: unsure.contains(&c.fd).then(|| unread.clone()),
            })
            .collect())
    }

    /// The candidates `show fd` named whose verdict a stream would change
    /// (in a sweep's run), with the server named.
    fn streams_matter(
        &self,
        pid: u32,
        sockets: &[TcpSocket],
        candidates: &[(usize, Candidate)],
        named: &HashMap<u32, Source>,
    ) -> Vec<(u32, (String, String))> {
        let Some(sweep) = &self.swept else { return Vec::new() };
        candidates
            .iter()
            .filter_map(|(i, c)| match named.get(&c.fd) {
                Some(Source::Connection(b, s)) => {
                    let at = &sockets[*i];
                    sweep.stream_matters((pid, at.cookie()), (b, s), at.peer()).then(|| (c.fd, (b.clone(), s.clone())))
                }
                _ => None,
            })
            .collect()
    }

    /// In a sweep's run, where `show fd` named a connection away from its
    /// server's address, only a stream shows it is traffic to where the
    /// server was (a retry after `set server addr`, a port-offset server's
    /// old host), not a check: the stream table is read for those. Returns
    /// the fds it could not tell, and why (the table could not be read).
    fn name_by_streams(
        &mut self,
        pid: u32,
        sockets: &[TcpSocket],
        candidates: &[(usize, Candidate)],
        named: &mut HashMap<u32, Source>,
    ) -> Result<(HashSet<u32>, String)> {
        let matters = self.streams_matter(pid, sockets, candidates, named);
        if matters.is_empty() {
            return Ok((HashSet::new(), String::new()));
        }
        let servers: HashSet<&(String, String)> = matters.iter().map(|(_, s)| s).collect();
        let one = (servers.len() == 1).then(|| matters[0].1.clone());
        match self.attributor.streams(pid, one.as_ref().map(|(b, s)| (b.as_str(), s.as_str())))? {
            Ok(streams) => {
                let wanted: HashSet<u32> = matters.iter().map(|(fd, _)| *fd).collect();
                for st in streams {
                    if let (Some(fd), Some(be), Some(srv)) = (st.fd, st.backend, st.server) {
                        if wanted.contains(&fd) {
                            named.insert(fd, Source::Stream(be, srv));
                        }
                    }
                }
                Ok((HashSet::new(), String::new()))
            }
            // `show fd`'s name alone would call a retry to the old address a
            // check: not judged this look (ambiguous), asked again at the next.
            Err(e) => {
                warn!(pid, why = %e, "no stream table");
                Ok((matters.iter().map(|(fd, _)| *fd).collect(), e.to_string()))
            }
        }
    }

    /// Reads the current worker's configuration again for the sweep's rule:
    /// `Some(changed)`, or `None` when it could not be read (nothing is
    /// decided then, and the run is not clean).
    fn refresh_config(&mut self) -> Result<Option<bool>> {
        self.refreshed_at = Some(Instant::now());
        if let Some(why) = &self.reloaded {
            // Sticky: the worker judged by is an old one now.
            let why = why.clone();
            if let Some(sweep) = self.swept.as_mut() {
                sweep.refresh(Err(why));
            }
            return Ok(None);
        }
        let now = self.attributor.servers_state(self.answering)?;
        let Some(sweep) = self.swept.as_mut() else { return Ok(Some(false)) };
        Ok(match now {
            Ok(c) => {
                // A server that moved since: its old address is watched from the next look.
                let was = lingering::addresses_left(sweep.current(), &c);
                let changed = sweep.refresh(Ok(c));
                for a in was {
                    for place in places_of(a, &self.rule.listening) {
                        if self.places.borrow_mut().add(place) {
                            info!(%place, "a server moved during the run: its old address is watched too");
                            self.moved_during = true;
                        }
                    }
                }
                Some(changed)
            }
            Err(why) => {
                warn!(%why, "the current configuration could not be read again");
                if matches!(why, Unavailable::Reloaded { .. }) {
                    self.reloaded = Some(why.to_string());
                }
                sweep.refresh(Err(why.to_string()));
                None
            }
        })
    }

    /// Whether the sweep's rule cannot decide now (the configuration unread).
    fn stale(&self) -> bool {
        self.swept.as_ref().is_some_and(|s| s.stale().is_some())
    }

    /// Reads the configuration again and, if it changed or could not be read,
    /// decides every attributed socket again. Returns how many verdicts changed.
    fn refresh_and_redecide(&mut self) -> Result<usize> {
        match self.refresh_config()? {
            Some(false) => Ok(0),
            _ => Ok(self.redecide()),
        }
    }

    /// Every socket the sweep's rule decided, decided again by the same
    /// attribution under the configuration now (pure: HAProxy is not asked).
    fn redecide(&mut self) -> usize {
        let Some(sweep) = &self.swept else { return 0 };
        let mut changed = 0;
        // A `show fd` name that a stream would now judge otherwise (its server
        // moved away from the connection): attributed again at the next look.
        let again: Vec<u64> = self
            .attributions
            .iter()
            .filter(|(cookie, a)| {
                a.named.as_ref().is_some_and(|((b, s), t)| *t == "show fd" && sweep.stream_matters((a.pid, **cookie), (b, s), a.peer))
            })
            .map(|(c, _)| *c)
            .collect();
        for cookie in again {
            self.attributions.remove(&cookie);
            self.verdicts.remove(&cookie);
            changed += 1;
        }
        for (cookie, a) in &self.attributions {
            let named = a.named.as_ref().map(|((b, s), t)| ((b.as_str(), s.as_str()), *t));
            let class = sweep.decide((a.pid, *cookie), named, &a.why, a.peer);
            if self.verdicts.get(cookie) != Some(&class) {
                debug!(cookie, ?class, "judged again");
                self.verdicts.insert(*cookie, class);
                changed += 1;
            }
        }
        changed
    }

    /// HAProxy's session count for the named server in the answering
    /// worker; `Err` with why when `show stat` could not be read.
    fn scur_of(&self, b: &str, s: &str) -> std::result::Result<u64, String> {
        let rows = self.api().command("show stat").and_then(|t| parse::parse_stat(&t)).map_err(|e| e.to_string())?;
        Ok(rows.into_iter().find(|r| r.proxy == b && r.server == s).and_then(|r| r.scur).unwrap_or(0))
    }
}

impl Classifier for HaproxyClassifier {
    fn classify(&mut self, sockets: &mut [TcpSocket]) -> Result<Vec<Class>> {
        // The query covers the places' addresses times their ports: only what is
        // at a place counts, and only HAProxy's own connections out: a socket on
        // a port HAProxy listens on is a client's connection in (a client at a
        // server's address, a port-0 server's "any port"), never a server's.
        let at_place: Vec<bool> = {
            let places = self.places.borrow();
            sockets.iter().map(|s| places.holds(s.peer()) && !self.rule.listens_on(s.local().port())).collect()
        };
        // A socket never seen before: who holds it, from /proc (our time, not
        // HAProxy's: its tables are asked only to attribute, and narrowly).
        self.holders.refresh_for(sockets.iter().zip(&at_place).filter(|(_, at)| **at).map(|(s, _)| s))?;
        // This look covered every place added before it.
        self.moved_during = false;
        self.seen = sockets.iter().zip(&at_place).filter(|(_, at)| **at).map(|(s, _)| s.inode).collect();
        // A server may have moved since the sweep (DNS, `set server addr`, even
        // back to where the sweep saw it): the configuration is read again
        // before the first verdicts, and at most a second before acting on a
        // target (also one decided long ago, in a grace period); a change
        // decides every socket again.
        let mut refreshed = false;
        if self.swept.is_some() {
            let held_here = |s: &TcpSocket, at: bool| at && self.holders.holder(s).is_some();
            let undecided =
                sockets.iter().zip(&at_place).any(|(s, at)| held_here(s, *at) && !self.verdicts.contains_key(&s.cookie()));
            let old = self.refreshed_at.is_none_or(|t| t.elapsed() >= DOUBT_EVERY);
            let first = self.refreshed_at.is_none() && undecided;
            if first || (old && self.stale()) {
                self.refresh_and_redecide()?;
                refreshed = true;
            }
        }
        // Candidates without a verdict yet, by the process holding them.
        let mut pending: HashMap<u32, Vec<usize>> = HashMap::new();
        for (i, s) in sockets.iter_mut().enumerate() {
            let Some(holding) = self.holders.holder(s).filter(|_| at_place[i]) else { continue };
            s.owners = self.holders.owners(s);
            if !self.verdicts.contains_key(&s.cookie()) {
                pending.entry(holding.pid).or_default().push(i);
            }
        }
        let unsure = self.judge_pending(sockets, pending)?;
        // A target is acted on only by a configuration at most a second old, one
        // the sweep did not see only by the configuration now.
        if let (Some(sweep), false) = (&self.swept, refreshed) {
            let old = self.refreshed_at.is_none_or(|t| t.elapsed() >= DOUBT_EVERY);
            let target = |s: &TcpSocket| self.verdicts.get(&s.cookie()) == Some(&Class::Target);
            let act = sockets.iter().zip(&at_place).any(|(s, at)| {
                *at && self.holders.holder(s).is_some() && target(s) && (old || !sweep.judged(s.cookie()))
            });
            if act {
                self.refresh_and_redecide()?;
            }
        }
        Ok(sockets
            .iter()
            .zip(at_place)
            .map(|(s, at)| match self.holders.holder(s) {
                Some(_) if at => {
                    self.verdicts.get(&s.cookie()).or_else(|| unsure.get(&s.cookie())).cloned().unwrap_or(Class::Ignore)
                }
                _ => Class::Ignore,
            })
            .collect())
    }

    fn vanished(&mut self, sockets: Vec<TcpSocket>, at_ms: u64) {
        self.closed.extend(sockets.into_iter().map(|socket| Closed { socket, at_ms }));
    }

    /// Never clean against HAProxy's own view: while a process still lists
    /// streams of the named server (also frozen ones whose server side is
    /// closed: 3.0/3.1 before 3.1.7 keep them), or `show stat` counts sessions of
    /// it, the run is not quiet — and the sockets behind those streams are
    /// looked for wherever they are (a new place is watched from the next look).
    fn doubt(&mut self) -> Result<Option<String>> {
        if let Some((at, why)) = &self.last_doubt {
            if at.elapsed() < DOUBT_EVERY && why.is_some() {
                return Ok(why.clone());
            }
        }
        let why = self.ask_doubt()?;
        self.last_doubt = Some((Instant::now(), why.clone()));
        Ok(why)
    }
}

impl HaproxyClassifier {

    /// Attributes and judges the sockets without a verdict, by the process
    /// holding them. Returns those not judged this look (asked again at the
    /// next), as ambiguous.
    fn judge_pending(&mut self, sockets: &[TcpSocket], pending: HashMap<u32, Vec<usize>>) -> Result<HashMap<u64, Class>> {
        let mut unsure: HashMap<u64, Class> = HashMap::new();
        for (pid, idx) in pending {
            let holder = if pid == self.answering { Holder::Current } else { Holder::Other };
            for a in self.attribute(pid, sockets, &idx)? {
                let s = &sockets[a.index];
                if let (Some(why), Some(n)) = (&a.unsure, &a.named) {
                    let (b, srv) = n.server();
                    let why = format!("`show fd` names {b}/{srv}, not at its address; the stream table that would tell cannot be read: {why}");
                    unsure.insert(s.cookie(), Class::Ambiguous(why));
                    continue;
                }
                let why = a.unlisted.to_string();
                let class = match &self.swept {
                    Some(sweep) => sweep.decide((pid, s.cookie()), a.named.as_ref().map(|n| (n.server(), n.table())), &why, s.peer()),
                    None => self.rule.decide(a.named.as_ref(), holder, &why, s.peer()),
                };
                debug!(cookie = s.cookie(), pid, source = ?a.named, ?class, "attributed");
                if self.swept.is_some() {
                    let named = a.named.as_ref().map(|n| ((n.server().0.to_string(), n.server().1.to_string()), n.table()));
                    self.attributions.insert(s.cookie(), Attribution { pid, named, why, peer: s.peer() });
                }
                self.verdicts.insert(s.cookie(), class);
            }
        }
        Ok(unsure)
    }

    /// [`Classifier::doubt`], asked now.
    fn ask_doubt(&mut self) -> Result<Option<String>> {
        if !self.unasked.is_empty() {
            return Ok(Some(format!(
                "the lingering sweep could not judge every HAProxy process, so it cannot say nothing lingers: {} (a master CLI, --master-socket, lets it ask old workers)",
                self.unasked.join("; ")
            )));
        }
        // The configuration the verdicts were made by must still be the one:
        // a change (a DNS move, a reload) makes every verdict again.
        if self.swept.is_some() {
            let changed = self.refresh_and_redecide()?;
            if let Some(why) = self.swept.as_ref().and_then(|s| s.stale()) {
                return Ok(Some(format!("the current configuration could not be read again: {why}")));
            }
            if changed > 0 {
                return Ok(Some(format!("the current configuration changed during the run: {changed} sockets judged otherwise now")));
            }
            if self.moved_during {
                return Ok(Some("a server moved during the run: its old address is watched from the next look".into()));
            }
        }
        if let Some(why) = self.socketless_doubt()? {
            return Ok(Some(why));
        }
        for server in self.doubted() {
            if let Some(why) = self.doubt_of(&server)? {
                return Ok(Some(why));
            }
        }
        Ok(None)
    }

    /// While an old worker still lists live streams of a gone or moved server
    /// that held no socket at the sweep (queued, between retries), HAProxy may
    /// connect them again: the run is not quiet. Every stream of such a server
    /// in that worker lingers, so any live one counts.
    fn socketless_doubt(&mut self) -> Result<Option<String>> {
        for s in self.socketless.clone() {
            if self.holders.exited().contains(&s.pid) {
                continue; // the worker exited (not a zombie, not a reused pid), and its streams with it
            }
            let (be, srv) = (s.server.0.as_str(), s.server.1.as_str());
            // A current worker's stream of a server it moved retries the old
            // address only from a turn-around (3) or a failed attempt (6).
            // Streams accepted after the sweep were given the server's new
            // address (the move came before the sweep): they are not counted.
            let since = self.swept_at.map_or(0, |t| t.elapsed().as_secs());
            let counts = |st: &Stream| match s.retrying_only {
                true => matches!(st.state, Some(3 | 6)) && st.age.is_none_or(|a| a >= since),
                false => st.server_side_live(),
            };
            let live = match self.attributor.streams(s.pid, Some((be, srv)))? {
                Ok(streams) => streams
                    .iter()
                    .filter(|st| st.backend.as_deref() == Some(be) && st.server.as_deref() == Some(srv))
                    .filter(|st| counts(st))
                    .count(),
                Err(why) => {
                    return Ok(Some(format!("{be}/{srv} ({}) had streams without a socket in pid {}: {why}", s.class.name(), s.pid)))
                }
            };
            if live > 0 {
                let kind = if s.retrying_only { "streams waiting to retry" } else { "live streams" };
                let place = s.address.map_or("wherever they connect".to_string(), |a| Place::of(a).to_string());
                return Ok(Some(format!(
                    "pid {} still lists {live} {kind} of {be}/{srv} ({}), which may connect to {place} again",
                    s.pid,
                    s.class.name(),
                )));
            }
        }
        Ok(None)
    }

    /// The servers whose streams HAProxy must no longer list for the run to be
    /// quiet: the named one, or the sweep's maintenance servers it enforces.
    fn doubted(&self) -> Vec<(String, String)> {
        match (&self.swept, self.named()) {
            (Some(sweep), _) => sweep.enforced_maint(),
            (None, Some(named)) => vec![named],
            (None, None) => Vec::new(),
        }
    }

    /// The doubt about one server: its streams in every process, its `scur`.
    fn doubt_of(&mut self, (be, srv): &(String, String)) -> Result<Option<String>> {
        let named = self.ask_named_for((be, srv), false)?;
        // The answering worker's own table is the least HAProxy must show; an
        // old worker that cannot be asked names nothing (the README says so).
        if let Some(why) = named.unavailable.iter().find(|u| u.pid() == self.answering) {
            return Ok(Some(format!("HAProxy's stream table could not be read to confirm {be}/{srv} is clear: {why}")));
        }
        for why in &named.unavailable {
            debug!(%why, "a stream table that cannot be read does not hold the run");
        }
        let added = self.place_fds(&named.fds)?;
        let streams: usize = named.streams.iter().map(|(_, n, _)| n).sum();
        let scur = match self.scur_of(be, srv) {
            Ok(n) => n,
            Err(e) => return Ok(Some(format!("`show stat` could not be read to confirm {be}/{srv} is clear: {e}"))),
        };
        if streams == 0 && scur == 0 {
            return Ok(None);
        }
        let per_pid: Vec<String> = named
            .streams
            .iter()
            .map(|(pid, n, live)| format!("pid {pid}: {n}, {live} of them still queued, connecting or connected"))
            .collect();
        let places: Vec<String> = self.places.borrow().iter().map(|p| p.to_string()).collect();
        let mut why = format!(
            "HAProxy still lists {streams} streams of {be}/{srv} ({}) and `show stat` counts {scur} sessions of it, which no socket at {} explained at the last look",
            if per_pid.is_empty() { "none".to_string() } else { per_pid.join("; ") },
            places.join(", ")
        );
        if !added.is_empty() {
            let added: Vec<String> = added.iter().map(|p| p.to_string()).collect();
            why += &format!("; their sockets were found at {}, now watched", added.join(", "));
        }
        Ok(Some(why))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(be: &str, name: &str, addr: &str, port: u16) -> ServerState {
        ServerState { backend: be.into(), name: name.into(), addr: addr.parse().ok(), port, ..Default::default() }
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

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn named_server_attribution_decides_whichever_table_named_it() {
        let addr = sa("10.88.0.11:9001");
        let shared = vec![server("be_a", "a1", "10.88.0.11", 9001), server("be_b", "b1", "10.88.0.11", 9001)];
        let r = Rule::new(named("be_a", "a1"), shared.clone(), vec![]);
        for h in [Holder::Current, Holder::Other] {
            assert_eq!(r.decide(Some(&stream("be_a", "a1")), h, WHY, addr), Class::Target);
            assert_eq!(r.decide(Some(&conn("be_a", "a1")), h, WHY, addr), Class::Target);
            assert!(matches!(r.decide(Some(&stream("be_b", "b1")), h, WHY, addr), Class::OtherServer(w) if w.contains("be_b/b1") && w.contains("show sess")));
            assert!(matches!(r.decide(Some(&conn("be_b", "b1")), h, WHY, addr), Class::OtherServer(w) if w.contains("show fd")));
            // Unlisted at an address be_b/b1 shares: cannot tell, left alone.
            assert!(matches!(r.decide(None, h, WHY, addr), Class::Ambiguous(w) if w.contains("be_b/b1") && w.starts_with(WHY)));
        }
        // Unlisted, nobody else there: the lingering case, a target.
        let alone = Rule::new(named("be_a", "a1"), vec![shared[0].clone()], vec![]);
        assert_eq!(alone.decide(None, Holder::Other, WHY, addr), Class::Target);
    }

    /// A server's connections are wherever HAProxy's tables say: at a
    /// previous address (`set server addr`, DNS), at a mapped port, at the
    /// client's port (port 0). What no table names is the server's only at
    /// its own configured address and port.
    #[test]
    fn a_named_server_is_where_the_tables_say() {
        let moved = Rule::new(named("be", "h1"), vec![server("be", "h1", "10.88.0.22", 9004)], vec![8004]);
        // Named at its old address: its own.
        assert_eq!(moved.decide(Some(&stream("be", "h1")), Holder::Current, WHY, sa("10.88.0.21:9004")), Class::Target);
        assert_eq!(moved.decide(Some(&conn("be", "h1")), Holder::Other, WHY, sa("10.88.0.21:9004")), Class::Target);
        // Unlisted at the old address: perhaps another server's, left alone and said.
        assert!(matches!(moved.decide(None, Holder::Other, WHY, sa("10.88.0.21:9004")), Class::Ambiguous(w) if w.contains("not configured at 10.88.0.21:9004")));
        assert_eq!(moved.decide(None, Holder::Other, WHY, sa("10.88.0.22:9004")), Class::Target);
        // Port-mapped `+1000`, printed 1000: unlisted at 9004 is only maybe its own.
        let mapped = Rule::new(named("be", "h1"), vec![server("be", "h1", "10.88.0.21", 1000)], vec![8004]);
        assert_eq!(mapped.decide(Some(&stream("be", "h1")), Holder::Other, WHY, sa("10.88.0.21:9004")), Class::Target);
        assert!(matches!(mapped.decide(None, Holder::Other, WHY, sa("10.88.0.21:9004")), Class::Ambiguous(_)));
        // Port 0: any port of its address — for the current worker, whose
        // configuration is the one printed; an old worker may have had another
        // server at that address (a database at :5432, say).
        let p0 = Rule::new(named("be", "h1"), vec![server("be", "h1", "10.88.0.21", 0)], vec![9005]);
        assert_eq!(p0.decide(None, Holder::Current, WHY, sa("10.88.0.21:9005")), Class::Target);
        assert!(matches!(p0.decide(None, Holder::Other, WHY, sa("10.88.0.21:5432")), Class::Ambiguous(_)));
        // A port HAProxy listens on carries clients' connections in, never a server's.
        assert!(p0.listens_on(9005) && !p0.listens_on(5432));
        // IPv6, moved.
        let v6 = Rule::new(named("be", "h6"), vec![server("be", "h6", "fd77::22", 9007)], vec![]);
        assert_eq!(v6.decide(Some(&stream("be", "h6")), Holder::Current, WHY, sa("[fd77::21]:9007")), Class::Target);
        assert!(matches!(v6.decide(None, Holder::Current, WHY, sa("[fd77::21]:9007")), Class::Ambiguous(_)));
    }

    #[test]
    fn an_address_alone_means_servers_no_longer_configured_there() {
        let addr = sa("127.0.0.11:9001");
        // A reload renamed s1 to s1b at the same address.
        let r = Rule::new(Target::Gone, vec![server("be", "s1b", "127.0.0.11", 9001)], vec![]);
        assert_eq!(r.decide(Some(&stream("be", "s1")), Holder::Other, WHY, addr), Class::Target);
        assert_eq!(r.decide(Some(&conn("be", "s1")), Holder::Other, WHY, addr), Class::Target);
        assert!(matches!(r.decide(Some(&conn("be", "s1b")), Holder::Other, WHY, addr), Class::OtherServer(_)));
        // An old worker's unlisted socket: it may have had another server there.
        assert!(matches!(r.decide(None, Holder::Other, WHY, addr), Class::Ambiguous(_)));
        // The current worker's own unlisted socket is its configured server's.
        assert!(matches!(r.decide(None, Holder::Current, WHY, addr), Class::OtherServer(w) if w.contains("be/s1b")));
        // A reload removed it: nothing configured there any more.
        let gone = Rule::new(Target::Gone, vec![server("be", "s2", "127.0.0.12", 9002)], vec![]);
        assert_eq!(gone.decide(None, Holder::Other, WHY, addr), Class::Target);
        assert_eq!(gone.decide(None, Holder::Current, WHY, addr), Class::Target);
        // A server that uses the client's port (0) shares every port of its address.
        let any_port = Rule::new(Target::Gone, vec![server("be", "p", "127.0.0.11", 0)], vec![]);
        assert!(matches!(any_port.decide(None, Holder::Other, WHY, addr), Class::Ambiguous(_)));
        // IPv4-mapped addresses are the IPv4 ones.
        let mapped = Rule::new(Target::Gone, vec![server("be", "s1b", "127.0.0.11", 9001)], vec![]);
        assert!(matches!(mapped.decide(None, Holder::Other, WHY, sa("[::ffff:127.0.0.11]:9001")), Class::Ambiguous(_)));
    }

    /// The wrong kill of issue 22: `server h1 10.88.0.21:+1000` (printed port
    /// 1000) behind a frontend on 8004 is configured and up at 10.88.0.21:9004;
    /// `--addr 10.88.0.21:9004` must leave its sessions alone.
    #[test]
    fn a_port_mapped_server_is_still_configured_at_its_mapped_port() {
        let addr = sa("10.88.0.21:9004");
        let r = Rule::new(Target::Gone, vec![server("be", "h1", "10.88.0.21", 1000)], vec![8004]);
        for h in [Holder::Current, Holder::Other] {
            assert!(matches!(r.decide(Some(&stream("be", "h1")), h, WHY, addr), Class::OtherServer(w) if w.contains("still configured")));
            assert!(matches!(r.decide(Some(&conn("be", "h1")), h, WHY, addr), Class::OtherServer(_)));
        }
        assert!(matches!(r.decide(None, Holder::Current, WHY, addr), Class::OtherServer(w) if w.contains("offset")));
        assert!(matches!(r.decide(None, Holder::Other, WHY, addr), Class::Ambiguous(_)));
        // Without a listening port that maps to 9004 (a paused frontend, a bind in
        // another namespace), h1 at its address on another port may still be there: left alone, said.
        let elsewhere = Rule::new(Target::Gone, vec![server("be", "h1", "10.88.0.21", 1000)], vec![8000]);
        assert!(matches!(elsewhere.decide(Some(&stream("be", "h1")), Holder::Other, WHY, addr), Class::Ambiguous(w) if w.contains("offset")));
        // Moved to another address altogether: its connections at the old one are gone from there.
        let away = Rule::new(Target::Gone, vec![server("be", "h1", "10.88.0.99", 1000)], vec![8000]);
        assert_eq!(away.decide(Some(&stream("be", "h1")), Holder::Other, WHY, addr), Class::Target);
        // A server moved at runtime: its connections at the old address are gone from there.
        let moved = Rule::new(Target::Gone, vec![server("be", "h1", "10.88.0.22", 9004)], vec![8004]);
        assert_eq!(moved.decide(Some(&stream("be", "h1")), Holder::Current, WHY, addr), Class::Target);
    }

    #[test]
    fn fd_names_are_oriented_by_the_configuration() {
        let r = Rule::new(Target::Gone, vec![server("be", "s1", "127.0.0.11", 9001)], vec![]);
        assert_eq!(r.orient("be", "s1"), ("be", "s1"));
        assert_eq!(r.orient("s1", "be"), ("be", "s1"));
        // Neither pair known (a removed server): as printed.
        assert_eq!(r.orient("be", "gone"), ("be", "gone"));
    }
}
