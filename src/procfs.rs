//! What /proc says about processes: which socket inodes they hold (and under
//! which fd), their parents, pid namespaces and command lines, and a network
//! namespace's TCP socket counters.
//!
//! Socket inodes are global (sockfs), so owners can be found across network
//! namespaces as long as /proc shows the processes.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use serde::Serialize;

use crate::error::{Error, Result};

/// A process holding a socket open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Owner {
    /// Its pid (in the pid namespace sockkill runs in).
    pub pid: u32,
    /// The process's `comm` (short command name).
    pub command: String,
}

/// A process, pinned by its start time so that a reused pid is never taken
/// for it during a long run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Process {
    /// The pid (in the pid namespace sockkill runs in).
    pub pid: u32,
    start: u64,
}

/// One line of /proc/PID/stat, after the command name.
fn stat_fields(pid: u32) -> io::Result<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    let (_, rest) = stat.rsplit_once(')').ok_or_else(|| io::Error::other("unreadable stat"))?;
    Ok(rest.split_whitespace().map(str::to_string).collect())
}

fn process_error(pid: u32, e: io::Error, path: &str) -> Error {
    match e.kind() {
        io::ErrorKind::NotFound => Error::NoProcess { pid },
        _ => Error::Process { pid, path: path.into(), source: e },
    }
}

fn unreadable_stat(pid: u32) -> Error {
    Error::Process { pid, path: format!("/proc/{pid}/stat").into(), source: io::Error::other("unreadable") }
}

impl Process {
    /// The process with this pid now. Errors when there is none.
    pub fn open(pid: u32) -> Result<Process> {
        let fields = stat_fields(pid).map_err(|e| process_error(pid, e, &format!("/proc/{pid}/stat")))?;
        // starttime is field 22 of stat, the 20th after the command name.
        let start = fields
            .get(19)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| unreadable_stat(pid))?;
        Ok(Process { pid, start })
    }

    /// When it started, in clock ticks since boot (`starttime` of /proc/PID/stat).
    pub fn start_ticks(&self) -> u64 {
        self.start
    }

    /// Whether this very process (not a later one with its pid) still runs
    /// (a zombie, exited but not yet reaped, does not).
    pub fn alive(&self) -> bool {
        stat_fields(self.pid).is_ok_and(|f| {
            let running = f.first().is_some_and(|state| state != "Z" && state != "X");
            running && f.get(19).and_then(|s| s.parse::<u64>().ok()) == Some(self.start)
        })
    }

    /// `(fd, inode)` of every socket among its open descriptors, or `None`
    /// when it has exited (or its pid now belongs to another process): then it
    /// holds nothing. Errors only when /proc refuses to show its descriptors.
    pub fn socket_fds(&self) -> Result<Option<Vec<(u32, u32)>>> {
        let dir = PathBuf::from(format!("/proc/{}/fd", self.pid));
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(process_error(self.pid, e, &dir.display().to_string())),
        };
        // A process that exits while we read simply yields fewer fds.
        let fds: Vec<(u32, u32)> = entries
            .flatten()
            .filter_map(|e| {
                let fd = e.file_name().to_str()?.parse().ok()?;
                Some((fd, parse_socket_link(&fs::read_link(e.path()).ok()?)?))
            })
            .collect();
        // Read, then check it is still the same process: a pid reused during the
        // read would otherwise lend us another process's sockets.
        Ok(self.alive().then_some(fds))
    }

    /// The short command name (empty when it cannot be read).
    pub fn command(&self) -> String {
        command(self.pid)
    }
}

fn parse_socket_link(target: &std::path::Path) -> Option<u32> {
    target.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

#[cfg(any(test, feature = "testing"))]
/// The socket inodes among `pid`'s open file descriptors. Errors when the
/// process does not exist or its fds cannot be read.
pub fn socket_inodes(pid: u32) -> Result<HashSet<u32>> {
    let p = Process::open(pid)?;
    let fds = p.socket_fds()?.ok_or(Error::NoProcess { pid })?;
    Ok(fds.into_iter().map(|(_, inode)| inode).collect())
}

/// The short command name of `pid` (empty when it cannot be read).
pub fn command(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm")).map(|s| s.trim_end().to_string()).unwrap_or_default()
}

/// The command line of `pid`, one argument per element (empty when unreadable).
pub fn cmdline(pid: u32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect()
        })
        .unwrap_or_default()
}

/// The parent pid of `pid`, from /proc/PID/stat.
pub fn parent_pid(pid: u32) -> Result<u32> {
    stat_fields(pid)
        .map_err(|e| process_error(pid, e, &format!("/proc/{pid}/stat")))?
        .get(1)
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| unreadable_stat(pid))
}

/// `pid`'s pid in each nested pid namespace, outermost (ours) first, innermost
/// (the process's own) last: the `NSpid:` line of /proc/PID/status.
pub fn nspid(pid: u32) -> Option<Vec<u32>> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    line.split_whitespace().map(|p| p.parse().ok()).collect()
}

/// The inode of `pid`'s namespace of kind `kind` (`net`, `pid`, `mnt`...).
pub fn namespace_inode(pid: u32, kind: &str) -> Result<u64> {
    let path = PathBuf::from(format!("/proc/{pid}/ns/{kind}"));
    fs::metadata(&path).map(|m| m.ino()).map_err(|e| process_error(pid, e, &path.display().to_string()))
}

/// Every pid currently in /proc.
pub fn all_pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|d| d.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

/// Maps socket inodes to the processes holding them, for the inodes in `wanted`.
/// Scans every process's fds: expensive on a busy host, so only done on request.
pub fn owners_of(wanted: &HashSet<u32>) -> HashMap<u32, Vec<Owner>> {
    let mut map: HashMap<u32, Vec<Owner>> = HashMap::new();
    if wanted.is_empty() {
        return map;
    }
    for pid in all_pids() {
        let Ok(p) = Process::open(pid) else { continue };
        let Ok(Some(fds)) = p.socket_fds() else { continue };
        let mut comm = None;
        for (_, inode) in fds.into_iter().filter(|(_, i)| wanted.contains(i)) {
            let command = comm.get_or_insert_with(|| command(pid)).clone();
            let owners = map.entry(inode).or_default();
            if !owners.iter().any(|o| o.pid == pid) {
                owners.push(Owner { pid, command });
            }
        }
    }
    map
}

/// A namespace's TCP socket counters (`/proc/net/sockstat` and `sockstat6`),
/// opened inside that namespace: the files stay bound to it, and every
/// [`SockStat::read`] shows the current counts.
#[derive(Debug)]
pub struct SockStat {
    v4: fs::File,
    v6: fs::File,
}

/// Counts from [`SockStat::read`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpCounts {
    /// Full IPv4 TCP sockets (listeners included; TIME-WAIT and request sockets not).
    pub inuse4: u64,
    /// Full IPv6 TCP sockets, IPv4-mapped ones included.
    pub inuse6: u64,
    /// TIME-WAIT sockets of both families.
    pub tw: u64,
    /// Hashed (bound) IPv4 UDP sockets, when the kernel says.
    pub udp4: Option<u64>,
    /// Hashed IPv6 UDP sockets (IPv4-mapped ones included), when the kernel says.
    pub udp6: Option<u64>,
}

impl SockStat {
    /// Opens the counters of the calling thread's network namespace.
    pub fn open() -> io::Result<SockStat> {
        Ok(SockStat {
            v4: fs::File::open("/proc/thread-self/net/sockstat")?,
            v6: fs::File::open("/proc/thread-self/net/sockstat6")?,
        })
    }

    /// Reads the current counts; `None` when they cannot be read or parsed.
    pub fn read(&self) -> Option<TcpCounts> {
        use std::os::unix::fs::FileExt;
        let text = |f: &fs::File| {
            let mut buf = [0u8; 1024];
            let n = f.read_at(&mut buf, 0).ok()?;
            String::from_utf8(buf[..n].to_vec()).ok()
        };
        let (v4, v6) = (text(&self.v4)?, text(&self.v6)?);
        parse_sockstat(&v4, &v6)
    }
}

/// Parses `TCP: inuse N orphan N tw N ...`, `TCP6: inuse N`, and the `UDP:`/`UDP6:` lines.
pub fn parse_sockstat(v4: &str, v6: &str) -> Option<TcpCounts> {
    let field = |text: &str, line: &str, name: &str| -> Option<u64> {
        let rest = text.lines().find_map(|l| l.strip_prefix(line))?;
        let mut it = rest.split_whitespace();
        while let Some(k) = it.next() {
            let v = it.next()?;
            if k == name {
                return v.parse().ok();
            }
        }
        None
    };
    Some(TcpCounts {
        inuse4: field(v4, "TCP:", "inuse")?,
        tw: field(v4, "TCP:", "tw")?,
        inuse6: field(v6, "TCP6:", "inuse")?,
        udp4: field(v4, "UDP:", "inuse"),
        udp6: field(v6, "UDP6:", "inuse"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_socket_links() {
        assert_eq!(parse_socket_link("socket:[12345]".as_ref()), Some(12345));
        assert_eq!(parse_socket_link("pipe:[12345]".as_ref()), None);
        assert_eq!(parse_socket_link("/dev/null".as_ref()), None);
        assert_eq!(parse_socket_link("socket:[]".as_ref()), None);
    }

    #[test]
    fn parses_sockstat() {
        let v4 = "sockets: used 5\nTCP: inuse 3 orphan 0 tw 2 alloc 4 mem 1\nUDP: inuse 0 mem 0\n";
        let v6 = "TCP6: inuse 7\nUDP6: inuse 0\n";
        assert_eq!(
            parse_sockstat(v4, v6),
            Some(TcpCounts { inuse4: 3, inuse6: 7, tw: 2, udp4: Some(0), udp6: v6.contains("UDP6").then_some(0) })
        );
        assert_eq!(parse_sockstat("TCP: inuse x", v6), None);
        assert_eq!(parse_sockstat("", ""), None);
    }

    #[test]
    fn reads_the_live_counters_of_this_namespace() {
        // A listener of our own shows in the counters we read.
        let before = SockStat::open().unwrap().read().expect("sockstat parses");
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let after = SockStat::open().unwrap().read().unwrap();
        assert!(after.inuse4 >= 1, "{after:?}");
        assert!(after.inuse4 + 1 >= before.inuse4, "{before:?} {after:?}");
        drop(l);
    }

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = Process::open(me).unwrap();
        assert!(p.alive());
        let fds = p.socket_fds().unwrap().unwrap();
        let ours = {
            use std::os::fd::AsRawFd;
            l.as_raw_fd() as u32
        };
        assert!(fds.iter().any(|(fd, inode)| *fd == ours && *inode != 0), "{fds:?}");
        assert!(!command(me).is_empty());
        assert!(parent_pid(me).is_ok());
        assert_eq!(nspid(me).and_then(|v| v.first().copied()), Some(me));
        assert!(namespace_inode(me, "net").is_ok());
        assert!(!cmdline(me).is_empty());
        assert!(socket_inodes(u32::MAX).is_err());
        // A process that is gone holds nothing (no error).
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = Process::open(child.id());
        child.wait().unwrap();
        if let Ok(gone) = gone {
            assert_eq!(gone.socket_fds().unwrap(), None);
            assert!(!gone.alive());
        }
    }
}
