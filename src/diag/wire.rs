//! The bytes of sock_diag: requests we send and the replies we read. No I/O here.
//!
//! Requests are built with netlink-packet-core / netlink-packet-sock-diag; the
//! bytecode attribute they lack is appended by hand. Replies are decoded
//! header by header with `NetlinkBuffer::new_checked`, and of each socket only
//! the fixed `inet_diag_msg` is parsed: attributes are not requested, and
//! skipping them means a kernel that sends new or resized ones still parses.

use netlink_packet_core::{
    ErrorBuffer, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, Parseable, NLMSG_DONE, NLMSG_ERROR,
    NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, InetResponseHeader, SocketId, StateFlags};
use netlink_packet_sock_diag::{SockDiagDestroy, SockDiagMessage, IPPROTO_TCP, SOCK_DIAG_BY_FAMILY};

use crate::error::{Error, Result};
use crate::filter::StateSet;
use crate::sock::Socket;

const INET_DIAG_REQ_BYTECODE: u16 = 1;
const NLA_HDR_LEN: usize = 4;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Appends a dump request for one address family's TCP sockets in `states`,
/// filtered in the kernel by `bytecode` (see [`super::bytecode`]; empty = none).
pub fn encode_dump(out: &mut Vec<u8>, family: u8, states: StateSet, bytecode: &[u8], seq: u32) {
    let mut socket_id = SocketId::new_v4();
    socket_id.cookie = [0xff; 8]; // INET_DIAG_NOCOOKIE: not asking for one socket
    let req = InetRequest {
        family,
        protocol: IPPROTO_TCP,
        extensions: ExtensionFlags::empty(),
        states: StateFlags::from_bits_retain(states.bits()),
        socket_id,
    };
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = seq;
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::from(SockDiagMessage::InetRequest(req)));
    msg.finalize();
    let start = out.len();
    let base_len = msg.buffer_len();
    out.resize(start + base_len, 0);
    msg.serialize(&mut out[start..]);
    if !bytecode.is_empty() {
        let nla_len = NLA_HDR_LEN + bytecode.len();
        out.extend_from_slice(&(nla_len as u16).to_ne_bytes());
        out.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
        out.extend_from_slice(bytecode);
        out.resize(start + align4(base_len + nla_len), 0);
        let total = (out.len() - start) as u32;
        NetlinkBuffer::new(&mut out[start..]).set_length(total);
    }
}

/// Appends a SOCK_DESTROY request (with NLM_F_ACK) for exactly the socket `sock`
/// that a dump returned: same family, addresses, ports, interface and cookie.
pub fn encode_destroy(out: &mut Vec<u8>, sock: &Socket, seq: u32) {
    let req = InetRequest {
        family: sock.af,
        protocol: IPPROTO_TCP,
        extensions: ExtensionFlags::empty(),
        states: StateFlags::from_bits_retain(StateSet::ALL.bits()),
        socket_id: sock.id.clone(),
    };
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK;
    header.sequence_number = seq;
    let payload = NetlinkPayload::from(SockDiagDestroy::new(SockDiagMessage::InetRequest(req)));
    let mut msg = NetlinkMessage::new(header, payload);
    msg.finalize();
    let start = out.len();
    out.resize(start + msg.buffer_len(), 0);
    msg.serialize(&mut out[start..]);
}

/// One message of a reply datagram.
#[derive(Debug)]
pub enum Reply {
    /// A socket of a dump. `interrupted` is the kernel's NLM_F_DUMP_INTR: the
    /// table changed under the dump and its view may be inconsistent.
    Socket { seq: u32, socket: Socket, interrupted: bool },
    /// End of a dump.
    Done { seq: u32, interrupted: bool },
    /// An ack (`errno == 0`) or an error (`errno` positive, e.g. `libc::ENOENT`).
    Ack { seq: u32, errno: i32 },
}

/// Decodes every netlink message in one datagram, handing each to `each`
/// (no allocation per message: a dump datagram carries hundreds of sockets).
pub fn decode_each(datagram: &[u8], mut each: impl FnMut(Reply)) -> Result<()> {
    let mut rest = datagram;
    while !rest.is_empty() {
        let buf = NetlinkBuffer::new_checked(rest).map_err(|e| Error::Decode(e.to_string()))?;
        let len = buf.length() as usize;
        let seq = buf.sequence_number();
        let interrupted = buf.flags() & NLM_F_DUMP_INTR != 0;
        match buf.message_type() {
            NLMSG_DONE => each(Reply::Done { seq, interrupted }),
            NLMSG_ERROR => {
                let err = ErrorBuffer::new_checked(buf.payload()).map_err(|e| Error::Decode(e.to_string()))?;
                let errno = err.code().map_or(0, |c| c.get().saturating_neg());
                each(Reply::Ack { seq, errno });
            }
            SOCK_DIAG_BY_FAMILY => {
                let payload = buf.payload();
                let h = InetResponseHeader::parse(payload).map_err(|e| Error::Decode(e.to_string()))?;
                let socket = Socket::from_kernel(h.family, h.state, h.socket_id, h.uid, h.inode);
                each(Reply::Socket { seq, socket, interrupted });
            }
            // NLMSG_NOOP / NLMSG_OVERRUN or anything new: nothing for us.
            _ => {}
        }
        rest = rest.get(align4(len)..).unwrap_or(&[]);
    }
    Ok(())
}

/// Decodes every netlink message in one datagram into a vector.
pub fn decode(datagram: &[u8]) -> Result<Vec<Reply>> {
    let mut out = Vec::new();
    decode_each(datagram, |r| out.push(r))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
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
        encode_dump(&mut out, libc::AF_INET as u8, StateSet::DEFAULT, &[], 7);
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
        encode_dump(&mut out, libc::AF_INET6 as u8, StateSet::ALL, &[1, 4, 8, 0, 0, 0, 0, 0], 1);
        let msg = &out[1..];
        assert_eq!(msg.len(), 72 + 4 + 8);
        assert_eq!(&msg[0..4], &ne32(84));
        assert_eq!(&msg[72..74], &ne16(12));
        assert_eq!(&msg[74..76], &ne16(INET_DIAG_REQ_BYTECODE));
        assert_eq!(&msg[76..], &[1, 4, 8, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn destroy_request_carries_the_exact_socket_id() {
        let mut s =
            Socket::for_test("10.0.0.1:4000".parse().unwrap(), "10.0.0.2:80".parse().unwrap(), TcpState::Established);
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

    /// A reply as the kernel builds it: header + inet_diag_msg (72 bytes) + one attribute.
    pub(crate) fn socket_reply(seq: u32, flags: u16, state: u8) -> Vec<u8> {
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
        m.extend_from_slice(&ne32(0x1234)); // cookie low
        m.extend_from_slice(&ne32(0x1)); // cookie high
        m.extend_from_slice(&[0; 8]); // expires, rqueue
        m.extend_from_slice(&ne32(0)); // wqueue
        m.extend_from_slice(&ne32(1000)); // uid
        m.extend_from_slice(&ne32(98765)); // inode
                                           // an attribute type no version of us knows, with an odd length
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

    #[test]
    fn decodes_sockets_acks_and_done() {
        let mut dg = socket_reply(3, 2, 1);
        dg.extend(ack(9, 0));
        dg.extend(ack(10, -libc::ENOENT));
        let mut done = vec![0; 20];
        done[0..4].copy_from_slice(&ne32(20));
        done[4..6].copy_from_slice(&ne16(NLMSG_DONE));
        done[8..12].copy_from_slice(&ne32(3));
        dg.extend(done);
        let replies = decode(&dg).unwrap();
        assert_eq!(replies.len(), 4);
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
        assert!(matches!(replies[1], Reply::Ack { seq: 9, errno: 0 }));
        assert!(matches!(replies[2], Reply::Ack { seq: 10, errno: libc::ENOENT }));
        assert!(matches!(replies[3], Reply::Done { seq: 3, interrupted: false }));
    }

    #[test]
    fn reports_dump_interrupted() {
        let dg = socket_reply(3, 2 | NLM_F_DUMP_INTR, 1);
        assert!(matches!(decode(&dg).unwrap()[0], Reply::Socket { interrupted: true, .. }));
    }

    #[test]
    fn truncated_and_bad_lengths_are_errors_not_panics() {
        let dg = socket_reply(3, 2, 1);
        for cut in [1, 15, 16, 40, 87] {
            let mut short = dg[..cut].to_vec();
            if cut >= 4 {
                // length claims the full message: longer than the buffer
                assert!(decode(&short).is_err(), "cut at {cut}");
                // length claims exactly the cut: payload too short for inet_diag_msg
                let l = cut as u32;
                short[0..4].copy_from_slice(&ne32(l));
                let _ = decode(&short); // must not panic; an error when it is not a full header
            } else {
                assert!(decode(&short).is_err());
            }
        }
        let mut zero = dg.clone();
        zero[0..4].copy_from_slice(&ne32(0));
        assert!(decode(&zero).is_err());
    }
}
