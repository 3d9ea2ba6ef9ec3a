//! One TCP socket as the kernel's sock_diag dump described it.

use std::net::SocketAddr;

use netlink_packet_sock_diag::inet::SocketId;
use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::filter::TcpState;
use crate::procfs::Owner;

/// A TCP socket found by a dump. It carries the kernel's exact socket id
/// (addresses, ports, interface and cookie), so that a destroy hits this
/// socket and never a newer one that reuses its 4-tuple.
///
/// Kept small (a kill may hold hundreds of thousands): addresses live only in
/// the id, and are read through the accessors.
#[derive(Debug, Clone)]
pub struct Socket {
    pub(crate) id: SocketId,
    pub(crate) af: u8,
    /// `None` for a state number this program does not know.
    pub state: Option<TcpState>,
    pub uid: u32,
    /// The socket's inode (0 for sockets without a file, e.g. TIME-WAIT).
    pub inode: u32,
    /// Processes holding the socket open, when they were looked up.
    pub owners: Option<Box<[Owner]>>,
}

impl Socket {
    pub(crate) fn from_kernel(af: u8, state: u8, id: SocketId, uid: u32, inode: u32) -> Socket {
        Socket { id, af, state: TcpState::from_kernel(state), uid, inode, owners: None }
    }

    /// The local address and port (`src`).
    pub fn local(&self) -> SocketAddr {
        SocketAddr::new(self.id.source_address, self.id.source_port)
    }

    /// The peer address and port (`dst`).
    pub fn peer(&self) -> SocketAddr {
        SocketAddr::new(self.id.destination_address, self.id.destination_port)
    }

    /// The kernel's socket cookie, unique for the life of the namespace.
    pub fn cookie(&self) -> u64 {
        let c = self.id.cookie;
        // idiag_cookie is two host-endian u32 words, low word first.
        u64::from(u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
            | (u64::from(u32::from_ne_bytes([c[4], c[5], c[6], c[7]])) << 32)
    }

    /// The bound interface index (0 = none).
    pub fn interface(&self) -> u32 {
        self.id.interface_id
    }

    /// `inet` or `inet6`: the family of the dump that returned it.
    pub fn family(&self) -> &'static str {
        if self.af == libc::AF_INET6 as u8 {
            "inet6"
        } else {
            "inet"
        }
    }

    /// The state as `ss` names it.
    pub fn state_name(&self) -> &'static str {
        self.state.map_or("UNKNOWN", TcpState::ss_name)
    }

    /// A one-line description of the owners, `-` when there are none known.
    pub fn owners_text(&self) -> String {
        match &self.owners {
            None => String::new(),
            Some(v) if v.is_empty() => "-".to_string(),
            Some(v) => v.iter().map(|o| format!("{}/{}", o.pid, o.command)).collect::<Vec<_>>().join(","),
        }
    }

    /// Writes the socket's JSON fields into an open map (shared with records that extend it).
    pub(crate) fn serialize_fields<M: SerializeMap>(&self, map: &mut M) -> Result<(), M::Error> {
        map.serialize_entry("family", self.family())?;
        map.serialize_entry("state", self.state_name())?;
        map.serialize_entry("local", &self.local())?;
        map.serialize_entry("peer", &self.peer())?;
        map.serialize_entry("uid", &self.uid)?;
        map.serialize_entry("inode", &self.inode)?;
        map.serialize_entry("cookie", &self.cookie())?;
        map.serialize_entry("interface", &self.interface())?;
        if let Some(o) = &self.owners {
            map.serialize_entry("owners", o)?;
        }
        Ok(())
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

impl Serialize for Socket {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        self.serialize_fields(&mut map)?;
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_small_and_serializes_its_fields() {
        assert!(std::mem::size_of::<Socket>() <= 88, "{}", std::mem::size_of::<Socket>());
        let mut s = Socket::for_test("[::1]:5".parse().unwrap(), "[::1]:80".parse().unwrap(), TcpState::SynSent);
        s.id.cookie = [7, 0, 0, 0, 1, 0, 0, 0];
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["family"], "inet6");
        assert_eq!(v["state"], "SYN-SENT");
        assert_eq!(v["local"], "[::1]:5");
        assert_eq!(v["peer"], "[::1]:80");
        assert_eq!(v["cookie"], (1u64 << 32) + 7);
        assert!(v.get("owners").is_none());
    }
}
