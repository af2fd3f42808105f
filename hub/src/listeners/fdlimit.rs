//! The process's file descriptor budget. Every client socket is a descriptor, and so are the
//! store's segment files, the checkpoint, status and twin files, the containerd connection and
//! module log FIFOs, the listeners and stderr. At start the soft `RLIMIT_NOFILE` is raised to
//! the hard limit (the soft default is often 1024, the hard one far higher), and
//! `max_connections` is lowered to what the descriptors left after [`FD_RESERVE`] allow, so
//! a flood of sockets meets the hub's own limit, with a log line, before `accept()` runs out of
//! descriptors and the store cannot open its next segment.

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// Descriptors kept back from client sockets: the store's open segments (up to 16 at the
/// default bound) and its checkpoint and registry files, the status and twin files, the
/// listeners, the containerd gRPC connection, the management socket with its 16 connections,
/// and per module its log FIFOs, log file and workload socket (about 4 each, for a dozen
/// modules). 128 covers that with room; the rest of the limit goes to clients.
pub const FD_RESERVE: u64 = 128;

/// What [`raise_soft_limit`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nofile {
    /// The soft limit at start; `None`: unlimited.
    pub before: Option<u64>,
    /// The soft limit now.
    pub soft: Option<u64>,
    /// The hard limit.
    pub hard: Option<u64>,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit. A failure is logged and leaves the
/// limit as it was (the budget is then derived from the unraised limit).
pub fn raise_soft_limit() -> Nofile {
    let limit = getrlimit(Resource::Nofile);
    let mut nofile = Nofile { before: limit.current, soft: limit.current, hard: limit.maximum };
    // An unlimited hard limit cannot be set as the soft one on Linux (it is capped by
    // fs.nr_open), and an unlimited or already maximal soft limit needs nothing.
    if let (Some(soft), Some(hard)) = (limit.current, limit.maximum) {
        if soft < hard {
            match setrlimit(Resource::Nofile, Rlimit { current: Some(hard), maximum: Some(hard) }) {
                Ok(()) => {
                    nofile.soft = Some(hard);
                    log::info!("file descriptors: soft limit raised from {soft} to the hard limit {hard}");
                }
                Err(e) => log::warn!("file descriptors: could not raise the soft limit {soft} to {hard}: {e}"),
            }
        }
    }
    nofile
}

/// The most client sockets a soft limit leaves room for: the limit minus [`FD_RESERVE`], but
/// at least half of it (a tiny limit still serves a few clients rather than none). `None`:
/// unlimited.
pub fn socket_budget(soft: Option<u64>) -> Option<usize> {
    let soft = soft?;
    let budget = soft.saturating_sub(FD_RESERVE).max(soft / 2);
    Some(usize::try_from(budget).unwrap_or(usize::MAX))
}

/// Raises the descriptor limit and returns `max_connections` lowered to its budget; says so
/// once when it lowers it.
pub fn fit_max_connections(max_connections: usize) -> usize {
    let nofile = raise_soft_limit();
    match socket_budget(nofile.soft) {
        Some(budget) if budget < max_connections => {
            // The default is sized for what the memory of a Pi holds; a system that allows fewer
            // descriptors is no fault of the configuration, so only a value set by hand warns.
            let level = if max_connections == tinyedge_platform::config::DEFAULT_MAX_CONNECTIONS {
                log::Level::Info
            } else {
                log::Level::Warn
            };
            log::log!(
                level,
                "hub.max_connections = {max_connections} lowered to {budget}: the file descriptor limit is {} and \
                 {FD_RESERVE} are kept for the store, status and twin files, containerd and logs",
                nofile.soft.unwrap_or_default()
            );
            budget
        }
        _ => max_connections,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_keeps_the_reserve_or_half_the_limit() {
        assert_eq!(socket_budget(None), None);
        assert_eq!(socket_budget(Some(1024)), Some(1024 - FD_RESERVE as usize));
        assert_eq!(socket_budget(Some(1_048_576)), Some(1_048_576 - FD_RESERVE as usize));
        assert_eq!(socket_budget(Some(100)), Some(50));
        assert_eq!(socket_budget(Some(0)), Some(0));
    }

    #[test]
    fn raising_the_limit_never_lowers_it() {
        let nofile = raise_soft_limit();
        assert!(nofile.soft >= nofile.before, "{nofile:?}");
        assert_eq!(getrlimit(Resource::Nofile).current, nofile.soft);
        assert_eq!(fit_max_connections(1), 1);
    }
}
