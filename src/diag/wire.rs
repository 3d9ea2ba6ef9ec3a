//! The bytes of sock_diag: requests we send and the replies we read. No I/O here.
//!
//! Requests are built with netlink-packet-core / netlink-packet-sock-diag; the
//! bytecode attribute they lack is appended by hand (`INET_DIAG_REQ_BYTECODE`,
//! the one extension this module adds to those crates). Replies are decoded
//! header by header with `NetlinkBuffer::new_checked`, and of each TCP socket
//! only the fixed `inet_diag_msg` is parsed: attributes are not requested, and
//! skipping them means a kernel that sends new or resized ones still parses.

use netlink_packet_core::{
    Emitable, ErrorBuffer, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, Parseable, NLMSG_DONE, NLMSG_ERROR,
    NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, InetResponseHeader, SocketId, StateFlags};
use netlink_packet_sock_diag::unix::{self, ShowFlags, UnixRequest, UnixResponse};
use netlink_packet_sock_diag::{SockDiagDestroy, SockDiagMessage, IPPROTO_TCP, SOCK_DIAG_BY_FAMILY};

use crate::error::{Error, Result};
use crate::filter::StateSet;
use crate::socket::TcpSocket;

const INET_DIAG_REQ_BYTECODE: u16 = 1;
/// The older inet_diag request (`TCPDIAG_GETSOCK`): the kernel dumps it with
/// family AF_UNSPEC, both families in one walk of the TCP hash table
/// (`inet_diag_dump_compat`, in every kernel since sock_diag appeared in 3.3).
/// Replies carry the same `inet_diag_msg` (cookie included) under this type.
pub const TCPDIAG_GETSOCK: u16 = 18;
/// `struct inet_diag_req`: family, src_len, dst_len, ext, `inet_diag_sockid`
/// (48 bytes), states, dbs.
const INET_COMPAT_REQUEST_LEN: usize = 60;
/// Response attributes read from each socket.
const INET_DIAG_MARK: u16 = 15;
const INET_DIAG_CGROUP_ID: u16 = 21;
const NLA_HDR_LEN: usize = 4;
#[cfg(any(test, feature = "testing"))]
const INET_REQUEST_LEN: usize = 56;

/// The longest bytecode program one request attribute can carry (its length is a u16).
pub const MAX_BYTECODE: usize = u16::MAX as usize - NLA_HDR_LEN;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn push_message<T>(out: &mut Vec<u8>, msg: NetlinkMessage<T>)
where
    T: netlink_packet_core::NetlinkSerializable + std::fmt::Debug,
{
    let mut msg = msg;
    msg.finalize();
    let start = out.len();
    out.resize(start + msg.buffer_len(), 0);
    msg.serialize(&mut out[start..]);
}

fn header(flags: u16, seq: u32) -> NetlinkHeader {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    header
}

/// What one dump asks the kernel for.
#[derive(Debug, Clone, Copy)]
pub struct DumpSpec<'a> {
    /// `libc::AF_INET` or `AF_INET6` (the latter also returns IPv4-mapped
    /// sockets), or `AF_UNSPEC` (0): both in one walk, through [`TCPDIAG_GETSOCK`].
    pub family: u8,
    /// The TCP states to return.
    pub states: StateSet,
    /// The filter program (see [`super::bytecode`]); empty = none.
    pub bytecode: &'a [u8],
    /// A local port the kernel checks before running the bytecode (0 = any).
    pub sport: u16,
    /// A peer port the kernel checks before running the bytecode (0 = any): it
    /// costs a compare where the bytecode costs several cache misses per socket.
    pub dport: u16,
    /// `IPPROTO_TCP` or `IPPROTO_UDP` (the one-walk request is TCP's only).
    pub protocol: u8,
}

#[cfg(any(test, feature = "testing"))]
impl<'a> DumpSpec<'a> {
    /// A dump of `family` in `states` through `bytecode`, without port pre-filters.
    pub fn new(family: u8, states: StateSet, bytecode: &'a [u8]) -> DumpSpec<'a> {
        DumpSpec { family, states, bytecode, sport: 0, dport: 0, protocol: IPPROTO_TCP }
    }
}

/// Appends a dump request for `spec`. Errors when the bytecode does not fit
/// in one attribute.
pub fn encode_dump(out: &mut Vec<u8>, spec: &DumpSpec<'_>, seq: u32) -> Result<()> {
    let DumpSpec { family, states, bytecode, sport, dport, protocol } = *spec;
    if bytecode.len() > MAX_BYTECODE {
        return Err(Error::InvalidFilter(format!(
            "the filter compiles to {} bytes of kernel bytecode, more than the {MAX_BYTECODE} one request carries: use fewer --dst/--src/--dport/--sport values",
            bytecode.len()
        )));
    }
    if family == libc::AF_UNSPEC as u8 && protocol == IPPROTO_TCP {
        encode_dump_both(out, spec, seq);
        return Ok(());
    }
    let mut socket_id = SocketId::new_v4();
    socket_id.cookie = [0xff; 8]; // INET_DIAG_NOCOOKIE: not asking for one socket
    socket_id.source_port = sport;
    socket_id.destination_port = dport;
    let req = InetRequest {
        family,
        protocol,
        extensions: ExtensionFlags::empty(),
        states: StateFlags::from_bits_retain(states.bits()),
        socket_id,
    };
    let start = out.len();
    let payload = NetlinkPayload::from(SockDiagMessage::InetRequest(req));
    push_message(out, NetlinkMessage::new(header(NLM_F_REQUEST | NLM_F_DUMP, seq), payload));
    append_bytecode(out, start, bytecode);
    Ok(())
}

/// Appends the bytecode attribute to the message that starts at `start`, and
/// fixes its length (the caller checked that the program fits).
fn append_bytecode(out: &mut Vec<u8>, start: usize, bytecode: &[u8]) {
    if bytecode.is_empty() {
        return;
    }
    let nla_len = NLA_HDR_LEN + bytecode.len(); // <= u16::MAX, checked by the caller
    out.extend_from_slice(&(nla_len as u16).to_ne_bytes());
    out.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
    out.extend_from_slice(bytecode);
    out.resize(start + align4(out.len() - start), 0);
    let total = (out.len() - start) as u32;
    NetlinkBuffer::new(&mut out[start..]).set_length(total);
}

/// The one-walk request: `TCPDIAG_GETSOCK` with a `struct inet_diag_req`,
/// which netlink-packet-sock-diag does not model (so it is written here, the
/// same way the bytecode attribute is). Ports travel in network order, as in
/// `inet_diag_sockid`; no cookie (all ones).
fn encode_dump_both(out: &mut Vec<u8>, spec: &DumpSpec<'_>, seq: u32) {
    let start = out.len();
    let mut h = header(NLM_F_REQUEST | NLM_F_DUMP, seq);
    h.message_type = TCPDIAG_GETSOCK;
    h.length = (16 + INET_COMPAT_REQUEST_LEN) as u32;
    out.resize(start + 16 + INET_COMPAT_REQUEST_LEN, 0);
    h.emit(&mut out[start..start + 16]);
    let p = &mut out[start + 16..];
    p[0] = libc::AF_UNSPEC as u8; // family (the dump ignores it: AF_UNSPEC)
    // src_len, dst_len, ext: 0
    p[4..6].copy_from_slice(&spec.sport.to_be_bytes());
    p[6..8].copy_from_slice(&spec.dport.to_be_bytes());
    // src, dst (16 bytes each), interface: 0
    p[44..52].copy_from_slice(&[0xff; 8]); // cookie: INET_DIAG_NOCOOKIE
    p[52..56].copy_from_slice(&spec.states.bits().to_ne_bytes());
    // dbs: 0
    append_bytecode(out, start, spec.bytecode);
}

/// Appends a SOCK_DESTROY request (with NLM_F_ACK) for exactly the socket `sock`
/// that a dump returned: same family, addresses, ports, interface and cookie.
pub fn encode_destroy(out: &mut Vec<u8>, sock: &TcpSocket, seq: u32) {
    let req = InetRequest {
        family: sock.af,
        protocol: sock.protocol,
        extensions: ExtensionFlags::empty(),
        states: StateFlags::from_bits_retain(StateSet::ALL.bits()),
        socket_id: sock.id.clone(),
    };
    let payload = NetlinkPayload::from(SockDiagDestroy::new(SockDiagMessage::InetRequest(req)));
    push_message(out, NetlinkMessage::new(header(NLM_F_REQUEST | NLM_F_ACK, seq), payload));
}

/// Appends a request for one unix socket by inode, asking for its peer's inode
/// (with NLM_F_ACK: a single-socket answer is otherwise not followed by anything).
pub fn encode_unix_peer(out: &mut Vec<u8>, inode: u32, seq: u32) {
    let req = UnixRequest {
        state_flags: unix::StateFlags::all(),
        inode,
        show_flags: ShowFlags::PEER,
        cookie: [0xff; 8], // any cookie: the inode names the socket
    };
    let payload = NetlinkPayload::from(SockDiagMessage::UnixRequest(req));
    push_message(out, NetlinkMessage::new(header(NLM_F_REQUEST | NLM_F_ACK, seq), payload));
}

/// One message of a reply datagram.
#[derive(Debug)]
pub enum Reply {
    /// A TCP socket of a dump. `interrupted` is the kernel's NLM_F_DUMP_INTR:
    /// the table changed under the dump and its view may be inconsistent.
    Socket {
        /// The request's sequence number.
        seq: u32,
        /// The socket.
        socket: TcpSocket,
        /// NLM_F_DUMP_INTR was set.
        interrupted: bool,
    },
    /// A unix socket and its peer's inode (0 when unconnected).
    Unix {
        /// The request's sequence number.
        seq: u32,
        /// The socket's inode.
        inode: u32,
        /// The peer's inode.
        peer: u32,
    },
    /// End of a dump; `errno` is the kernel's verdict on the whole dump (0 = complete).
    Done {
        /// The request's sequence number.
        seq: u32,
        /// NLM_F_DUMP_INTR was set.
        interrupted: bool,
        /// A positive errno when the kernel ended the dump with an error.
        errno: i32,
    },
    /// A request succeeded (NLMSG_ERROR with code 0).
    Ack {
        /// The request's sequence number.
        seq: u32,
    },
    /// A request failed with a positive errno (e.g. `libc::ENOENT`).
    Error {
        /// The request's sequence number.
        seq: u32,
        /// The kernel's errno.
        errno: i32,
    },
}

/// Decodes every netlink message in one datagram, handing each to `each`
/// (no allocation per message: a dump datagram carries hundreds of sockets).
pub fn decode_each(datagram: &[u8], mut each: impl FnMut(Reply)) -> Result<()> {
    let decode = |e: netlink_packet_core::DecodeError| Error::Decode(e.to_string());
    let mut rest = datagram;
    while !rest.is_empty() {
        let buf = NetlinkBuffer::new_checked(rest).map_err(decode)?;
        let len = buf.length() as usize;
        let seq = buf.sequence_number();
        let interrupted = buf.flags() & NLM_F_DUMP_INTR != 0;
        match buf.message_type() {
            NLMSG_DONE => {
                // The payload is the dump's final status (a negative errno), when present.
                let errno = buf
                    .payload()
                    .get(..4)
                    .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]).saturating_neg().max(0));
                each(Reply::Done { seq, interrupted, errno });
            }
            NLMSG_ERROR => {
                let err = ErrorBuffer::new_checked(buf.payload()).map_err(decode)?;
                match err.code().map_or(0, |c| c.get().saturating_neg()) {
                    0 => each(Reply::Ack { seq }),
                    errno => each(Reply::Error { seq, errno }),
                }
            }
            SOCK_DIAG_BY_FAMILY | TCPDIAG_GETSOCK => {
                let payload = buf.payload();
                if payload.first() == Some(&(libc::AF_UNIX as u8)) {
                    let r = UnixResponse::parse(payload).map_err(decode)?;
                    each(Reply::Unix { seq, inode: r.header.inode, peer: r.peer().unwrap_or(0) });
                } else {
                    let h = InetResponseHeader::parse(payload).map_err(decode)?;
                    let mut socket = TcpSocket::from_kernel(h.family, h.state, h.socket_id, h.uid, h.inode);
                    read_attributes(payload.get(INET_RESPONSE_LEN..).unwrap_or(&[]), &mut socket);
                    each(Reply::Socket { seq, socket, interrupted });
                }
            }
            // NLMSG_NOOP / NLMSG_OVERRUN or anything new: nothing for us.
            _ => {}
        }
        rest = rest.get(align4(len)..).unwrap_or(&[]);
    }
    Ok(())
}

/// `struct inet_diag_msg`: what precedes a socket's attributes.
const INET_RESPONSE_LEN: usize = 72;

/// The attributes after a socket's `inet_diag_msg` that sockkill reads (mark,
/// cgroup id); any other, unknown or malformed one is skipped, never an error:
/// the kernel adds and resizes attributes over time.
fn read_attributes(mut attrs: &[u8], socket: &mut TcpSocket) {
    while attrs.len() >= NLA_HDR_LEN {
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff; // without NLA_F_NESTED / NET_BYTEORDER
        if len < NLA_HDR_LEN || len > attrs.len() {
            return;
        }
        let value = &attrs[NLA_HDR_LEN..len];
        match (kind, value.len()) {
            (INET_DIAG_MARK, 4) => socket.mark = Some(u32::from_ne_bytes([value[0], value[1], value[2], value[3]])),
            (INET_DIAG_CGROUP_ID, 8) => {
                let mut b = [0u8; 8];
                b.copy_from_slice(value);
                socket.cgroup = u64::from_ne_bytes(b);
            }
            _ => {}
        }
        attrs = attrs.get(align4(len)..).unwrap_or(&[]);
    }
}

/// Decodes every netlink message in one datagram into a vector.
#[cfg(any(test, feature = "testing"))]
pub fn decode(datagram: &[u8]) -> Result<Vec<Reply>> {
    let mut out = Vec::new();
    decode_each(datagram, |r| out.push(r))?;
    Ok(out)
}

/// A dump request as the kernel reads it (for tests of the encoder).
#[cfg(any(test, feature = "testing"))]
#[derive(Debug, PartialEq, Eq)]
pub struct DumpRequest {
    /// nlmsg_flags.
    pub flags: u16,
    /// nlmsg_seq.
    pub seq: u32,
    /// The family asked for (AF_UNSPEC in the one-walk request).
    pub family: u8,
    /// IPPROTO_TCP.
    pub protocol: u8,
    /// The state mask, as sent.
    pub states: u32,
    /// The local port pre-filter.
    pub sport: u16,
    /// The peer port pre-filter.
    pub dport: u16,
    /// The bytecode attribute's program.
    pub bytecode: Vec<u8>,
}

/// Reads back a dump request built by [`encode_dump`] (for tests of the encoder).
#[cfg(any(test, feature = "testing"))]
pub fn decode_dump_request(bytes: &[u8]) -> Result<DumpRequest> {
    let decode = |e: netlink_packet_core::DecodeError| Error::Decode(e.to_string());
    let buf = NetlinkBuffer::new_checked(bytes).map_err(decode)?;
    let both = buf.message_type() == TCPDIAG_GETSOCK;
    if !(both || buf.message_type() == SOCK_DIAG_BY_FAMILY) || buf.length() as usize != bytes.len() {
        return Err(Error::Decode("not one dump request".into()));
    }
    let payload = buf.payload();
    let fixed = if both { INET_COMPAT_REQUEST_LEN } else { INET_REQUEST_LEN };
    let u32_at = |at: usize| payload.get(at..at + 4).map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
    let be16_at = |at: usize| payload.get(at..at + 2).map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
    let (family, protocol, states, sport, dport) = if both {
        // inet_diag_req: the family is ignored (AF_UNSPEC), the protocol is the message type's.
        (payload.first().copied().unwrap_or(0), IPPROTO_TCP, u32_at(52), be16_at(4), be16_at(6))
    } else {
        let req = InetRequest::parse(payload).map_err(decode)?;
        // The state mask from the bytes: the crate's flags type drops bits it does
        // not know (TCP_NEW_SYN_RECV), which the kernel honours.
        (req.family, req.protocol, u32_at(4), req.socket_id.source_port, req.socket_id.destination_port)
    };
    let mut bytecode = Vec::new();
    if let Some(attr) = payload.get(fixed..).filter(|a| !a.is_empty()) {
        let (Some(len), Some(ty)) = (attr.get(0..2), attr.get(2..4)) else {
            return Err(Error::Decode("short attribute".into()));
        };
        let len = usize::from(u16::from_ne_bytes([len[0], len[1]]));
        if u16::from_ne_bytes([ty[0], ty[1]]) != INET_DIAG_REQ_BYTECODE || len < NLA_HDR_LEN {
            return Err(Error::Decode("not a bytecode attribute".into()));
        }
        bytecode = attr.get(NLA_HDR_LEN..len).ok_or_else(|| Error::Decode("attribute past the end".into()))?.to_vec();
    }
    Ok(DumpRequest { flags: buf.flags(), seq: buf.sequence_number(), family, protocol, states, sport, dport, bytecode })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::filter::TcpState;

    fn ne16(v: u16) -> [u8; 2] {
        v.to_ne_bytes()
    }
    fn ne32(v: u32) -> [u8; 4] {
        v.to_ne_bytes()
    }

    #[test]
    fn dump_request_known_bytes() {
        let mut out = Vec::new();
        encode_dump(&mut out, &DumpSpec::new(libc::AF_INET as u8, StateSet::DEFAULT, &[]), 7).unwrap();
        assert_eq!(out.len(), 16 + 56);
        assert_eq!(&out[0..4], &ne32(72));
        assert_eq!(&out[4..6], &ne16(20)); // SOCK_DIAG_BY_FAMILY
        assert_eq!(&out[6..8], &ne16(NLM_F_REQUEST | NLM_F_DUMP));
        assert_eq!(&out[8..12], &ne32(7));
        assert_eq!(&out[16..20], &[libc::AF_INET as u8, 6, 0, 0]);
        assert_eq!(&out[20..24], &ne32(StateSet::DEFAULT.bits()));
        assert_eq!(&out[24..64], &[0u8; 40][..]); // ports, addresses, ifindex
        assert_eq!(&out[64..72], &[0xff; 8]); // no cookie
    }

    #[test]
    fn dump_request_with_bytecode_fixes_length() {
        let mut out = vec![0xAA]; // appending after existing bytes
        let spec = DumpSpec {
            sport: 0,
            dport: 443,
            ..DumpSpec::new(libc::AF_INET6 as u8, StateSet::ALL, &[1, 4, 8, 0, 0, 0, 0, 0])
        };
        encode_dump(&mut out, &spec, 1).unwrap();
        let msg = &out[1..];
        assert_eq!(msg.len(), 72 + 4 + 8);
        assert_eq!(&msg[0..4], &ne32(84));
        assert_eq!(&msg[72..74], &ne16(12));
        assert_eq!(&msg[74..76], &ne16(INET_DIAG_REQ_BYTECODE));
        assert_eq!(&msg[76..], &[1, 4, 8, 0, 0, 0, 0, 0]);
        assert_eq!(&msg[26..28], &443u16.to_be_bytes()); // idiag_dport, network order
        let back = decode_dump_request(msg).unwrap();
        assert_eq!(back.bytecode, vec![1, 4, 8, 0, 0, 0, 0, 0]);
        assert_eq!(back.family, libc::AF_INET6 as u8);
        assert_eq!((back.sport, back.dport), (0, 443));
    }

    #[test]
    fn one_walk_request_known_bytes() {
        let mut out = vec![0xAA]; // appending after existing bytes
        let spec = DumpSpec {
            sport: 0,
            dport: 443,
            ..DumpSpec::new(libc::AF_UNSPEC as u8, StateSet::DEFAULT, &[1, 4, 8, 0, 0, 0, 0, 0])
        };
        encode_dump(&mut out, &spec, 9).unwrap();
        let msg = &out[1..];
        assert_eq!(msg.len(), 16 + 60 + 4 + 8);
        assert_eq!(&msg[0..4], &ne32(88));
        assert_eq!(&msg[4..6], &ne16(18)); // TCPDIAG_GETSOCK
        assert_eq!(&msg[6..8], &ne16(NLM_F_REQUEST | NLM_F_DUMP));
        assert_eq!(&msg[8..12], &ne32(9));
        assert_eq!(&msg[16..20], &[0, 0, 0, 0]); // AF_UNSPEC, src_len, dst_len, ext
        assert_eq!(&msg[20..22], &0u16.to_be_bytes()); // sport
        assert_eq!(&msg[22..24], &443u16.to_be_bytes()); // dport, network order
        assert_eq!(&msg[24..60], &[0u8; 36][..]); // addresses, interface
        assert_eq!(&msg[60..68], &[0xff; 8]); // no cookie
        assert_eq!(&msg[68..72], &ne32(StateSet::DEFAULT.bits()));
        assert_eq!(&msg[72..76], &ne32(0)); // dbs
        assert_eq!(&msg[76..78], &ne16(12));
        assert_eq!(&msg[78..80], &ne16(INET_DIAG_REQ_BYTECODE));
        assert_eq!(&msg[80..], &[1, 4, 8, 0, 0, 0, 0, 0]);
        let back = decode_dump_request(msg).unwrap();
        assert_eq!((back.family, back.dport, back.states), (0, 443, StateSet::DEFAULT.bits()));
        assert_eq!(back.bytecode, vec![1, 4, 8, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn reads_mark_and_cgroup_and_skips_the_rest() {
        let mut dg = socket_reply(3, 2, 1, 7);
        // Replace the unknown attribute by: MARK (u32), an unknown one, CGROUP_ID (u64).
        dg.truncate(16 + 72);
        dg.extend_from_slice(&ne16(8));
        dg.extend_from_slice(&ne16(INET_DIAG_MARK));
        dg.extend_from_slice(&ne32(0x42));
        dg.extend_from_slice(&ne16(5));
        dg.extend_from_slice(&ne16(77));
        dg.extend_from_slice(&[9, 0, 0, 0]);
        dg.extend_from_slice(&ne16(12));
        dg.extend_from_slice(&ne16(INET_DIAG_CGROUP_ID));
        dg.extend_from_slice(&0x1234_5678_9abc_u64.to_ne_bytes());
        let len = dg.len() as u32;
        dg[0..4].copy_from_slice(&ne32(len));
        match &decode(&dg).unwrap()[0] {
            Reply::Socket { socket, .. } => {
                assert_eq!(socket.mark, Some(0x42));
                assert_eq!(socket.cgroup, 0x1234_5678_9abc);
            }
            other => panic!("unexpected {other:?}"),
        }
        // A one-walk reply (type 18) is a socket too; without attributes nothing is known.
        let mut one = socket_reply(4, 2, 1, 8);
        one.truncate(16 + 72);
        one[0..4].copy_from_slice(&ne32(88));
        one[4..6].copy_from_slice(&ne16(TCPDIAG_GETSOCK));
        match &decode(&one).unwrap()[0] {
            Reply::Socket { seq: 4, socket, .. } => assert_eq!((socket.mark, socket.cgroup), (None, 0)),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn oversized_bytecode_is_an_error_not_a_truncated_length() {
        let mut out = Vec::new();
        let fits = vec![0; MAX_BYTECODE];
        assert!(encode_dump(&mut out, &DumpSpec::new(2, StateSet::ALL, &fits), 1).is_ok());
        out.clear();
        let too_long = vec![0; MAX_BYTECODE + 4];
        assert!(encode_dump(&mut out, &DumpSpec::new(2, StateSet::ALL, &too_long), 1).is_err());
        assert!(out.is_empty());
    }

    #[test]
    fn destroy_request_carries_the_exact_socket_id() {
        let mut s = TcpSocket::for_test(
            "10.0.0.1:4000".parse().unwrap(),
            "10.0.0.2:80".parse().unwrap(),
            TcpState::Established,
        );
        s.id.cookie = [1, 2, 3, 4, 5, 6, 7, 8];
        s.id.interface_id = 3;
        let mut out = Vec::new();
        encode_destroy(&mut out, &s, 42);
        assert_eq!(out.len(), 72);
        assert_eq!(&out[4..6], &ne16(21)); // SOCK_DESTROY
        assert_eq!(&out[6..8], &ne16(NLM_F_REQUEST | NLM_F_ACK));
        assert_eq!(&out[8..12], &ne32(42));
        assert_eq!(&out[24..26], &4000u16.to_be_bytes());
        assert_eq!(&out[26..28], &80u16.to_be_bytes());
        assert_eq!(&out[28..32], &[10, 0, 0, 1]);
        assert_eq!(&out[44..48], &[10, 0, 0, 2]);
        assert_eq!(&out[60..64], &ne32(3));
        assert_eq!(&out[64..72], &[1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn unix_peer_request_known_bytes() {
        let mut out = Vec::new();
        encode_unix_peer(&mut out, 0x1234, 5);
        assert_eq!(out.len(), 16 + 24);
        assert_eq!(&out[4..6], &ne16(20));
        assert_eq!(&out[6..8], &ne16(NLM_F_REQUEST | NLM_F_ACK));
        assert_eq!(out[16], libc::AF_UNIX as u8);
        assert_eq!(&out[24..28], &ne32(0x1234)); // udiag_ino
        assert_eq!(&out[28..32], &ne32(4)); // UDIAG_SHOW_PEER
        assert_eq!(&out[32..40], &[0xff; 8]);
    }

    /// A reply as the kernel builds it: header + inet_diag_msg (72 bytes) + one attribute.
    pub(crate) fn socket_reply(seq: u32, flags: u16, state: u8, cookie: u32) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&ne32(0)); // length, fixed below
        m.extend_from_slice(&ne16(SOCK_DIAG_BY_FAMILY));
        m.extend_from_slice(&ne16(flags));
        m.extend_from_slice(&ne32(seq));
        m.extend_from_slice(&ne32(0));
        m.extend_from_slice(&[libc::AF_INET as u8, state, 0, 0]);
        m.extend_from_slice(&5000u16.to_be_bytes());
        m.extend_from_slice(&443u16.to_be_bytes());
        m.extend_from_slice(&[127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        m.extend_from_slice(&[127, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        m.extend_from_slice(&ne32(0)); // ifindex
        m.extend_from_slice(&ne32(cookie)); // cookie low
        m.extend_from_slice(&ne32(0x1)); // cookie high
        m.extend_from_slice(&[0; 8]); // expires, rqueue
        m.extend_from_slice(&ne32(0)); // wqueue
        m.extend_from_slice(&ne32(1000)); // uid
        m.extend_from_slice(&ne32(98765)); // inode
                                           // An attribute type no version of us knows, with an odd length.
        m.extend_from_slice(&ne16(4 + 5));
        m.extend_from_slice(&ne16(99));
        m.extend_from_slice(&[1, 2, 3, 4, 5, 0, 0, 0]);
        let len = m.len() as u32;
        m[0..4].copy_from_slice(&ne32(len));
        m
    }

    fn ack(seq: u32, code: i32) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&ne32(36));
        m.extend_from_slice(&ne16(NLMSG_ERROR));
        m.extend_from_slice(&ne16(0));
        m.extend_from_slice(&ne32(seq));
        m.extend_from_slice(&ne32(0));
        m.extend_from_slice(&code.to_ne_bytes());
        m.extend_from_slice(&[0; 16]); // the request's header (NETLINK_CAP_ACK)
        m
    }

    pub(crate) fn done(seq: u32, code: i32) -> Vec<u8> {
        let mut m = vec![0; 20];
        m[0..4].copy_from_slice(&ne32(20));
        m[4..6].copy_from_slice(&ne16(NLMSG_DONE));
        m[6..8].copy_from_slice(&ne16(2));
        m[8..12].copy_from_slice(&ne32(seq));
        m[16..20].copy_from_slice(&code.to_ne_bytes());
        m
    }

    #[test]
    fn decodes_sockets_acks_errors_and_done() {
        let mut dg = socket_reply(3, 2, 1, 0x1234);
        dg.extend(ack(9, 0));
        dg.extend(ack(10, -libc::ENOENT));
        dg.extend(done(3, 0));
        dg.extend(done(4, -libc::ENOMEM));
        let replies = decode(&dg).unwrap();
        assert_eq!(replies.len(), 5);
        match &replies[0] {
            Reply::Socket { seq: 3, socket, interrupted: false } => {
                assert_eq!(socket.local(), "127.0.0.1:5000".parse().unwrap());
                assert_eq!(socket.peer(), "127.0.0.2:443".parse().unwrap());
                assert_eq!(socket.state, Some(TcpState::Established));
                assert_eq!(socket.cookie(), 0x1_0000_1234);
                assert_eq!((socket.uid, socket.inode), (1000, 98765));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(replies[1], Reply::Ack { seq: 9 }));
        assert!(matches!(replies[2], Reply::Error { seq: 10, errno: libc::ENOENT }));
        assert!(matches!(replies[3], Reply::Done { seq: 3, interrupted: false, errno: 0 }));
        assert!(matches!(replies[4], Reply::Done { seq: 4, errno: libc::ENOMEM, .. }));
    }

    #[test]
    fn reports_dump_interrupted() {
        let dg = socket_reply(3, 2 | NLM_F_DUMP_INTR, 1, 1);
        assert!(matches!(decode(&dg).unwrap()[0], Reply::Socket { interrupted: true, .. }));
    }

    #[test]
    fn truncated_and_bad_lengths_are_errors() {
        let dg = socket_reply(3, 2, 1, 1);
        for cut in [1, 15, 16, 40, 87] {
            // The length field claims the full message: longer than the buffer.
            assert!(decode(&dg[..cut]).is_err(), "cut at {cut}");
            if cut >= 16 {
                // The length claims exactly the cut: the payload is too short for inet_diag_msg.
                let mut short = dg[..cut].to_vec();
                short[0..4].copy_from_slice(&ne32(cut as u32));
                assert!(decode(&short).is_err(), "cut at {cut} with a matching length");
            }
        }
        let mut zero = dg.clone();
        zero[0..4].copy_from_slice(&ne32(0));
        assert!(decode(&zero).is_err());
    }
}
