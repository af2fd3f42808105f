//! Giving back the pages of the binary and the shared libraries that only the start touched.
//!
//! Starting reads the config, generates or loads keys and certificates, builds TLS contexts,
//! compiles routes, opens the store and connects the agent: code that runs once, but whose
//! pages stay resident (file-backed, clean) until the kernel is short of memory. On a gateway
//! with tens of MiB free that is never, so they count in RSS for the life of the process: about
//! 1–1.5 MiB of a 5 MiB binary (`/proc/PID/smaps`, measured by `benches/connections.rs`).
//!
//! [`RELEASE_AFTER`] after the runtime logs that it is running, one short-lived thread reads
//! `/proc/self/smaps` and hands every read-only, file-backed, private mapping that holds no
//! anonymous (copy-on-write) page back to the kernel (`madvise(MADV_PAGEOUT)`, see [`release`]).
//! The pages are clean copies of the file: what the running hub and agent touch again is read
//! back from the file, one page per first touch (a few hundred pages when traffic starts after
//! the release, once); the rest stays out. Writable
//! mappings (`.data`, `.bss`, the heap, stacks) and anything with anonymous pages are never
//! touched, so no state is lost. `TINYEDGE_KEEP_PAGES=1` turns it off.
use std::time::Duration;

/// How long after "running as device" the pages that only the start touched are given back:
/// long enough for the first upstream connect and the agent's first reconcile to finish.
pub const RELEASE_AFTER: Duration = Duration::from_secs(5);

/// One mapping that can be given back: its address range.
#[derive(Debug, PartialEq, Eq)]
pub struct Releasable {
    pub start: usize,
    pub end: usize,
}

/// The read-only, private, file-backed mappings of an smaps text that hold no anonymous page.
/// Pure: `/proc/self/smaps` is read by the caller.
pub fn releasable(smaps: &str) -> Vec<Releasable> {
    let mut found = Vec::new();
    let mut current: Option<Releasable> = None;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if let Some((start, end)) = first.split_once('-').filter(|_| !first.ends_with(':')) {
            // A mapping header: "start-end perms offset dev inode [path]".
            current = None;
            let (Ok(start), Ok(end)) = (usize::from_str_radix(start, 16), usize::from_str_radix(end, 16)) else {
                continue;
            };
            let perms = fields.next().unwrap_or("");
            let path = fields.nth(3).unwrap_or("");
            if (perms == "r--p" || perms == "r-xp") && path.starts_with('/') && end > start {
                current = Some(Releasable { start, end });
            }
        } else if first == "Anonymous:" {
            let anonymous: u64 = fields.next().and_then(|v| v.parse().ok()).unwrap_or(1);
            if let Some(mapping) = current.take() {
                if anonymous == 0 {
                    found.push(mapping);
                }
            }
        }
    }
    found
}

/// Starts the thread that gives the start's pages back after [`RELEASE_AFTER`].
pub fn release_after_start() {
    if std::env::var_os("TINYEDGE_KEEP_PAGES").is_some_and(|v| v == "1") {
        return;
    }
    let spawned = std::thread::Builder::new().name("pages".into()).stack_size(64 * 1024).spawn(|| {
        std::thread::sleep(RELEASE_AFTER);
        let released = release();
        log::debug!("gave back {} KiB of pages only the start touched", released / 1024);
    });
    if let Err(e) = spawned {
        log::debug!("pages: no thread ({e}); the start's pages stay resident");
    }
}

/// Gives back every [`releasable`] mapping of this process; returns the bytes advised.
///
/// `MADV_PAGEOUT` reclaims the pages that this process alone maps (the binary's), so they leave
/// the page cache too; `MADV_DONTNEED` then drops this process's mapping of the rest (a shared
/// library's pages that other processes use). Dropping the mapping alone is not enough for the
/// binary: a later fault maps up to 16 cached neighbours with the page it needs (the kernel's
/// fault-around), and RSS grows back by 64 KiB per fault — 2 MiB of the binary within seconds,
/// measured with `/proc/PID/pagemap`. `MADV_RANDOM` first, so a later fault reads the one page
/// it needs instead of a readahead window. Kernels before 5.4 (no `MADV_PAGEOUT`) get only
/// `MADV_DONTNEED`.
fn release() -> usize {
    use rustix::mm::{madvise, Advice};
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else { return 0 };
    let mappings = releasable(&smaps);
    let exe = std::fs::File::open("/proc/self/exe").ok();
    // The binary's cached pages that are not mapped here: evicted first, so that the faults of
    // the threads still running while the mappings are released map no cached neighbours; and
    // once more at the end. Only clean pages nobody maps are evicted (a binary written moments
    // ago, still dirty, stays cached), and only the binary's: a shared library's cache serves
    // every other process.
    let evict_binary_cache = || {
        if let Some(exe) = &exe {
            let _ = rustix::fs::fadvise(exe, 0, None, rustix::fs::Advice::DontNeed);
        }
    };
    let mut advised = 0;
    for pass in [Advice::Random, Advice::LinuxPageOut, Advice::LinuxDontNeed] {
        if pass == Advice::LinuxPageOut {
            evict_binary_cache();
        }
        for mapping in &mappings {
            let (start, len) = (mapping.start as *mut std::ffi::c_void, mapping.end - mapping.start);
            // SAFETY: the range is one whole mapping of this process, read from smaps a moment
            // ago: private, not writable, backed by a file, and without anonymous pages, so
            // every page of it is a clean copy of the file. None of these advices changes what
            // the memory reads: RANDOM only turns readahead off, PAGEOUT reclaims like memory
            // pressure would, and DONTNEED on such a mapping drops copies that the next access
            // reads from the file again. Nothing here unmaps or remaps the range, so no
            // reference into it (text and read-only data) is invalidated.
            #[allow(unsafe_code)]
            let done = unsafe { madvise(start, len, pass) };
            if pass == Advice::LinuxDontNeed && done.is_ok() {
                advised += len;
            }
        }
    }
    evict_binary_cache();
    advised
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0a00000-55d0c0b00000 r--p 00000000 08:01 1234 /usr/bin/tinyedge
Size:               1024 kB
Rss:                 512 kB
Anonymous:             0 kB
55d0c0b00000-55d0c0f00000 r-xp 00100000 08:01 1234 /usr/bin/tinyedge
Size:               4096 kB
Anonymous:             0 kB
55d0c0f00000-55d0c0f10000 r--p 00500000 08:01 1234 /usr/bin/tinyedge
Size:                 64 kB
Anonymous:            64 kB
55d0c0f10000-55d0c0f20000 rw-p 00510000 08:01 1234 /usr/bin/tinyedge
Anonymous:            64 kB
55d0c1000000-55d0c1100000 rw-p 00000000 00:00 0 [heap]
Anonymous:          1024 kB
7f0000000000-7f0000010000 r-xp 00000000 00:00 0 [vdso]
Anonymous:             0 kB
7f0000020000-7f0000030000 r--s 00000000 08:01 99 /dev/shm/x
Anonymous:             0 kB
7f0000040000-7f0000050000 r-xp 00000000 08:01 77 /usr/lib/x86_64-linux-gnu/libc.so.6
VmFlags: rd ex mr mw me
Anonymous:             0 kB
";

    #[test]
    fn only_clean_private_read_only_file_mappings_are_given_back() {
        assert_eq!(
            releasable(SMAPS),
            vec![
                Releasable { start: 0x55d0c0a00000, end: 0x55d0c0b00000 },
                Releasable { start: 0x55d0c0b00000, end: 0x55d0c0f00000 },
                Releasable { start: 0x7f0000040000, end: 0x7f0000050000 },
            ]
        );
    }

    #[test]
    fn a_mapping_without_an_anonymous_line_is_kept() {
        let smaps = "00400000-00500000 r-xp 00000000 08:01 1 /bin/x\nSize: 1024 kB\n";
        assert!(releasable(smaps).is_empty());
    }

    #[test]
    fn malformed_lines_are_skipped() {
        let smaps = "zz-yy r-xp 0 0 0 /bin/x\nAnonymous: 0 kB\n\n-\nAnonymous: x kB\n";
        assert!(releasable(smaps).is_empty());
    }
}
