//! Which processes are HAProxy's: the one answering the stats socket, its
//! master, the master CLI, and every worker (old ones included) — from the
//! host or from inside HAProxy's own pid and network namespaces alike.
//!
//! The answering process is found as the holder of the other end of our own
//! connection to the stats socket (unix sock_diag gives the peer's inode, inet
//! sock_diag the TCP 4-tuple), never from the pid `show info` prints: that pid
//! is in HAProxy's pid namespace. Pids the master CLI lists are mapped to ours
//! through `NSpid` in /proc/PID/status, only within the master's pid namespace,
//! and only for haproxy processes.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::api::{Api, Endpoint, LocalEnd};
use super::parse::{self, Info};
use crate::cancel::Cancel;
use crate::diag::SockDiag;
use crate::engine::{Engine, Query};
use crate::error::{Error, HaproxyError, Result};
use crate::filter::{Filter, PortRange, StateSet};
use crate::netns::{self, Netns};
use crate::procfs::{self, Process};

/// An HAProxy process, by our pid and by HAProxy's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Worker {
    /// Its pid in sockkill's pid namespace.
    pub pid: u32,
    /// Its pid as HAProxy sees it (what `show proc` and `@!<pid>` use).
    pub inner_pid: u32,
}

/// HAProxy's processes, as far as they could be found.
#[derive(Debug, Clone)]
pub struct Topology {
    /// The worker answering `--socket`.
    pub answering: Worker,
    /// Its master, when it runs in master-worker mode.
    pub master: Option<u32>,
    /// The master CLI, given or found in the master's command line.
    pub master_cli: Option<Endpoint>,
    /// Every process to act for (the answering worker, old workers...).
    pub workers: Vec<Worker>,
    /// The HAProxy version of each worker the master CLI lists (our pid).
    pub versions: HashMap<u32, String>,
}

/// Whether `pid` runs HAProxy (its command name is `haproxy`, exactly: a
/// prefix would also take e.g. a test runner called `haproxy_e2e-...`).
pub fn is_haproxy(pid: u32) -> bool {
    procfs::command(pid) == "haproxy"
}

/// Every HAProxy process /proc shows.
pub fn haproxy_processes() -> Vec<u32> {
    procfs::all_pids().into_iter().filter(|&p| is_haproxy(p)).collect()
}

/// HAProxy's own pid for `pid` (the innermost of NSpid).
fn inner_pid(pid: u32) -> u32 {
    procfs::nspid(pid).and_then(|v| v.last().copied()).unwrap_or(pid)
}

/// Which of `procs` holds the socket with inode `inode`.
fn holder_of(procs: &[u32], inode: u32) -> Option<u32> {
    procs.iter().copied().find(|&pid| {
        Process::open(pid)
            .ok()
            .and_then(|p| p.socket_fds().ok().flatten())
            .is_some_and(|fds| fds.iter().any(|(_, i)| *i == inode))
    })
}

/// The inode of HAProxy's end of our connection (retried until HAProxy has
/// accepted it: before that, no process holds it).
fn peer_inode(local: LocalEnd) -> Result<Option<u32>> {
    match local {
        LocalEnd::Unix { inode } => SockDiag::open()?.unix_peer(inode),
        LocalEnd::Tcp { local, peer } => tcp_peer_inode(local, peer),
    }
}

/// HAProxy's end of a TCP connection from `local` to `peer`, looked up in our
/// network namespace and in each one HAProxy processes live in.
fn tcp_peer_inode(local: SocketAddr, peer: SocketAddr) -> Result<Option<u32>> {
    let filter = Filter {
        src: vec![peer.ip().into()],
        sport: vec![PortRange::one(peer.port())],
        dst: vec![local.ip().into()],
        dport: vec![PortRange::one(local.port())],
        states: StateSet::ALL,
        ..Filter::default()
    };
    let query = Query::new(filter)?;
    let mut namespaces: BTreeMap<u64, Option<Netns>> = BTreeMap::new();
    namespaces.insert(netns::current_netns_inode()?, None);
    for pid in haproxy_processes() {
        if let Ok(ino) = procfs::namespace_inode(pid, "net") {
            if let std::collections::btree_map::Entry::Vacant(e) = namespaces.entry(ino) {
                if let Ok(ns) = Netns::open(&pid.to_string()) {
                    e.insert(Some(ns));
                }
            }
        }
    }
    for ns in namespaces.values() {
        let Ok(mut engine) = Engine::open(ns.as_ref()) else { continue };
        if let Some(s) = engine.collect(&query)?.into_iter().find(|s| s.inode != 0) {
            return Ok(Some(s.inode));
        }
    }
    Ok(None)
}

/// The HAProxy process holding the other end of our connection `local`
/// (retried until HAProxy has accepted it: before that, no process holds it);
/// `likely` is looked at first (a worker's fd table may be long).
fn holder_of_peer(local: LocalEnd, patience: Duration, likely: Option<u32>) -> Result<Option<u32>> {
    let end = Instant::now() + patience;
    loop {
        let mut procs = haproxy_processes();
        procs.sort_by_key(|&p| Some(p) != likely);
        if procs.is_empty() {
            return Ok(None);
        }
        if let Some(inode) = peer_inode(local)? {
            if let Some(pid) = holder_of(&procs, inode) {
                return Ok(Some(pid));
            }
        }
        if Instant::now() >= end {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends `show info` to `api` and finds the process answering it (see the
/// module docs). Only through the connection: the pid `show info` prints
/// may be any process's here (another pid namespace, a remote HAProxy behind
/// a port mapping), so a process found by that pid alone is never taken for it.
pub fn identify(api: &Api) -> Result<(Info, Option<Worker>)> {
    // HAProxy accepts within milliseconds.
    let patience = api.timeout().min(Duration::from_secs(1));
    let (answer, holder) = api.identify("show info", |local| holder_of_peer(local, patience, None))?;
    let info = parse::parse_info(&answer)?;
    let holder = match holder {
        Ok(h) => h,
        Err(e) => {
            warn!(%e, "cannot look up the process answering the stats socket");
            None
        }
    };
    let answering = holder.map(|pid| Worker { pid, inner_pid: inner_pid(pid) });
    if let Some(w) = answering {
        if w.inner_pid != info.pid {
            warn!(
                pid = w.pid,
                inner = w.inner_pid,
                show_info = info.pid,
                "`show info` names another pid than the process answering"
            );
        }
        info!(version = %info.version, pid = w.pid, haproxy_pid = w.inner_pid, endpoint = %api.endpoint(), "connected to HAProxy");
    }
    Ok((info, answering))
}

/// The master CLI's path as seen from here: through the master's root (a
/// container's filesystem) when the path is there.
fn resolve_master_path(master: u32, path: &str) -> PathBuf {
    use std::os::unix::fs::FileTypeExt;
    let is_socket = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.file_type().is_socket());
    let via = if path.starts_with('/') {
        PathBuf::from(format!("/proc/{master}/root{path}"))
    } else {
        PathBuf::from(format!("/proc/{master}/cwd/{path}"))
    };
    if is_socket(&via) {
        via
    } else {
        PathBuf::from(path)
    }
}

/// Our pids of the HAProxy processes in pid namespace `pid_ns`, by HAProxy's own pid.
fn pids_in_namespace(pid_ns: u64) -> HashMap<u32, u32> {
    haproxy_processes()
        .into_iter()
        .filter(|&p| procfs::namespace_inode(p, "pid").is_ok_and(|ns| ns == pid_ns))
        .map(|p| (inner_pid(p), p))
        .collect()
}

/// What to look for: `--pid`, the master CLI, the master's children, or the
/// answering worker alone. `shown_pid` is the pid `show info` printed: with
/// `--pid` and no process found through the connection, the one of them
/// whose own pid it is answers.
pub fn discover(
    (answering, shown_pid): (Option<Worker>, u32),
    master_socket: Option<&str>,
    pids: &[u32],
    api_timeout: Duration,
    cancel: Option<&Cancel>,
) -> Result<Topology> {
    let master = answering.map(|a| a.pid).and_then(|p| procfs::parent_pid(p).ok()).filter(|&p| is_haproxy(p));
    let master_cli = match (master_socket, master) {
        (Some(s), _) => Some(Endpoint::parse(s)),
        (None, Some(m)) => parse::master_cli_arg(&procfs::cmdline(m)).map(|a| match Endpoint::parse(&a) {
            Endpoint::Unix(p) => Endpoint::Unix(resolve_master_path(m, &p.to_string_lossy())),
            tcp => tcp,
        }),
        (None, None) => None,
    };
    if let Some(cli) = &master_cli {
        debug!(%cli, "master CLI");
    }
    let answering = match answering {
        Some(a) => a,
        None if !pids.is_empty() => {
            let shown: Vec<u32> = pids.iter().copied().filter(|&p| inner_pid(p) == shown_pid).collect();
            match shown.as_slice() {
                [pid] => Worker { pid: *pid, inner_pid: shown_pid },
                _ => {
                    return Err(HaproxyError::Topology(format!(
                        "the process answering the stats socket is not found through the connection, and not one of --pid has the pid `show info` prints ({shown_pid})"
                    ))
                    .into())
                }
            }
        }
        None => {
            return Err(HaproxyError::Topology(
                "cannot tell which process answers the stats socket (no HAProxy process here holds the other end of the connection: a remote HAProxy or a port mapping?): give --pid".into(),
            )
            .into())
        }
    };
    let mut versions = HashMap::new();
    let workers = if !pids.is_empty() {
        pids.iter()
            .map(|&pid| Process::open(pid).map(|_| Worker { pid, inner_pid: inner_pid(pid) }))
            .collect::<Result<Vec<_>>>()?
    } else if let Some(cli) = &master_cli {
        workers_of_master(cli, master, answering, api_timeout, cancel, &mut versions)?
    } else if let Some(m) = master {
        let mut children: Vec<u32> = procfs::all_pids()
            .into_iter()
            .filter(|&p| procfs::parent_pid(p).ok() == Some(m) && is_haproxy(p))
            .collect();
        children.sort_unstable();
        children.into_iter().map(|pid| Worker { pid, inner_pid: inner_pid(pid) }).collect()
    } else {
        vec![answering]
    };
    let mut workers = workers;
    if pids.is_empty() && !workers.iter().any(|w| w.pid == answering.pid) {
        workers.push(answering);
    }
    let mut topo = Topology { answering, master, master_cli, workers, versions };
    if pids.is_empty() && topo.master.is_none() {
        // No master lists a daemon-mode reload's old processes: taken as old
        // workers without a master CLI (their connections are never judged clean).
        let strays = strays(&topo);
        if !strays.is_empty() {
            warn!(?strays, "HAProxy processes of the same configuration that no master lists (a daemon-mode -sf reload's old processes?)");
        }
        topo.workers.extend(strays.into_iter().map(|pid| Worker { pid, inner_pid: inner_pid(pid) }));
    }
    Ok(topo)
}

/// The workers the master CLI `cli` lists, refused unless it is the master
/// of the worker answering the stats socket: another instance's master
/// would make its current worker pass for one of our old workers (its
/// servers absent from our configuration, its connections gone).
fn workers_of_master(
    cli: &Endpoint,
    master: Option<u32>,
    answering: Worker,
    api_timeout: Duration,
    cancel: Option<&Cancel>,
    versions: &mut HashMap<u32, String>,
) -> Result<Vec<Worker>> {
    let api = Api::new(cli.clone(), api_timeout, cancel.cloned())?;
    let patience = api_timeout.min(Duration::from_secs(1));
    let (answer, holder) = api.identify("show proc", |local| holder_of_peer(local, patience, master))?;
    let procs = parse::parse_proc(&answer)?;
    let other = |why: String| -> Error {
        HaproxyError::Topology(format!("the master CLI at {cli} is not the master of the worker answering the stats socket (our pid {}): {why}", answering.pid)).into()
    };
    match (holder.ok().flatten(), master) {
        (Some(h), Some(m)) if h != m => return Err(other(format!("it is process {h}'s, the worker's master is {m}"))),
        (Some(h), None) => return Err(other(format!("it is process {h}'s, the worker has no HAProxy master"))),
        _ => {}
    }
    let ns_of = master.unwrap_or(answering.pid);
    let ours = pids_in_namespace(procfs::namespace_inode(ns_of, "pid")?);
    let mut workers = Vec::new();
    for p in procs.iter().filter(|p| p.kind == "worker") {
        match ours.get(&p.pid) {
            Some(&pid) => {
                workers.push(Worker { pid, inner_pid: p.pid });
                versions.extend(p.version.clone().map(|v| (pid, v)));
            }
            None => warn!(pid = p.pid, "the master CLI lists a worker that is no HAProxy process here; skipped"),
        }
    }
    if !workers.iter().any(|w| w.pid == answering.pid) {
        return Err(other("it does not list that worker".into()));
    }
    Ok(workers)
}

/// The configuration files a command line loads (`-f FILE`, `-fFILE`, and
/// every argument after `--`).
fn config_files(args: &[String]) -> Vec<String> {
    let mut files = Vec::new();
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        if a == "--" {
            files.extend(it.by_ref().cloned());
        } else if a == "-f" {
            files.extend(it.next().cloned());
        } else if let Some(f) = a.strip_prefix("-f") {
            files.push(f.to_string());
        }
    }
    files
}

/// The pids (HAProxy's own) a command line asks to finish or terminate
/// (`-sf PID...`, `-st PID...`): the processes a daemon-mode reload replaced.
fn replaced_pids(args: &[String]) -> Vec<u32> {
    let mut pids = Vec::new();
    let mut it = args.iter().skip(1).peekable();
    while let Some(a) = it.next() {
        if a == "--" {
            break;
        }
        if a == "-sf" || a == "-st" {
            while let Some(p) = it.next_if(|p| !p.starts_with('-')) {
                pids.extend(p.parse::<u32>().ok());
            }
        }
    }
    pids
}

/// Whether a command line only checks a configuration (`-c`) and exits.
fn checks_only(args: &[String]) -> bool {
    args.iter().skip(1).take_while(|a| *a != "--").any(|a| a == "-c")
}

/// What makes `pid`'s configuration the same as another process's: its
/// `-f` and `-C` arguments as written, read from the same root (device and
/// inode of /proc/P/root: a container's own filesystem, a chroot) in the
/// same mount namespace, and, for a relative path, from the same working
/// directory. The files are not opened: a chrooted daemon cannot reach them
/// through its root, and one replaced since (a new inode) is still the one
/// the process was started with. `None` when /proc does not say.
#[derive(Debug, PartialEq, Eq)]
struct ConfigIdentity {
    args: Vec<String>,
    mnt: u64,
    root: (u64, u64),
    cwd: Option<(u64, u64)>,
}

fn config_identity(pid: u32) -> Option<ConfigIdentity> {
    use std::os::unix::fs::MetadataExt;
    let cmdline = procfs::cmdline(pid);
    let files = config_files(&cmdline);
    if files.is_empty() {
        return None;
    }
    let id = |p: String| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let relative = files.iter().any(|f| !f.starts_with('/'));
    let mut args = files;
    args.extend(config_dir(&cmdline));
    Some(ConfigIdentity {
        args,
        mnt: procfs::namespace_inode(pid, "mnt").ok()?,
        root: id(format!("/proc/{pid}/root"))?,
        cwd: if relative { Some(id(format!("/proc/{pid}/cwd"))?) } else { None },
    })
}

/// `-C DIR` (HAProxy changes to it before loading relative files).
fn config_dir(args: &[String]) -> Option<String> {
    let mut it = args.iter().skip(1).take_while(|a| *a != "--");
    while let Some(a) = it.next() {
        if a == "-C" {
            return it.next().map(|d| format!("-C {d}"));
        }
    }
    None
}

/// Clock ticks per second in /proc's start times (USER_HZ: 100 on Linux).
const TICKS: u64 = 100;

/// HAProxy processes of the same instance that the topology does not list —
/// a daemon-mode reload (`haproxy -D -f CFG -sf OLD`) leaves the old process
/// running with no master to list it, still holding its sessions. In the
/// answering worker's network and pid namespaces, never a worker, the master
/// or a configuration check (`-c`), and started before the process naming
/// it:
/// - the pids each process's `-sf`/`-st` replaced, followed from the
///   answering worker back (a reload may change the configuration files);
/// - else an older process (by a second: not a sibling of `nbproc`) loading
///   the same configuration ([`ConfigIdentity`]: two containers sharing
///   namespaces, or two directories' `haproxy.cfg`, are not).
fn strays(topo: &Topology) -> Vec<u32> {
    let me = topo.answering.pid;
    let (Ok(net), Ok(pid_ns)) = (procfs::namespace_inode(me, "net"), procfs::namespace_inode(me, "pid")) else {
        return Vec::new();
    };
    let Ok(me_proc) = Process::open(me) else { return Vec::new() };
    let listed = |p: u32| p == me || Some(p) == topo.master || topo.workers.iter().any(|w| w.pid == p);
    let same_ns = |p: u32| {
        procfs::namespace_inode(p, "net").is_ok_and(|n| n == net)
            && procfs::namespace_inode(p, "pid").is_ok_and(|n| n == pid_ns)
    };
    let started = |p: u32| Process::open(p).ok().map(|q| q.start_ticks());
    let candidates: Vec<u32> = haproxy_processes()
        .into_iter()
        .filter(|&p| !listed(p) && same_ns(p) && !checks_only(&procfs::cmdline(p)))
        .collect();
    let by_inner: HashMap<u32, u32> = candidates.iter().map(|&p| (inner_pid(p), p)).collect();
    let mut found: Vec<u32> = Vec::new();
    // The -sf/-st chain, each replaced process older than the one replacing it.
    let mut todo = vec![(me, me_proc.start_ticks())];
    while let Some((p, start)) = todo.pop() {
        for inner in replaced_pids(&procfs::cmdline(p)) {
            let Some(&q) = by_inner.get(&inner) else { continue };
            if let Some(q_start) = started(q).filter(|&t| t < start && !found.contains(&q)) {
                found.push(q);
                todo.push((q, q_start));
            }
        }
    }
    // An old process whose replacement has exited too (the chain is broken).
    if let Some(mine) = config_identity(me) {
        let older = |p: u32| started(p).is_some_and(|t| t + TICKS <= me_proc.start_ticks());
        for p in candidates {
            if !found.contains(&p) && older(p) && config_identity(p).as_ref() == Some(&mine) {
                found.push(p);
            }
        }
    }
    found.sort_unstable();
    found
}

/// The one network namespace the workers live in (or `--netns`); `None` = ours.
pub fn namespace_of(pids: &[u32], explicit: Option<&str>) -> Result<Option<Netns>> {
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
        return Err(HaproxyError::Topology(format!(
            "the HAProxy processes span several network namespaces ({}): give --pid and --netns",
            list.join(", ")
        ))
        .into());
    }
    let Some((ino, (_, ns))) = seen.into_iter().next() else { return Ok(None) };
    Ok((ino != netns::current_netns_inode()?).then_some(ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn config_files_of_a_command_line() {
        assert_eq!(config_files(&args("haproxy -D -f /etc/h.cfg -f/etc/more.d -sf 12")), vec!["/etc/h.cfg", "/etc/more.d"]);
        assert!(config_files(&args("haproxy -W -S /run/m.sock")).is_empty());
        assert_eq!(config_files(&args("haproxy -D -f a.cfg -- b.cfg -f c.cfg")), vec!["a.cfg", "b.cfg", "-f", "c.cfg"]);
    }

    #[test]
    fn what_a_reload_replaced() {
        assert_eq!(replaced_pids(&args("haproxy -D -f h.cfg -sf 12 13 -p /run/h.pid")), vec![12, 13]);
        assert_eq!(replaced_pids(&args("haproxy -st 7 -f h.cfg")), vec![7]);
        assert!(replaced_pids(&args("haproxy -f h.cfg -- -sf 9")).is_empty());
        assert!(replaced_pids(&args("haproxy -D -f h.cfg")).is_empty());
        assert!(checks_only(&args("haproxy -c -f h.cfg")));
        assert!(!checks_only(&args("haproxy -f h.cfg -- -c")));
        assert_eq!(config_dir(&args("haproxy -C /etc/haproxy -f h.cfg")), Some("-C /etc/haproxy".into()));
        assert_eq!(config_dir(&args("haproxy -f h.cfg -- -C x")), None);
    }

}
