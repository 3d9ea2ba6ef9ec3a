//! Library-level tests against the real kernel, in private network namespaces:
//! what the kernel's bytecode filter returns by itself, and cookie-exact destroys.

mod common;

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;

use common::*;
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn};
use sockkill::diag::{bytecode, DestroyResult, DiagSocket};
use sockkill::filter::parse_cidr;
use sockkill::{Filter, Socket, StateSet};

fn kernel_dump(filter: &Filter) -> BTreeSet<(String, String)> {
    let mut diag = DiagSocket::open().unwrap();
    let bc = bytecode::compile(filter);
    let mut out = BTreeSet::new();
    for af in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        diag.dump(af, filter.states, &bc, |s| {
            out.insert((s.local().to_string(), s.peer().to_string()));
        })
        .unwrap();
    }
    out
}

/// The kernel alone (bytecode, no user-side re-check) returns exactly what the
/// user-side matcher selects from an unfiltered dump: a wrong op code (4 for
/// D_COND), a wrong jump or a wrong byte order shows up here.
#[test]
fn bytecode_filters_in_the_kernel() {
    in_private_netns(|| {
        let a = Echo::start("127.0.0.2:0");
        let a2 = Echo::start("127.0.0.2:0");
        let b = Echo::start("127.0.0.3:0");
        let v6 = Echo::start("[::1]:0");
        let dual = Echo::start("[::]:0");
        let mapped: SocketAddr = format!("[::ffff:127.0.0.4]:{}", dual.addr.port()).parse().unwrap();
        let _conns: Vec<Conn> =
            [a.addr, a.addr, a2.addr, b.addr, v6.addr, mapped].into_iter().map(Conn::open).collect();

        let everything = Filter { states: StateSet::ALL, ..Filter::default() };
        let all = kernel_dump(&everything);
        assert!(all.len() >= 17, "{all:?}"); // 6 pairs + 5 listeners

        let f = |dst: &[&str], src: &[&str], dport: &[&str], sport: &[&str]| Filter {
            dst: dst.iter().map(|s| parse_cidr(s).unwrap()).collect(),
            src: src.iter().map(|s| parse_cidr(s).unwrap()).collect(),
            dport: dport.iter().map(|s| s.parse().unwrap()).collect(),
            sport: sport.iter().map(|s| s.parse().unwrap()).collect(),
            states: StateSet::ALL,
            ..Filter::default()
        };
        let pa = a.addr.port().to_string();
        let pb = b.addr.port().to_string();
        let p6 = v6.addr.port().to_string();
        let range = format!("{}-{}", a.addr.port().min(a2.addr.port()), a.addr.port().max(a2.addr.port()));
        let cases = vec![
            f(&["127.0.0.2"], &[], &[], &[]),
            f(&["127.0.0.2", "127.0.0.3"], &[], &[], &[]),
            f(&["127.0.0.0/30"], &[], &[], &[]),
            f(&["127.0.0.4"], &[], &[], &[]),
            f(&["::1"], &[], &[], &[]),
            f(&[], &["127.0.0.2"], &[], &[]),
            f(&[], &[], &[pa.as_str()], &[]),
            f(&[], &[], &[pa.as_str(), pb.as_str()], &[]),
            f(&[], &[], &[range.as_str()], &[]),
            f(&[], &[], &[], &[pa.as_str()]),
            f(&["127.0.0.2"], &[], &[pa.as_str()], &[]),
            f(&["127.0.0.2", "::1"], &["127.0.0.1", "::1"], &[pa.as_str(), p6.as_str()], &[]),
            Filter { family: Some(sockkill::Family::V4), ..f(&[], &[], &[], &[]) },
        ];
        for filter in cases {
            let by_kernel = kernel_dump(&filter);
            let mut by_user = BTreeSet::new();
            for af in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
                DiagSocket::open()
                    .unwrap()
                    .dump(af, StateSet::ALL, &[], |s| {
                        if filter.matches(&s) {
                            by_user.insert((s.local().to_string(), s.peer().to_string()));
                        }
                    })
                    .unwrap();
            }
            assert!(!by_user.is_empty(), "case selects nothing: {filter:?}");
            assert!(by_user.len() < all.len(), "case selects everything: {filter:?}");
            assert_eq!(by_kernel, by_user, "kernel and user-side disagree for {filter:?}");
        }
    });
}

fn connect_from(local: SocketAddr, to: SocketAddr) -> TcpStream {
    let fd = socket::socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).unwrap();
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true).unwrap();
    let SocketAddr::V4(l) = local else { unreachable!() };
    let SocketAddr::V4(t) = to else { unreachable!() };
    socket::bind(fd.as_raw_fd(), &SockaddrIn::from(l)).unwrap();
    socket::connect(fd.as_raw_fd(), &SockaddrIn::from(t)).unwrap();
    TcpStream::from(fd)
}

fn abort_close(s: TcpStream) {
    // SO_LINGER 0: close sends RST, leaving no TIME-WAIT on this 4-tuple.
    socket::setsockopt(&s, sockopt::Linger, &libc::linger { l_onoff: 1, l_linger: 0 }).unwrap();
    drop(s);
}

fn find(dst: &str, local: SocketAddr) -> Vec<Socket> {
    dump_dst(dst).into_iter().filter(|s| s.local() == local).collect()
}

/// A socket id from an earlier dump never hits a newer connection on the same 4-tuple.
#[test]
fn stale_cookie_is_already_gone_and_spares_the_new_connection() {
    in_private_netns(|| {
        let up = Echo::start("127.0.0.2:0");
        let local: SocketAddr = "127.0.0.1:40123".parse().unwrap();
        let old = connect_from(local, up.addr);
        let mut c = Conn { local, peer: up.addr, stream: old.try_clone().unwrap() };
        c.assert_alive();
        let old_sock = find("127.0.0.2", local).pop().expect("old socket dumped");
        drop(c);
        old.set_nonblocking(true).unwrap();
        abort_close(old);

        // Same 4-tuple, new connection (new cookie).
        let stream = connect_from(local, up.addr);
        stream.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        let mut new = Conn { local, peer: up.addr, stream };
        new.assert_alive();
        let new_sock = find("127.0.0.2", local).pop().expect("new socket dumped");
        assert_eq!((new_sock.local(), new_sock.peer()), (old_sock.local(), old_sock.peer()));
        assert_ne!(new_sock.cookie(), old_sock.cookie());

        assert_not_root_netns();
        let mut diag = DiagSocket::open().unwrap();
        assert_eq!(diag.destroy(&[&old_sock]).unwrap(), vec![DestroyResult::Gone]);
        new.assert_alive();

        // Through the engine the stale socket counts as already gone, not failed.
        let mut engine = sockkill::Engine::open(None).unwrap();
        let acted = engine.destroy(vec![old_sock], 1, std::time::Instant::now(), 0).unwrap();
        assert_eq!(acted[0].outcome, sockkill::Outcome::AlreadyGone);
        new.assert_alive();

        assert_eq!(diag.destroy(&[&new_sock]).unwrap(), vec![DestroyResult::Destroyed]);
        new.assert_killed();
    });
}

/// Many destroys in one sendmsg, each acknowledged.
#[test]
fn pipelined_destroys_are_all_acknowledged() {
    in_private_netns(|| {
        let up = Echo::start("127.0.0.2:0");
        let conns: Vec<TcpStream> = (0..600).map(|_| TcpStream::connect(up.addr).unwrap()).collect();
        let targets = dump_dst("127.0.0.2");
        assert_eq!(targets.len(), 600);
        assert_not_root_netns();
        let refs: Vec<&Socket> = targets.iter().collect();
        let results = DiagSocket::open().unwrap().destroy(&refs).unwrap();
        assert_eq!(results.len(), 600);
        assert!(results.iter().all(|r| *r == DestroyResult::Destroyed), "{results:?}");
        assert!(dump_dst("127.0.0.2").is_empty());
        drop(conns);
    });
}
