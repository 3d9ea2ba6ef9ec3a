//! The real receive loop fed with crafted replies: what the kernel rarely
//! does on demand (flag a dump inconsistent, end it with an error, return a
//! socket twice) through a datagram socket pair standing in for the kernel.

use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::thread::JoinHandle;

use nix::sys::socket::{recv, send, socketpair, AddressFamily, MsgFlags, SockFlag, SockType};
use sockkill::diag::{DumpSpec, DumpStatus, SockDiag};
use sockkill::engine::dump_family;
use sockkill::engine::Query;
use sockkill::filter::parse_cidr;
use sockkill::{Filter, StateSet};

const NLMSG_DONE: u16 = 3;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_MULTI: u16 = 2;
const NLM_F_DUMP_INTR: u16 = 16;

/// An inet_diag_msg for an ESTABLISHED IPv4 socket 127.0.0.1:5000 -> 127.0.0.2:443.
fn socket_body(cookie: u32) -> Vec<u8> {
    let mut b = vec![0u8; 72];
    b[0] = libc::AF_INET as u8;
    b[1] = 1; // ESTABLISHED
    b[4..6].copy_from_slice(&5000u16.to_be_bytes());
    b[6..8].copy_from_slice(&443u16.to_be_bytes());
    b[8..12].copy_from_slice(&[127, 0, 0, 1]);
    b[24..28].copy_from_slice(&[127, 0, 0, 2]);
    b[44..48].copy_from_slice(&cookie.to_ne_bytes());
    b
}

fn message(ty: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&((16 + payload.len()) as u32).to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(payload);
    m
}

/// A SockDiag whose "kernel" answers the first request with the datagrams `make(seq)` returns.
fn fake_kernel(make: impl FnOnce(u32) -> Vec<Vec<u8>> + Send + 'static) -> (SockDiag, JoinHandle<()>) {
    let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::Datagram, None, SockFlag::SOCK_CLOEXEC).unwrap();
    // SAFETY: a fresh fd we own, handed over to the netlink_sys wrapper.
    let sock = unsafe { netlink_sys::Socket::from_raw_fd(ours.into_raw_fd()) };
    let peer = std::thread::spawn(move || {
        let theirs: OwnedFd = theirs;
        let mut req = [0u8; 512];
        let n = recv(theirs.as_raw_fd(), &mut req, MsgFlags::empty()).unwrap();
        assert!(n >= 16 + 56, "a dump request");
        let seq = u32::from_ne_bytes(req[8..12].try_into().unwrap());
        for dg in make(seq) {
            send(theirs.as_raw_fd(), &dg, MsgFlags::empty()).unwrap();
        }
    });
    (SockDiag::from_socket(sock), peer)
}

#[test]
fn dump_interrupted_is_reported() {
    let (mut diag, peer) = fake_kernel(|seq| {
        let mut dg = message(SOCK_DIAG_BY_FAMILY, NLM_F_MULTI | NLM_F_DUMP_INTR, seq, &socket_body(1));
        dg.extend(message(NLMSG_DONE, NLM_F_MULTI, seq, &0i32.to_ne_bytes()));
        vec![dg]
    });
    let mut seen = 0;
    let status = diag.dump(&DumpSpec::new(libc::AF_INET as u8, StateSet::DEFAULT, &[]), |_| seen += 1).unwrap();
    peer.join().unwrap();
    assert_eq!(seen, 1);
    assert_eq!(status, DumpStatus::Interrupted);
}

/// NLMSG_DONE carries the dump's final status: a dump the kernel ended with
/// an error is not a complete (let alone an empty) view.
#[test]
fn a_dump_ended_with_an_error_is_an_error() {
    let (mut diag, peer) = fake_kernel(|seq| {
        let mut dg = message(SOCK_DIAG_BY_FAMILY, NLM_F_MULTI, seq, &socket_body(1));
        dg.extend(message(NLMSG_DONE, NLM_F_MULTI, seq, &(-libc::ENOMEM).to_ne_bytes()));
        vec![dg]
    });
    let err = diag.dump(&DumpSpec::new(libc::AF_INET as u8, StateSet::DEFAULT, &[]), |_| {}).unwrap_err();
    peer.join().unwrap();
    assert!(err.to_string().contains("Cannot allocate memory"), "{err}");
}

/// A dump under churn can return the same socket twice (in two datagrams):
/// the collect keeps it once.
#[test]
fn a_socket_returned_twice_is_collected_once() {
    let (mut diag, peer) = fake_kernel(|seq| {
        let one = message(SOCK_DIAG_BY_FAMILY, NLM_F_MULTI, seq, &socket_body(7));
        let mut first = one.clone();
        first.extend(message(SOCK_DIAG_BY_FAMILY, NLM_F_MULTI, seq, &socket_body(8)));
        let mut second = one;
        second.extend(message(NLMSG_DONE, NLM_F_MULTI, seq, &0i32.to_ne_bytes()));
        vec![first, second]
    });
    let query = Query::new(Filter { dst: vec![parse_cidr("127.0.0.2").unwrap()], ..Filter::default() }).unwrap();
    let got = dump_family(&mut diag, libc::AF_INET as u8, &query, libc::IPPROTO_TCP as u8).unwrap();
    peer.join().unwrap();
    let cookies: Vec<u64> = got.iter().map(|s| s.cookie()).collect();
    assert_eq!(cookies, vec![7, 8]);
}
