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
    fn reads_own_process() {
        let me = std::process::id();
        assert!(socket_inodes(me).is_ok());
        assert!(!command(me).is_empty());
        assert!(parent_pid(me).is_ok());
        assert!(socket_inodes(u32::MAX).is_err());
    }
}
