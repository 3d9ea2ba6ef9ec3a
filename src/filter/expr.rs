//! ss's filter EXPRESSION (ss(8)): the tree, its text, whether it narrows,
//! and the user-space match that re-checks what the kernel's bytecode
//! returned (as ss does with `run_ssfilter`).
//!
//! Host conditions follow ss and the kernel, not the `--dst`/`--src` flags:
//! an IPv4 prefix matches IPv4 sockets and IPv4-mapped IPv6 ones, an IPv6
//! prefix (a mapped one included) matches the raw address of IPv6 sockets
//! only, and `::/0` is every IPv6 socket.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use super::{as_ipv4, nets_narrow, ports_narrow, Cgroup, Mark, PortRange, StateSet};
use crate::socket::{TcpSocket, TcpState};

/// Which end of the connection a condition looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The local end (`src`, `sport`).
    Src,
    /// The peer (`dst`, `dport`).
    Dst,
}

/// A port comparison of `dport`/`sport`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cmp {
    /// `>=`, `ge`, `geq`
    Ge,
    /// `<=`, `le`, `leq`
    Le,
    /// `>`, `gt`
    Gt,
    /// `<`, `lt`
    Lt,
}

impl Cmp {
    fn holds(self, port: u16, bound: u16) -> bool {
        match self {
            Cmp::Ge => port >= bound,
            Cmp::Le => port <= bound,
            Cmp::Gt => port > bound,
            Cmp::Lt => port < bound,
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            Cmp::Ge => ">=",
            Cmp::Le => "<=",
            Cmp::Gt => ">",
            Cmp::Lt => "<",
        }
    }

    /// The ports that satisfy it (`None`: none do).
    fn range(self, bound: u16) -> Option<PortRange> {
        match self {
            Cmp::Ge => Some(PortRange { lo: bound, hi: u16::MAX }),
            Cmp::Le => Some(PortRange { lo: 0, hi: bound }),
            Cmp::Gt => bound.checked_add(1).map(|lo| PortRange { lo, hi: u16::MAX }),
            Cmp::Lt => bound.checked_sub(1).map(|hi| PortRange { lo: 0, hi }),
        }
    }
}

/// One condition of an expression.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Term {
    /// `dst PREFIX[:PORT]`, `src ...`, `dst *:PORT`, `dport = :PORT`: the
    /// address (any when `None`) and the port (any when `None`) of one side.
    Host {
        /// The side compared.
        side: Side,
        /// The prefix, host bits cleared.
        net: Option<IpNet>,
        /// The exact port.
        port: Option<u16>,
    },
    /// `dport > :1024` and the like.
    Port {
        /// The side compared.
        side: Side,
        /// The comparison.
        cmp: Cmp,
        /// The bound.
        port: u16,
    },
    /// `dev NAME|INDEX`: bound to the interface (`SO_BINDTODEVICE` or a link-local scope).
    Dev {
        /// As written.
        name: String,
        /// Its index in the target namespace (0 until resolved).
        index: u32,
    },
    /// `fwmark VALUE[/MASK]`.
    Mark(Mark),
    /// `cgroup PATH` (the id 0 until resolved).
    Cgroup(Cgroup),
    /// `autobound`: the kernel chose the local port (no explicit bind). The
    /// kernel checks the bind lock; the user-space check is ss's, the local
    /// port within the namespace's `ip_local_port_range`.
    Autobound {
        /// The namespace's ephemeral port range (ss's fallback until read).
        ephemeral: PortRange,
    },
}

/// An ss filter expression. `and` and `or` have equal precedence and group
/// from the left, as in ss's grammar: `a or b and c` is `(a or b) and c`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Expr {
    /// One condition.
    Term(Term),
    /// `not E`, `! E`
    Not(Box<Expr>),
    /// `E and E`, `E & E`, `E E`
    And(Box<Expr>, Box<Expr>),
    /// `E or E`, `E | E`
    Or(Box<Expr>, Box<Expr>),
}

/// The default ephemeral range ss assumes when it cannot read the sysctl.
pub const SS_FALLBACK_EPHEMERAL: PortRange = PortRange { lo: 1024, hi: 4999 };

impl Expr {
    /// Whether `sock` satisfies the expression, as ss's user-space match
    /// decides it (a mark or cgroup id the kernel did not report counts as 0).
    pub fn matches(&self, sock: &TcpSocket) -> bool {
        match self {
            Expr::Term(t) => t.matches(sock),
            Expr::Not(e) => !e.matches(sock),
            Expr::And(a, b) => a.matches(sock) && b.matches(sock),
            Expr::Or(a, b) => a.matches(sock) || b.matches(sock),
        }
    }

    /// Whether the expression by itself narrows what a kill reaches (see
    /// [`crate::filter::Filter::is_catch_all`]): a term narrows as the
    /// equivalent flag does, `and` narrows when either side does, `or` when
    /// both do, and a negation never does (`not dst 10.0.0.7` is nearly
    /// everything).
    pub fn narrows(&self, states: StateSet) -> bool {
        match self {
            Expr::Term(t) => t.narrows(states),
            Expr::Not(_) => false,
            Expr::And(a, b) => a.narrows(states) || b.narrows(states),
            Expr::Or(a, b) => a.narrows(states) && b.narrows(states),
        }
    }

    /// Every term, left to right.
    pub fn terms(&self) -> Vec<&Term> {
        let mut out = Vec::new();
        self.walk(&mut |t| out.push(t));
        out
    }

    /// Every term, mutably (to resolve names against the system).
    pub fn terms_mut(&mut self) -> Vec<&mut Term> {
        let mut out = Vec::new();
        fn go<'a>(e: &'a mut Expr, out: &mut Vec<&'a mut Term>) {
            match e {
                Expr::Term(t) => out.push(t),
                Expr::Not(x) => go(x, out),
                Expr::And(a, b) | Expr::Or(a, b) => {
                    go(a, out);
                    go(b, out);
                }
            }
        }
        go(self, &mut out);
        out
    }

    fn walk<'a>(&'a self, f: &mut impl FnMut(&'a Term)) {
        match self {
            Expr::Term(t) => f(t),
            Expr::Not(x) => x.walk(f),
            Expr::And(a, b) | Expr::Or(a, b) => {
                a.walk(f);
                b.walk(f);
            }
        }
    }
}

fn side_addr(sock: &TcpSocket, side: Side) -> std::net::SocketAddr {
    match side {
        Side::Src => sock.local(),
        Side::Dst => sock.peer(),
    }
}

impl Term {
    /// Whether `sock` satisfies this one condition.
    pub fn matches(&self, sock: &TcpSocket) -> bool {
        match self {
            Term::Host { side, net, port } => {
                let at = side_addr(sock, *side);
                port.is_none_or(|p| at.port() == p) && net.is_none_or(|n| host_matches(&n, sock, at.ip()))
            }
            Term::Port { side, cmp, port } => cmp.holds(side_addr(sock, *side).port(), *port),
            Term::Dev { index, .. } => sock.interface() == *index,
            Term::Mark(m) => sock.mark.unwrap_or(0) & m.mask == m.value,
            Term::Cgroup(c) => sock.cgroup == c.id,
            Term::Autobound { ephemeral } => ephemeral.contains(sock.local().port()),
        }
    }

    fn narrows(&self, states: StateSet) -> bool {
        let listeners = states.contains(TcpState::Listen);
        // A listener's peer port is 0: a condition holding 0 matches every listener.
        let zero_possible = |side: &Side| listeners && *side == Side::Dst;
        match self {
            Term::Host { side, net, port } => {
                net.is_some_and(|n| nets_narrow(&[n], listeners))
                    || port.is_some_and(|p| ports_narrow(&[PortRange::one(p)], zero_possible(side)))
            }
            Term::Port { side, cmp, port } => match cmp.range(*port) {
                Some(r) => ports_narrow(&[r], zero_possible(side)),
                None => true,
            },
            Term::Dev { .. } => true,
            Term::Mark(m) => m.mask != 0,
            Term::Cgroup(c) => !c.root,
            // Every client connection: as broad as no condition.
            Term::Autobound { .. } => false,
        }
    }
}

/// ss's and the kernel's host match: an IPv4 prefix holds IPv4 addresses and
/// IPv4-mapped IPv6 ones; an IPv6 prefix holds IPv6 sockets' raw addresses
/// (`::/0` every IPv6 socket, the unspecified address of a listener included).
fn host_matches(net: &IpNet, sock: &TcpSocket, ip: IpAddr) -> bool {
    match net {
        IpNet::V4(n) => as_ipv4(ip).is_some_and(|v4| n.contains(&v4)),
        IpNet::V6(n) => match ip {
            IpAddr::V6(v6) => sock.family() == "inet6" && n.contains(&v6),
            IpAddr::V4(_) => false,
        },
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Src => "src",
            Side::Dst => "dst",
        })
    }
}

fn port_word(side: Side) -> &'static str {
    match side {
        Side::Src => "sport",
        Side::Dst => "dport",
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Term::Host { side, net: None, port: Some(p) } => write!(f, "{} = :{p}", port_word(*side)),
            Term::Host { side, net: None, port: None } => write!(f, "{side} *"),
            Term::Host { side, net: Some(n), port: None } => write!(f, "{side} {n}"),
            Term::Host { side, net: Some(IpNet::V4(n)), port: Some(p) } => write!(f, "{side} {n}:{p}"),
            Term::Host { side, net: Some(IpNet::V6(n)), port: Some(p) } => write!(f, "{side} [{n}]:{p}"),
            Term::Port { side, cmp, port } => write!(f, "{} {} :{port}", port_word(*side), cmp.symbol()),
            Term::Dev { name, .. } => write!(f, "dev {name}"),
            Term::Mark(m) => write!(f, "fwmark {m}"),
            Term::Cgroup(c) => write!(f, "cgroup {}", c.path),
            Term::Autobound { .. } => f.write_str("autobound"),
        }
    }
}

/// The canonical text, which parses back to the same tree: the right operand
/// of `and`/`or` and the operand of `not` are parenthesized when they are
/// themselves `and`/`or` (ss groups from the left).
impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let grouped = |e: &Expr, f: &mut fmt::Formatter<'_>| match e {
            Expr::And(..) | Expr::Or(..) => write!(f, "( {e} )"),
            _ => write!(f, "{e}"),
        };
        match self {
            Expr::Term(t) => write!(f, "{t}"),
            Expr::Not(e) => {
                f.write_str("not ")?;
                grouped(e, f)
            }
            Expr::And(a, b) | Expr::Or(a, b) => {
                write!(f, "{a} {} ", if matches!(self, Expr::And(..)) { "and" } else { "or" })?;
                grouped(b, f)
            }
        }
    }
}

impl serde::Serialize for Expr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Resolves what the words name against the system: interface names and
/// indexes in the target namespace, cgroup paths to ids, and `autobound`'s
/// ephemeral range from the namespace's `ip_local_port_range` (as ss reads it).
pub fn resolve(expr: &mut Expr, netns: Option<&crate::netns::Netns>) -> crate::error::Result<()> {
    let mut ephemeral: Option<PortRange> = None;
    for term in expr.terms_mut() {
        match term {
            Term::Dev { name, index } => *index = crate::netns::interface_index(netns, name)?,
            Term::Cgroup(c) => *c = Cgroup { path: c.path.clone(), ..crate::cgroup::resolve(&c.path)? },
            Term::Autobound { ephemeral: range } => {
                if ephemeral.is_none() {
                    let read = || std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok();
                    let text = match netns {
                        Some(ns) => ns.run(read)?,
                        None => read(),
                    };
                    ephemeral = Some(text.as_deref().and_then(parse_port_range).unwrap_or(SS_FALLBACK_EPHEMERAL));
                }
                *range = ephemeral.unwrap_or(SS_FALLBACK_EPHEMERAL);
            }
            _ => {}
        }
    }
    Ok(())
}

/// `ip_local_port_range`'s "LOW\tHIGH".
fn parse_port_range(text: &str) -> Option<PortRange> {
    let mut it = text.split_whitespace().map(|w| w.parse::<u16>().ok());
    match (it.next()??, it.next()??) {
        (lo, hi) if lo <= hi => Some(PortRange { lo, hi }),
        _ => None,
    }
}
