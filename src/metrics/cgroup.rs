//! A module's memory and CPU use from its cgroup, in the v1 or the v2 layout.
//!
//! The agent creates each container with `cgroupsPath` `/{namespace}/{module}`
//! (agent/src/containerd/spec.rs), so under cgroup v1 the files are
//! `/sys/fs/cgroup/{memory,cpuacct,cpu,cpuacct}/{namespace}/{module}/…` and under v2
//! `/sys/fs/cgroup/{namespace}/{module}/…`. Parsing is pure; [`read`] is the IO.

use std::path::{Path, PathBuf};

/// Where the cgroup filesystems are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// One reading of a module's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Memory in use (v1 `memory.usage_in_bytes`, v2 `memory.current`).
    pub memory_bytes: Option<u64>,
    /// CPU time used since the cgroup was created, in nanoseconds (v1 `cpuacct.usage`, v2
    /// `cpu.stat` `usage_usec` × 1000).
    pub cpu_ns: Option<u64>,
}

/// The files that may hold a module's memory use, v1 first.
pub fn memory_files(root: &Path, namespace: &str, module: &str) -> [PathBuf; 2] {
    [
        root.join("memory").join(namespace).join(module).join("memory.usage_in_bytes"),
        root.join(namespace).join(module).join("memory.current"),
    ]
}

/// The files that may hold a module's CPU time: v1 (`cpuacct` mounted alone or with `cpu`),
/// then v2.
pub fn cpu_files(root: &Path, namespace: &str, module: &str) -> [PathBuf; 4] {
    [
        root.join("cpuacct").join(namespace).join(module).join("cpuacct.usage"),
        root.join("cpu,cpuacct").join(namespace).join(module).join("cpuacct.usage"),
        root.join("cpuacct,cpu").join(namespace).join(module).join("cpuacct.usage"),
        root.join(namespace).join(module).join("cpu.stat"),
    ]
}

/// A number file (`memory.usage_in_bytes`, `memory.current`, `cpuacct.usage`).
pub fn parse_number(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// v2 `cpu.stat`: `usage_usec N` in nanoseconds.
pub fn parse_cpu_stat_ns(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix("usage_usec "))
        .and_then(parse_number)
        .map(|usec| usec.saturating_mul(1000))
}

/// CPU use between two readings, in percent of one CPU (as `docker stats` and IoT Edge's
/// `used_cpu_percent` count it: 200 is two CPUs busy).
pub fn cpu_percent(before_ns: u64, after_ns: u64, wall_ns: u64) -> Option<f64> {
    if wall_ns == 0 || after_ns < before_ns {
        return None;
    }
    #[allow(clippy::cast_precision_loss)] // nanoseconds of CPU time: f64 is exact to 104 days
    Some((after_ns - before_ns) as f64 / wall_ns as f64 * 100.0)
}

/// Small files only: cgroup values are a line or a few.
const CGROUP_FILE_BYTES_MAX: u64 = 4096;

fn read_small(path: &Path) -> Option<String> {
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(path).ok()?.take(CGROUP_FILE_BYTES_MAX).read_to_string(&mut text).ok()?;
    Some(text)
}

/// Reads a module's usage; `None` fields where no layout has the file (the module is not
/// running, or the cgroup is not mounted where we look).
pub fn read(root: &Path, namespace: &str, module: &str) -> Usage {
    let memory_bytes =
        memory_files(root, namespace, module).iter().find_map(|p| read_small(p)).and_then(|t| parse_number(&t));
    let cpu_ns = cpu_files(root, namespace, module).iter().find_map(|path| {
        let text = read_small(path)?;
        if path.ends_with("cpu.stat") {
            parse_cpu_stat_ns(&text)
        } else {
            parse_number(&text)
        }
    });
    Usage { memory_bytes, cpu_ns }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_layouts_are_parsed() {
        assert_eq!(parse_number("67108864\n"), Some(67_108_864));
        assert_eq!(parse_number("max\n"), None);
        assert_eq!(parse_cpu_stat_ns("usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n"), Some(1_500_000));
        assert_eq!(parse_cpu_stat_ns("user_usec 1\n"), None);
    }

    #[test]
    fn cpu_percent_is_of_one_cpu() {
        for (before, after, wall, want) in [
            (0, 500_000_000, 1_000_000_000, Some(50.0)),
            (0, 2_000_000_000, 1_000_000_000, Some(200.0)),
            (10, 10, 1_000, Some(0.0)),
            (10, 5, 1_000, None), // a new cgroup (module restarted): no rate
            (0, 5, 0, None),
        ] {
            assert_eq!(cpu_percent(before, after, wall), want, "{before} {after} {wall}");
        }
    }

    #[test]
    fn files_follow_the_agents_cgroups_path() {
        let root = Path::new("/sys/fs/cgroup");
        assert_eq!(
            memory_files(root, "tinyedge", "m")[0],
            Path::new("/sys/fs/cgroup/memory/tinyedge/m/memory.usage_in_bytes")
        );
        assert_eq!(cpu_files(root, "tinyedge", "m")[3], Path::new("/sys/fs/cgroup/tinyedge/m/cpu.stat"));
    }

    #[test]
    fn a_fake_v2_tree_is_read() {
        let dir = std::env::temp_dir().join(format!("tinyedge-cgroup-{}", std::process::id()));
        let module = dir.join("ns").join("m");
        std::fs::create_dir_all(&module).unwrap();
        std::fs::write(module.join("memory.current"), "4096\n").unwrap();
        std::fs::write(module.join("cpu.stat"), "usage_usec 7\n").unwrap();
        assert_eq!(read(&dir, "ns", "m"), Usage { memory_bytes: Some(4096), cpu_ns: Some(7000) });
        assert_eq!(read(&dir, "ns", "other"), Usage::default());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
