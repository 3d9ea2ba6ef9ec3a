//! Network namespaces: naming one (`NAME|PATH|PID`), and running work inside
//! one on a dedicated thread.
//!
//! A netlink socket belongs to the namespace it was created in, so the pattern
//! is: spawn a thread, `setns` it, create the socket, hand the socket back.
//! setns is never called on a thread that anyone else (a pool) will reuse.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::sched::{setns, unshare, CloneFlags};

use crate::error::{Error, Result};

/// NSFS_MAGIC from linux/magic.h: the filesystem of /proc/*/ns/* and bind-mounted namespaces.
const NSFS_MAGIC: i64 = 0x6e73_6673;
/// NS_GET_NSTYPE = _IO(0xb7, 0x3) from linux/nsfs.h.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// An open network namespace.
#[derive(Debug)]
pub struct Netns {
    label: String,
    file: File,
}

/// How the user named a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetnsSpec {
    /// A namespace file (contains `/`).
    Path(PathBuf),
    /// A process whose namespace to use (all digits).
    Pid(u32),
    /// A name under /run/netns, as `ip netns` manages them.
    Name(String),
}

impl NetnsSpec {
    /// `NS` containing `/` is a path, all digits a pid, anything else a name under /run/netns.
    pub fn parse(s: &str) -> Result<NetnsSpec> {
        let bad = |reason: &str| Error::Netns { spec: s.to_string(), reason: reason.to_string() };
        if s.is_empty() {
            return Err(bad("empty namespace name"));
        }
        if s.contains('/') {
            return Ok(NetnsSpec::Path(PathBuf::from(s)));
        }
        if s.bytes().all(|b| b.is_ascii_digit()) {
            let pid = s.parse::<u32>().map_err(|_| bad("pid out of range"))?;
            if pid == 0 {
                return Err(bad("pid 0 is not a process"));
            }
            return Ok(NetnsSpec::Pid(pid));
        }
        if s == "." || s == ".." {
            return Err(bad("not a namespace name"));
        }
        Ok(NetnsSpec::Name(s.to_string()))
    }

    fn path(&self) -> PathBuf {
        match self {
            NetnsSpec::Path(p) => p.clone(),
            NetnsSpec::Pid(pid) => PathBuf::from(format!("/proc/{pid}/ns/net")),
            NetnsSpec::Name(n) => Path::new("/run/netns").join(n),
        }
    }
}

impl Netns {
    /// Opens and checks the namespace named by `spec` (see [`NetnsSpec::parse`]).
    ///
    /// The path's type is checked before it is opened, and it is opened
    /// non-blocking: a FIFO or device given by mistake is refused, never waited on.
    pub fn open(spec: &str) -> Result<Netns> {
        let parsed = NetnsSpec::parse(spec)?;
        let path = parsed.path();
        let err = |reason: String| Error::Netns { spec: spec.to_string(), reason };
        let missing = |e: std::io::Error| match (&parsed, e.kind()) {
            (NetnsSpec::Pid(pid), std::io::ErrorKind::NotFound) => err(format!("no process with pid {pid}")),
            (NetnsSpec::Name(_), std::io::ErrorKind::NotFound) => {
                err(format!("no such network namespace ({} does not exist; see `ip netns list`)", path.display()))
            }
            _ => err(format!("{}: {e}", path.display())),
        };
        // Namespace files (/proc/PID/ns/net, bind mounts under /run/netns) are
        // empty regular files to stat.
        let meta = std::fs::metadata(&path).map_err(missing)?;
        if !meta.file_type().is_file() {
            let kind = crate::sys::file_kind(&meta);
            return Err(err(format!("{} is not a namespace file (it is {kind})", path.display())));
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
            .open(&path)
            .map_err(missing)?;
        let fs = nix::sys::statfs::fstatfs(file.as_fd()).map_err(|e| err(format!("{}: {e}", path.display())))?;
        #[allow(clippy::unnecessary_cast)] // the field's type differs between targets
        if fs.filesystem_type().0 as i64 != NSFS_MAGIC {
            return Err(err(format!("{} is not a namespace file", path.display())));
        }
        // SAFETY: ioctl on a valid fd with no argument.
        let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
        if kind != libc::CLONE_NEWNET {
            return Err(err(format!("{} is a namespace file but not a network namespace", path.display())));
        }
        Ok(Netns { label: spec.to_string(), file })
    }

    /// How the user named it.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The namespace's inode number (what `ls -iL /proc/PID/ns/net` shows).
    pub fn inode(&self) -> Result<u64> {
        self.file.metadata().map(|m| m.ino()).map_err(|source| Error::NetnsIo {
            spec: self.label.clone(),
            op: "stat",
            source,
        })
    }

    /// Runs `f` on a new thread that has entered this namespace, and returns its result.
    /// Sockets `f` creates stay in this namespace wherever they are used afterwards.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        on_own_thread(
            || {
                setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| match e {
                    nix::errno::Errno::EPERM => {
                        Error::Netns { spec: self.label.clone(), reason: "entering it needs CAP_SYS_ADMIN".to_string() }
                    }
                    e => Error::NetnsIo { spec: self.label.clone(), op: "setns", source: e.into() },
                })
            },
            f,
        )
    }
}

/// Runs `enter` then `f` on a dedicated thread (setns and unshare change the
/// calling thread for good, so never on one a pool will reuse).
fn on_own_thread<T: Send>(enter: impl FnOnce() -> Result<()> + Send, f: impl FnOnce() -> T + Send) -> Result<T> {
    std::thread::scope(|scope| {
        let handle = scope.spawn(|| {
            enter()?;
            Ok(f())
        });
        handle.join().map_err(|_| Error::Internal("the namespace worker thread panicked".into()))?
    })
}

/// Runs `f` inside a brand-new, empty network namespace (loopback up) on a
/// dedicated thread; the namespace disappears when `f`'s sockets are closed.
pub fn run_in_new_netns<T: Send>(f: impl FnOnce() -> T + Send) -> Result<T> {
    on_own_thread(
        || {
            let fail = |op, source| Error::NetnsIo { spec: "(new)".into(), op, source };
            unshare(CloneFlags::CLONE_NEWNET)
                .map_err(|e| fail("creating a private namespace (unshare; needs CAP_SYS_ADMIN)", e.into()))?;
            loopback_up().map_err(|e| fail("bringing up loopback (needs CAP_NET_ADMIN)", e))
        },
        f,
    )
}

/// The index of interface `name` (or an index given as digits, checked) in
/// `ns`, or in the calling thread's namespace.
pub fn interface_index(ns: Option<&Netns>, name: &str) -> Result<u32> {
    let fail = |reason: String| Error::Interface { name: name.to_string(), reason };
    let look = || -> std::result::Result<Vec<(u32, String)>, nix::Error> {
        Ok(nix::net::if_::if_nameindex()?
            .iter()
            .map(|i| (i.index(), i.name().to_string_lossy().into_owned()))
            .collect())
    };
    let list = match ns {
        Some(ns) => ns.run(look)?,
        None => look(),
    }
    .map_err(|e| fail(format!("listing interfaces: {e}")))?;
    let found = match name.parse::<u32>() {
        Ok(index) => list.iter().find(|(i, _)| *i == index),
        Err(_) => list.iter().find(|(_, n)| n == name),
    };
    let where_ = ns.map_or("this network namespace".to_string(), |n| format!("network namespace {}", n.label()));
    found.map(|(i, _)| *i).ok_or_else(|| {
        let names: Vec<&str> = list.iter().map(|(_, n)| n.as_str()).collect();
        fail(format!("no such interface in {where_} (there: {})", names.join(", ")))
    })
}

/// The inode of the calling thread's network namespace.
pub fn current_netns_inode() -> Result<u64> {
    let path = "/proc/thread-self/ns/net";
    std::fs::metadata(path).map(|m| m.ino()).map_err(|source| Error::File { path: path.into(), source })
}

/// Sets the `lo` interface up in the calling thread's namespace: an
/// RTM_NEWLINK request with IFF_UP for interface 1 (loopback is always the
/// first interface of a namespace), acknowledged, as netavark does it.
pub fn loopback_up() -> std::io::Result<()> {
    use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST};
    use netlink_packet_route::link::{LinkFlags, LinkMessage};
    use netlink_packet_route::RouteNetlinkMessage;

    let mut link = LinkMessage::default();
    link.header.index = 1;
    link.header.flags = LinkFlags::Up;
    link.header.change_mask = LinkFlags::Up;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK;
    header.sequence_number = 1;
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::from(RouteNetlinkMessage::SetLink(link)));
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);

    let mut sock = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE)?;
    sock.bind_auto()?;
    sock.connect(&netlink_sys::SocketAddr::new(0, 0))?;
    sock.send(&buf, 0)?;
    let mut reply = vec![0; 4096];
    let n = sock.recv(&mut &mut reply[..], 0)?;
    let ack = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply[..n.min(reply.len())])
        .map_err(|e| std::io::Error::other(format!("RTM_NEWLINK reply: {e}")))?;
    match ack.payload {
        NetlinkPayload::Error(e) => match e.code {
            None => Ok(()),
            Some(code) => Err(std::io::Error::from_raw_os_error(-code.get())),
        },
        other => Err(std::io::Error::other(format!("RTM_NEWLINK: unexpected reply {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        assert_eq!(NetnsSpec::parse("/run/netns/x").unwrap(), NetnsSpec::Path("/run/netns/x".into()));
        assert_eq!(NetnsSpec::parse("./x").unwrap(), NetnsSpec::Path("./x".into()));
        assert_eq!(NetnsSpec::parse("1234").unwrap(), NetnsSpec::Pid(1234));
        assert_eq!(NetnsSpec::parse("blue").unwrap(), NetnsSpec::Name("blue".into()));
        assert!(NetnsSpec::parse("").is_err());
        assert!(NetnsSpec::parse("0").is_err());
        assert!(NetnsSpec::parse("99999999999").is_err());
        assert!(NetnsSpec::parse("..").is_err());
    }
}
