//! What the host does that Keyway cannot change from inside, but its operator can.
//!
//! One thing so far. On AMD Zen 3 and later (CPUs that advertise fast short
//! `rep movsb`, `fsrm`), glibc before 2.40 copies a few KiB or more with `rep movsb`.
//! On these CPUs that instruction runs up to 20× slower when the buffers are not
//! aligned alike (glibc bug 30994). A TLS record is such a copy: rustls moves each
//! decrypted record out of its read buffer, five bytes past the record header. On the
//! benchmark machine, the tunnel spent about a third of the gateway's CPU in that copy.
//! With `GLIBC_TUNABLES` set as below, glibc copies with vector loops instead, and
//! `keyway connect` through the gateway carried about a quarter more (BENCHMARKS.md).
//! The setting is read by the dynamic loader when a process starts, so Keyway can only
//! say so; it does not restart itself with a different environment.

use std::io::Read;

/// The `GLIBC_TUNABLES` value that keeps glibc's `memcpy` off `rep movsb` below 2 MB.
pub const MEMCPY_TUNABLE: &str = "glibc.cpu.x86_rep_movsb_threshold=2000000";

/// Logs, once, what the operator of this host could set to make Keyway faster.
pub fn log_hints() {
    if cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        let tunables = std::env::var("GLIBC_TUNABLES").ok();
        if slow_rep_movsb(&cpuinfo(), tunables.as_deref()) {
            tracing::info!(
                glibc_tunables = MEMCPY_TUNABLE,
                "this AMD CPU copies slowly with glibc's `rep movsb` (glibc before 2.40, bug 30994); \
                 if this host's glibc is older, start keyway with GLIBC_TUNABLES set to this value \
                 for about a quarter more tunnel throughput"
            );
        }
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

/// The start of `/proc/cpuinfo` (the first CPU's entry is enough), or nothing.
fn cpuinfo() -> String {
    let mut buf = Vec::new();
    if let Ok(f) = std::fs::File::open("/proc/cpuinfo") {
        let _ = f.take(64 * 1024).read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).into_owned()
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
        assert!(
            !slow_rep_movsb(OLD_AMD, None),
            "no fsrm: glibc keeps its vector loops"
        );
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
}
