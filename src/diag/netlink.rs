//! A NETLINK_SOCK_DIAG socket: streaming dumps, pipelined and acknowledged
//! destroys, and single unix-socket lookups, over one receive loop.

use std::collections::HashMap;
use std::io;
use std::ops::ControlFlow;

use netlink_sys::protocols::NETLINK_SOCK_DIAG;
use tracing::{debug, trace};

use super::wire::{self, DumpSpec, Reply};
use super::Outcome;
use crate::error::{Error, NetlinkOp, Result};
use crate::socket::TcpSocket;

/// A dump skb is at most 32 KiB (netlink_dump caps max_recvmsg_len); 64 KiB leaves room.
const RECV_BUF: usize = 64 * 1024;
/// Destroys per sendmsg. Every ack must fit in the receive buffer at once, since
/// the kernel queues them all before sendmsg returns.
pub const DESTROY_BATCH: usize = 256;
/// Receive buffer asked for with SO_RCVBUFFORCE (root) so a batch of acks never overflows.
const RCVBUF_FORCE: usize = 4 << 20;

/// A netlink socket for sock_diag, bound to the network namespace of the
/// thread that opened it and connected to the kernel, so that no other
/// process can feed it replies.
pub struct SockDiag {
    sock: netlink_sys::Socket,
    seq: u32,
    buf: Vec<u8>,
    out: Vec<u8>,
}

/// Whether a dump ran to its end without the kernel flagging it inconsistent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DumpStatus {
    /// The dump is a consistent view.
    Complete,
    /// NLM_F_DUMP_INTR was set: the caller must dump again before acting.
    Interrupted,
}

/// How a receive loop ended.
enum Received {
    /// The handler said it had everything.
    Finished,
    /// The kernel dropped messages (ENOBUFS) and nothing more is queued.
    Overrun,
}

impl SockDiag {
    /// Opens a sock_diag socket in the calling thread's network namespace.
    pub fn open() -> Result<SockDiag> {
        let mut sock = netlink_sys::Socket::new(NETLINK_SOCK_DIAG).map_err(|e| Error::netlink(NetlinkOp::Socket, e))?;
        sock.bind_auto().map_err(|e| Error::netlink(NetlinkOp::Bind, e))?;
        // Only the kernel (port 0) may send to us from now on: another process in
        // the namespace that guessed our port id gets ECONNREFUSED, so it cannot
        // forge a DONE or an ack.
        sock.connect(&netlink_sys::SocketAddr::new(0, 0)).map_err(|e| Error::netlink(NetlinkOp::Connect, e))?;
        // Acks without a copy of the request: smaller, so more fit in the buffer.
        let _ = sock.set_cap_ack(true);
        if nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::RcvBufForce, &RCVBUF_FORCE).is_err() {
            // Unprivileged: the normal limit (rmem_max) holds ~250 small acks.
            let _ = sock.set_rx_buf_sz(RCVBUF_FORCE);
        }
        Ok(SockDiag::from_socket(sock))
    }

    /// Wraps an already-open socket, for tests that feed crafted replies
    /// through the real receive loop (e.g. one end of a datagram socketpair).
    pub fn from_socket(sock: netlink_sys::Socket) -> SockDiag {
        SockDiag { sock, seq: 0, buf: vec![0; RECV_BUF], out: Vec::with_capacity(DESTROY_BATCH * 72) }
    }

    /// The netlink port id the kernel gave this socket.
    #[cfg(any(test, feature = "testing"))]
    pub fn port_id(&self) -> Result<u32> {
        let mut addr = netlink_sys::SocketAddr::new(0, 0);
        self.sock.get_address(&mut addr).map_err(|e| Error::netlink(NetlinkOp::GetSockName, e))?;
        Ok(addr.port_number())
    }

    /// Sets SO_RCVBUF, for tests of lost acks (the kernel drops what does not fit).
    #[cfg(any(test, feature = "testing"))]
    pub fn set_recv_buffer(&self, bytes: usize) -> Result<()> {
        self.sock.set_rx_buf_sz(bytes).map_err(|e| Error::netlink(NetlinkOp::SetSockOpt, e))
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn send_all(&mut self) -> Result<()> {
        let n = self.sock.send(&self.out, 0).map_err(|e| Error::netlink(NetlinkOp::Send, e))?;
        if n != self.out.len() {
            return Err(Error::netlink(NetlinkOp::Send, io::Error::other(format!("short send: {n} of {}", self.out.len()))));
        }
        Ok(())
    }

    /// The one receive loop: reads datagrams and hands every reply to `handle`
    /// until it breaks. After ENOBUFS (messages were dropped) it drains what is
    /// still queued without blocking, then reports the overrun.
    fn receive(&mut self, mut handle: impl FnMut(Reply) -> ControlFlow<()>) -> Result<Received> {
        let mut flags = 0;
        loop {
            let mut slice = &mut self.buf[..];
            let n = match self.sock.recv(&mut slice, flags) {
                Ok(n) => n.min(self.buf.len()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    debug!("netlink receive buffer overflowed: the kernel dropped replies");
                    flags = libc::MSG_DONTWAIT;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && flags != 0 => return Ok(Received::Overrun),
                Err(e) => return Err(Error::netlink(NetlinkOp::Recv, e)),
            };
            let mut finished = false;
            wire::decode_each(&self.buf[..n], |reply| {
                if !finished && handle(reply).is_break() {
                    finished = true;
                }
            })?;
            if finished {
                return Ok(Received::Finished);
            }
        }
    }

    /// Dumps the TCP sockets `spec` asks for, calling `each` for every one. The
    /// whole dump is read before the caller may act on it (destroying while a
    /// dump runs makes the kernel skip sockets). A dump the kernel ends with an
    /// error (NLMSG_DONE carrying an errno, or NLMSG_ERROR) is an error.
    pub fn dump(&mut self, spec: &DumpSpec<'_>, mut each: impl FnMut(TcpSocket)) -> Result<DumpStatus> {
        let seq = self.next_seq();
        self.out.clear();
        wire::encode_dump(&mut self.out, spec, seq)?;
        self.send_all()?;
        let mut status = DumpStatus::Complete;
        let mut failed = 0;
        let received = self.receive(|reply| match reply {
            Reply::Socket { seq: s, mut socket, interrupted } if s == seq => {
                if interrupted {
                    status = DumpStatus::Interrupted;
                }
                socket.protocol = spec.protocol;
                each(socket);
                ControlFlow::Continue(())
            }
            Reply::Done { seq: s, interrupted, errno } if s == seq => {
                if interrupted {
                    status = DumpStatus::Interrupted;
                }
                failed = errno;
                ControlFlow::Break(())
            }
            Reply::Error { seq: s, errno } if s == seq => {
                failed = errno;
                ControlFlow::Break(())
            }
            other => {
                trace!(?other, "ignoring a stale netlink message");
                ControlFlow::Continue(())
            }
        })?;
        if let Received::Overrun = received {
            return Err(Error::netlink(NetlinkOp::Dump, io::Error::from_raw_os_error(libc::ENOBUFS)));
        }
        if failed != 0 {
            return Err(Error::netlink(NetlinkOp::Dump, io::Error::from_raw_os_error(failed)));
        }
        Ok(status)
    }

    /// Destroys `sockets` (as dumped: cookie-exact), many per sendmsg, and
    /// returns one outcome per socket in order: [`Outcome::Destroyed`],
    /// [`Outcome::AlreadyGone`] (ENOENT), [`Outcome::Failed`] or
    /// [`Outcome::Unacknowledged`] (the ack was lost; never counted as success).
    pub fn destroy(&mut self, sockets: &[&TcpSocket]) -> Result<Vec<Outcome>> {
        let mut results = Vec::with_capacity(sockets.len());
        for chunk in sockets.chunks(DESTROY_BATCH) {
            results.extend(self.destroy_batch(chunk)?);
        }
        Ok(results)
    }

    fn destroy_batch(&mut self, sockets: &[&TcpSocket]) -> Result<Vec<Outcome>> {
        self.out.clear();
        let mut index: HashMap<u32, usize> = HashMap::with_capacity(sockets.len());
        for (i, s) in sockets.iter().enumerate() {
            let seq = self.next_seq();
            index.insert(seq, i);
            wire::encode_destroy(&mut self.out, s, seq);
        }
        self.send_all()?;
        let mut results = vec![Outcome::Unacknowledged; sockets.len()];
        let mut pending = sockets.len();
        if pending == 0 {
            return Ok(results);
        }
        // An overrun leaves the rest Unacknowledged: the next dump tells.
        self.receive(|reply| {
            let (seq, outcome) = match reply {
                Reply::Ack { seq } => (seq, Outcome::Destroyed),
                Reply::Error { seq, errno: libc::ENOENT } => (seq, Outcome::AlreadyGone),
                Reply::Error { seq, errno } => (seq, Outcome::Failed(errno)),
                _ => return ControlFlow::Continue(()),
            };
            if let Some(&i) = index.get(&seq) {
                if results[i] == Outcome::Unacknowledged {
                    pending -= 1;
                }
                results[i] = outcome;
            }
            if pending == 0 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })?;
        Ok(results)
    }

    /// The inode of the peer of the unix socket with inode `inode` (in this
    /// socket's namespace), or `None` when it has no peer or does not exist.
    pub fn unix_peer(&mut self, inode: u32) -> Result<Option<u32>> {
        let seq = self.next_seq();
        self.out.clear();
        wire::encode_unix_peer(&mut self.out, inode, seq);
        self.send_all()?;
        let mut peer = None;
        let mut failed = 0;
        self.receive(|reply| match reply {
            Reply::Unix { seq: s, inode: i, peer: p } if s == seq && i == inode => {
                peer = (p != 0).then_some(p);
                ControlFlow::Continue(())
            }
            // A single-socket query ends with an ack or an error, not with DONE.
            Reply::Ack { seq: s } if s == seq => ControlFlow::Break(()),
            Reply::Error { seq: s, errno } if s == seq => {
                failed = errno;
                ControlFlow::Break(())
            }
            Reply::Done { seq: s, .. } if s == seq => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        })?;
        match failed {
            0 => Ok(peer),
            libc::ENOENT => Ok(None),
            e => Err(Error::netlink(NetlinkOp::UnixLookup, io::Error::from_raw_os_error(e))),
        }
    }
}
