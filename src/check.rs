//! `sockkill check`: a self-probe on a loopback TCP pair of our own.

use std::io::Read;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::time::Duration;

use serde::Serialize;

use crate::diag::{errno_text, Outcome, SockDiag};
use crate::engine::{Engine, Query};
use crate::error::Result;
use crate::filter::{Filter, PortRange, StateSet};
use crate::netns::{self, Netns};

/// One probe step and how it went.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// What was tried.
    pub name: &'static str,
    /// Whether it worked.
    pub ok: bool,
    /// What happened.
    pub detail: String,
}

/// The outcome of [`check`].
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// Where the probe ran: a throwaway namespace, or the one named with `--netns`.
    pub netns: String,
    /// Whether the process holds CAP_NET_ADMIN (effective set).
    pub cap_net_admin: bool,
    /// What was tried, in order.
    pub steps: Vec<Step>,
    /// Every step passed: sockets can be listed and destroyed here.
    pub ok: bool,
}

/// Probes sock_diag, TCP diag and SOCK_DESTROY on a loopback pair created for
/// the purpose, inside `netns` or a throwaway namespace. Only that pair's
/// client socket is destroyed, by cookie.
pub fn check(ns: Option<&Netns>) -> Result<CheckReport> {
    let (label, steps) = match ns {
        Some(ns) => (ns.label().to_string(), ns.run(probe)?),
        None => {
            let steps = netns::run_in_new_netns(probe).unwrap_or_else(|e| {
                vec![Step { name: "throwaway network namespace", ok: false, detail: e.to_string() }]
            });
            ("(throwaway namespace)".to_string(), steps)
        }
    };
    let ok = steps.iter().all(|s| s.ok);
    Ok(CheckReport { netns: label, cap_net_admin: crate::sys::has_cap_net_admin(), steps, ok })
}

/// What the probe's one SOCK_DESTROY answered, in words.
fn destroy_result(r: Result<Vec<Outcome>>) -> (bool, String) {
    match r.as_deref().map(|o| o.first()) {
        Ok(Some(Outcome::Destroyed)) => (true, "destroyed the probe's client socket by cookie".into()),
        Ok(Some(Outcome::Failed(libc::EPERM))) => {
            (false, "EPERM: destroying sockets needs CAP_NET_ADMIN in this network namespace".into())
        }
        Ok(Some(Outcome::Failed(libc::EOPNOTSUPP))) => (
            false,
            "EOPNOTSUPP: this kernel was built without CONFIG_INET_DIAG_DESTROY; `ss -K` silently does nothing here too"
                .into(),
        ),
        Ok(Some(Outcome::Failed(e))) => (false, errno_text(*e)),
        Ok(other) => (false, format!("unexpected result {other:?}")),
        Err(e) => (false, e.to_string()),
    }
}

fn probe() -> Vec<Step> {
    let mut steps = Vec::new();
    let mut step = |name, ok, detail: String| {
        steps.push(Step { name, ok, detail });
        ok
    };
    let pair = (|| -> std::io::Result<_> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let client = TcpStream::connect(listener.local_addr()?)?;
        let (server, _) = listener.accept()?;
        Ok((listener, client, server))
    })();
    let (listener, mut client, _server) = match pair {
        Ok(p) => p,
        Err(e) => {
            step("loopback TCP pair", false, format!("cannot connect on 127.0.0.1: {e} (is lo up?)"));
            return steps;
        }
    };
    let (Ok(laddr), Ok(caddr)) = (listener.local_addr(), client.local_addr()) else {
        step("loopback TCP pair", false, "cannot read socket addresses".into());
        return steps;
    };
    step("loopback TCP pair", true, format!("{caddr} -> {laddr}"));

    // One socket to dump and one to destroy with, so the destroy's errno is ours to classify.
    let (mut engine, mut destroyer) = match Engine::open(None).and_then(|e| Ok((e, SockDiag::open()?))) {
        Ok(pair) => pair,
        Err(e) => {
            step("sock_diag netlink socket", false, e.to_string());
            return steps;
        }
    };
    step("sock_diag netlink socket", true, "opened".into());

    let filter = Filter {
        dst: vec![laddr.ip().into()],
        dport: vec![PortRange::one(laddr.port())],
        sport: vec![PortRange::one(caddr.port())],
        states: StateSet::ALL,
        ..Filter::default()
    };
    let found = Query::new(filter).and_then(|q| engine.collect(&q));
    let target = match found {
        Ok(v) if v.len() == 1 => {
            step("TCP diag dump (kernel-filtered)", true, format!("found the client socket, cookie {}", v[0].cookie()));
            v.into_iter().next()
        }
        Ok(v) => {
            step("TCP diag dump (kernel-filtered)", false, format!("expected exactly 1 socket, found {}", v.len()));
            None
        }
        Err(e) => {
            step("TCP diag dump (kernel-filtered)", false, e.to_string());
            None
        }
    };
    let Some(target) = target else { return steps };

    let (ok, detail) = destroy_result(destroyer.destroy(&[&target]));
    let destroyed = step("SOCK_DESTROY", ok, detail);
    if destroyed {
        let _ = client.set_read_timeout(Some(Duration::from_secs(2)));
        let mut b = [0u8; 1];
        match client.read(&mut b) {
            Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => {
                step("application sees the abort", true, "read() on the client returned ECONNABORTED".into())
            }
            other => step("application sees the abort", false, format!("read() on the client returned {other:?}")),
        };
    }
    steps
}
