//! Socket owners from /proc: which processes hold which socket inodes.
//!
//! Socket inodes are global (sockfs), so this works across network namespaces
//! as long as /proc shows the processes (same pid namespace).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::path::PathBuf;

use serde::Serialize;

use crate::error::{Error, Result};

/// A process holding a socket open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Owner {
    pub pid: u32,
    /// The process's `comm` (short command name).
    pub command: String,
}

/// The socket inodes among `pid`'s open file descriptors.
///
/// Errors when the process does not exist or its fds cannot be read.
pub fn socket_inodes(pid: u32) -> Result<HashSet<u32>> {
    let dir = PathBuf::from(format!("/proc/{pid}/fd"));
    let entries = fs::read_dir(&dir).map_err(|e| Error::Process {
        pid,
        reason: match e.kind() {
            io::ErrorKind::NotFound => "no such process".to_string(),
            io::ErrorKind::PermissionDenied => format!("cannot read {}: permission denied", dir.display()),
            _ => format!("{}: {e}", dir.display()),
        },
    })?;
    // A process that exits while we read simply yields fewer fds.
    Ok(entries.flatten().filter_map(|e| parse_socket_link(&fs::read_link(e.path()).ok()?)).collect())
}

fn parse_socket_link(target: &std::path::Path) -> Option<u32> {
    target.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// The short command name of `pid` (empty when it cannot be read).
pub fn command(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm")).map(|s| s.trim_end().to_string()).unwrap_or_default()
}

/// The parent pid of `pid`, from /proc/PID/stat.
pub fn parent_pid(pid: u32) -> Result<u32> {
    let path = PathBuf::from(format!("/proc/{pid}/stat"));
    let stat = fs::read_to_string(&path).map_err(|source| Error::Proc { path: path.clone(), source })?;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| Error::Process { pid, reason: format!("unreadable {}", path.display()) })
}

/// Every pid currently in /proc.
pub fn all_pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|d| d.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
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
            let mut buf = vec![0u8; 4096];
            let n = f.read_at(&mut buf, 0).ok()?;
            String::from_utf8(buf[..n].to_vec()).ok()
        };
        let (v4, v6) = (text(&self.v4)?, text(&self.v6)?);
        parse_sockstat(&v4, &v6)
    }
}

/// Parses `TCP: inuse N orphan N tw N ...` and `TCP6: inuse N`.
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
    })
}

/// Maps socket inodes to the processes holding them, for the inodes in `wanted`.
/// Scans every process's fds: expensive on a busy host, so only done on request.
pub fn owners_of(wanted: &HashSet<u32>) -> HashMap<u32, Vec<Owner>> {
    let mut map: HashMap<u32, Vec<Owner>> = HashMap::new();
    if wanted.is_empty() {
        return map;
    }
    for pid in all_pids() {
        let Ok(inodes) = socket_inodes(pid) else { continue };
        let mut comm = None;
        for inode in inodes.intersection(wanted) {
            let command = comm.get_or_insert_with(|| command(pid)).clone();
            map.entry(*inode).or_default().push(Owner { pid, command });
        }
    }
    map
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
        assert_eq!(parse_sockstat(v4, v6), Some(TcpCounts { inuse4: 3, inuse6: 7, tw: 2 }));
        assert_eq!(parse_sockstat("TCP: inuse x", v6), None);
        assert_eq!(parse_sockstat("", ""), None);
        let here = SockStat::open().unwrap().read().unwrap();
        let _ = here.inuse4 + here.inuse6 + here.tw;
    }

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        assert!(socket_inodes(me).is_ok());
        assert!(!command(me).is_empty());
        assert!(parent_pid(me).is_ok());
        assert!(socket_inodes(u32::MAX).is_err());
    }
}
