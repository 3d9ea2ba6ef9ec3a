//! Compiles a [`Filter`] into an `INET_DIAG_REQ_BYTECODE` program so the kernel
//! returns only matching sockets (netlink-packet-sock-diag has no support for
//! this attribute, so it lives here).
//!
//! The kernel's interpreter (`inet_diag_bc_run`) walks ops of
//! `{code: u8, yes: u8, no: u16}`: a true condition advances by `yes` bytes, a
//! false one by `no`. The socket matches when the walk ends exactly at the end
//! of the program; jumping 4 bytes past the end rejects it. The verifier
//! (`inet_diag_bc_audit`) requires every `yes` to step to the next op and every
//! `no` to land on an op boundary of that chain or at end+4.
//!
//! The flags' program is an AND of groups (dst, src, dport, sport, family),
//! each an OR of alternatives: every alternative but the last is followed by
//! a JMP (always false, so it takes `no`) to the end of its group, and a
//! failing condition jumps to the next alternative, or to reject after the
//! last one. ss's expression is compiled as ss compiles it
//! (`ssfilter_bytecompile`), by composing programs that fall off their end
//! on a match and jump 4 bytes past it otherwise, and ANDed after the flags.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::filter::expr::{Cmp, Expr, Side, Term};
use crate::filter::{Family, Filter, PortRange};

// enum in include/uapi/linux/inet_diag.h. D_COND is 8: 4 is D_GE, which the
// kernel accepts and which then filters nothing useful.
const BC_JMP: u8 = 1;
const BC_S_GE: u8 = 2;
const BC_S_LE: u8 = 3;
const BC_D_GE: u8 = 4;
const BC_D_LE: u8 = 5;
const BC_AUTO: u8 = 6;
const BC_S_COND: u8 = 7;
const BC_D_COND: u8 = 8;
const BC_DEV_COND: u8 = 9;
const BC_MARK_COND: u8 = 10;
const BC_CGROUP_COND: u8 = 13;

const OP_LEN: usize = 4;

/// One condition of an alternative, before jump offsets are known.
#[derive(Debug, Clone)]
enum Cond {
    /// Source (local) or destination (peer) address prefix (prefix 0: any
    /// address of that family; family 0: any address) and port (-1: any).
    Host { dst: bool, family: u8, prefix_len: u8, addr: Vec<u8>, port: i32 },
    /// Port >= or <= a bound, on the source or destination side.
    Port { code: u8, port: u16 },
    /// The inner condition must not hold: `[cond] [JMP to reject]`, where a
    /// false condition skips the JMP (the only negation the verifier allows:
    /// every `yes` must step to the next op).
    Not(Box<Cond>),
    /// Bound to this interface (`sk_bound_dev_if`): a u32 after the op.
    Dev(u32),
    /// `sk_mark & mask == value`: `struct inet_diag_markcond` after the op.
    Mark { value: u32, mask: u32 },
    /// Created in this cgroup v2: a u64 id after the op.
    Cgroup(u64),
    /// The local port was chosen by the kernel (no `SOCK_BINDPORT_LOCK`).
    Auto,
}

impl Cond {
    fn len(&self) -> usize {
        match self {
            Cond::Host { addr, .. } => OP_LEN + 8 + addr.len(),
            Cond::Port { .. } => 2 * OP_LEN,
            Cond::Not(inner) => inner.len() + OP_LEN,
            Cond::Dev(_) => OP_LEN + 4,
            Cond::Mark { .. } | Cond::Cgroup(_) => OP_LEN + 8,
            Cond::Auto => OP_LEN,
        }
    }
}

/// The conditions of one alternative must all hold.
type Alternative = Vec<Cond>;
/// One of the alternatives of a group must hold.
type Group = Vec<Alternative>;

/// `port` -1 is any port.
fn host(dst: bool, net: &IpNet, port: i32) -> Cond {
    let (family, addr) = match net.addr() {
        IpAddr::V4(a) => (libc::AF_INET as u8, a.octets().to_vec()),
        IpAddr::V6(a) => (libc::AF_INET6 as u8, a.octets().to_vec()),
    };
    Cond::Host { dst, family, prefix_len: net.prefix_len(), addr, port }
}

fn port_range(dst: bool, r: PortRange) -> Alternative {
    let (ge, le) = if dst { (BC_D_GE, BC_D_LE) } else { (BC_S_GE, BC_S_LE) };
    vec![Cond::Port { code: ge, port: r.lo }, Cond::Port { code: le, port: r.hi }]
}

fn groups(filter: &Filter) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    if !filter.dst.is_empty() {
        groups.push(filter.dst.iter().map(|n| vec![host(true, n, -1)]).collect());
    }
    if !filter.src.is_empty() {
        groups.push(filter.src.iter().map(|n| vec![host(false, n, -1)]).collect());
    }
    if !filter.dport.is_empty() {
        groups.push(filter.dport.iter().map(|r| port_range(true, *r)).collect());
    }
    if !filter.sport.is_empty() {
        groups.push(filter.sport.iter().map(|r| port_range(false, *r)).collect());
    }
    // -4/-6 look at the local address (a listener's peer is unspecified): an
    // AF_INET /0 source condition holds for IPv4 sockets and for IPv4-mapped
    // ones in the AF_INET6 dump, and for nothing else.
    let any_v4_local =
        Cond::Host { dst: false, family: libc::AF_INET as u8, prefix_len: 0, addr: vec![0; 4], port: -1 };
    match filter.family {
        Some(Family::V4) if filter.src.is_empty() => groups.push(vec![vec![any_v4_local]]),
        Some(Family::V6) => groups.push(vec![vec![Cond::Not(Box::new(any_v4_local))]]),
        _ => {}
    }
    if !filter.devs.is_empty() {
        groups.push(filter.devs.iter().map(|d| vec![Cond::Dev(*d)]).collect());
    }
    if !filter.marks.is_empty() {
        groups.push(filter.marks.iter().map(|m| vec![Cond::Mark { value: m.value, mask: m.mask }]).collect());
    }
    if !filter.cgroups.is_empty() {
        groups.push(filter.cgroups.iter().map(|c| vec![Cond::Cgroup(c.id)]).collect());
    }
    groups
}

/// The bytecode for `filter`, or an empty vector when the filter has no
/// condition the kernel evaluates (then no attribute is sent at all).
pub fn compile(filter: &Filter) -> Vec<u8> {
    let flags = compile_flags(filter);
    match &filter.expression {
        Some(e) => and(flags, expression(e)),
        None => flags,
    }
}

/// ss's composition: `a` then `b`, with `a`'s rejects moved past `b`.
fn and(mut a: Vec<u8>, b: Vec<u8>) -> Vec<u8> {
    let len = a.len();
    let mut at = 0;
    while at < len {
        let yes = usize::from(a[at + 1]);
        let no = usize::from(u16::from_ne_bytes([a[at + 2], a[at + 3]]));
        if at + no == len + 4 {
            a[at + 2..at + 4].copy_from_slice(&((no + b.len()) as u16).to_ne_bytes());
        }
        at += yes;
    }
    a.extend(b);
    a
}

/// The program of an expression: falls off its end on a match, jumps 4
/// bytes past it otherwise.
fn expression(e: &Expr) -> Vec<u8> {
    match e {
        Expr::Term(t) => term(t),
        Expr::Not(x) => not(expression(x)),
        Expr::And(a, b) => and(expression(a), expression(b)),
        Expr::Or(a, b) => {
            // [a][JMP to our end][b]: a's reject (its end + 4) is b's start.
            let mut p = expression(a);
            let b = expression(b);
            push_op(&mut p, BC_JMP, OP_LEN, b.len() + OP_LEN);
            p.extend(b);
            p
        }
    }
}

fn term(t: &Term) -> Vec<u8> {
    let one = |cond: Cond| {
        let mut p = Vec::with_capacity(cond.len());
        emit(&mut p, &cond, cond.len() + 4);
        p
    };
    match t {
        Term::Host { side, net, port } => {
            let dst = *side == Side::Dst;
            let port = port.map_or(-1, i32::from);
            let cond = match net {
                Some(n) => host(dst, n, port),
                None => Cond::Host { dst, family: libc::AF_UNSPEC as u8, prefix_len: 0, addr: vec![0; 4], port },
            };
            one(cond)
        }
        Term::Port { side, cmp, port } => {
            let (ge, le) = if *side == Side::Dst { (BC_D_GE, BC_D_LE) } else { (BC_S_GE, BC_S_LE) };
            match cmp {
                Cmp::Ge => one(Cond::Port { code: ge, port: *port }),
                Cmp::Le => one(Cond::Port { code: le, port: *port }),
                // As ss: `> P` is `not <= P`, `< P` is `not >= P`.
                Cmp::Gt => not(one(Cond::Port { code: le, port: *port })),
                Cmp::Lt => not(one(Cond::Port { code: ge, port: *port })),
            }
        }
        Term::Dev { index, .. } => one(Cond::Dev(*index)),
        Term::Mark(m) => one(Cond::Mark { value: m.value, mask: m.mask }),
        Term::Cgroup(c) => one(Cond::Cgroup(c.id)),
        Term::Autobound { .. } => one(Cond::Auto),
    }
}

/// [p][JMP to reject]: a match reaches the JMP; a mismatch jumps past it, to our end.
fn not(mut p: Vec<u8>) -> Vec<u8> {
    push_op(&mut p, BC_JMP, OP_LEN, 2 * OP_LEN);
    p
}

fn compile_flags(filter: &Filter) -> Vec<u8> {
    let groups = groups(filter);
    let alt_len = |a: &Alternative| a.iter().map(Cond::len).sum::<usize>();
    let total: usize = groups.iter().map(|g| g.iter().map(alt_len).sum::<usize>() + OP_LEN * (g.len() - 1)).sum();

    let mut out = Vec::with_capacity(total);
    let reject = total + 4;
    for group in &groups {
        let group_start = out.len();
        let group_len = group.iter().map(alt_len).sum::<usize>() + OP_LEN * (group.len() - 1);
        let group_end = group_start + group_len;
        for (i, alt) in group.iter().enumerate() {
            let last = i + 1 == group.len();
            // Where a failing condition goes: the next alternative (past our JMP), or reject.
            let fail_target = if last { reject } else { out.len() + alt_len(alt) + OP_LEN };
            for cond in alt {
                let here = out.len();
                let no = fail_target - here;
                emit(&mut out, cond, no);
            }
            if !last {
                let here = out.len();
                push_op(&mut out, BC_JMP, OP_LEN, group_end - here);
            }
        }
        debug_assert_eq!(out.len(), group_end);
    }
    debug_assert_eq!(out.len(), total);
    out
}

fn push_op(out: &mut Vec<u8>, code: u8, yes: usize, no: usize) {
    // yes <= 28 and no <= program length + 4, which the attribute's u16 length bounds.
    out.push(code);
    out.push(yes as u8);
    out.extend_from_slice(&(no as u16).to_ne_bytes());
}

fn emit(out: &mut Vec<u8>, cond: &Cond, no: usize) {
    match cond {
        Cond::Not(inner) => {
            // [inner][JMP]: a true inner condition steps to the JMP, which
            // always takes `no` (the failure target, `no - inner_len` from it);
            // a false one skips the JMP and goes on.
            let inner_len = inner.len();
            emit(out, inner, inner_len + OP_LEN);
            push_op(out, BC_JMP, OP_LEN, no - inner_len);
        }
        Cond::Host { dst, family, prefix_len, addr, port } => {
            push_op(out, if *dst { BC_D_COND } else { BC_S_COND }, cond.len(), no);
            // struct inet_diag_hostcond { u8 family; u8 prefix_len; int port; __be32 addr[]; }
            out.push(*family);
            out.push(*prefix_len);
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(&port.to_ne_bytes()); // -1: any port
            out.extend_from_slice(addr);
        }
        Cond::Port { code, port } => {
            // The bound travels in the `no` field of a second op.
            push_op(out, *code, 2 * OP_LEN, no);
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(&port.to_ne_bytes());
        }
        Cond::Dev(index) => {
            push_op(out, BC_DEV_COND, cond.len(), no);
            out.extend_from_slice(&index.to_ne_bytes());
        }
        Cond::Mark { value, mask } => {
            push_op(out, BC_MARK_COND, cond.len(), no);
            out.extend_from_slice(&value.to_ne_bytes());
            out.extend_from_slice(&mask.to_ne_bytes());
        }
        Cond::Cgroup(id) => {
            push_op(out, BC_CGROUP_COND, cond.len(), no);
            out.extend_from_slice(&id.to_ne_bytes());
        }
        Cond::Auto => push_op(out, BC_AUTO, OP_LEN, no),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::bytecode_sim::{audit, run, Entry};
    use crate::filter::{parse_cidr, Family};
    use crate::testing::strategies::{arb_expr, arb_expr_socket, arb_filter};
    use proptest::prelude::*;

    fn auto(sock: &crate::socket::TcpSocket) -> bool {
        // The model's bind lock agrees with the user-space check's range.
        (1024..=50000).contains(&sock.local().port())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

        /// Every expression compiles to a program the kernel's verifier
        /// accepts, and the kernel's interpreter selects exactly what the
        /// user-space match selects.
        #[test]
        fn expressions_compile_to_what_they_match(e in arb_expr(), socks in proptest::collection::vec(arb_expr_socket(), 1..16)) {
            let bc = expression(&e);
            prop_assert!(audit(&bc).is_ok(), "{e}: {:?}", audit(&bc));
            for s in &socks {
                prop_assert_eq!(run(&bc, &Entry::of(s, auto(s))), e.matches(s), "{} on {} -> {}", e, s.local(), s.peer());
            }
        }

        /// The flags and the expression together: the program is the AND of both.
        #[test]
        fn flags_and_expression_compose(f in arb_filter(), e in arb_expr(), socks in proptest::collection::vec(arb_expr_socket(), 1..8)) {
            let flags = compile(&f);
            let both = compile(&Filter { expression: Some(e.clone()), ..f });
            prop_assert!(audit(&both).is_ok(), "{e}: {:?}", audit(&both));
            for s in &socks {
                let entry = Entry::of(s, auto(s));
                let want = (flags.is_empty() || run(&flags, &entry)) && run(&expression(&e), &entry);
                prop_assert_eq!(run(&both, &entry), want, "{}", e);
            }
        }
    }

    #[test]
    fn empty_filter_has_no_program() {
        assert!(compile(&Filter::default()).is_empty());
    }

    #[test]
    fn single_ipv4_destination_known_bytes() {
        let f = Filter { dst: vec![parse_cidr("10.1.2.3").unwrap()], ..Filter::default() };
        let bc = compile(&f);
        let mut want = vec![BC_D_COND, 16];
        want.extend_from_slice(&20u16.to_ne_bytes()); // reject = len 16 + 4
        want.extend_from_slice(&[libc::AF_INET as u8, 32, 0, 0]);
        want.extend_from_slice(&(-1i32).to_ne_bytes());
        want.extend_from_slice(&[10, 1, 2, 3]);
        assert_eq!(bc, want);
    }

    #[test]
    fn port_range_known_bytes() {
        let f = Filter { dport: vec!["80-90".parse().unwrap()], ..Filter::default() };
        let bc = compile(&f);
        let mut want = vec![BC_D_GE, 8];
        want.extend_from_slice(&20u16.to_ne_bytes());
        want.extend_from_slice(&[0, 0]);
        want.extend_from_slice(&80u16.to_ne_bytes());
        want.extend_from_slice(&[BC_D_LE, 8]);
        want.extend_from_slice(&12u16.to_ne_bytes());
        want.extend_from_slice(&[0, 0]);
        want.extend_from_slice(&90u16.to_ne_bytes());
        assert_eq!(bc, want);
    }

    #[test]
    fn family_conditions_look_at_the_local_address() {
        // -4: one AF_INET /0 condition on the source (local) side.
        let v4 = compile(&Filter { family: Some(Family::V4), ..Filter::default() });
        let mut want = vec![BC_S_COND, 16];
        want.extend_from_slice(&20u16.to_ne_bytes());
        want.extend_from_slice(&[libc::AF_INET as u8, 0, 0, 0]);
        want.extend_from_slice(&(-1i32).to_ne_bytes());
        want.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(v4, want);
        // -6: the same condition negated: [cond: yes 16, no 20 (past the JMP)] [JMP: no 8 -> reject at 24].
        let v6 = compile(&Filter { family: Some(Family::V6), ..Filter::default() });
        assert_eq!(v6.len(), 20);
        assert_eq!((v6[0], v6[1], u16::from_ne_bytes([v6[2], v6[3]])), (BC_S_COND, 16, 20));
        assert_eq!((v6[16], v6[17], u16::from_ne_bytes([v6[18], v6[19]])), (BC_JMP, 4, 8));
    }

    #[test]
    fn interface_mark_and_cgroup_known_bytes() {
        use crate::filter::Mark;
        let f = Filter {
            devs: vec![7],
            marks: vec![Mark { value: 0x10, mask: 0xf0 }],
            cgroups: vec![crate::filter::Cgroup { path: "a".into(), id: 0x1122_3344_5566, root: false }],
            ..Filter::default()
        };
        let bc = compile(&f);
        // [DEV 8] [MARK 12] [CGROUP 12] = 32; reject at 36.
        assert_eq!(bc.len(), 32);
        let no = |at: usize| u16::from_ne_bytes([bc[at + 2], bc[at + 3]]) as usize;
        assert_eq!((bc[0], bc[1], no(0)), (BC_DEV_COND, 8, 36));
        assert_eq!(&bc[4..8], &7u32.to_ne_bytes());
        assert_eq!((bc[8], bc[9], no(8)), (BC_MARK_COND, 12, 28));
        assert_eq!(&bc[12..16], &0x10u32.to_ne_bytes());
        assert_eq!(&bc[16..20], &0xf0u32.to_ne_bytes());
        assert_eq!((bc[20], bc[21], no(20)), (BC_CGROUP_COND, 12, 16));
        assert_eq!(&bc[24..32], &0x1122_3344_5566u64.to_ne_bytes());
    }

    #[test]
    fn alternatives_jump_to_next_and_group_end() {
        // dst A or B, and dport 80: [A(16)] [JMP(4)] [B(16)] [GE(8) LE(8)] = 52
        let f = Filter {
            dst: vec![parse_cidr("10.0.0.1").unwrap(), parse_cidr("10.0.0.2").unwrap()],
            dport: vec!["80".parse().unwrap()],
            ..Filter::default()
        };
        let bc = compile(&f);
        assert_eq!(bc.len(), 52);
        let no = |at: usize| u16::from_ne_bytes([bc[at + 2], bc[at + 3]]) as usize;
        assert_eq!((bc[0], bc[1] as usize, no(0)), (BC_D_COND, 16, 20)); // fail -> B
        assert_eq!((bc[16], bc[17] as usize, no(16)), (BC_JMP, 4, 20)); // -> group end (36)
        assert_eq!((bc[20], no(20)), (BC_D_COND, 56 - 20)); // last alternative fails -> reject
        assert_eq!((bc[36], no(36)), (BC_D_GE, 56 - 36));
        assert_eq!((bc[44], no(44)), (BC_D_LE, 56 - 44));
    }
}
