//! Per-module series of edgeAgent: starts and stops seen in the agent's reported document, and
//! memory and CPU read from each module's cgroup. A sampler refreshes them every
//! [`SAMPLE_INTERVAL`]; a scrape only reads what it left.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::cgroup::{self, Usage};
use crate::status::STATUS_INTERVAL;

/// Modules tracked by name. A deployment has a handful; 64 bounds what removed-and-renamed
/// modules can accumulate over a long run. Beyond it, a module gets no series and is counted
/// in [`Modules::overflow`] (`tinyedge_metrics_series_overflow_total{overflow="true"}`).
pub const SERIES_MAX: usize = 64;
/// How often the agent's document and the cgroups are read: the status file's pace, so a
/// restart loop's starts are seen even between scrapes, and CPU percent is over this window.
pub const SAMPLE_INTERVAL: Duration = STATUS_INTERVAL;

/// What the sampler knows of one module.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Module {
    last_start: String,
    last_exit: String,
    restart_count: u64,
    pub starts: u64,
    pub stops: u64,
    pub memory_bytes: Option<u64>,
    pub cpu_percent: Option<f64>,
    cpu: Option<(u64, Instant)>,
    /// Seconds the module was desired running, and of those, seen running (IoT Edge's
    /// `total_time_expected_running` / `total_time_running_correctly`), between samples.
    pub expected_secs: f64,
    pub correct_secs: f64,
    seen_at: Option<(Instant, bool, bool)>,
}

/// One module's line in the agent's reported document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed<'a> {
    pub name: &'a str,
    /// `lastStartTimeUtc`, `lastExitTimeUtc` (IoT Edge's "never" when it has not).
    pub last_start: &'a str,
    pub last_exit: &'a str,
    pub restart_count: u64,
    /// The desired `status` is `running`.
    pub expected: bool,
    /// `runtimeStatus` is `running`.
    pub running: bool,
}

/// The modules of the reported document (`modules.{name}`).
pub fn observed(report: &Value) -> Vec<Observed<'_>> {
    let Some(modules) = report.get("modules").and_then(Value::as_object) else { return Vec::new() };
    modules
        .iter()
        .map(|(name, m)| Observed {
            name,
            last_start: m.get("lastStartTimeUtc").and_then(Value::as_str).unwrap_or(NEVER),
            last_exit: m.get("lastExitTimeUtc").and_then(Value::as_str).unwrap_or(NEVER),
            restart_count: m.get("restartCount").and_then(Value::as_u64).unwrap_or(0),
            expected: m.get("status").and_then(Value::as_str) == Some("running"),
            running: m.get("runtimeStatus").and_then(Value::as_str) == Some("running"),
        })
        .collect()
}

/// IoT Edge's "never" time, as the agent's report writes it (`report::NEVER`; spelled here so
/// the hub-only build, without the agent's supervisor, compiles).
const NEVER: &str = "0001-01-01T00:00:00Z";

/// All tracked modules, by name.
#[derive(Debug, Default)]
pub struct Modules {
    pub by_name: BTreeMap<String, Module>,
    /// Modules not tracked because [`SERIES_MAX`] were.
    pub overflow: u64,
}

impl Modules {
    /// Applies one observation: a new start time is at least one start (more when the restart
    /// count rose by more since the last sample), a new exit time at least one stop.
    pub fn observe(&mut self, seen: &Observed<'_>, now: Instant) {
        if !self.by_name.contains_key(seen.name) && self.by_name.len() >= SERIES_MAX {
            self.overflow += 1;
            return;
        }
        let module = self.by_name.entry(seen.name.to_owned()).or_default();
        let restarts = seen.restart_count.saturating_sub(module.restart_count);
        if seen.last_start != module.last_start && seen.last_start != NEVER {
            module.starts += restarts.max(1);
        }
        if seen.last_exit != module.last_exit && seen.last_exit != NEVER {
            module.stops += restarts.max(1);
        }
        module.last_start.clear();
        module.last_start.push_str(seen.last_start);
        module.last_exit.clear();
        module.last_exit.push_str(seen.last_exit);
        module.restart_count = seen.restart_count;
        // The time since the last sample counts as what that sample saw.
        if let Some((at, expected, running)) = module.seen_at {
            let secs = now.saturating_duration_since(at).as_secs_f64();
            if expected {
                module.expected_secs += secs;
                if running {
                    module.correct_secs += secs;
                }
            }
        }
        module.seen_at = Some((now, seen.expected, seen.running));
    }

    /// Applies a cgroup reading taken at `now`.
    pub fn usage(&mut self, name: &str, usage: Usage, now: Instant) {
        let Some(module) = self.by_name.get_mut(name) else { return };
        module.memory_bytes = usage.memory_bytes;
        module.cpu_percent = match (module.cpu, usage.cpu_ns) {
            (Some((before, at)), Some(after)) => {
                let wall = u64::try_from(now.saturating_duration_since(at).as_nanos()).unwrap_or(u64::MAX);
                cgroup::cpu_percent(before, after, wall)
            }
            _ => None,
        };
        module.cpu = usage.cpu_ns.map(|ns| (ns, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen<'a>(start: &'a str, exit: &'a str, restart_count: u64) -> Observed<'a> {
        Observed { name: "m", last_start: start, last_exit: exit, restart_count, expected: true, running: true }
    }

    #[test]
    fn time_expected_and_running_correctly_add_up_between_samples() {
        let mut modules = Modules::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let state = |running| Observed {
            name: "m",
            last_start: "t",
            last_exit: NEVER,
            restart_count: 0,
            expected: true,
            running,
        };
        modules.observe(&state(true), at(0));
        modules.observe(&state(false), at(10));
        modules.observe(&state(true), at(14));
        modules.observe(&state(true), at(20));
        let m = &modules.by_name["m"];
        assert_eq!((m.expected_secs, m.correct_secs), (20.0, 16.0));
    }

    #[test]
    fn starts_and_stops_follow_the_reported_times() {
        let mut modules = Modules::default();
        let steps = [
            (seen(NEVER, NEVER, 0), (0, 0)),
            (seen("t1", NEVER, 0), (1, 0)),
            (seen("t1", NEVER, 0), (1, 0)),
            (seen("t1", "t2", 0), (1, 1)),
            (seen("t3", "t2", 1), (2, 1)),
            // Three restarts between two samples: all counted.
            (seen("t9", "t8", 4), (5, 4)),
            // The restart count was reset (intensive care): a new start still counts one.
            (seen("t10", "t8", 0), (6, 4)),
        ];
        for (observation, (starts, stops)) in steps {
            modules.observe(&observation, Instant::now());
            let m = &modules.by_name["m"];
            assert_eq!((m.starts, m.stops), (starts, stops), "{observation:?}");
        }
    }

    #[test]
    fn modules_beyond_the_limit_are_counted_not_tracked() {
        let mut modules = Modules::default();
        let names: Vec<String> = (0..SERIES_MAX + 3).map(|i| format!("m{i}")).collect();
        for name in &names {
            let seen =
                Observed { name, last_start: "t", last_exit: NEVER, restart_count: 0, expected: true, running: true };
            modules.observe(&seen, Instant::now());
        }
        assert_eq!((modules.by_name.len(), modules.overflow), (SERIES_MAX, 3));
    }

    #[test]
    fn cpu_percent_needs_two_readings() {
        let mut modules = Modules::default();
        modules.observe(&seen("t", NEVER, 0), Instant::now());
        let t0 = Instant::now();
        modules.usage("m", Usage { memory_bytes: Some(10), cpu_ns: Some(0) }, t0);
        assert_eq!(modules.by_name["m"].cpu_percent, None);
        modules.usage("m", Usage { memory_bytes: Some(20), cpu_ns: Some(250_000_000) }, t0 + Duration::from_secs(1));
        assert_eq!((modules.by_name["m"].memory_bytes, modules.by_name["m"].cpu_percent), (Some(20), Some(25.0)));
    }

    #[test]
    fn the_reported_document_is_read() {
        let doc = serde_json::json!({"modules": {"a": {"lastStartTimeUtc": "x", "restartCount": 2}}});
        let seen = observed(&doc);
        assert_eq!(
            seen,
            vec![Observed {
                name: "a",
                last_start: "x",
                last_exit: NEVER,
                restart_count: 2,
                expected: false,
                running: false
            }]
        );
        assert!(observed(&serde_json::json!({})).is_empty());
    }
}
