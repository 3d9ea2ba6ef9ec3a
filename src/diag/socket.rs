//! A NETLINK_SOCK_DIAG socket: streaming dumps and pipelined, acknowledged destroys.

use std::collections::HashMap;
use std::io;

use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket as NlSocket};
use tracing::{debug, trace};

use super::wire::{self, Reply};
use crate::error::{Error, Result};
use crate::filter::StateSet;
use crate::sock::Socket;

/// A dump skb is at most 32 KiB (netlink_dump caps max_recvmsg_len); 64 KiB leaves room.
const RECV_BUF: usize = 64 * 1024;
/// Destroys per sendmsg. Every ack must fit in the receive buffer at once, since
/// the kernel queues them all before sendmsg returns.
pub const DESTROY_BATCH: usize = 256;
/// Receive buffer asked for with SO_RCVBUFFORCE (root) so a batch of acks never overflows.
const RCVBUF_FORCE: usize = 4 << 20;

/// What became of one destroy request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestroyResult {
    /// The kernel destroyed the socket.
    Destroyed,
    /// ENOENT: the socket was gone already (closed, or its cookie belongs to an older socket).
    Gone,
    /// The kernel refused with this errno.
    Failed(i32),
    /// No ack arrived (receive buffer overflow): the outcome is unknown, never counted as success.
    Unknown,
}

/// A netlink socket for sock_diag, bound to the network namespace of the thread that opened it.
pub struct DiagSocket {
    sock: NlSocket,
    seq: u32,
    buf: Vec<u8>,
    out: Vec<u8>,
}

/// Whether a dump ran to its end without the kernel flagging it inconsistent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DumpStatus {
    Complete,
    /// NLM_F_DUMP_INTR was set: the caller must dump again before acting.
    Interrupted,
}

impl DiagSocket {
    /// Opens a sock_diag socket in the calling thread's network namespace.
    pub fn open() -> Result<DiagSocket> {
        let mut sock = NlSocket::new(NETLINK_SOCK_DIAG).map_err(|e| Error::netlink("socket", e))?;
        sock.bind_auto().map_err(|e| Error::netlink("bind", e))?;
        // Acks without a copy of the request: smaller, so more fit in the buffer.
        let _ = sock.set_cap_ack(true);
        if nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::RcvBufForce, &RCVBUF_FORCE).is_err() {
            // Unprivileged: the normal limit (rmem_max) holds ~250 small acks.
            let _ = sock.set_rx_buf_sz(RCVBUF_FORCE);
        }
        Ok(DiagSocket { sock, seq: 0, buf: vec![0; RECV_BUF], out: Vec::with_capacity(DESTROY_BATCH * 72) })
    }

    /// Wraps an already-open socket, for tests that feed crafted replies
    /// through the real receive loop (e.g. one end of a datagram socketpair).
    #[doc(hidden)]
    pub fn from_socket(sock: NlSocket) -> DiagSocket {
        DiagSocket { sock, seq: 0, buf: vec![0; RECV_BUF], out: Vec::new() }
    }

    /// Sets SO_RCVBUF, for tests of lost acks (the kernel drops what does not fit).
    #[doc(hidden)]
    pub fn set_recv_buffer(&self, bytes: usize) -> Result<()> {
        self.sock.set_rx_buf_sz(bytes).map_err(|e| Error::netlink("setsockopt", e))
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn recv(&mut self) -> Result<usize> {
        loop {
            let mut slice = &mut self.buf[..];
            match self.sock.recv(&mut slice, 0) {
                Ok(n) => return Ok(n.min(self.buf.len())),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::netlink("recv", e)),
            }
        }
    }

    fn send_all(&mut self) -> Result<()> {
        let n = self.sock.send(&self.out, 0).map_err(|e| Error::netlink("send", e))?;
        if n != self.out.len() {
            return Err(Error::netlink("send", io::Error::other(format!("short send: {n} of {}", self.out.len()))));
        }
        Ok(())
    }

    /// Dumps the TCP sockets of one family (`libc::AF_INET` or `AF_INET6`) in
    /// `states` that pass `bytecode`, calling `each` for every one. The whole
    /// dump is read before the caller may act on it (destroying while a dump
    /// runs makes the kernel skip sockets).
    pub fn dump(
        &mut self,
        family: u8,
        states: StateSet,
        bytecode: &[u8],
        mut each: impl FnMut(Socket),
    ) -> Result<DumpStatus> {
        let seq = self.next_seq();
        self.out.clear();
        wire::encode_dump(&mut self.out, family, states, bytecode, seq);
        self.send_all()?;
        let mut status = DumpStatus::Complete;
        loop {
            let n = self.recv()?;
            let mut done = false;
            let mut failed = 0;
            wire::decode_each(&self.buf[..n], |reply| match reply {
                Reply::Socket { seq: s, socket, interrupted } if s == seq => {
                    if interrupted {
                        status = DumpStatus::Interrupted;
                    }
                    each(socket);
                }
                Reply::Done { seq: s, interrupted } if s == seq => {
                    if interrupted {
                        status = DumpStatus::Interrupted;
                    }
                    done = true;
                }
                Reply::Ack { seq: s, errno } if s == seq && errno != 0 => failed = errno,
                other => trace!(?other, "ignoring stale netlink message"),
            })?;
            if failed != 0 {
                return Err(Error::netlink("dump", io::Error::from_raw_os_error(failed)));
            }
            if done {
                return Ok(status);
            }
        }
    }

    /// Destroys `sockets` (as dumped: cookie-exact), many per sendmsg, and
    /// returns one result per socket in order.
    pub fn destroy(&mut self, sockets: &[&Socket]) -> Result<Vec<DestroyResult>> {
        let mut results = Vec::with_capacity(sockets.len());
        for chunk in sockets.chunks(DESTROY_BATCH) {
            results.extend(self.destroy_batch(chunk)?);
        }
        Ok(results)
    }

    fn destroy_batch(&mut self, sockets: &[&Socket]) -> Result<Vec<DestroyResult>> {
        self.out.clear();
        let mut index: HashMap<u32, usize> = HashMap::with_capacity(sockets.len());
        for (i, s) in sockets.iter().enumerate() {
            let seq = self.next_seq();
            index.insert(seq, i);
            wire::encode_destroy(&mut self.out, s, seq);
        }
        self.send_all()?;
        let mut results = vec![DestroyResult::Unknown; sockets.len()];
        let mut pending = sockets.len();
        let mut flags = 0;
        while pending > 0 {
            let n = loop {
                let mut slice = &mut self.buf[..];
                match self.sock.recv(&mut slice, flags) {
                    Ok(n) => break Some(n.min(self.buf.len())),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    // Acks were dropped: drain what is queued, then leave the rest Unknown.
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                        debug!("netlink receive buffer overflowed: some destroy acks are lost");
                        flags = libc::MSG_DONTWAIT;
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock && flags != 0 => break None,
                    Err(e) => return Err(Error::netlink("recv", e)),
                }
            };
            let Some(n) = n else { break };
            wire::decode_each(&self.buf[..n], |reply| {
                if let Reply::Ack { seq, errno } = reply {
                    if let Some(&i) = index.get(&seq) {
                        if results[i] == DestroyResult::Unknown {
                            pending -= 1;
                        }
                        results[i] = match errno {
                            0 => DestroyResult::Destroyed,
                            libc::ENOENT => DestroyResult::Gone,
                            e => DestroyResult::Failed(e),
                        };
                    }
                }
            })?;
        }
        Ok(results)
    }
}
