//! Collect: one kernel-filtered dump per family, re-checked in user space and
//! de-duplicated by cookie.

use std::time::Instant;

use tracing::debug;

use super::session::{Engine, Query};
use crate::diag::{DumpStatus, SockDiag};
use crate::error::{Error, NetlinkOp, Result};
use crate::filter::TcpState;
use crate::socket::TcpSocket;

/// How often a dump flagged NLM_F_DUMP_INTR is retried before giving up.
const MAX_DUMP_RETRIES: usize = 5;

impl Engine {
    /// The families of `query` worth walking now: a family with no TCP socket in
    /// the namespace (and no TIME-WAIT asked for, or none existing) is skipped,
    /// since each family's dump walks the whole shared hash table.
    fn families_to_dump(&self, query: &Query) -> Vec<u8> {
        let Some(c) = self.stat.as_ref().and_then(|s| s.read()) else { return query.families.clone() };
        let tw = query.filter.states.contains(TcpState::TimeWait) && c.tw > 0;
        query
            .families
            .iter()
            .copied()
            .filter(|&af| tw || if af == libc::AF_INET as u8 { c.inuse4 > 0 } else { c.inuse6 > 0 })
            .collect()
    }

    /// Every socket matching `query`'s addresses, ports, states and family now,
    /// each redone when the kernel flags it inconsistent, re-checked in user
    /// space, each socket once. Both families come from one walk of the TCP
    /// hash table (the `TCPDIAG_GETSOCK` request: AF_UNSPEC), which every
    /// family's walk would otherwise repeat; a kernel that refuses it gets one
    /// dump per family (both in parallel). The `--pid` condition is not
    /// applied here (see [`super::owners`]).
    pub fn collect(&mut self, query: &Query) -> Result<Vec<TcpSocket>> {
        let protocols = query.filter.protocols;
        let mut out = if protocols.tcp { self.collect_tcp(query)? } else { Vec::new() };
        if protocols.udp {
            // The UDP handler has no one-walk request: one dump per family,
            // each walking the whole UDP table; a family with no UDP socket is skipped.
            let counts = self.stat.as_ref().and_then(|s| s.read());
            let empty =
                |af: u8| counts.and_then(|c| if af == libc::AF_INET as u8 { c.udp4 } else { c.udp6 }) == Some(0);
            for &af in query.families.iter().filter(|&&af| !empty(af)) {
                let udp =
                    dump_family(&mut self.diag[0], af, query, libc::IPPROTO_UDP as u8).map_err(|e| query.explain(e))?;
                out.extend(udp);
            }
        }
        Ok(out)
    }

    fn collect_tcp(&mut self, query: &Query) -> Result<Vec<TcpSocket>> {
        let started = Instant::now();
        let families = self.families_to_dump(query);
        let both = families.len() > 1;
        let out = match families.as_slice() {
            [] => Vec::new(),
            [af] => dump_family(&mut self.diag[0], *af, query, TCP).map_err(|e| query.explain(e))?,
            [_, _, ..] if self.one_walk => match dump_family(&mut self.diag[0], libc::AF_UNSPEC as u8, query, TCP) {
                Ok(v) => v,
                Err(e) if refused_one_walk(&e) && query.filter().cgroups.is_empty() => {
                    debug!(%e, "the kernel refuses the one-walk dump: one dump per family from now on");
                    self.one_walk = false;
                    self.dump_each(&families, query)?
                }
                Err(e) => return Err(query.explain(e)),
            },
            _ => self.dump_each(&families, query).map_err(|e| query.explain(e))?,
        };
        debug!(
            ?families,
            one_walk = both && self.one_walk,
            matched = out.len(),
            elapsed_us = started.elapsed().as_micros() as u64,
            "collected"
        );
        Ok(out)
    }

    /// One dump per family, both in parallel.
    fn dump_each(&mut self, families: &[u8], query: &Query) -> Result<Vec<TcpSocket>> {
        let [d0, d1] = &mut self.diag;
        let (af0, af1) = match families {
            [a, b, ..] => (*a, *b),
            [a] => return dump_family(d0, *a, query, TCP),
            [] => return Ok(Vec::new()),
        };
        std::thread::scope(|scope| {
            let other = scope.spawn(|| dump_family(d1, af1, query, TCP));
            let mut first = dump_family(d0, af0, query, TCP)?;
            let second = other.join().map_err(|_| Error::Internal("a dump thread panicked".into()))??;
            // A socket is in one family's table only: no duplicates across the two.
            first.extend(second);
            Ok::<_, Error>(first)
        })
    }
}

/// Whether a dump error says the kernel does not take the one-walk request
/// (an unknown message type or protocol), rather than something worse.
fn refused_one_walk(e: &Error) -> bool {
    matches!(e, Error::Netlink { op: NetlinkOp::Dump, source }
        if matches!(source.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP | libc::ENOENT)))
}

const TCP: u8 = libc::IPPROTO_TCP as u8;

/// One family's dump of `protocol`'s sockets through `diag`, redone when the kernel flags it
/// inconsistent, re-checked in user space, and de-duplicated by cookie (a dump
/// under churn can return a socket twice: sorted and deduplicated in place,
/// with no second copy of the set).
pub fn dump_family(diag: &mut SockDiag, family: u8, query: &Query, protocol: u8) -> Result<Vec<TcpSocket>> {
    let f = &query.filter;
    let mut out = Vec::new();
    for tries in 1..=MAX_DUMP_RETRIES {
        let status = diag.dump(&query.spec_for(family, protocol), |s| {
            if f.matches(&s) {
                out.push(s);
            }
        })?;
        if status == DumpStatus::Complete {
            out.sort_unstable_by_key(TcpSocket::cookie);
            out.dedup_by_key(|s| s.cookie());
            return Ok(out);
        }
        out.clear();
        debug!(family, tries, "dump interrupted (NLM_F_DUMP_INTR); dumping again");
    }
    Err(Error::Netlink {
        op: NetlinkOp::Dump,
        source: std::io::Error::other(format!(
            "the kernel interrupted the socket dump {MAX_DUMP_RETRIES} times (table changing too fast); nothing was acted on from it"
        )),
    })
}
