//! One TCP socket as the kernel's sock_diag dump described it.

use std::net::SocketAddr;

use netlink_packet_sock_diag::inet::SocketId;
use serde::Serialize;

use crate::filter::TcpState;
use crate::procfs::Owner;

/// A TCP socket found by a dump. It carries the kernel's exact socket id
/// (addresses, ports, interface and cookie), so that a destroy hits this
/// socket and never a newer one that reuses its 4-tuple.
#[derive(Debug, Clone, Serialize)]
pub struct Socket {
    /// `inet` or `inet6`: the family of the dump that returned it.
    pub family: &'static str,
    /// `None` for a state number this program does not know.
    pub state: Option<TcpState>,
    /// The local address and port (`src`).
    pub local: SocketAddr,
    /// The peer address and port (`dst`).
    pub peer: SocketAddr,
    pub uid: u32,
    /// The socket's inode (0 for sockets without a file, e.g. TIME-WAIT).
    pub inode: u32,
    /// The kernel's socket cookie, unique for the life of the namespace.
    pub cookie: u64,
    /// The bound interface index (0 = none).
    pub interface: u32,
    /// Processes holding the socket open, when they were looked up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owners: Option<Vec<Owner>>,
    #[serde(skip)]
    pub(crate) id: SocketId,
    #[serde(skip)]
    pub(crate) af: u8,
}

impl Socket {
    pub(crate) fn from_kernel(af: u8, state: u8, id: SocketId, uid: u32, inode: u32) -> Socket {
        let c = id.cookie;
        // idiag_cookie is two host-endian u32 words, low word first.
        let cookie = u64::from(u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
            | (u64::from(u32::from_ne_bytes([c[4], c[5], c[6], c[7]])) << 32);
        Socket {
            family: if af == libc::AF_INET6 as u8 { "inet6" } else { "inet" },
            state: TcpState::from_kernel(state),
            local: SocketAddr::new(id.source_address, id.source_port),
            peer: SocketAddr::new(id.destination_address, id.destination_port),
            uid,
            inode,
            cookie,
            interface: id.interface_id,
            owners: None,
            id,
            af,
        }
    }

    /// The state as `ss` names it (`?N` for an unknown state number).
    pub fn state_name(&self) -> String {
        match self.state {
            Some(s) => s.ss_name().to_string(),
            None => "UNKNOWN".to_string(),
        }
    }

    /// A one-line description of the owners, `-` when there are none known.
    pub fn owners_text(&self) -> String {
        match &self.owners {
            None => String::new(),
            Some(v) if v.is_empty() => "-".to_string(),
            Some(v) => v.iter().map(|o| format!("{}/{}", o.pid, o.command)).collect::<Vec<_>>().join(","),
        }
    }

    #[cfg(test)]
    pub(crate) fn for_test(local: SocketAddr, peer: SocketAddr, state: TcpState) -> Socket {
        let id = SocketId {
            source_port: local.port(),
            destination_port: peer.port(),
            source_address: local.ip(),
            destination_address: peer.ip(),
            interface_id: 0,
            cookie: [0; 8],
        };
        let af = if local.is_ipv6() { libc::AF_INET6 } else { libc::AF_INET } as u8;
        Socket::from_kernel(af, state as u8, id, 0, 0)
    }
}
