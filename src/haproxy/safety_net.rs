//! `sockkill haproxy`: ask HAProxy to let go of a server, wait for it, then
//! destroy what its processes still hold to that server, and verify.
//!
//! This module talks to HAProxy and to the engine; it never sees netlink bytes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::{info, warn};

use super::api::{Api, Endpoint};
use super::parse::{self, Info};
use crate::engine::{Acted, Engine, Outcome, Query, CANCEL};
use crate::error::{Error, Result};
use crate::filter::{Filter, PortRange, StateSet};
use crate::netns::{self, Netns};
use crate::procfs;
use crate::sock::Socket;

/// What to do; see `sockkill haproxy --help`.
#[derive(Debug, Clone)]
pub struct Options {
    /// The worker's stats socket (`PATH` or `HOST:PORT`).
    pub socket: String,
    /// The master CLI socket (`-S`), to list workers with `show proc`.
    pub master_socket: Option<String>,
    /// `(backend, server)`.
    pub server: Option<(String, String)>,
    /// The server's address, when given explicitly.
    pub addr: Option<SocketAddr>,
    /// HAProxy processes to act for, instead of discovering them.
    pub pids: Vec<u32>,
    pub netns: Option<String>,
    pub no_shutdown: bool,
    pub dry_run: bool,
    pub grace: Duration,
    pub settle: Duration,
    pub deadline: Duration,
    pub api_timeout: Duration,
    pub poll: Duration,
    /// Keep enforcing (`--for`): not clean before this long after the start.
    pub window: Option<Duration>,
    /// Append one JSON line per destroyed socket here.
    pub audit_log: Option<std::path::PathBuf>,
    /// Recorded in the audit log.
    pub command_line: String,
}

/// A socket HAProxy closed by itself, and when it was first seen gone.
#[derive(Debug, Clone, Serialize)]
pub struct Closed {
    #[serde(flatten)]
    pub socket: Socket,
    pub at_ms: u64,
}

/// The outcome of a safety-net run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub dry_run: bool,
    pub haproxy_version: String,
    /// The HAProxy processes whose sockets were considered.
    pub pids: Vec<u32>,
    pub master_pid: Option<u32>,
    /// `backend/server`, when named.
    pub server: Option<String>,
    pub server_addr: SocketAddr,
    /// State-changing commands sent to HAProxy.
    pub commands_sent: Vec<String>,
    /// Matching sockets at the start.
    pub initial: usize,
    pub closed_by_haproxy: Vec<Closed>,
    /// Every destroy, with pass and time.
    pub destroyed: Vec<Acted>,
    pub remaining: Vec<Socket>,
    /// HAProxy's own session count for the server at the end (`show stat` scur).
    pub scur: Option<u64>,
    /// No matching socket for the settle period.
    pub clean: bool,
    /// When a matching socket was last seen (ms since start).
    pub last_seen_ms: Option<u64>,
    pub interrupted: bool,
    pub duration_ms: u64,
}

impl Report {
    /// 0 = clean, 1 = sockets remain (or, for a dry run, linger now).
    pub fn exit_code(&self) -> i32 {
        if self.clean {
            0
        } else {
            1
        }
    }

    /// Destroyed sockets per pid and state, for the summary.
    pub fn destroyed_by_pid_state(&self) -> BTreeMap<String, BTreeMap<String, usize>> {
        let mut out: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
        for a in self.destroyed.iter().filter(|a| a.outcome == Outcome::Destroyed) {
            let owner = a.socket.owners.as_ref().and_then(|o| o.first()).map_or("?".to_string(), |o| o.pid.to_string());
            *out.entry(owner).or_default().entry(a.socket.state_name().to_string()).or_default() += 1;
        }
        out
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// Runs the safety net. Errors (exit 2) happen before anything is changed or destroyed.
pub fn run(opts: &Options) -> Result<Report> {
    let started = Instant::now();
    let api = Api::new(Endpoint::parse(&opts.socket), opts.api_timeout)?;
    let info = parse::parse_info(&api.command("show info")?)?;
    info!(version = %info.version, pid = info.pid, endpoint = %api.endpoint(), "connected to HAProxy");

    let server_addr = resolve_addr(&api, opts)?;
    // Mapped IPv6 (::ffff:a.b.c.d) stands for the IPv4 address in the filter.
    let server_ip = crate::filter::as_ipv4(server_addr.ip()).map_or(server_addr.ip(), std::net::IpAddr::V4);
    let (pids, master_pid) = haproxy_pids(&info, opts)?;
    let ns = namespace_of(&pids, opts.netns.as_deref())?;
    let mut engine = Engine::open(ns.as_ref())?;
    if !opts.dry_run && !crate::check::has_cap_net_admin() {
        return Err(Error::NoPermission { destroyed: 0 });
    }
    if let (Some(path), false) = (&opts.audit_log, opts.dry_run) {
        let label = ns.as_ref().map(|n| n.label().to_string());
        engine.set_audit(Some(std::sync::Arc::new(crate::audit::AuditLog::open(
            path,
            opts.command_line.clone(),
            label,
        )?)));
    }
    let query = Query::new(Filter {
        dst: vec![server_ip.into()],
        dport: vec![PortRange { lo: server_addr.port(), hi: server_addr.port() }],
        // Any state but LISTEN and TIME-WAIT; never the source address
        // (`source ... usesrc clientip` makes it the client's).
        states: StateSet::DEFAULT,
        pids: pids.clone(),
        ..Filter::default()
    })?;
    let initial = engine.collect(&query)?;

    let mut report = Report {
        dry_run: opts.dry_run,
        haproxy_version: info.version.clone(),
        pids,
        master_pid,
        server: opts.server.as_ref().map(|(b, s)| format!("{b}/{s}")),
        server_addr,
        commands_sent: Vec::new(),
        initial: initial.len(),
        closed_by_haproxy: Vec::new(),
        destroyed: Vec::new(),
        remaining: Vec::new(),
        scur: None,
        clean: false,
        last_seen_ms: None,
        interrupted: false,
        duration_ms: 0,
    };

    if opts.dry_run {
        report.clean = initial.is_empty();
        report.last_seen_ms = (!initial.is_empty()).then_some(0);
        report.remaining = initial;
        report.scur = scur(&api, opts);
        report.duration_ms = ms(started.elapsed());
        return Ok(report);
    }

    if let (Some((b, s)), false) = (&opts.server, opts.no_shutdown) {
        let mut cmds = vec![format!("set server {b}/{s} state maint"), format!("shutdown sessions server {b}/{s}")];
        if parse::version_at_least(&info.version, 3, 0) {
            cmds.push(format!("wait {}ms srv-removable {b}/{s}", ms(opts.grace)));
        }
        for cmd in cmds {
            let answer = api.command(&cmd)?;
            parse::check_answer(&cmd, &answer)?;
            info!(cmd = %cmd, "sent to HAProxy");
            report.commands_sent.push(cmd);
        }
    }

    enforce(&mut engine, &query, opts, started, initial, &mut report)?;
    report.scur = scur(&api, opts);
    report.duration_ms = ms(started.elapsed());
    Ok(report)
}

/// The timeline: poll until `grace`, then destroy in passes; clean once nothing
/// matched for `settle`; give up at `deadline`.
fn enforce(
    engine: &mut Engine,
    query: &Query,
    opts: &Options,
    started: Instant,
    initial: Vec<Socket>,
    report: &mut Report,
) -> Result<()> {
    let mut prev: HashMap<u64, Socket> = initial.into_iter().map(|s| (s.cookie(), s)).collect();
    let mut last_seen = (!prev.is_empty()).then_some(Duration::ZERO);
    let mut ours: HashSet<u64> = HashSet::new();
    let mut pass = 0;
    let window = opts.window.unwrap_or(Duration::ZERO);
    let deadline = opts.deadline.max(window + opts.settle);
    let progress = Progress::new();
    loop {
        let now = started.elapsed();
        let current = engine.collect(query)?;
        let live: HashSet<u64> = current.iter().map(|s| s.cookie()).collect();
        for (cookie, s) in prev.drain() {
            if !live.contains(&cookie) && !ours.contains(&cookie) {
                report.closed_by_haproxy.push(Closed { socket: s, at_ms: ms(now) });
            }
        }
        if !current.is_empty() {
            last_seen = Some(now);
        }
        report.last_seen_ms = last_seen.map(ms);
        let quiet_for = now.saturating_sub(last_seen.unwrap_or(Duration::ZERO));
        progress.show(now, opts, current.len(), quiet_for);
        if current.is_empty() && quiet_for >= opts.settle && now >= window {
            report.clean = true;
            return Ok(());
        }
        if now >= deadline || CANCEL.load(Ordering::Relaxed) {
            report.interrupted = CANCEL.load(Ordering::Relaxed);
            report.remaining = current;
            return Ok(());
        }
        if now >= opts.grace && !current.is_empty() {
            pass += 1;
            let destroyed_before = report.destroyed.iter().filter(|a| a.outcome == Outcome::Destroyed).count();
            let acted = engine.destroy(current, pass, started, destroyed_before)?;
            ours.extend(acted.iter().map(|a| a.socket.cookie()));
            report.destroyed.extend(acted);
            // What a signal left un-acted shows up again in the next collect.
            prev = HashMap::new();
        } else {
            prev = current.into_iter().map(|s| (s.cookie(), s)).collect();
        }
        std::thread::sleep(opts.poll);
    }
}

/// One status line on stderr while waiting, only when stderr is a terminal.
struct Progress(bool);

impl Progress {
    fn new() -> Progress {
        use std::io::IsTerminal;
        Progress(std::io::stderr().is_terminal())
    }

    fn show(&self, now: Duration, opts: &Options, sockets: usize, quiet: Duration) {
        if !self.0 {
            return;
        }
        let phase = if now < opts.grace { "grace" } else { "enforcing" };
        eprint!(
            "\r\x1b[K{phase} {:.1}s (grace {:.1}s, deadline {:.1}s): {sockets} sockets to the server, quiet for {:.1}s",
            now.as_secs_f64(),
            opts.grace.as_secs_f64(),
            opts.deadline.as_secs_f64(),
            quiet.as_secs_f64()
        );
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if self.0 {
            eprint!("\r\x1b[K");
        }
    }
}

fn scur(api: &Api, opts: &Options) -> Option<u64> {
    let (b, s) = opts.server.as_ref()?;
    match api.command("show stat").and_then(|t| parse::parse_stat(&t)) {
        Ok(rows) => rows.into_iter().find(|r| &r.proxy == b && &r.server == s).and_then(|r| r.scur),
        Err(e) => {
            warn!(%e, "cannot read show stat");
            None
        }
    }
}

/// The server's address: `--addr`, else `show servers state` by name.
fn resolve_addr(api: &Api, opts: &Options) -> Result<SocketAddr> {
    let Some((b, s)) = &opts.server else {
        return opts.addr.ok_or_else(|| Error::Haproxy("give --server BACKEND/SERVER or --addr IP:PORT".into()));
    };
    let cmd = format!("show servers state {b}");
    let answer = api.command(&cmd)?;
    parse::check_answer(&cmd, &answer)?;
    let states = parse::parse_servers_state(&answer)?;
    let st = states
        .iter()
        .find(|st| &st.backend == b && &st.name == s)
        .ok_or_else(|| Error::Haproxy(format!("no server {s} in backend {b} (`show servers state {b}`)")))?;
    let named = st.addr.map(|ip| SocketAddr::new(ip, st.port));
    match (opts.addr, named) {
        (Some(given), Some(named)) => {
            if given != named {
                warn!(%given, %named, "--addr differs from HAProxy's address for the server; filtering on --addr");
            }
            Ok(given)
        }
        (Some(given), None) => Ok(given),
        (None, Some(named)) if named.port() != 0 => Ok(named),
        (None, Some(_)) => {
            Err(Error::Haproxy(format!("server {b}/{s} has port 0 (it uses the client's port): give --addr IP:PORT")))
        }
        (None, None) => Err(Error::Haproxy(format!("server {b}/{s} has no address in HAProxy: give --addr IP:PORT"))),
    }
}

fn is_haproxy(pid: u32) -> bool {
    procfs::command(pid) == "haproxy"
}

/// The HAProxy processes to act for: `--pid`, else the master CLI's workers,
/// else the answering worker and, under a master, every HAProxy child of it.
fn haproxy_pids(info: &Info, opts: &Options) -> Result<(Vec<u32>, Option<u32>)> {
    if !opts.pids.is_empty() {
        for &pid in &opts.pids {
            procfs::socket_inodes(pid)?;
        }
        return Ok((opts.pids.clone(), None));
    }
    if let Some(ms) = &opts.master_socket {
        let api = Api::new(Endpoint::parse(ms), opts.api_timeout)?;
        let procs = parse::parse_proc(&api.command("show proc")?)?;
        let master = procs.iter().find(|p| p.kind == "master").map(|p| p.pid);
        let workers: Vec<u32> = procs.iter().filter(|p| p.kind == "worker").map(|p| p.pid).collect();
        if workers.is_empty() {
            return Err(Error::Haproxy("the master CLI lists no workers".into()));
        }
        return Ok((workers, master));
    }
    let pid = info.pid;
    if !is_haproxy(pid) {
        return Err(Error::Haproxy(format!(
            "`show info` names pid {pid}, which is not an haproxy process here (another pid namespace?): give --pid"
        )));
    }
    let parent = procfs::parent_pid(pid)?;
    if parent > 1 && is_haproxy(parent) {
        let mut children: Vec<u32> = procfs::all_pids()
            .into_iter()
            .filter(|&p| procfs::parent_pid(p).ok() == Some(parent) && is_haproxy(p))
            .collect();
        children.sort_unstable();
        if !children.contains(&pid) {
            children.push(pid);
        }
        return Ok((children, Some(parent)));
    }
    Ok((vec![pid], None))
}

/// The one network namespace the processes live in (or `--netns`); `None` = ours.
fn namespace_of(pids: &[u32], explicit: Option<&str>) -> Result<Option<Netns>> {
    if let Some(spec) = explicit {
        return Netns::open(spec).map(Some);
    }
    // One open namespace per distinct inode, kept for use (no second open).
    let mut seen: BTreeMap<u64, (u32, Netns)> = BTreeMap::new();
    for &pid in pids {
        let ns = Netns::open(&pid.to_string())?;
        seen.entry(ns.inode()?).or_insert((pid, ns));
    }
    if seen.len() > 1 {
        let list: Vec<String> = seen.iter().map(|(ino, (pid, _))| format!("pid {pid} in net:[{ino}]")).collect();
        return Err(Error::Haproxy(format!(
            "the HAProxy processes span several network namespaces ({}): give --pid and --netns",
            list.join(", ")
        )));
    }
    let Some((ino, (_, ns))) = seen.into_iter().next() else { return Ok(None) };
    Ok((ino != netns::current_netns_inode()?).then_some(ns))
}
