//! What the host does that Keyway cannot change from inside, but its operator can.
//!
//! The open-files limit ([`raise_open_files`]): Keyway raises its soft limit to the
//! hard one, and says when even that is below what its listeners may hold.
//!
//! Slow copies. On AMD Zen 3 and later (CPUs that advertise fast short
//! `rep movsb`, `fsrm`), glibc before 2.40 copies a few KiB or more with `rep movsb`,
//! which these CPUs can run many times slower when the buffers are not aligned alike
//! (glibc bug 30994). A TLS record is such a copy: rustls moves each decrypted record
//! out of its read buffer, five bytes past the record header. On the benchmark VM the
//! gateway spent about a third of its CPU in that copy under `keyway connect`; with
//! `GLIBC_TUNABLES` set as below, glibc copies with vector loops instead and the
//! tunnel carried a quarter to a third more (BENCHMARKS.md). The dynamic loader reads
//! the setting when a process starts, so Keyway can only say so: it does not restart
//! itself with another environment. glibc has had the setting since 2.32; the hint is
//! given for 2.32 to 2.39.

use std::io::Read;

/// The `GLIBC_TUNABLES` entry that keeps glibc's `memcpy` off `rep movsb` for copies
/// below about 2 MB.
pub const MEMCPY_TUNABLE: &str = "glibc.cpu.x86_rep_movsb_threshold=2000000";

/// The first glibc that no longer picks `rep movsb` on these CPUs.
const FIXED_GLIBC: (u32, u32) = (2, 40);
/// The first glibc with the tunable: an older one would ignore the advice.
const TUNABLE_GLIBC: (u32, u32) = (2, 32);

/// Raises this process's soft limit of open files to its hard limit, as Go's runtime
/// does: a gateway holds two descriptors a proxied connection, and at a usual soft
/// limit (1,024) the data plane would take them all and leave the admin listener none
/// to accept with. Warns when the limit is still below `need`.
pub fn raise_open_files(need: u64) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let was = getrlimit(Resource::Nofile);
    let raised = Rlimit {
        current: was.maximum,
        maximum: was.maximum,
    };
    // No hard limit (None) cannot be a soft one for open files on Linux: leave it.
    let limit = match was.maximum {
        Some(_) if was.current != was.maximum => match setrlimit(Resource::Nofile, raised) {
            Ok(()) => was.maximum,
            Err(e) => {
                tracing::debug!(error = %e, "cannot raise the open-files limit");
                was.current
            }
        },
        _ => was.current,
    };
    if let Some(limit) = limit.filter(|&l| l < need) {
        tracing::warn!(
            limit,
            need,
            "the open-files limit is below what the listeners may hold: once the data plane \
             uses every descriptor, the admin API cannot accept a connection; raise it \
             (LimitNOFILE= in a systemd unit, ulimit -Hn)"
        );
    }
}

/// Logs, once, what the operator of this host could set to make Keyway faster.
pub fn log_hints() {
    if !cfg!(all(
        target_os = "linux",
        target_arch = "x86_64",
        target_env = "gnu"
    )) {
        return;
    }
    let tunables = std::env::var_os("GLIBC_TUNABLES");
    let tunables = tunables.as_ref().map(|t| t.to_string_lossy());
    if !slow_rep_movsb(&read_start("/proc/cpuinfo", 64 * 1024), tunables.as_deref()) {
        return;
    }
    let Some(version) = libc_path().and_then(|p| glibc_version(&read_bytes(&p, 4 << 20))) else {
        return;
    };
    if (TUNABLE_GLIBC..FIXED_GLIBC).contains(&version) {
        tracing::info!(
            glibc = %format!("{}.{}", version.0, version.1),
            tunable = MEMCPY_TUNABLE,
            "this glibc copies slowly on this AMD CPU (rep movsb, glibc bug 30994, fixed in 2.40); \
             add the tunable to GLIBC_TUNABLES (entries are joined with ':') when starting \
             keyway for faster TLS tunnels (BENCHMARKS.md)"
        );
    }
}

/// Whether `cpuinfo` (the text of `/proc/cpuinfo`) describes an AMD CPU with `fsrm`
/// and `GLIBC_TUNABLES` (`tunables`) does not already set the threshold.
pub fn slow_rep_movsb(cpuinfo: &str, tunables: Option<&str>) -> bool {
    if tunables.is_some_and(|t| t.contains("glibc.cpu.x86_rep_movsb_threshold")) {
        return false;
    }
    let field = |name: &str| {
        cpuinfo.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| v.trim())
        })
    };
    field("vendor_id") == Some("AuthenticAMD")
        && field("flags").is_some_and(|f| f.split_whitespace().any(|x| x == "fsrm"))
}

/// The version glibc states in its own file ("… release version 2.36."), if found.
pub fn glibc_version(libc: &[u8]) -> Option<(u32, u32)> {
    const MARK: &[u8] = b"release version ";
    let at = libc.windows(MARK.len()).position(|w| w == MARK)? + MARK.len();
    let rest = &libc[at..libc.len().min(at + 16)];
    let text: String = rest
        .iter()
        .take_while(|b| b.is_ascii_digit() || **b == b'.')
        .map(|b| char::from(*b))
        .collect();
    let mut parts = text.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The file of the C library this process runs with, from its memory map (the path
/// is the rest of the line from its first `/`, and may hold spaces).
fn libc_path() -> Option<String> {
    read_start("/proc/self/maps", 256 * 1024)
        .lines()
        .filter_map(|l| l.find('/').map(|i| &l[i..]))
        .map(|p| p.strip_suffix(" (deleted)").unwrap_or(p))
        .find(|p| p.ends_with("/libc.so.6"))
        .map(str::to_owned)
}

/// The first `limit` bytes of `path`, or nothing.
fn read_bytes(path: &str, limit: u64) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.take(limit).read_to_end(&mut buf);
    }
    buf
}

fn read_start(path: &str, limit: u64) -> String {
    String::from_utf8_lossy(&read_bytes(path, limit)).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZEN: &str = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\n\
                       flags\t\t: fpu sse2 avx2 erms fsrm vaes\n\nprocessor\t: 1\n";
    const OLD_AMD: &str = "vendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2 erms\n";
    const INTEL: &str = "vendor_id\t: GenuineIntel\nflags\t\t: fpu sse2 avx2 erms fsrm\n";

    #[test]
    fn only_amd_with_fsrm_is_flagged() {
        assert!(slow_rep_movsb(ZEN, None));
        assert!(!slow_rep_movsb(OLD_AMD, None), "not the CPUs measured");
        assert!(!slow_rep_movsb(INTEL, None));
        assert!(!slow_rep_movsb("", None), "no /proc/cpuinfo: say nothing");
        // A flag whose name only contains "fsrm" is not the flag.
        assert!(!slow_rep_movsb(&ZEN.replace(" fsrm", " nofsrm"), None));
    }

    #[test]
    fn an_operator_setting_is_respected() {
        assert!(!slow_rep_movsb(ZEN, Some(MEMCPY_TUNABLE)));
        let both = format!("glibc.malloc.arena_max=2:{MEMCPY_TUNABLE}");
        assert!(!slow_rep_movsb(ZEN, Some(&both)));
        // Other tunables leave the copy as slow as before.
        assert!(slow_rep_movsb(ZEN, Some("glibc.malloc.arena_max=2")));
    }

    #[test]
    fn glibc_states_its_version() {
        let banner =
            b"\0GNU C Library (Debian GLIBC 2.36-9+deb12u14) stable release version 2.36.\n";
        assert_eq!(glibc_version(banner), Some((2, 36)));
        assert_eq!(
            glibc_version(b"stable release version 2.41.\n"),
            Some((2, 41))
        );
        assert!(glibc_version(b"release version 2.36.").unwrap() < FIXED_GLIBC);
        assert!(glibc_version(b"release version 2.40.").unwrap() >= FIXED_GLIBC);
        assert!(glibc_version(b"release version 2.31.").unwrap() < TUNABLE_GLIBC);
        assert_eq!(glibc_version(b"no banner here"), None);
        assert_eq!(glibc_version(b"release version x"), None);
    }

    /// The process's own C library, where it is a shared glibc: the banner is found.
    #[test]
    fn this_process_libc_is_found() {
        if !cfg!(all(target_os = "linux", target_env = "gnu"))
            || cfg!(target_feature = "crt-static")
        {
            return;
        }
        let path = libc_path().expect("a glibc process maps libc.so.6");
        let (major, minor) = glibc_version(&read_bytes(&path, 4 << 20)).expect("its banner");
        assert_eq!(major, 2, "glibc {major}.{minor}");
        assert!(minor >= 17, "glibc {major}.{minor}");
    }
}
