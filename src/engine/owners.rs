//! Which processes hold which sockets, cheaply enough to ask on every poll.
//!
//! A socket's holder never changes while the socket has an inode (closing the
//! last fd orphans it and its inode reads 0), so each answer is kept by inode:
//! the processes' fd tables are read again only when a socket with an inode
//! never seen before shows up. A steady poll costs a hash lookup per socket,
//! however many fds the processes hold.

use std::collections::{HashMap, HashSet};

use tracing::{debug, info};

use crate::error::Result;
use crate::procfs::{Owner, Process};
use crate::socket::TcpSocket;

/// A process holding a socket, and under which fd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holding {
    /// The holder.
    pub pid: u32,
    /// The fd number in the holder.
    pub fd: u32,
}

/// The sockets a set of processes hold, kept up to date lazily.
#[derive(Debug, Default)]
pub struct Holders {
    procs: Vec<(Process, String)>,
    held: HashMap<u32, Holding>,
    /// Inodes a full read found held by none of the processes.
    not_held: HashSet<u32>,
    /// Processes that exited during the run (they hold nothing).
    exited: Vec<u32>,
}

impl Holders {
    /// Watches `pids`; errors when one does not exist now.
    pub fn new(pids: &[u32]) -> Result<Holders> {
        let mut h = Holders::default();
        for &pid in pids {
            h.add(Process::open(pid)?);
        }
        h.scan()?;
        Ok(h)
    }

    /// Like [`Holders::new`], but a process that has exited since it was
    /// found (an old HAProxy worker ending) is skipped: it holds nothing.
    pub fn of_running(pids: &[u32]) -> Result<Holders> {
        let mut h = Holders::default();
        for &pid in pids {
            match Process::open(pid) {
                Ok(p) => h.add(p),
                Err(crate::error::Error::NoProcess { .. }) => tracing::debug!(pid, "exited before it was watched"),
                Err(e) => return Err(e),
            }
        }
        h.scan()?;
        Ok(h)
    }

    /// Watches one more process (its sockets are read at the next scan).
    pub fn add(&mut self, p: Process) {
        if !self.procs.iter().any(|(q, _)| *q == p) {
            let command = p.command();
            self.procs.push((p, command));
            // An inode none of the old set held may be the newcomer's.
            self.not_held.clear();
        }
    }

    /// Processes that exited since they were first watched (checked now).
    pub fn exited(&mut self) -> &[u32] {
        let (live, gone): (Vec<_>, Vec<_>) = std::mem::take(&mut self.procs).into_iter().partition(|(p, _)| p.alive());
        self.procs = live;
        self.exited.extend(gone.into_iter().map(|(p, _)| p.pid));
        &self.exited
    }

    /// Reads every watched process's fd table again. A process that has exited
    /// (or whose pid now names another process) is dropped, not an error.
    pub fn scan(&mut self) -> Result<()> {
        let mut held = HashMap::with_capacity(self.held.len());
        let mut live = Vec::with_capacity(self.procs.len());
        for (p, command) in std::mem::take(&mut self.procs) {
            match p.socket_fds()? {
                Some(fds) => {
                    held.extend(fds.into_iter().map(|(fd, inode)| (inode, Holding { pid: p.pid, fd })));
                    live.push((p, command));
                }
                None => {
                    info!(pid = p.pid, "process exited: it holds no socket any more");
                    self.exited.push(p.pid);
                }
            }
        }
        self.procs = live;
        self.held = held;
        self.not_held.clear();
        Ok(())
    }

    /// Makes sure every socket in `sockets` with an inode is known: reads the
    /// fd tables again only when one is not. Returns whether it read them.
    pub fn refresh_for<'a, I>(&mut self, sockets: I) -> Result<bool>
    where
        I: IntoIterator<Item = &'a TcpSocket> + Clone,
    {
        let unknown = |i: &u32| *i != 0 && !self.held.contains_key(i) && !self.not_held.contains(i);
        if !sockets.clone().into_iter().any(|s| unknown(&s.inode)) {
            return Ok(false);
        }
        debug!("a socket with an unknown inode: reading the processes' fd tables");
        self.scan()?;
        for s in sockets {
            if s.inode != 0 && !self.held.contains_key(&s.inode) {
                self.not_held.insert(s.inode);
            }
        }
        Ok(true)
    }

    /// Who holds `sock`, as of the last read.
    pub fn holder(&self, sock: &TcpSocket) -> Option<Holding> {
        (sock.inode != 0).then(|| self.held.get(&sock.inode).copied()).flatten()
    }

    /// The sockets process `pid` holds, fd to inode, as of the last read.
    pub fn fds_of(&self, pid: u32) -> HashMap<u32, u32> {
        self.held.iter().filter(|(_, h)| h.pid == pid).map(|(inode, h)| (h.fd, *inode)).collect()
    }

    /// The processes watched and still alive at the last read.
    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(|(p, _)| p.pid).collect()
    }

    /// `sock`'s holder as an [`Owner`] list (for reports and the audit log).
    pub fn owners(&self, sock: &TcpSocket) -> Option<Box<[Owner]>> {
        let h = self.holder(sock)?;
        let command = self.procs.iter().find(|(p, _)| p.pid == h.pid).map(|(_, c)| c.clone()).unwrap_or_default();
        Some(vec![Owner { pid: h.pid, command }].into_boxed_slice())
    }
}
