//! list / kill / verify, built from one collect path: a kernel-filtered dump per
//! family, re-checked in user space, then (for a kill) cookie-exact destroys
//! in batches, and re-dumps until nothing matches.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::{debug, info, warn};

use crate::audit::AuditLog;
use crate::diag::{bytecode, socket::DESTROY_BATCH, DestroyResult, DiagSocket, DumpStatus};
use crate::error::{Error, Result};
use crate::filter::{Family, Filter, TcpState};
use crate::netns::Netns;
use crate::procfs::{self, Owner, SockStat};
use crate::sock::Socket;

/// How often a dump flagged NLM_F_DUMP_INTR is retried before giving up.
const MAX_DUMP_RETRIES: usize = 5;

/// A sock_diag session in one network namespace: two netlink sockets (the
/// families are dumped, and large destroy sets destroyed, on both cores) and
/// the namespace's socket counters.
pub struct Engine {
    diag: [DiagSocket; 2],
    /// `None` when /proc cannot tell: then every family is always dumped.
    stat: Option<SockStat>,
    audit: Option<Arc<AuditLog>>,
}

/// Destroy sets smaller than this are not worth a second thread.
const PARALLEL_DESTROY_MIN: usize = 2 * DESTROY_BATCH;

/// A filter made ready for the kernel: bytecode compiled once, families chosen.
#[derive(Debug, Clone)]
pub struct Query {
    filter: Filter,
    bytecode: Vec<u8>,
    families: Vec<u8>,
}

impl Query {
    /// Validates `filter` and compiles it.
    pub fn new(filter: Filter) -> Result<Query> {
        filter.validate()?;
        let bytecode = bytecode::compile(&filter);
        if bytecode.len() > u16::MAX as usize - 8 {
            return Err(Error::InvalidFilter("too many --dst/--src/--dport/--sport values".into()));
        }
        let only_v6 = |nets: &[ipnet::IpNet]| !nets.is_empty() && nets.iter().all(|n| matches!(n, ipnet::IpNet::V6(_)));
        // The AF_INET6 dump also returns IPv4-mapped sockets, so IPv4 needs both
        // dumps; pure IPv6 needs only the second one.
        let families = if filter.family == Some(Family::V6) || only_v6(&filter.dst) || only_v6(&filter.src) {
            vec![libc::AF_INET6 as u8]
        } else {
            vec![libc::AF_INET as u8, libc::AF_INET6 as u8]
        };
        Ok(Query { filter, bytecode, families })
    }

    /// The filter this query was built from.
    pub fn filter(&self) -> &Filter {
        &self.filter
    }
}

/// What became of one socket in a kill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Dry run: it would have been destroyed.
    WouldDestroy,
    Destroyed,
    /// ENOENT: it was gone before the destroy reached it (closed, or a new socket on its 4-tuple).
    AlreadyGone,
    /// The kernel refused; see `errno`.
    Failed,
    /// No ack came back (receive buffer overflow); the verification dump tells whether it is gone.
    Unacknowledged,
}

/// One socket a kill acted on.
#[derive(Debug, Clone)]
pub struct Acted {
    pub socket: Socket,
    pub outcome: Outcome,
    /// Which destroy pass acted on it (0 for a dry run).
    pub pass: u32,
    /// Milliseconds since the start of the kill when the ack came back.
    pub at_ms: u64,
    /// The errno of a failed destroy (JSON: `error`, as text).
    pub errno: Option<i32>,
}

impl Serialize for Acted {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(None)?;
        self.socket.serialize_fields(&mut map)?;
        map.serialize_entry("outcome", &self.outcome)?;
        map.serialize_entry("pass", &self.pass)?;
        map.serialize_entry("at_ms", &self.at_ms)?;
        if let Some(e) = self.errno {
            map.serialize_entry("error", &errno_text(e))?;
        }
        map.end()
    }
}

/// Options of [`Engine::kill`].
#[derive(Debug, Clone)]
pub struct KillOptions {
    /// Walk the same path but destroy nothing.
    pub dry_run: bool,
    /// Dump again after destroying to report what still matches.
    pub verify: bool,
    /// Dump + destroy passes before giving up on what still matches.
    pub max_passes: u32,
    /// Look up owning processes (scans /proc).
    pub processes: bool,
    /// Refuse, destroying nothing, when the first dump matches more than this.
    pub max: Option<usize>,
    /// Keep destroying new matching connections until this long after the
    /// start (`--for`), one kernel-filtered dump per `interval`.
    pub window: Option<Duration>,
    pub interval: Duration,
}

impl Default for KillOptions {
    fn default() -> Self {
        KillOptions {
            dry_run: false,
            verify: true,
            max_passes: 3,
            processes: false,
            max: None,
            window: None,
            interval: Duration::from_millis(100),
        }
    }
}

/// The result of a kill (or dry run).
#[derive(Debug, Clone, Default, Serialize)]
pub struct KillReport {
    pub dry_run: bool,
    /// Every socket acted on, in order; a dry run lists what it would destroy.
    pub sockets: Vec<Acted>,
    /// What still matched at the end; `None` when not verified.
    pub remaining: Option<Vec<Socket>>,
    pub summary: KillSummary,
}

/// Counts of a [`KillReport`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct KillSummary {
    /// Sockets matching at the first dump.
    pub matched: usize,
    /// Sockets that matched only in a later pass (connections made during the kill).
    pub new_during_kill: usize,
    pub destroyed: usize,
    pub already_gone: usize,
    pub failed: usize,
    pub unacknowledged: usize,
    /// Sockets matching at the end (`null` when not verified).
    pub remaining: Option<usize>,
    /// Of those, sockets of the first dump that survived.
    pub remaining_original: Option<usize>,
    /// Of those, connections that appeared during the kill.
    pub remaining_new: Option<usize>,
    pub passes: u32,
    pub verified: bool,
    /// A signal stopped the kill early.
    pub interrupted: bool,
    pub duration_ms: u64,
}

impl KillReport {
    /// 0 when nothing matching is known to remain, 1 otherwise (dry run: 1 when anything matched).
    pub fn exit_code(&self) -> i32 {
        let s = &self.summary;
        if self.dry_run {
            return if s.matched > 0 { 1 } else { 0 };
        }
        let clean = match s.remaining {
            Some(n) => n == 0,
            None => s.failed == 0 && s.unacknowledged == 0,
        };
        if clean && s.failed == 0 && !s.interrupted {
            0
        } else {
            1
        }
    }
}

/// Stops a kill between batches when set (e.g. by SIGINT/SIGTERM).
pub static CANCEL: AtomicBool = AtomicBool::new(false);

impl Engine {
    /// Opens a session in `netns`, or in the calling thread's namespace.
    pub fn open(netns: Option<&Netns>) -> Result<Engine> {
        // Everything bound to the namespace is opened on the thread that entered it.
        let here = || -> Result<Engine> {
            Ok(Engine { diag: [DiagSocket::open()?, DiagSocket::open()?], stat: SockStat::open().ok(), audit: None })
        };
        match netns {
            Some(ns) => ns.run(here)?,
            None => here(),
        }
    }

    /// Records every destroyed socket in `log` (appended per batch, synced at
    /// the end of each [`Engine::destroy`]).
    pub fn set_audit(&mut self, log: Option<Arc<AuditLog>>) {
        self.audit = log;
    }

    /// The families of `query` worth walking now: a family with no TCP socket in
    /// the namespace (and no TIME-WAIT asked for, or none existing) is skipped,
    /// since each family's dump walks the whole shared hash table.
    fn families_to_dump(&self, query: &Query) -> Vec<u8> {
        let Some(c) = self.stat.as_ref().and_then(SockStat::read) else { return query.families.clone() };
        let tw = query.filter.states.contains(TcpState::TimeWait) && c.tw > 0;
        query
            .families
            .iter()
            .copied()
            .filter(|&af| tw || if af == libc::AF_INET as u8 { c.inuse4 > 0 } else { c.inuse6 > 0 })
            .collect()
    }

    /// Every socket matching `query` now: one dump per family, redone when the
    /// kernel flags it inconsistent, re-checked in user space (address, port,
    /// state, family, and process inodes for `--pid`).
    pub fn collect(&mut self, query: &Query) -> Result<Vec<Socket>> {
        let started = Instant::now();
        let inodes = pid_inodes(&query.filter.pids)?;
        let families = self.families_to_dump(query);
        let [d0, d1] = &mut self.diag;
        let mut out = match families.as_slice() {
            [] => Vec::new(),
            [af] => dump_family(d0, *af, query, inodes.as_ref())?,
            [af0, af1, ..] => std::thread::scope(|scope| {
                let other = scope.spawn(|| dump_family(d1, *af1, query, inodes.as_ref()));
                let mut first = dump_family(d0, *af0, query, inodes.as_ref())?;
                let second = other.join().map_err(|_| Error::Other("dump thread panicked".into()))??;
                first.extend(second);
                Ok::<_, Error>(first)
            })?,
        };
        if let Some(inodes) = inodes {
            for s in &mut out {
                s.owners = inodes.get(&s.inode).map(|v| v.clone().into_boxed_slice());
            }
        }
        debug!(?families, matched = out.len(), elapsed_us = started.elapsed().as_micros() as u64, "collected");
        Ok(out)
    }

    /// Lists matching sockets, with their owners when `processes` is set.
    pub fn list(&mut self, query: &Query, processes: bool) -> Result<Vec<Socket>> {
        let mut sockets = self.collect(query)?;
        if processes {
            fill_owners(&mut sockets);
        }
        Ok(sockets)
    }

    /// Destroys `sockets` exactly as dumped, batch by batch, logging each one
    /// destroyed. Stops early (leaving the rest out of the returned list) when
    /// [`CANCEL`] is set. EPERM, and EOPNOTSUPP on a socket that is not in
    /// TIME-WAIT, stop everything with an error: they will not get better.
    ///
    /// The first socket goes alone, so missing permission or kernel support is
    /// learnt before anything else is touched; a large rest is split over both
    /// netlink sockets on two threads.
    pub fn destroy(
        &mut self,
        mut sockets: Vec<Socket>,
        pass: u32,
        started: Instant,
        already: usize,
    ) -> Result<Vec<Acted>> {
        let t0 = Instant::now();
        let [d0, d1] = &mut self.diag;
        let audit = self.audit.as_deref();
        let rest = sockets.split_off(sockets.len().min(1));
        let mut acted = Vec::with_capacity(sockets.len() + rest.len());
        let probe = destroy_batches(d0, sockets, pass, started, already, audit);
        // Whatever happens next, what was destroyed is on disk first.
        let synced = || audit.map_or(Ok(()), AuditLog::sync);
        acted.extend(probe.inspect_err(|_| drop(synced()))?);
        let done = already + acted.iter().filter(|a| a.outcome == Outcome::Destroyed).count();
        let result = if rest.len() < PARALLEL_DESTROY_MIN {
            destroy_batches(d0, rest, pass, started, done, audit).map(|a| acted.extend(a))
        } else {
            let mut left = rest;
            let right = left.split_off(left.len() / 2);
            let (a, b) = std::thread::scope(|scope| {
                let other = scope.spawn(|| destroy_batches(d1, right, pass, started, done, audit));
                let a = destroy_batches(d0, left, pass, started, done, audit);
                (a, other.join())
            });
            // A half cut short by CANCEL leaves fewer results than sockets,
            // which is how the caller sees the kill was interrupted.
            match (a, b) {
                (Ok(a), Ok(Ok(b))) => {
                    acted.extend(a);
                    acted.extend(b);
                    Ok(())
                }
                (Err(e), _) | (_, Ok(Err(e))) => Err(e),
                (_, Err(_)) => Err(Error::Other("destroy thread panicked".into())),
            }
        };
        synced()?;
        result?;
        debug!(count = acted.len(), elapsed_us = t0.elapsed().as_micros() as u64, "destroy pass done");
        Ok(acted)
    }

    /// One destroy pass over `found`, recorded in `report`. Sockets the kernel
    /// refused before are not retried (if still there, the next dump reports
    /// them); a pass cut short by a signal marks the report interrupted.
    fn destroy_pass(
        &mut self,
        found: Vec<Socket>,
        pass: u32,
        started: Instant,
        refused: &mut HashSet<u64>,
        report: &mut KillReport,
    ) -> Result<()> {
        let targets: Vec<Socket> = found.into_iter().filter(|s| !refused.contains(&s.cookie())).collect();
        let wanted = targets.len();
        let destroyed_so_far = report.sockets.iter().filter(|a| a.outcome == Outcome::Destroyed).count();
        let acted = self.destroy(targets, pass, started, destroyed_so_far)?;
        refused.extend(acted.iter().filter(|a| a.outcome == Outcome::Failed).map(|a| a.socket.cookie()));
        report.summary.interrupted |= acted.len() < wanted;
        report.sockets.extend(acted);
        Ok(())
    }

    /// Destroys every socket matching `query`: collect, check `--max`, destroy,
    /// re-dump, and again (up to `max_passes`) until nothing matches.
    pub fn kill(&mut self, query: &Query, opts: &KillOptions) -> Result<KillReport> {
        let started = Instant::now();
        let mut report = KillReport { dry_run: opts.dry_run, ..KillReport::default() };
        let mut current = self.collect(query)?;
        if let Some(max) = opts.max {
            if current.len() > max {
                return Err(Error::TooMany { matched: current.len(), max });
            }
        }
        if opts.processes {
            fill_owners(&mut current);
        }
        report.summary.matched = current.len();
        let original: HashSet<u64> = current.iter().map(|s| s.cookie()).collect();
        if opts.dry_run {
            report.sockets = current
                .iter()
                .map(|s| Acted { socket: s.clone(), outcome: Outcome::WouldDestroy, pass: 0, at_ms: 0, errno: None })
                .collect();
            report.remaining = Some(current);
            return Ok(finish(report, &original, started));
        }
        let mut seen = original.clone();
        // Sockets the kernel refused for good: not retried, but still reported if they remain.
        let mut refused: HashSet<u64> = HashSet::new();
        let mut pass = 0;
        loop {
            let wanted = current.iter().filter(|s| !refused.contains(&s.cookie())).count();
            if wanted == 0 || pass == opts.max_passes {
                report.remaining = Some(current);
                break;
            }
            pass += 1;
            self.destroy_pass(current, pass, started, &mut refused, &mut report)?;
            if !opts.verify {
                break;
            }
            current = self.collect(query)?;
            note_new(&mut current, &mut seen, &mut report.summary, opts.processes);
            if report.summary.interrupted {
                report.remaining = Some(current);
                break;
            }
        }
        if let (Some(window), true) = (opts.window, opts.verify) {
            // Enforcement window: whatever matches from now on is new; one dump per interval.
            while !report.summary.interrupted && started.elapsed() < window {
                std::thread::sleep(opts.interval.min(window.saturating_sub(started.elapsed())));
                if CANCEL.load(Ordering::Relaxed) {
                    report.summary.interrupted = true;
                    break;
                }
                let mut found = self.collect(query)?;
                note_new(&mut found, &mut seen, &mut report.summary, opts.processes);
                if found.iter().all(|s| refused.contains(&s.cookie())) {
                    continue;
                }
                pass += 1;
                self.destroy_pass(found, pass, started, &mut refused, &mut report)?;
            }
            report.remaining = Some(self.collect(query)?);
        }
        report.summary.passes = pass;
        Ok(finish(report, &original, started))
    }
}

/// One family's dump, redone when the kernel flags it inconsistent, re-checked
/// in user space (address, port, state, family, and `--pid` inodes).
fn dump_family(
    diag: &mut DiagSocket,
    family: u8,
    query: &Query,
    inodes: Option<&HashMap<u32, Vec<Owner>>>,
) -> Result<Vec<Socket>> {
    let f = &query.filter;
    let mut out = Vec::new();
    for tries in 1..=MAX_DUMP_RETRIES {
        let status = diag.dump(family, f.states, &query.bytecode, |s| {
            if f.matches(&s) && inodes.is_none_or(|set| set.contains_key(&s.inode)) {
                out.push(s);
            }
        })?;
        if status == DumpStatus::Complete {
            return Ok(out);
        }
        out.clear();
        debug!(family, tries, "dump interrupted (NLM_F_DUMP_INTR); dumping again");
    }
    Err(Error::Other(format!(
        "the kernel interrupted the socket dump {MAX_DUMP_RETRIES} times (table changing too fast); nothing was acted on from it"
    )))
}

/// Destroys `sockets` on one netlink socket, `DESTROY_BATCH` per sendmsg,
/// logging each outcome; stops before a batch when [`CANCEL`] is set.
fn destroy_batches(
    diag: &mut DiagSocket,
    sockets: Vec<Socket>,
    pass: u32,
    started: Instant,
    already: usize,
    audit: Option<&AuditLog>,
) -> Result<Vec<Acted>> {
    let total = sockets.len();
    let mut acted = Vec::with_capacity(total);
    let mut destroyed = already;
    let mut it = sockets.into_iter();
    loop {
        let batch: Vec<Socket> = it.by_ref().take(DESTROY_BATCH).collect();
        if batch.is_empty() {
            break;
        }
        if CANCEL.load(Ordering::Relaxed) {
            warn!(left = total - acted.len(), "interrupted: stopping before the next batch");
            break;
        }
        let refs: Vec<&Socket> = batch.iter().collect();
        let results = diag.destroy(&refs)?;
        let at_ms = started.elapsed().as_millis() as u64;
        let batch_start = acted.len();
        let mut fatal = None;
        for (sock, res) in batch.into_iter().zip(results) {
            let (outcome, errno) = match res {
                DestroyResult::Destroyed => (Outcome::Destroyed, None),
                DestroyResult::Gone => (Outcome::AlreadyGone, None),
                DestroyResult::Unknown => (Outcome::Unacknowledged, None),
                DestroyResult::Failed(libc::EPERM) => {
                    fatal.get_or_insert(Error::NoPermission { destroyed });
                    (Outcome::Failed, Some(libc::EPERM))
                }
                DestroyResult::Failed(libc::EOPNOTSUPP) if sock.state != Some(TcpState::TimeWait) => {
                    fatal.get_or_insert(Error::DestroyUnsupported { destroyed });
                    (Outcome::Failed, Some(libc::EOPNOTSUPP))
                }
                DestroyResult::Failed(e) => (Outcome::Failed, Some(e)),
            };
            log_outcome(&sock, outcome, errno);
            if outcome == Outcome::Destroyed {
                destroyed += 1;
            }
            acted.push(Acted { socket: sock, outcome, pass, at_ms, errno });
        }
        // The batch's destroys happened: record them before anything can stop us.
        if let Some(a) = audit {
            a.record(&acted[batch_start..])?;
        }
        if let Some(e) = fatal {
            return Err(e);
        }
    }
    Ok(acted)
}

/// Counts the sockets in `current` not seen before as new arrivals (looking up
/// their owners when asked) and remembers them.
fn note_new(current: &mut [Socket], seen: &mut HashSet<u64>, summary: &mut KillSummary, processes: bool) {
    let mut new: Vec<&mut Socket> = current.iter_mut().filter(|s| !seen.contains(&s.cookie())).collect();
    if new.is_empty() {
        return;
    }
    debug!(count = new.len(), "new matching connections appeared during the kill");
    if processes {
        let owners = owners_map(new.iter().map(|s| s.inode));
        for s in &mut new {
            s.owners = Some(owners.get(&s.inode).cloned().unwrap_or_default().into_boxed_slice());
        }
    }
    summary.new_during_kill += new.len();
    seen.extend(new.iter().map(|s| s.cookie()));
}

fn finish(mut report: KillReport, original: &HashSet<u64>, started: Instant) -> KillReport {
    let s = &mut report.summary;
    for a in &report.sockets {
        match a.outcome {
            Outcome::Destroyed => s.destroyed += 1,
            Outcome::AlreadyGone => s.already_gone += 1,
            Outcome::Failed => s.failed += 1,
            Outcome::Unacknowledged => s.unacknowledged += 1,
            Outcome::WouldDestroy => {}
        }
    }
    if let Some(rem) = &report.remaining {
        let orig = rem.iter().filter(|r| original.contains(&r.cookie())).count();
        s.remaining = Some(rem.len());
        s.remaining_original = Some(orig);
        s.remaining_new = Some(rem.len() - orig);
        s.verified = !report.dry_run;
    }
    s.duration_ms = started.elapsed().as_millis() as u64;
    report
}

fn log_outcome(s: &Socket, outcome: Outcome, errno: Option<i32>) {
    let owner = s.owners_text();
    match outcome {
        Outcome::Destroyed => info!(
            local = %s.local(), peer = %s.peer(), state = %s.state_name(), cookie = s.cookie(), inode = s.inode,
            owner = %owner, "destroyed"
        ),
        Outcome::AlreadyGone => {
            debug!(local = %s.local(), peer = %s.peer(), cookie = s.cookie(), "already gone")
        }
        Outcome::Failed => warn!(
            local = %s.local(), peer = %s.peer(), state = %s.state_name(), cookie = s.cookie(),
            error = %errno.map(errno_text).unwrap_or_default(), "destroy failed"
        ),
        Outcome::Unacknowledged => {
            warn!(local = %s.local(), peer = %s.peer(), cookie = s.cookie(), "destroy not acknowledged")
        }
        Outcome::WouldDestroy => {}
    }
}

/// `ENOENT (No such file or directory)` style text for an errno.
pub fn errno_text(errno: i32) -> String {
    let e = nix::errno::Errno::from_raw(errno);
    format!("{e:?} ({})", e.desc())
}

/// For `--pid`: inode -> owner of every socket those processes hold. `None` without pids.
fn pid_inodes(pids: &[u32]) -> Result<Option<HashMap<u32, Vec<Owner>>>> {
    if pids.is_empty() {
        return Ok(None);
    }
    let mut map: HashMap<u32, Vec<Owner>> = HashMap::new();
    for &pid in pids {
        let command = procfs::command(pid);
        for inode in procfs::socket_inodes(pid)? {
            map.entry(inode).or_default().push(Owner { pid, command: command.clone() });
        }
    }
    Ok(Some(map))
}

fn owners_map(inodes: impl Iterator<Item = u32>) -> HashMap<u32, Vec<Owner>> {
    let wanted: HashSet<u32> = inodes.filter(|i| *i != 0).collect();
    procfs::owners_of(&wanted)
}

fn fill_owners(sockets: &mut [Socket]) {
    let owners = owners_map(sockets.iter().map(|s| s.inode));
    for s in sockets {
        s.owners = Some(owners.get(&s.inode).cloned().unwrap_or_default().into_boxed_slice());
    }
}
