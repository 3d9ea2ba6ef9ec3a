//! The lingering sweep (`--lingering`): which backend connections that
//! HAProxy's processes hold belong to a server that is gone from the current
//! configuration, moved to another address, or (reported) in maintenance.
//!
//! A connection's server is the one HAProxy's own tables name (`show sess`'s
//! `srv=`, `show fd`'s `sv=`) in the process holding it; an old worker's
//! connection no table names is its server's only when that worker's own
//! configuration (`@!<pid> show servers state`) has exactly one server at
//! the peer. The judgement ([`judge`]) is pure and unit-tested; [`sweep`]
//! gathers the facts once, with one dump of the kernel's table.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;

use serde::Serialize;
use tracing::{debug, info};

use super::attribution::{Attributor, Unavailable};
use super::parse::ServerState;
use super::places::{server_at, At};
use crate::engine::owners::Holders;
use crate::engine::{Class, Engine, Query};
use crate::error::{HaproxyError, Result};
use crate::filter::{canonical_ip, Filter, StateSet};
use crate::socket::{TcpSocket, TcpState};

/// Why a connection lingers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Lingers {
    /// Its server is not in the current configuration, and no current server is at its address.
    Gone,
    /// Its server is still configured, at another address: the connection is to the old one.
    Moved,
    /// Its server is in maintenance in the current worker (ended only with `--include-maint`).
    Maint,
}

impl Lingers {
    /// The word JSON and the metrics use.
    pub fn name(self) -> &'static str {
        match self {
            Lingers::Gone => "gone",
            Lingers::Moved => "moved",
            Lingers::Maint => "maint",
        }
    }
}

/// One server's lingering connections at one address.
#[derive(Debug, Clone, Serialize)]
pub struct Lingering {
    /// Why they linger.
    pub class: Lingers,
    /// `backend/server`, as the holder's tables name it.
    pub server: String,
    /// The peer address of the connections.
    pub address: SocketAddr,
    /// The server's address in the current configuration (`moved`, `maint`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub now_at: Option<String>,
    /// The processes holding them (our pids).
    pub pids: Vec<u32>,
    /// How many connections the sweep found.
    pub sockets: usize,
    /// Their socket cookies (what the report counts by).
    #[serde(skip)]
    pub cookies: Vec<u64>,
    /// Whether the run ends them (`maint` only with `--include-maint`).
    pub enforced: bool,
}

/// What the sweep found.
#[derive(Debug, Default)]
pub struct Sweep {
    /// Per class, server and address.
    pub lingering: Vec<Lingering>,
    /// The rule the run enforces with (`None` once taken).
    pub rule: Option<SweepRule>,
    /// Processes whose tables or configuration could not be read (their
    /// connections were not judged), and why.
    pub unasked: Vec<String>,
    /// Old workers' live streams of gone or moved servers that held no socket
    /// at the sweep (queued, between retries): HAProxy may connect them again.
    pub socketless: Vec<Socketless>,
}

/// Streams of a gone or moved server that may connect again: an old
/// worker's without a socket at the sweep (queued, between retries), or the
/// current worker's of a server it moved at runtime (a stream retries the
/// address it was given, the old one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Socketless {
    /// The process (our pid).
    pub pid: u32,
    /// `(backend, server)`.
    pub server: (String, String),
    /// Why the server's connections linger.
    pub class: Lingers,
    /// Where the stream reconnects (watched); `None` when no address says
    /// (a port-0 or transparent server's): then only doubted.
    pub address: Option<SocketAddr>,
    /// The current worker's: only its streams waiting to retry (turn-around,
    /// failed attempt) count; its others go to the server's new address.
    pub retrying_only: bool,
}

/// The old workers' socketless streams whose server is gone or moved, and
/// the current worker's servers the sweep found moved (`moved_here`).
fn socketless(
    tables: &HashMap<u32, Tables>,
    configs: &HashMap<u32, Vec<ServerState>>,
    (current, listening): (&[ServerState], &[u16]),
    answering: u32,
    moved_here: &BTreeMap<(String, String), SocketAddr>,
) -> Vec<Socketless> {
    let mut out = Vec::new();
    for (&pid, t) in tables.iter().filter(|(pid, _)| **pid != answering) {
        let Some(config) = configs.get(&pid) else { continue };
        for (be, srv) in &t.socketless {
            let Some(was) = config.iter().find(|s| &s.backend == be && &s.name == srv) else { continue };
            let server = (be.clone(), srv.clone());
            // A port-0 server's streams reconnect to any port of its address:
            // judged there (ip:0 is every port of it) and watched there.
            let Some(ip) = was.addr.filter(|ip| !ip.is_unspecified()) else {
                // No address to judge or watch (transparent): a server no
                // longer configured by that name is still doubted.
                if !current.iter().any(|s| &s.backend == be && &s.name == srv) {
                    out.push(Socketless { pid, server, class: Lingers::Gone, address: None, retrying_only: false });
                }
                continue;
            };
            let address = SocketAddr::new(ip, was.port);
            let class = judge((be, srv), NamedBy::Stream, address, (config, true), current, listening);
            if let Some(class @ (Lingers::Gone | Lingers::Moved)) = class {
                out.push(Socketless { pid, server, class, address: Some(address), retrying_only: false });
            }
        }
    }
    for (server, &address) in moved_here {
        let (pid, class) = (answering, Lingers::Moved);
        out.push(Socketless { pid, server: server.clone(), class, address: Some(address), retrying_only: true });
    }
    out.sort_by(|a, b| (a.pid, &a.server).cmp(&(b.pid, &b.server)));
    out
}

/// The addresses servers of `before` had and no longer have in `after`
/// (moved at runtime): their connections there now linger.
pub fn addresses_left(before: &[ServerState], after: &[ServerState]) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for b in before {
        let Some(ip) = b.addr.filter(|ip| !ip.is_unspecified()) else { continue };
        let now = after.iter().find(|a| a.backend == b.backend && a.name == b.name);
        if now.is_some_and(|a| a.addr != b.addr || a.port != b.port) {
            out.push(SocketAddr::new(ip, b.port));
        }
    }
    out
}

/// Whether `s` is at `peer`: its own address (a port offset or port 0 understood)
/// or one of its check or agent addresses.
fn is_at(s: &ServerState, peer: SocketAddr, listening: &[u16]) -> bool {
    server_at(s, peer, listening).is_some() || s.checks.contains(&peer)
}

/// How the holder's tables named a connection's server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamedBy {
    /// A stream's server-side connection (`show sess`): traffic, never a health check.
    Stream,
    /// Only `show fd`'s `sv=`: an idle or pooled connection, or a health check.
    Fd,
    /// No table: the one server of an old worker's configuration at the peer.
    OnlyServerThere,
}

/// The class of a connection to `peer` whose holder names `(be, srv)` (`by`),
/// under the holder's own configuration and the current worker's
/// (`old_worker`: the holder is not the current worker); `None`: healthy
/// (or not a server's connection at all).
pub fn judge(
    (be, srv): (&str, &str),
    by: NamedBy,
    peer: SocketAddr,
    (holder, old_worker): (&[ServerState], bool),
    current: &[ServerState],
    listening: &[u16],
) -> Option<Lingers> {
    let named = |s: &&ServerState| s.backend == be && s.name == srv;
    // Not a server of the holder's configuration: peers, a ring, the httpclient...
    let was = holder.iter().find(named)?;
    match current.iter().find(named) {
        // Still configured: at its own address (or a check's) it is healthy, or in
        // maintenance; anywhere else it may be a connection to where it was.
        Some(s) if server_at(s, peer, listening).is_some() => s.maint.then_some(Lingers::Maint),
        Some(s) if s.checks.contains(&peer) => None,
        Some(s) => moved(s, was, by, peer, old_worker, current, listening),
        // Gone by this name: renamed, if a current server of the same backend or
        // with the same name is at the address (the reload kept it there);
        // another backend's server there does not make it its own.
        None => {
            let renamed = current.iter().any(|s| is_at(s, peer, listening) && (s.backend == be || s.name == srv));
            (!renamed).then_some(Lingers::Gone)
        }
    }
}

/// Whether a connection of still-configured server `now` (`was` in the
/// holder's configuration) to `peer`, away from its current address, is one
/// to where it was. Many healthy connections are not at a server's printed
/// address: `tcp-check connect port|addr` checks (`show servers state` prints
/// neither), a transparent server's (`0.0.0.0`: the client's destination), a
/// port offset behind a rewritten destination port. So only what shows the
/// old place counts: an old worker's configuration having the server exactly
/// there, or, in the current worker (a runtime `set server addr`), a stream
/// going to another host than the server's.
fn moved(
    now: &ServerState,
    was: &ServerState,
    by: NamedBy,
    peer: SocketAddr,
    old_worker: bool,
    current: &[ServerState],
    listening: &[u16],
) -> Option<Lingers> {
    // Another server of the same backend is there now (server-template or DNS
    // slots reordered by the reload): that address is still the backend's.
    if current.iter().any(|c| c.backend == now.backend && server_at(c, peer, listening).is_some()) {
        return None;
    }
    let here = now.addr.filter(|ip| !ip.is_unspecified())?;
    if old_worker {
        // A port offset (`+1000` prints as `1000`) puts the server at a
        // listening port plus or minus it: a stream's connection there is the
        // server's traffic; a check (`show fd` alone) may be anywhere.
        let there = match server_at(was, peer, listening) {
            Some(At::Exactly) => true,
            Some(At::Maybe) => by == NamedBy::Stream,
            None => false,
        };
        return there.then_some(Lingers::Moved);
    }
    let other_host = canonical_ip(here) != canonical_ip(peer.ip());
    (by == NamedBy::Stream && other_host).then_some(Lingers::Moved)
}
/// The sweep's rule for every socket a run sees: the same judgement as the
/// sweep's, by the server the holder's tables name under the holder's own
/// configuration.
#[derive(Debug, Clone)]
pub struct SweepRule {
    configs: HashMap<u32, Vec<ServerState>>,
    current: Vec<ServerState>,
    listening: Vec<u16>,
    answering: u32,
    include_maint: bool,
    /// What the sweep judged, per socket (cookie) it found lingering.
    judged: HashMap<u64, Lingers>,
    /// The sockets a stream (`show sess`) named at the sweep: a run reading
    /// only `show fd` later still knows they carried traffic.
    by_stream: HashSet<u64>,
    /// Every socket the sweep judged, lingering or not.
    seen: HashSet<u64>,
    /// The current worker's servers a stream showed moved, and from where.
    moved_from: BTreeSet<((String, String), SocketAddr)>,
    /// Why the current configuration could not be read again, if it could not.
    stale: Option<String>,
}

impl SweepRule {
    /// Whether the sweep judged this socket (lingering or not).
    pub fn judged(&self, cookie: u64) -> bool {
        self.seen.contains(&cookie) || self.judged.contains_key(&cookie)
    }

    /// The current worker's configuration, read again for sockets the sweep
    /// did not see: a server may have moved since, even back to an address
    /// the sweep took for its old one. `Err`: it could not be read; then
    /// only what the sweep judged is decided.
    /// Returns whether it changed (also from unreadable to read: what was
    /// decided meanwhile is decided again).
    pub fn refresh(&mut self, current: std::result::Result<Vec<ServerState>, String>) -> bool {
        match current {
            Ok(c) => {
                let changed = self.stale.is_some() || c != self.current;
                // A server seen moving (DNS, `set server addr` during the run):
                // its old address is proven, as a stream would prove it.
                for b in self.current.iter().filter(|b| b.port != 0) {
                    let Some(ip) = b.addr.filter(|ip| !ip.is_unspecified()) else { continue };
                    let now = c.iter().find(|a| a.backend == b.backend && a.name == b.name);
                    if now.is_some_and(|a| a.addr != b.addr || a.port != b.port) {
                        self.moved_from.insert(((b.backend.clone(), b.name.clone()), SocketAddr::new(ip, b.port)));
                    }
                }
                if let Some(config) = self.configs.get_mut(&self.answering) {
                    config.clone_from(&c);
                }
                self.current = c;
                self.stale = None;
                changed
            }
            Err(why) => {
                self.stale = Some(why);
                false
            }
        }
    }

    /// The current configuration it judges by.
    pub fn current(&self) -> &[ServerState] {
        &self.current
    }

    /// Why the current configuration could not be read again, if it could not
    /// (nothing is decided until it can).
    pub fn stale(&self) -> Option<&str> {
        self.stale.as_deref()
    }

    /// Whether a stream's naming a socket `show fd` named `(a, b)` would
    /// change its verdict (a connection away from its server's address, which
    /// only a stream shows to be traffic): then the stream table is worth a read.
    pub fn stream_matters(&self, (pid, cookie): (u32, u64), (a, b): (&str, &str), peer: SocketAddr) -> bool {
        let Some(config) = self.configs.get(&pid).filter(|_| !self.by_stream.contains(&cookie)) else {
            return false;
        };
        let listed = |x: &str, y: &str| config.iter().any(|s| s.backend == x && s.name == y);
        let pair = if !listed(a, b) && listed(b, a) { (b, a) } else { (a, b) };
        let old_worker = pid != self.answering;
        let by = |by| judge(pair, by, peer, (config, old_worker), &self.current, &self.listening);
        by(NamedBy::Fd) != by(NamedBy::Stream)
    }

    /// The servers in maintenance whose connections the run ends (`--include-maint`).
    pub fn enforced_maint(&self) -> Vec<(String, String)> {
        if !self.include_maint {
            return Vec::new();
        }
        self.current.iter().filter(|s| s.maint).map(|s| (s.backend.clone(), s.name.clone())).collect()
    }

    /// The verdict on a socket to `peer` held by `pid`, which a table
    /// (`named`: the server and the table's name) names or not (`why`).
    pub fn decide(
        &self,
        (pid, cookie): (u32, u64),
        named: Option<((&str, &str), &str)>,
        why: &str,
        peer: SocketAddr,
    ) -> Class {
        if let Some(e) = &self.stale {
            return Class::Ambiguous(format!("the current configuration could not be read again to judge it: {e}"));
        }
        let Some(config) = self.configs.get(&pid) else {
            return Class::Ambiguous(format!("{why}; HAProxy pid {pid} could not be asked for its configuration"));
        };
        let ((be, srv), table, by) = match named {
            // `show fd`'s pair, oriented by the holder's own configuration (its
            // version may print SERVER/BACKEND where the current one does not).
            Some(((a, b), table)) if table == "show fd" => {
                let listed = |x: &str, y: &str| config.iter().any(|s| s.backend == x && s.name == y);
                let pair = if !listed(a, b) && listed(b, a) { (b, a) } else { (a, b) };
                let by = if self.by_stream.contains(&cookie) { NamedBy::Stream } else { NamedBy::Fd };
                (pair, table, by)
            }
            Some((pair, table)) => (pair, table, NamedBy::Stream),
            None if pid != self.answering => match only_server_at(config, peer, &self.listening) {
                Some(s) => (
                    (s.backend.as_str(), s.name.as_str()),
                    "its configuration: the one server there",
                    NamedBy::OnlyServerThere,
                ),
                None => {
                    return Class::Ambiguous(format!(
                        "{why}, and pid {pid}'s configuration has no one server at {peer}"
                    ))
                }
            },
            None => return Class::Ambiguous(format!("{why} (the current worker)")),
        };
        let old_worker = pid != self.answering;
        let class = match judge((be, srv), by, peer, (config, old_worker), &self.current, &self.listening) {
            None if by == NamedBy::Fd && !old_worker => {
                let configs = (self.current.as_slice(), self.current.as_slice());
                proven_old_address(&self.moved_from, (be, srv), peer, configs, &self.listening).then_some(Lingers::Moved)
            }
            c => c,
        };
        // The sweep read every table; the run may have read fewer (`show fd <fd>`).
        // Where they disagree about a socket the sweep found lingering, say so.
        let ends = |c: Option<Lingers>| matches!(c, Some(Lingers::Gone | Lingers::Moved));
        if let Some(was) = self.judged.get(&cookie).filter(|w| ends(Some(**w)) && !ends(class)) {
            return Class::Ambiguous(format!(
                "the sweep found it {} ({be}/{srv}), the run's `{table}` does not",
                was.name()
            ));
        }
        match class {
            Some(Lingers::Gone | Lingers::Moved) => Class::Target,
            Some(Lingers::Maint) if self.include_maint => Class::Target,
            Some(Lingers::Maint) => {
                Class::OtherServer(format!("{be}/{srv} (`{table}`) is in maintenance: --include-maint ends it"))
            }
            None => Class::OtherServer(format!(
                "{be}/{srv} (`{table}`) is configured at {peer}, is no server, or is not shown to have been there \
                 (a check, a transparent or port-rewritten connection)"
            )),
        }
    }
}

/// The one server of `config` at `peer`, surely there (for an old worker's
/// connection no table names).
fn only_server_at<'a>(config: &'a [ServerState], peer: SocketAddr, listening: &[u16]) -> Option<&'a ServerState> {
    let mut at = config.iter().filter(|s| server_at(s, peer, listening).is_some() || s.checks.contains(&peer));
    let first = at.next()?;
    // Port 0 ("any port") is no proof: an old worker's client connection in,
    // on a frontend port the reload removed, comes from a port like any other.
    let sure = server_at(first, peer, listening) == Some(At::Exactly) && first.port != 0;
    (at.next().is_none() && sure).then_some(first)
}

/// fd -> `(backend, server)` and which table named it.
type ServerOf = HashMap<u32, ((String, String), NamedBy)>;

/// What one process's tables say: fd -> the server they name (streams
/// first), and the servers of live streams holding no socket (queued,
/// between retries, connecting).
#[derive(Default)]
struct Tables {
    named: ServerOf,
    socketless: HashSet<(String, String)>,
}

/// Per process: what its tables name.
fn named_fds(att: &mut Attributor, pid: u32, config: &[ServerState]) -> Result<std::result::Result<Tables, Unavailable>> {
    let mut out = Tables::default();
    let streams = match att.streams(pid, None)? {
        Ok(s) => s,
        Err(why) => return Ok(Err(why)),
    };
    for st in streams {
        let live = st.server_side_live();
        match (st.fd, st.backend, st.server) {
            (Some(fd), Some(be), Some(srv)) => {
                out.named.insert(fd, ((be, srv), NamedBy::Stream));
            }
            (None, Some(be), Some(srv)) if live => {
                out.socketless.insert((be, srv));
            }
            _ => {}
        }
    }
    let named = &mut out.named;
    let conns = match att.connections(pid)? {
        Ok(c) => c,
        Err(why) => return Ok(Err(why)),
    };
    let listed = |a: &str, b: &str| config.iter().any(|s| s.backend == a && s.name == b);
    for c in conns {
        if let Some((a, b)) = c.server {
            // `show fd` printed SERVER/BACKEND before 2.5: the pair the configuration has.
            let pair = if !listed(&a, &b) && listed(&b, &a) { (b, a) } else { (a, b) };
            named.entry(c.fd).or_insert((pair, NamedBy::Fd));
        }
    }
    Ok(Ok(out))
}

/// Per process (our pid): its configuration and what its tables name.
struct Asked {
    configs: HashMap<u32, Vec<ServerState>>,
    tables: HashMap<u32, Tables>,
}

/// Every process's configuration and tables (`known` and `unasked` filled in `out`).
fn ask_every_process(
    att: &mut Attributor,
    holders: &Holders,
    current: &[ServerState],
    answering: u32,
    out: &mut Sweep,
) -> Result<Asked> {
    let mut configs: HashMap<u32, Vec<ServerState>> = HashMap::new();
    let mut tables: HashMap<u32, Tables> = HashMap::new();
    for pid in holders.pids() {
        let config = if pid == answering {
            current.to_vec()
        } else {
            match att.servers_state(pid)? {
                Ok(c) => c,
                Err(why) => {
                    out.unasked.push(why.to_string());
                    continue;
                }
            }
        };
        match named_fds(att, pid, &config)? {
            Ok(named) => {
                tables.insert(pid, named);
                configs.insert(pid, config);
            }
            Err(why) => out.unasked.push(why.to_string()),
        }
    }
    Ok(Asked { configs, tables })
}

/// The server a socket's holder names (`fd` in it; `old_worker`: not the
/// current worker, whose unnamed sockets are nobody's), and by which table.
fn server_of(
    tables: &Tables,
    config: &[ServerState],
    (fd, old_worker): (u32, bool),
    peer: SocketAddr,
    listening: &[u16],
) -> Option<((String, String), NamedBy)> {
    match tables.named.get(&fd) {
        Some(((be, srv), by)) => Some(((be.clone(), srv.clone()), *by)),
        None if old_worker => only_server_at(config, peer, listening)
            .map(|st| ((st.backend.clone(), st.name.clone()), NamedBy::OnlyServerThere)),
        None => None,
    }
}

/// Per class, server and address: the current address, the holders, how many.
type Groups = BTreeMap<(Lingers, String, SocketAddr), (Option<String>, HashSet<u32>, Vec<u64>)>;

/// The sweep's groups as the report's entries.
fn lingering_of(groups: Groups, include_maint: bool) -> Vec<Lingering> {
    groups
        .into_iter()
        .map(|((class, server, address), (now_at, pids, cookies))| {
            let mut pids: Vec<u32> = pids.into_iter().collect();
            pids.sort_unstable();
            Lingering {
                class,
                server,
                address,
                now_at: if class == Lingers::Gone { None } else { now_at },
                pids,
                sockets: cookies.len(),
                cookies,
                enforced: class != Lingers::Maint || include_maint,
            }
        })
        .collect()
}

/// One lingering connection the sweep found.
struct Found {
    cookie: u64,
    pid: u32,
    class: Lingers,
    server: (String, String),
    peer: SocketAddr,
}

/// Whether a current-worker connection `show fd` alone names `(be, srv)`
/// is at the exact address a stream of that server showed it moved from
/// (`moved_from`: a runtime `set server addr`): a connection an idle
/// keep-alive session owns there is the server's old traffic, no check —
/// unless the server (or another of its backend) is there now, under the
/// configuration of each read (`configs`).
fn proven_old_address(
    moved_from: &BTreeSet<((String, String), SocketAddr)>,
    (be, srv): (&str, &str),
    peer: SocketAddr,
    configs: (&[ServerState], &[ServerState]),
    listening: &[u16],
) -> bool {
    let proven = moved_from.contains(&((be.to_string(), srv.to_string()), peer));
    let away = |current: &[ServerState]| {
        let named = current.iter().find(|s| s.backend == be && s.name == srv);
        let elsewhere = named.is_some_and(|s| server_at(s, peer, listening).is_none() && !s.checks.contains(&peer));
        elsewhere && !current.iter().any(|c| c.backend == be && server_at(c, peer, listening).is_some())
    };
    proven && away(configs.0) && away(configs.1)
}

/// The sweep's findings per class, server and address (their server's
/// address now, holders, cookies), and each socket's class.
fn grouped(found: Vec<Found>, after: &[ServerState]) -> (Groups, HashMap<u64, Lingers>) {
    let (mut groups, mut judged): (Groups, _) = (BTreeMap::new(), HashMap::new());
    for f in found {
        debug!(cookie = f.cookie, pid = f.pid, class = ?f.class, server = ?f.server, peer = %f.peer, "lingers");
        judged.insert(f.cookie, f.class);
        let now_at = after
            .iter()
            .find(|c| (&c.backend, &c.name) == (&f.server.0, &f.server.1))
            .and_then(|c| c.addr.map(|ip| SocketAddr::new(ip, c.port).to_string()));
        let key = (f.class, format!("{}/{}", f.server.0, f.server.1), f.peer);
        let e = groups.entry(key).or_insert((now_at, HashSet::new(), Vec::new()));
        e.1.insert(f.pid);
        e.2.push(f.cookie);
    }
    (groups, judged)
}

/// What a sweep asked of every process.
struct Dump<'a> {
    configs: &'a HashMap<u32, Vec<ServerState>>,
    tables: &'a HashMap<u32, Tables>,
    answering: u32,
    listening: &'a [u16],
}

/// What the sweep judged of the dump.
struct Judged {
    found: Vec<Found>,
    /// Every socket a table (or an old worker's configuration) named.
    seen: HashSet<u64>,
    /// Those a stream named.
    by_stream: HashSet<u64>,
    /// The current worker's servers found moved, and from where.
    moved_from: BTreeSet<((String, String), SocketAddr)>,
}

/// Judges every socket of the dump a process holds, under the current
/// configuration read before the dump and after it (`current`, `after`).
fn judge_dump(sockets: Vec<TcpSocket>, holders: &Holders, d: &Dump, (current, after): (&[ServerState], &[ServerState])) -> Judged {
    let (configs, tables, answering, listening) = (d.configs, d.tables, d.answering, d.listening);
    let mut by_stream = HashSet::new();
    let mut moved_from = BTreeSet::new();
    let mut found: Vec<Found> = Vec::new();
    let mut seen = HashSet::new();
    // The current worker's `show fd`-only connections healthy by themselves:
    // judged again once every stream has shown where its server moved from.
    let mut deferred = Vec::new();
    for s in sockets {
        let Some(h) = holders.holder(&s) else { continue };
        let (Some(config), Some(named)) = (configs.get(&h.pid), tables.get(&h.pid)) else { continue };
        // A connection in, from a client (also another HAProxy's peers), is no server's.
        if s.state == Some(TcpState::Listen) || listening.contains(&s.local().port()) {
            continue;
        }
        let peer = s.peer();
        let Some((server, by)) = server_of(named, config, (h.fd, h.pid != answering), peer, listening) else {
            continue;
        };
        seen.insert(s.cookie());
        if by == NamedBy::Stream {
            by_stream.insert(s.cookie());
        }
        let old_worker = h.pid != answering;
        let named = (server.0.as_str(), server.1.as_str());
        let holder_now = if old_worker { config.as_slice() } else { after };
        let before = judge(named, by, peer, (config.as_slice(), old_worker), current, listening);
        let Some(class) = before.and(judge(named, by, peer, (holder_now, old_worker), after, listening)) else {
            if by == NamedBy::Fd && !old_worker {
                deferred.push((s.cookie(), server, peer));
            }
            continue;
        };
        if class == Lingers::Moved && h.pid == answering {
            moved_from.insert((server.clone(), peer));
        }
        found.push(Found { cookie: s.cookie(), pid: h.pid, class, server, peer });
    }
    for (cookie, server, peer) in deferred {
        if proven_old_address(&moved_from, (&server.0, &server.1), peer, (current, after), listening) {
            found.push(Found { cookie, pid: answering, class: Lingers::Moved, server, peer });
        }
    }
    Judged { found, seen, by_stream, moved_from }
}

/// Finds what lingers: every process's tables and configuration, one dump.
pub fn sweep(
    att: &mut Attributor,
    holders: &mut Holders,
    engine: &mut Engine,
    current: &[ServerState],
    listening: &[u16],
    answering: u32,
    include_maint: bool,
) -> Result<Sweep> {
    let mut out = Sweep::default();
    holders.scan()?;
    let Asked { configs, tables } = ask_every_process(att, holders, current, answering, &mut out)?;
    let everything = Query::new(Filter { states: StateSet::DEFAULT, ..Filter::default() })?;
    let sockets = engine.collect(&everything)?;
    // The current configuration read again after the dump: a connection lingers
    // only if it does under both (a server DNS moved meanwhile, even back to
    // where the first read had it, is judged by where it is now too).
    let after = att
        .servers_state(answering)?
        .map_err(|why| HaproxyError::Unavailable(format!("the lingering sweep cannot judge: {why}")))?;
    let dump = Dump { configs: &configs, tables: &tables, answering, listening };
    let Judged { found, seen, by_stream, moved_from } = judge_dump(sockets, holders, &dump, (current, &after));
    let (groups, judged) = grouped(found, &after);
    // One old address of each server found moved here, watched for its retries.
    let moved_here: BTreeMap<(String, String), SocketAddr> = moved_from.iter().rev().cloned().collect();
    let mut configs = configs;
    if let Some(c) = configs.get_mut(&answering) {
        c.clone_from(&after);
    }
    out.socketless = socketless(&tables, &configs, (&after, listening), answering, &moved_here);
    out.lingering = lingering_of(groups, include_maint);
    info!(found = out.lingering.len(), unasked = out.unasked.len(), "lingering sweep");
    out.rule = Some(SweepRule {
        configs,
        current: after,
        listening: listening.to_vec(),
        answering,
        include_maint,
        judged,
        by_stream,
        seen,
        moved_from,
        stale: None,
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(be: &str, name: &str, addr: &str, port: u16) -> ServerState {
        ServerState { backend: be.into(), name: name.into(), addr: addr.parse().ok(), port, ..Default::default() }
    }

    fn peer(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A stream's connection; held by the current worker when `holder` is `current` itself.
    fn class(named: (&str, &str), p: &str, holder: &[ServerState], current: &[ServerState]) -> Option<Lingers> {
        let old_worker = !std::ptr::eq(holder, current);
        judge(named, NamedBy::Stream, peer(p), (holder, old_worker), current, &[8080])
    }

    #[test]
    fn removed_renamed_and_moved_servers() {
        let old = vec![server("be", "s1", "10.0.0.1", 80), server("be", "s2", "10.0.0.2", 80)];
        // s2 removed by a reload.
        let current = vec![server("be", "s1", "10.0.0.1", 80)];
        assert_eq!(class(("be", "s2"), "10.0.0.2:80", &old, &current), Some(Lingers::Gone));
        assert_eq!(class(("be", "s1"), "10.0.0.1:80", &old, &current), None);
        // s2 renamed at the same address: nothing gone.
        let renamed = vec![server("be", "s1", "10.0.0.1", 80), server("be", "web2", "10.0.0.2", 80)];
        assert_eq!(class(("be", "s2"), "10.0.0.2:80", &old, &renamed), None);
        // s2 moved: its connections to the old address.
        let moved = vec![server("be", "s1", "10.0.0.1", 80), server("be", "s2", "10.0.0.9", 80)];
        assert_eq!(class(("be", "s2"), "10.0.0.2:80", &old, &moved), Some(Lingers::Moved));
        assert_eq!(class(("be", "s2"), "10.0.0.9:80", &old, &moved), None);
        // Another backend's server still at the removed server's address: the
        // removed server's connections (by the tables' name) are gone; that
        // server's own are healthy.
        let shared = vec![server("be", "s1", "10.0.0.1", 80), server("other", "x", "10.0.0.2", 80)];
        assert_eq!(class(("be", "s2"), "10.0.0.2:80", &old, &shared), Some(Lingers::Gone));
        let mut both = old.clone();
        both.push(server("other", "x", "10.0.0.2", 80));
        assert_eq!(class(("other", "x"), "10.0.0.2:80", &both, &shared), None);
        // Renamed in another backend, same server name: taken for a rename, left alone.
        let moved_be = vec![server("be", "s1", "10.0.0.1", 80), server("be2", "s2", "10.0.0.2", 80)];
        assert_eq!(class(("be", "s2"), "10.0.0.2:80", &old, &moved_be), None);
        // Moved, with another backend's server at its old address: still moved.
        let taken = vec![server("be", "s1", "10.0.0.1", 80), server("be", "s2", "10.0.0.9", 80), server("o", "y", "10.0.0.2", 80)];
        assert_eq!(class(("be", "s2"), "10.0.0.2:80", &old, &taken), Some(Lingers::Moved));
    }

    #[test]
    fn what_is_no_server_never_lingers() {
        let current = vec![server("be", "s1", "10.0.0.1", 80)];
        // A peers section's or ring's connection: named, but no configuration lists it.
        assert_eq!(class(("mypeers", "remote"), "10.0.0.7:1024", &current, &current), None);
    }

    #[test]
    fn checks_ports_and_maintenance() {
        let mut s1 = server("be", "s1", "10.0.0.1", 80);
        s1.checks = vec![peer("10.0.0.50:9999")];
        let current = vec![s1.clone()];
        // A check connection to the check address is never moved.
        assert_eq!(class(("be", "s1"), "10.0.0.50:9999", &current, &current), None);
        // Port 0 (any port) and a port offset of a listener are still the server's address.
        let any = vec![server("be", "s1", "10.0.0.1", 0)];
        assert_eq!(class(("be", "s1"), "10.0.0.1:4444", &any, &any), None);
        let offset = vec![server("be", "s1", "10.0.0.1", 1000)];
        assert_eq!(class(("be", "s1"), "10.0.0.1:9080", &offset, &offset), None);
        let mut m = server("be", "s1", "10.0.0.1", 80);
        m.maint = true;
        assert_eq!(class(("be", "s1"), "10.0.0.1:80", &[m.clone()], &[m.clone()]), Some(Lingers::Maint));
        // In maintenance at its check address: a check, healthy.
        let mut mc = m.clone();
        mc.checks = vec![peer("10.0.0.50:9999")];
        assert_eq!(class(("be", "s1"), "10.0.0.50:9999", &[mc.clone()], &[mc]), None);
        // In maintenance and moved: moved.
        let mut m2 = m.clone();
        m2.addr = "10.0.0.3".parse().ok();
        assert_eq!(class(("be", "s1"), "10.0.0.1:80", &[m.clone()], &[m2]), Some(Lingers::Moved));
    }

    #[test]
    fn the_run_enforces_by_the_same_judgement() {
        let old = vec![server("be", "s1", "10.0.0.1", 80), server("be", "s2", "10.0.0.2", 80)];
        let mut current = vec![server("be", "s1", "10.0.0.1", 80)];
        current[0].maint = true;
        let rule = |include_maint| SweepRule {
            configs: HashMap::from([(1, current.clone()), (2, old.clone())]),
            current: current.clone(),
            listening: vec![8080],
            answering: 1,
            include_maint,
            judged: HashMap::new(),
            by_stream: HashSet::new(),
            seen: HashSet::new(),
            moved_from: BTreeSet::new(),
            stale: None,
        };
        let r = rule(false);
        let at = |a: &str| peer(a);
        assert_eq!(r.decide((2, 7), Some((("be", "s2"), "show sess")), "", at("10.0.0.2:80")), Class::Target);
        assert!(matches!(r.decide((1, 7), Some((("be", "s1"), "show fd")), "", at("10.0.0.1:80")), Class::OtherServer(_)));
        assert_eq!(rule(true).decide((1, 7), Some((("be", "s1"), "show fd")), "", at("10.0.0.1:80")), Class::Target);
        // Unnamed in the old worker: its one server there; in the current worker: ambiguous.
        assert_eq!(r.decide((2, 7), None, "no table", at("10.0.0.2:80")), Class::Target);
        assert!(matches!(r.decide((1, 7), None, "no table", at("10.0.0.2:80")), Class::Ambiguous(_)));
        // A process never asked: ambiguous.
        assert!(matches!(r.decide((3, 7), Some((("be", "s2"), "show sess")), "", at("10.0.0.2:80")), Class::Ambiguous(_)));
    }

    #[test]
    fn an_unnamed_connection_is_the_only_server_there() {
        let config = vec![server("be", "s1", "10.0.0.1", 80), server("be", "s2", "10.0.0.1", 80)];
        assert!(only_server_at(&config, peer("10.0.0.1:80"), &[]).is_none());
        assert_eq!(only_server_at(&config[..1], peer("10.0.0.1:80"), &[]).map(|s| s.name.as_str()), Some("s1"));
        // Maybe there (an offset): not sure, not taken.
        let offset = vec![server("be", "s1", "10.0.0.1", 1000)];
        assert!(only_server_at(&offset, peer("10.0.0.1:9080"), &[8080]).is_none());
        // Any port (0): not sure either.
        let any = vec![server("be", "s1", "10.0.0.1", 0)];
        assert!(only_server_at(&any, peer("10.0.0.1:43210"), &[8080]).is_none());
    }

    /// What a hostile review found taken for `moved` on a healthy load balancer.
    #[test]
    fn healthy_connections_away_from_the_printed_address_are_not_moved() {
        let cur_by = |named, by, p: &str, current: &[ServerState]| {
            judge(named, by, peer(p), (current, false), current, &[8080])
        };
        // server-template / DNS slots reordered by a reload: A is still be's server (srv2).
        let old = vec![server("be", "srv1", "10.0.0.1", 80), server("be", "srv2", "10.0.0.2", 80)];
        let cur = vec![server("be", "srv1", "10.0.0.2", 80), server("be", "srv2", "10.0.0.1", 80)];
        assert_eq!(class(("be", "srv1"), "10.0.0.1:80", &old, &cur), None);
        // A transparent server (0.0.0.0: the client's destination).
        let t = vec![server("bt", "t1", "0.0.0.0", 9002)];
        assert_eq!(class(("bt", "t1"), "127.0.0.12:9002", &t, &t), None);
        assert_eq!(class(("bt", "t1"), "127.0.0.12:9002", &t.clone(), &t), None);
        // `tcp-check connect port 9101` (not printed): same host, named by show fd.
        let c = vec![server("be", "s1", "127.0.0.11", 9001)];
        assert_eq!(cur_by(("be", "s1"), NamedBy::Fd, "127.0.0.11:9101", &c), None);
        assert_eq!(class(("be", "s1"), "127.0.0.11:9101", &c.clone(), &c), None, "an old worker's check");
        // `tcp-check connect addr 10.9.9.9`: another host, but no stream.
        assert_eq!(cur_by(("be", "s1"), NamedBy::Fd, "10.9.9.9:9001", &c), None);
        // A port offset behind a rewritten destination port: same host.
        let o = vec![server("bp", "p1", "127.0.0.13", 1000)];
        assert_eq!(class(("bp", "p1"), "127.0.0.13:1500", &o, &o), None);
        assert_eq!(class(("bp", "p1"), "127.0.0.13:1500", &o.clone(), &o), None);
        // What does move: a runtime `set server addr` (a stream to the old host)...
        let now = vec![server("be", "s1", "10.0.0.9", 9001)];
        assert_eq!(cur_by(("be", "s1"), NamedBy::Stream, "127.0.0.11:9001", &now), Some(Lingers::Moved));
        // ... and a reload that changed only the port (the old worker's configuration says where).
        let port_changed = vec![server("be", "s1", "127.0.0.11", 9002)];
        assert_eq!(class(("be", "s1"), "127.0.0.11:9001", &c, &port_changed), Some(Lingers::Moved));
        // The run judges alike: a check in the current worker is no target.
        let rule = SweepRule {
            configs: HashMap::from([(1, c.clone())]),
            current: c.clone(),
            listening: vec![8080],
            answering: 1,
            include_maint: false,
            judged: HashMap::new(),
            by_stream: HashSet::new(),
            seen: HashSet::new(),
            moved_from: BTreeSet::new(),
            stale: None,
        };
        assert!(matches!(rule.decide((1, 7), Some((("be", "s1"), "show fd")), "", peer("127.0.0.11:9101")), Class::OtherServer(_)));
    }

    /// An old worker of a version printing SERVER/BACKEND in `show fd`: the
    /// run orients the pair by that worker's configuration, as the sweep does.
    #[test]
    fn an_old_workers_fd_pair_is_oriented_by_its_configuration() {
        let old = vec![server("be", "s1", "10.0.0.1", 80), server("be", "s2", "10.0.0.2", 80)];
        let current = vec![server("be", "s1", "10.0.0.1", 80)];
        let rule = SweepRule {
            configs: HashMap::from([(1, current.clone()), (2, old)]),
            current,
            listening: vec![8080],
            answering: 1,
            include_maint: false,
            judged: HashMap::new(),
            by_stream: HashSet::new(),
            seen: HashSet::new(),
            moved_from: BTreeSet::new(),
            stale: None,
        };
        assert_eq!(rule.decide((2, 7), Some((("s2", "be"), "show fd")), "", peer("10.0.0.2:80")), Class::Target);
        assert_eq!(rule.decide((2, 7), Some((("be", "s2"), "show fd")), "", peer("10.0.0.2:80")), Class::Target);
    }

    /// The run re-reads fewer tables than the sweep (`show fd <fd>` for a few
    /// sockets): a socket a stream named at the sweep is still a stream's, and
    /// one the sweep found lingering that the run would leave is ambiguous.
    #[test]
    fn the_run_keeps_what_the_sweep_learnt() {
        let current = vec![server("be", "a", "10.0.0.9", 80)];
        let rule = SweepRule {
            configs: HashMap::from([(1, current.clone())]),
            current,
            listening: vec![8080],
            answering: 1,
            include_maint: false,
            judged: HashMap::from([(7, Lingers::Moved), (8, Lingers::Moved)]),
            by_stream: HashSet::from([7, 8]),
            seen: HashSet::new(),
            moved_from: BTreeSet::new(),
            stale: None,
        };
        let at = peer("10.0.0.1:80");
        assert_eq!(rule.decide((1, 7), Some((("be", "a"), "show fd")), "", at), Class::Target);
        assert!(matches!(rule.decide((1, 9), Some((("be", "a"), "show fd")), "", at), Class::OtherServer(_)));
        assert!(
            matches!(rule.decide((1, 8), Some((("be", "zz"), "show fd")), "", at), Class::Ambiguous(w) if w.contains("sweep found it moved"))
        );
    }

    /// A server moved back during the run to the address the sweep took for
    /// its old one: a new stream there is judged by the configuration now,
    /// never by the sweep's (a wrong kill before a third review). What cannot
    /// be read again leaves only what the sweep judged decidable.
    #[test]
    fn the_run_judges_new_sockets_by_the_configuration_now() {
        let swept = vec![server("be", "a", "10.0.0.9", 80)];
        let mut rule = SweepRule {
            configs: HashMap::from([(1, swept.clone())]),
            current: swept,
            listening: vec![8080],
            answering: 1,
            include_maint: false,
            judged: HashMap::from([(7, Lingers::Moved)]),
            by_stream: HashSet::from([7]),
            seen: HashSet::new(),
            moved_from: BTreeSet::new(),
            stale: None,
        };
        let at = peer("10.0.0.1:80");
        assert_eq!(rule.decide((1, 9), Some((("be", "a"), "show sess")), "", at), Class::Target);
        rule.refresh(Ok(vec![server("be", "a", "10.0.0.1", 80)]));
        assert!(matches!(rule.decide((1, 9), Some((("be", "a"), "show sess")), "", at), Class::OtherServer(_)));
        // Seen moving: a connection `show fd` alone names at its old address is its old traffic.
        let was = peer("10.0.0.9:80");
        assert_eq!(rule.decide((1, 11), Some((("be", "a"), "show fd")), "", was), Class::Target);
        assert!(matches!(rule.decide((1, 11), Some((("be", "a"), "show fd")), "", peer("10.0.0.9:81")), Class::OtherServer(_)));
        // The sweep's socket there: it was to the old address, now it is not: said.
        assert!(matches!(rule.decide((1, 7), Some((("be", "a"), "show sess")), "", at), Class::Ambiguous(_)));
        rule.refresh(Err("no answer".into()));
        assert!(matches!(rule.decide((1, 9), Some((("be", "a"), "show sess")), "", at), Class::Ambiguous(w) if w.contains("no answer")));
    }

    /// Streams that may connect again: an old worker's of a removed server
    /// (also a port-0 one: doubted, nowhere to watch), and the current
    /// worker's retries of a server it moved.
    #[test]
    fn socketless_streams_are_doubted() {
        let old = vec![
            server("be", "a", "10.0.0.1", 80),
            server("be", "p0", "10.0.0.2", 0),
            server("be", "p1", "10.0.0.3", 0),
            server("be", "t", "0.0.0.0", 0),
        ];
        let current = vec![server("be", "x", "10.0.0.5", 80), server("be", "p1", "10.0.0.4", 0)];
        let mut t = Tables::default();
        for s in ["a", "p0", "p1", "t"] {
            t.socketless.insert(("be".into(), s.into()));
        }
        let tables = HashMap::from([(2, t), (1, Tables::default())]);
        let configs = HashMap::from([(1, current.clone()), (2, old)]);
        let moved = BTreeMap::from([(("be".to_string(), "x".to_string()), peer("10.0.0.7:80"))]);
        let got = socketless(&tables, &configs, (&current, &[8080]), 1, &moved);
        let got: Vec<_> =
            got.iter().map(|s| (s.pid, s.server.1.as_str(), s.class, s.address, s.retrying_only)).collect();
        assert_eq!(
            got,
            vec![
                (1, "x", Lingers::Moved, Some(peer("10.0.0.7:80")), true),
                (2, "a", Lingers::Gone, Some(peer("10.0.0.1:80")), false),
                (2, "p0", Lingers::Gone, Some(peer("10.0.0.2:0")), false),
                (2, "p1", Lingers::Moved, Some(peer("10.0.0.3:0")), false),
                (2, "t", Lingers::Gone, None, false),
            ]
        );
    }

    /// A current-worker connection `show fd` alone names is the moved
    /// server's old traffic only at the exact address a stream of that server
    /// showed, and only while neither it nor another of its backend is there.
    #[test]
    fn a_streams_old_address_proves_an_idle_connection_there() {
        let cur = vec![server("be", "s", "10.0.0.2", 80), server("be2", "t", "10.0.0.1", 80)];
        let from = BTreeSet::from([(("be".to_string(), "s".to_string()), peer("10.0.0.1:80"))]);
        let proven = |p: &str, srv: &str, c: &[ServerState]| proven_old_address(&from, ("be", srv), peer(p), (c, c), &[8000]);
        assert!(proven("10.0.0.1:80", "s", &cur), "another backend's server there is no proof against it");
        assert!(!proven("10.0.0.1:81", "s", &cur), "another port: a check, maybe");
        assert!(!proven("10.0.0.1:80", "u", &cur), "another server's name");
        let back = vec![server("be", "s", "10.0.0.1", 80)];
        assert!(!proven("10.0.0.1:80", "s", &back), "moved back: healthy");
        let slot = vec![server("be", "s", "10.0.0.2", 80), server("be", "v", "10.0.0.1", 80)];
        assert!(!proven("10.0.0.1:80", "s", &slot), "the backend is there now");
    }

    /// A port-offset server a reload moved: the old worker's stream at its
    /// old host, at a listening port plus the offset, is moved; a `show fd`
    /// connection there alone (a check may be anywhere) is not.
    #[test]
    fn a_port_offset_servers_old_place() {
        let old = vec![server("be", "s", "10.0.0.1", 1000)];
        let cur = vec![server("be", "s", "10.0.0.2", 1000)];
        let at = peer("10.0.0.1:9000");
        let by = |b| judge(("be", "s"), b, at, (&old, true), &cur, &[8000]);
        assert_eq!(by(NamedBy::Stream), Some(Lingers::Moved));
        assert_eq!(by(NamedBy::Fd), None);
        assert_eq!(judge(("be", "s"), NamedBy::Stream, peer("10.0.0.1:9999"), (&old, true), &cur, &[8000]), None);
    }
}
