//! `--cgroup PATH`: a cgroup v2 directory and its id, which is what the
//! kernel's `INET_DIAG_BC_CGROUP_COND` compares with a socket's cgroup.
//!
//! The id of a cgroup v2 is the inode number of its directory on cgroup2fs
//! (kernfs); the root's is 1. Paths are absolute, or relative to the first
//! cgroup2 mount in /proc/self/mountinfo.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::filter::Cgroup;

/// CGROUP2_SUPER_MAGIC from linux/magic.h.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// The mount points of cgroup2 filesystems, in mountinfo order.
pub fn cgroup2_mounts() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo").map(|t| parse_mountinfo(&t)).unwrap_or_default()
}

/// The cgroup2 mount points in a mountinfo text (`... MOUNTPOINT ... - cgroup2 ...`).
pub fn parse_mountinfo(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            if right.split_whitespace().next()? != "cgroup2" {
                return None;
            }
            Some(PathBuf::from(unescape(left.split(' ').nth(4)?)))
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 4).and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(c) => {
                out.push(char::from(c));
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Resolves `--cgroup PATH`: an absolute path on a cgroup2 filesystem, or a
/// path relative to the cgroup2 mount. Errors (nothing done) when cgroup v2
/// is not mounted, the path does not exist, or it is not a cgroup2 directory.
pub fn resolve(path: &str) -> Result<Cgroup> {
    let fail = |reason: String| Error::Cgroup { path: path.to_string(), reason };
    if path.is_empty() {
        return Err(fail("empty path".into()));
    }
    let full = if Path::new(path).is_absolute() {
        PathBuf::from(path)
    } else {
        let mounts = cgroup2_mounts();
        let Some(mount) = mounts.first() else {
            return Err(fail(
                "no cgroup v2 hierarchy is mounted here (a cgroup v1 host): the kernel's cgroup condition compares cgroup v2 ids; mount cgroup2 or give an absolute path on one".into(),
            ));
        };
        mount.join(path.trim_start_matches("./"))
    };
    let meta = std::fs::metadata(&full).map_err(|e| fail(format!("{}: {e}", full.display())))?;
    if !meta.is_dir() {
        return Err(fail(format!("{} is not a directory", full.display())));
    }
    let fs = nix::sys::statfs::statfs(&full).map_err(|e| fail(format!("{}: {e}", full.display())))?;
    #[allow(clippy::unnecessary_cast)] // the field's type differs between targets
    if fs.filesystem_type().0 as i64 != CGROUP2_SUPER_MAGIC {
        return Err(fail(format!(
            "{} is not on a cgroup v2 filesystem (cgroup v1 paths have no socket ids)",
            full.display()
        )));
    }
    let id = meta.ino();
    Ok(Cgroup { path: path.to_string(), id, root: id == 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_mounts() {
        let text = "22 1 0:21 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                    30 22 0:26 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n\
                    31 22 0:27 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n\
                    90 1 0:40 / /tmp/with\\040space rw - cgroup2 none rw\n";
        assert_eq!(
            parse_mountinfo(text),
            vec![PathBuf::from("/sys/fs/cgroup/unified"), PathBuf::from("/tmp/with space")]
        );
        assert!(parse_mountinfo("").is_empty());
    }

    #[test]
    fn refuses_what_is_not_a_cgroup2_directory() {
        for bad in ["", "/nonexistent/cgroup", "/proc/self/status", "/proc"] {
            assert!(resolve(bad).is_err(), "{bad:?}");
        }
        let e = resolve("/proc").unwrap_err().to_string();
        assert!(e.contains("cgroup v2"), "{e}");
    }
}
