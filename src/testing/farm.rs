//! A connection farm: many ESTABLISHED loopback connections in the calling
//! thread's (private) network namespace, both ends held open.
//!
//! The hard RLIMIT_NOFILE here is 20000 and cannot be raised, so a farm of
//! 200k connections (400k sockets) cannot be held as open fds of one process.
//! Instead, fds are *parked*: sent with SCM_RIGHTS into a unix socket pair we
//! keep, then closed locally. Sockets in flight are held by the kernel (root's
//! CAP_SYS_ADMIN lifts the in-flight limit), stay ESTABLISHED, and can be
//! received back to check that a connection still carries data.
//!
//! Shared by the benchmark (`benches/kill.rs`) and the reliability tests.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

/// Pairs (client fd, server fd) per parked message: SCM_MAX_FD is 253.
const PAIRS_PER_MSG: usize = 126;

/// One group of identical connections: `n` clients connecting to `connect_ip`,
/// accepted by listeners bound to `listen_ip` (e.g. `::` for IPv4-mapped).
#[derive(Debug, Clone)]
pub struct Group {
    pub listen_ip: IpAddr,
    pub connect_ip: IpAddr,
    pub n: usize,
}

impl Group {
    pub fn new(ip: &str, n: usize) -> Group {
        let ip: IpAddr = ip.parse().expect("ip");
        Group { listen_ip: ip, connect_ip: ip, n }
    }
}

/// A built farm. Dropping it closes every connection.
pub struct Farm {
    parks: Vec<(UnixStream, UnixStream)>,
    /// The listener ports used per group (a listener serves at most `PER_LISTENER`).
    pub ports: Vec<Vec<u16>>,
    pub groups: Vec<Group>,
}

/// Connections per listener: each gets its own source port, counted from
/// FIRST_SOURCE_PORT (an explicit bind is O(1); connect()'s ephemeral port
/// search becomes quadratic as the range fills).
const PER_LISTENER: usize = 50_000;
const FIRST_SOURCE_PORT: u16 = 10_000;

/// The loopback source address in the family and form of `to`.
fn source_ip(to: IpAddr) -> IpAddr {
    match to {
        IpAddr::V4(_) => "127.0.0.1".parse().expect("ip"),
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => "::ffff:127.0.0.1".parse().expect("ip"),
        IpAddr::V6(_) => "::1".parse().expect("ip"),
    }
}

/// A connection from exactly `local` to `to` (SO_REUSEADDR: one local
/// address:port may serve one connection to each of several peers).
pub fn connect_from(local: SocketAddr, to: SocketAddr) -> io::Result<TcpStream> {
    use nix::sys::socket::{
        bind, connect, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage,
    };
    let family = if to.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    bind(fd.as_raw_fd(), &SockaddrStorage::from(local))?;
    connect(fd.as_raw_fd(), &SockaddrStorage::from(to))?;
    Ok(TcpStream::from(fd))
}

fn sysctl(path: &str, value: &str) {
    // /proc/sys/net/* resolves to the namespace of the thread that opens it.
    let _ = std::fs::write(path, value);
}

impl Farm {
    /// Builds the farm in the calling thread's network namespace (which must be private).
    pub fn build(groups: &[Group]) -> io::Result<Farm> {
        // Ephemeral ports (listeners' bind(0), other clients) stay above the
        // explicit source ports (10000..60000): a wildcard listener on such a
        // port would collide with a client bound to it.
        sysctl("/proc/sys/net/ipv4/ip_local_port_range", "60001 65000");
        sysctl("/proc/sys/net/core/somaxconn", "65535");
        let mut farm = Farm { parks: Vec::new(), ports: Vec::new(), groups: groups.to_vec() };
        for (gi, g) in groups.iter().enumerate() {
            let mut ports = Vec::new();
            let mut left = g.n;
            while left > 0 {
                let chunk = left.min(PER_LISTENER);
                let listener = TcpListener::bind(SocketAddr::new(g.listen_ip, 0))?;
                let port = listener.local_addr()?.port();
                ports.push(port);
                let to = SocketAddr::new(g.connect_ip, port);
                let mut batch: Vec<RawFd> = Vec::with_capacity(2 * PAIRS_PER_MSG);
                for i in 0..chunk {
                    let from = SocketAddr::new(source_ip(g.connect_ip), FIRST_SOURCE_PORT + i as u16);
                    let c = connect_from(from, to)?;
                    let (s, _) = listener.accept()?;
                    batch.push(c.into_raw_fd());
                    batch.push(s.into_raw_fd());
                    if batch.len() == 2 * PAIRS_PER_MSG {
                        farm.park(gi as u8, &mut batch)?;
                    }
                }
                if !batch.is_empty() {
                    farm.park(gi as u8, &mut batch)?;
                }
                left -= chunk;
            }
            farm.ports.push(ports);
        }
        Ok(farm)
    }

    /// A farm of connected UDP sockets: per group, `n` sockets bound to
    /// their own source ports and connected to `connect_ip` (a destination
    /// port per 50k, so every 4-tuple is unique; nothing needs to listen).
    pub fn build_udp(groups: &[Group]) -> io::Result<Farm> {
        use nix::sys::socket::{
            bind, connect, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage,
        };
        sysctl("/proc/sys/net/ipv4/ip_local_port_range", "60001 65000");
        let mut farm = Farm { parks: Vec::new(), ports: Vec::new(), groups: groups.to_vec() };
        for (gi, g) in groups.iter().enumerate() {
            let mut ports = Vec::new();
            let mut batch: Vec<RawFd> = Vec::with_capacity(2 * PAIRS_PER_MSG);
            for i in 0..g.n {
                let chunk = i / PER_LISTENER;
                let port = 20_000 + (gi * 100 + chunk) as u16;
                if ports.last() != Some(&port) {
                    ports.push(port);
                }
                let family = if g.connect_ip.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
                let fd = socket(family, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?;
                setsockopt(&fd, sockopt::ReuseAddr, &true)?;
                let from = SocketAddr::new(source_ip(g.connect_ip), FIRST_SOURCE_PORT + (i % PER_LISTENER) as u16);
                bind(fd.as_raw_fd(), &SockaddrStorage::from(from))?;
                connect(fd.as_raw_fd(), &SockaddrStorage::from(SocketAddr::new(g.connect_ip, port)))?;
                batch.push(fd.into_raw_fd());
                if batch.len() == 2 * PAIRS_PER_MSG {
                    farm.park(gi as u8, &mut batch)?;
                }
            }
            if !batch.is_empty() {
                farm.park(gi as u8, &mut batch)?;
            }
            farm.ports.push(ports);
        }
        Ok(farm)
    }

    /// Sends `fds` into a parking socket and closes our copies.
    fn park(&mut self, group: u8, fds: &mut Vec<RawFd>) -> io::Result<()> {
        loop {
            if self.parks.is_empty() {
                self.new_park()?;
            }
            let (tx, _) = self.parks.last().expect("a park");
            let data = [group];
            let iov = [IoSlice::new(&data)];
            let cmsg = [ControlMessage::ScmRights(fds)];
            match sendmsg::<()>(tx.as_raw_fd(), &iov, &cmsg, MsgFlags::MSG_DONTWAIT, None) {
                Ok(_) => break,
                Err(nix::errno::Errno::EAGAIN) => self.new_park()?,
                Err(e) => return Err(e.into()),
            }
        }
        for fd in fds.drain(..) {
            // SAFETY: we own these fds (into_raw_fd above); the kernel holds its own reference.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        Ok(())
    }

    fn new_park(&mut self) -> io::Result<()> {
        let (tx, rx) = UnixStream::pair()?;
        // Room for every parked message; root may exceed wmem_max.
        let _ = nix::sys::socket::setsockopt(&tx, nix::sys::socket::sockopt::SndBufForce, &(256 << 20));
        self.parks.push((tx, rx));
        Ok(())
    }

    /// Takes every connection back and checks, for the groups in `check`, that
    /// each still carries a byte from client to server and back. Returns
    /// (checked, alive) per group. Consumes the farm.
    pub fn verify(mut self, check: &[bool]) -> Vec<(usize, usize)> {
        let mut out = vec![(0usize, 0usize); self.groups.len()];
        for (tx, rx) in std::mem::take(&mut self.parks) {
            drop(tx);
            rx.set_nonblocking(true).ok();
            loop {
                let mut data = [0u8; 1];
                let mut iov = [IoSliceMut::new(&mut data)];
                let mut space = nix::cmsg_space!([RawFd; 2 * PAIRS_PER_MSG]);
                let msg = match recvmsg::<()>(rx.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC) {
                    Ok(m) if m.bytes == 1 => m,
                    _ => break,
                };
                let mut fds: Vec<OwnedFd> = Vec::new();
                for c in msg.cmsgs().into_iter().flatten() {
                    if let ControlMessageOwned::ScmRights(v) = c {
                        // SAFETY: fresh fds received with SCM_RIGHTS are ours.
                        fds.extend(v.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
                    }
                }
                let g = data[0] as usize;
                if !check.get(g).copied().unwrap_or(false) {
                    continue;
                }
                for pair in fds.chunks(2) {
                    out[g].0 += 1;
                    if pair.len() == 2 && talks(&pair[0], &pair[1]) {
                        out[g].1 += 1;
                    }
                }
            }
        }
        out
    }
}

/// One byte each way over a connection whose two ends we hold.
fn talks(client: &OwnedFd, server: &OwnedFd) -> bool {
    use std::io::{Read, Write};
    let dup = |fd: &OwnedFd| fd.try_clone().map(TcpStream::from);
    let (Ok(mut c), Ok(mut s)) = (dup(client), dup(server)) else { return false };
    let t = Some(std::time::Duration::from_secs(2));
    if c.set_read_timeout(t).is_err() || s.set_read_timeout(t).is_err() {
        return false;
    }
    let mut b = [0u8; 1];
    c.write_all(b"x").is_ok()
        && s.read_exact(&mut b).is_ok()
        && s.write_all(b"y").is_ok()
        && c.read_exact(&mut b).is_ok()
}
