//! A model of the kernel's sock_diag bytecode verifier (`inet_diag_bc_audit`)
//! and interpreter (`inet_diag_bc_run`, net/ipv4/inet_diag.c), for tests
//! without root: every program we compile must pass the audit and select
//! what the user-space match selects.

use std::net::IpAddr;

use crate::socket::TcpSocket;

const OP_LEN: usize = 4;

/// What the kernel compares for one socket (`struct inet_diag_entry`).
#[derive(Debug, Clone)]
pub struct Entry {
    pub family: u8,
    pub saddr: Vec<u8>,
    pub daddr: Vec<u8>,
    pub sport: u16,
    pub dport: u16,
    pub ifindex: u32,
    pub mark: u32,
    pub cgroup: u64,
    /// No SOCK_BINDPORT_LOCK (the kernel chose the port).
    pub auto: bool,
}

impl Entry {
    /// The entry of `sock`; `auto` stands for the bind lock the dump does not report.
    pub fn of(sock: &TcpSocket, auto: bool) -> Entry {
        let bytes = |ip: IpAddr| match ip {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        Entry {
            family: if sock.family() == "inet6" { libc::AF_INET6 as u8 } else { libc::AF_INET as u8 },
            saddr: bytes(sock.local().ip()),
            daddr: bytes(sock.peer().ip()),
            sport: sock.local().port(),
            dport: sock.peer().port(),
            ifindex: sock.interface(),
            mark: sock.mark.unwrap_or(0),
            cgroup: sock.cgroup,
            auto,
        }
    }
}

fn u16_at(bc: &[u8], at: usize) -> usize {
    usize::from(u16::from_ne_bytes([bc[at], bc[at + 1]]))
}

fn bits_match(addr: &[u8], cond: &[u8], bits: usize) -> bool {
    (0..bits).all(|i| {
        let bit = |b: &[u8]| b.get(i / 8).is_some_and(|byte| byte & (0x80 >> (i % 8)) != 0);
        bit(addr) == bit(cond)
    })
}

/// Whether the kernel accepts the program (`inet_diag_bc_audit` and `valid_cc`).
pub fn audit(bc: &[u8]) -> Result<(), String> {
    let total = bc.len();
    // The op boundaries reachable by stepping `yes` from the start.
    let mut boundaries = vec![0usize];
    let mut at = 0;
    while at < total {
        let yes = usize::from(bc[at + 1]);
        if yes < OP_LEN || yes % 4 != 0 {
            return Err(format!("op at {at}: yes {yes}"));
        }
        at += yes;
        boundaries.push(at);
    }
    let mut at = 0;
    while at < total {
        let remaining = total - at;
        let (code, yes, no) = (bc[at], usize::from(bc[at + 1]), u16_at(bc, at + 2));
        let min = match code {
            1 => OP_LEN,                                                   // JMP
            2..=6 => if code == 6 { OP_LEN } else { 2 * OP_LEN },          // ports, AUTO
            7 | 8 => OP_LEN + 8 + if bc[at + 4] == libc::AF_INET6 as u8 { 16 } else { 4 }, // host
            9 => OP_LEN + 4,                                               // DEV
            10 | 13 => OP_LEN + 8,                                         // MARK, CGROUP
            other => return Err(format!("op at {at}: unknown code {other}")),
        };
        if matches!(code, 7 | 8) {
            let (family, plen) = (bc[at + 4], usize::from(bc[at + 5]));
            let max = match family {
                f if f == libc::AF_INET as u8 => 32,
                f if f == libc::AF_INET6 as u8 => 128,
                0 => 0,
                _ => return Err(format!("op at {at}: family {family}")),
            };
            if plen > max {
                return Err(format!("op at {at}: prefix {plen}"));
            }
        }
        if yes < min || yes > remaining + 4 {
            return Err(format!("op at {at}: yes {yes} (min {min}, remaining {remaining})"));
        }
        if no < OP_LEN || no > remaining + 4 || no % 4 != 0 {
            return Err(format!("op at {at}: no {no} (remaining {remaining})"));
        }
        if no < remaining && !boundaries.contains(&(at + no)) {
            return Err(format!("op at {at}: no {no} lands inside an op"));
        }
        at += yes;
    }
    Ok(())
}

/// Whether the kernel's interpreter accepts the entry.
pub fn run(bc: &[u8], e: &Entry) -> bool {
    let total = bc.len();
    let mut at = 0;
    while at < total {
        let (code, yes, no) = (bc[at], usize::from(bc[at + 1]), u16_at(bc, at + 2));
        let port = || u16_at(bc, at + 6) as u16;
        let ok = match code {
            1 => false,
            2 => e.sport >= port(),
            3 => e.sport <= port(),
            4 => e.dport >= port(),
            5 => e.dport <= port(),
            6 => e.auto,
            7 | 8 => {
                let (family, plen) = (bc[at + 4], usize::from(bc[at + 5]));
                let cport = i32::from_ne_bytes([bc[at + 8], bc[at + 9], bc[at + 10], bc[at + 11]]);
                let caddr = &bc[at + 12..at + yes];
                let (addr, p) = if code == 7 { (&e.saddr, e.sport) } else { (&e.daddr, e.dport) };
                if cport != -1 && cport != i32::from(p) {
                    false
                } else if family != 0 && family != e.family {
                    // An IPv4 condition holds for an IPv4-mapped IPv6 address.
                    e.family == libc::AF_INET6 as u8
                        && family == libc::AF_INET as u8
                        && addr[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]
                        && bits_match(&addr[12..], caddr, plen)
                } else {
                    plen == 0 || bits_match(addr, caddr, plen)
                }
            }
            9 => e.ifindex == u32::from_ne_bytes([bc[at + 4], bc[at + 5], bc[at + 6], bc[at + 7]]),
            10 => {
                let w = |o: usize| u32::from_ne_bytes([bc[o], bc[o + 1], bc[o + 2], bc[o + 3]]);
                e.mark & w(at + 8) == w(at + 4)
            }
            13 => {
                let mut id = [0u8; 8];
                id.copy_from_slice(&bc[at + 4..at + 12]);
                e.cgroup == u64::from_ne_bytes(id)
            }
            _ => false,
        };
        at += if ok { yes } else { no };
    }
    at == total
}
