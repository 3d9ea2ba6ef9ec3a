//! One TCP (or UDP) socket as the kernel's sock_diag dump described it.

use std::net::{IpAddr, SocketAddr, SocketAddrV6};

use netlink_packet_sock_diag::inet::SocketId;
use std::fmt;

use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::procfs::Owner;

/// A TCP state as the kernel numbers it (`include/net/tcp_states.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum TcpState {
    /// ESTABLISHED.
    Established = 1,
    /// SYN-SENT: an outgoing connection waiting for the handshake.
    SynSent = 2,
    /// SYN-RECV (a full socket, e.g. with TCP Fast Open).
    SynRecv = 3,
    /// FIN-WAIT-1.
    FinWait1 = 4,
    /// FIN-WAIT-2.
    FinWait2 = 5,
    /// TIME-WAIT.
    TimeWait = 6,
    /// CLOSE (`ss`: UNCONN).
    Close = 7,
    /// CLOSE-WAIT.
    CloseWait = 8,
    /// LAST-ACK.
    LastAck = 9,
    /// LISTEN.
    Listen = 10,
    /// CLOSING.
    Closing = 11,
    /// A request socket (incoming handshake not yet accepted); `ss` shows it as SYN-RECV.
    NewSynRecv = 12,
}

impl TcpState {
    pub(crate) const ALL: [TcpState; 12] = [
        TcpState::Established,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::FinWait1,
        TcpState::FinWait2,
        TcpState::TimeWait,
        TcpState::Close,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::Listen,
        TcpState::Closing,
        TcpState::NewSynRecv,
    ];

    /// The state with kernel number `n`, if it is a real TCP state.
    pub fn from_kernel(n: u8) -> Option<TcpState> {
        TcpState::ALL.get(usize::from(n).checked_sub(1)?).copied()
    }

    /// The column name `ss` prints for this state.
    pub fn ss_name(self) -> &'static str {
        match self {
            TcpState::Established => "ESTAB",
            TcpState::SynSent => "SYN-SENT",
            TcpState::SynRecv | TcpState::NewSynRecv => "SYN-RECV",
            TcpState::FinWait1 => "FIN-WAIT-1",
            TcpState::FinWait2 => "FIN-WAIT-2",
            TcpState::TimeWait => "TIME-WAIT",
            TcpState::Close => "UNCONN",
            TcpState::CloseWait => "CLOSE-WAIT",
            TcpState::LastAck => "LAST-ACK",
            TcpState::Listen => "LISTEN",
            TcpState::Closing => "CLOSING",
        }
    }

    /// The `--state` name that selects this state (the inverse of [`crate::filter::StateSet::parse_name`]).
    pub fn flag_name(self) -> &'static str {
        match self {
            TcpState::Established => "established",
            TcpState::SynSent => "syn-sent",
            TcpState::SynRecv | TcpState::NewSynRecv => "syn-recv",
            TcpState::FinWait1 => "fin-wait-1",
            TcpState::FinWait2 => "fin-wait-2",
            TcpState::TimeWait => "time-wait",
            TcpState::Close => "closed",
            TcpState::CloseWait => "close-wait",
            TcpState::LastAck => "last-ack",
            TcpState::Listen => "listening",
            TcpState::Closing => "closing",
        }
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.ss_name())
    }
}

impl Serialize for TcpState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.ss_name())
    }
}

/// A TCP socket found by a dump. It carries the kernel's exact socket id
/// (addresses, ports, interface and cookie), so that a destroy hits this
/// socket and never a newer one that reuses its 4-tuple.
///
/// Kept small (a kill may hold hundreds of thousands): addresses live only in
/// the id, and are read through the accessors.
#[derive(Debug, Clone)]
pub struct TcpSocket {
    pub(crate) id: SocketId,
    pub(crate) af: u8,
    /// `IPPROTO_TCP`, or `IPPROTO_UDP` for a socket of a UDP dump (the reply
    /// does not say: the dump that returned it does). UDP sockets use the TCP
    /// state numbers: ESTABLISHED when connected, CLOSE (UNCONN) when not.
    pub(crate) protocol: u8,
    /// `None` for a state number this program does not know.
    pub state: Option<TcpState>,
    /// The socket's owning user id.
    pub uid: u32,
    /// The socket's inode (0 for sockets no file refers to: TIME-WAIT, orphans).
    pub inode: u32,
    /// Processes holding the socket open, when they were looked up.
    pub owners: Option<Box<[Owner]>>,
    /// The cgroup v2 id of the socket's creator (`INET_DIAG_CGROUP_ID`); 0 when
    /// the kernel did not say (TIME-WAIT and request sockets, old kernels).
    pub cgroup: u64,
    /// `SO_MARK` (`INET_DIAG_MARK`, sent to CAP_NET_ADMIN only); `None` when not sent.
    pub mark: Option<u32>,
}

impl TcpSocket {
    pub(crate) fn from_kernel(af: u8, state: u8, id: SocketId, uid: u32, inode: u32) -> TcpSocket {
        TcpSocket {
            id,
            af,
            protocol: libc::IPPROTO_TCP as u8,
            state: TcpState::from_kernel(state),
            uid,
            inode,
            owners: None,
            cgroup: 0,
            mark: None,
        }
    }

    fn addr(&self, ip: IpAddr, port: u16) -> SocketAddr {
        match ip {
            // A link-local address means nothing without its interface: keep it as the scope.
            IpAddr::V6(v6) if v6.is_unicast_link_local() => {
                SocketAddr::V6(SocketAddrV6::new(v6, port, 0, self.id.interface_id))
            }
            ip => SocketAddr::new(ip, port),
        }
    }

    /// The local address and port (`src`); IPv6 link-local addresses carry the interface as scope.
    pub fn local(&self) -> SocketAddr {
        self.addr(self.id.source_address, self.id.source_port)
    }

    /// The peer address and port (`dst`); IPv6 link-local addresses carry the interface as scope.
    pub fn peer(&self) -> SocketAddr {
        self.addr(self.id.destination_address, self.id.destination_port)
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

    /// `tcp` or `udp`.
    pub fn protocol(&self) -> &'static str {
        if self.protocol == libc::IPPROTO_UDP as u8 {
            "udp"
        } else {
            "tcp"
        }
    }

    /// Whether it came from a UDP dump.
    pub fn is_udp(&self) -> bool {
        self.protocol == libc::IPPROTO_UDP as u8
    }

    /// The state as `ss` names it.
    pub fn state_name(&self) -> &'static str {
        self.state.map_or("UNKNOWN", TcpState::ss_name)
    }

    /// A one-line description of the owners: empty when not looked up, `-` when there are none.
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
        map.serialize_entry("protocol", self.protocol())?;
        map.serialize_entry("state", self.state_name())?;
        map.serialize_entry("local", &self.local())?;
        map.serialize_entry("peer", &self.peer())?;
        map.serialize_entry("uid", &self.uid)?;
        map.serialize_entry("inode", &self.inode)?;
        map.serialize_entry("cookie", &self.cookie())?;
        map.serialize_entry("interface", &self.interface())?;
        if self.cgroup != 0 {
            map.serialize_entry("cgroup", &self.cgroup)?;
        }
        if let Some(mark) = self.mark {
            map.serialize_entry("mark", &mark)?;
        }
        if let Some(o) = &self.owners {
            map.serialize_entry("owners", o)?;
        }
        Ok(())
    }

    /// A socket as a dump would return it, for tests of code above the kernel.
    #[cfg(any(test, feature = "testing"))]
    pub fn for_test(local: SocketAddr, peer: SocketAddr, state: TcpState) -> TcpSocket {
        let id = SocketId {
            source_port: local.port(),
            destination_port: peer.port(),
            source_address: local.ip(),
            destination_address: peer.ip(),
            interface_id: 0,
            cookie: [0; 8],
        };
        let af = if local.is_ipv6() { libc::AF_INET6 } else { libc::AF_INET } as u8;
        TcpSocket::from_kernel(af, state as u8, id, 0, 0)
    }

    /// Sets the cookie and inode, for tests of code above the kernel.
    #[cfg(any(test, feature = "testing"))]
    pub fn with_ids(mut self, cookie: u64, inode: u32) -> TcpSocket {
        let lo = (cookie as u32).to_ne_bytes();
        let hi = ((cookie >> 32) as u32).to_ne_bytes();
        self.id.cookie = [lo[0], lo[1], lo[2], lo[3], hi[0], hi[1], hi[2], hi[3]];
        self.inode = inode;
        self
    }
}

impl Serialize for TcpSocket {
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
        assert!(std::mem::size_of::<TcpSocket>() <= 104, "{}", std::mem::size_of::<TcpSocket>());
        let s = TcpSocket::for_test("[::1]:5".parse().unwrap(), "[::1]:80".parse().unwrap(), TcpState::SynSent)
            .with_ids((1u64 << 32) + 7, 9);
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["family"], "inet6");
        assert_eq!(v["state"], "SYN-SENT");
        assert_eq!(v["local"], "[::1]:5");
        assert_eq!(v["peer"], "[::1]:80");
        assert_eq!(v["cookie"], (1u64 << 32) + 7);
        assert_eq!(v["inode"], 9);
        assert!(v.get("owners").is_none());
    }

    #[test]
    fn link_local_addresses_carry_their_interface() {
        let mut s = TcpSocket::for_test(
            "[fe80::1]:22".parse().unwrap(),
            "[fe80::2]:5000".parse().unwrap(),
            TcpState::Established,
        );
        s.id.interface_id = 3;
        assert_eq!(s.local().to_string(), "[fe80::1%3]:22");
        assert_eq!(s.peer().to_string(), "[fe80::2%3]:5000");
        let g = TcpSocket::for_test("[fd00::1]:22".parse().unwrap(), "[fd00::2]:1".parse().unwrap(), TcpState::Listen);
        assert_eq!(g.local().to_string(), "[fd00::1]:22");
    }
}
