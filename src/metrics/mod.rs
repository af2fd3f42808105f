//! `GET /metrics`: the Prometheus text endpoint (`[metrics] listen`), with IoT Edge's metric
//! names and labels where they apply and tinyedge's own as `tinyedge_*`.
//!
//! A scrape reads atomics, the store's stats, the link's status and what the module sampler
//! left; its output grows with the number of modules and store queues (both bounded), never
//! with traffic, and is written into one buffer reused from scrape to scrape.
//!
//! # Layout
//! - `text`: the exposition format writer (pure).
//! - `cgroup`: a module's memory and CPU from its cgroup, v1 or v2.
//! - `modules`: per-module starts, stops and usage, refreshed by a sampler.
//! - here: the sources, the families, the listener.

mod cgroup;
mod modules;
mod text;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use crate::cloud::Upstream as Link;
use tinyedge_hub::broker::Broker;
use tinyedge_hub::metrics::Metrics;
use tinyedge_hub::store::Store;
use tinyedge_platform::http::{self, Limits, Request, Response};

use modules::Modules;
use text::{DeviceLabels, Exposition, Family};

/// The path served; any other is a 404.
pub const METRICS_PATH: &str = "/metrics";
/// A scrape's request has no body.
const LIMITS: Limits = Limits::with_body_max(0);
/// The buffer a scrape starts with: about the size of an exposition with a few modules and
/// queues, so the first scrapes do not regrow it.
const EXPOSITION_BYTES_INITIAL: usize = 32 * 1024;

/// The agent's reported document (`tinyedge list --json`), when the agent runs.
pub type ModulesReport = Arc<dyn Fn() -> Response + Send + Sync>;

/// Everything a scrape reads.
pub struct Sources {
    pub broker: Arc<Broker>,
    pub store: Arc<Store>,
    pub link: Option<Link>,
    pub modules: Option<ModulesReport>,
    /// The containerd namespace, which names the modules' cgroups.
    pub namespace: String,
    pub data_dir: PathBuf,
    pub device: DeviceLabels,
}

/// The endpoint's state: its sources, the sampler's module table, the reused buffer.
pub struct Endpoint {
    sources: Sources,
    modules: Mutex<Modules>,
    buffer: Mutex<String>,
}

/// A random id for this process start: std's `RandomState` is seeded from the OS's random
/// source, which is all IoT Edge's per-start GUID needs to be.
pub fn instance_number() -> String {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    format!("{:016x}", hasher.finish())
}

impl Endpoint {
    pub fn new(sources: Sources) -> Arc<Endpoint> {
        Arc::new(Endpoint {
            sources,
            modules: Mutex::new(Modules::default()),
            buffer: Mutex::new(String::with_capacity(EXPOSITION_BYTES_INITIAL)),
        })
    }

    /// One sampler pass: the agent's document, then each tracked module's cgroup.
    pub fn sample(&self) {
        let Some(report) = &self.sources.modules else { return };
        let answer = report();
        let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&answer.body) else { return };
        let mut modules = self.modules.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        for seen in modules::observed(&doc) {
            modules.observe(&seen, now);
        }
        let root = std::path::Path::new(cgroup::CGROUP_ROOT);
        let names: Vec<String> = modules.by_name.keys().cloned().collect();
        for name in names {
            let usage = cgroup::read(root, &self.sources.namespace, &name);
            modules.usage(&name, usage, now);
        }
    }

    /// Answers one request.
    pub fn respond(&self, request: &Request) -> Response {
        if request.head.path.split('?').next() != Some(METRICS_PATH) {
            return Response::message(
                404,
                &format!("no such path {}: metrics are at {METRICS_PATH}", request.head.path),
            );
        }
        if request.head.method != "GET" {
            return Response::message(405, "only GET");
        }
        let mut buffer = self.buffer.lock().unwrap_or_else(PoisonError::into_inner);
        self.render(&mut buffer);
        Response::typed(200, text::CONTENT_TYPE, buffer.as_bytes().to_vec())
    }

    /// The whole exposition into `out`.
    pub fn render(&self, out: &mut String) {
        let mut e = Exposition::new(out, &self.sources.device);
        self.hub(&mut e);
        self.store(&mut e);
        self.upstream(&mut e);
        self.agent(&mut e);
        self.disk(&mut e);
        hub_counters(&mut e, &self.sources.broker.metrics);
    }

    fn hub(&self, e: &mut Exposition<'_>) {
        let m = &self.sources.broker.metrics;
        let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed) as f64;
        let clients = self.sources.broker.clients.snapshot();
        e.family(Family::counter(
            "edgehub_messages_received_total",
            "Telemetry messages accepted, by client (route_output not counted; beyond 256 clients they share id=\"other\").",
            true,
        ));
        for (id, counts) in &clients {
            e.sample(&[("id", id.as_str())], counts[0] as f64);
        }
        let upstream_acked = self.sources.link.as_ref().map_or(0, |l| l.status().acked) as f64;
        e.family(Family::counter("edgehub_messages_sent_total", "Messages delivered: to=\"upstream\" acknowledged by the cloud, to=\"modules\" written to module inputs (all modules together).", true))
            .sample(&[("to", "upstream")], upstream_acked)
            .sample(&[("to", "modules")], get(&m.deliveries_sent));
        let stats = self.sources.store.stats();
        e.family(Family::gauge(
            "edgehub_queue_length",
            "Messages waiting in the store per endpoint and route priority (the store's estimate).",
            true,
        ));
        for endpoint in &stats.endpoints {
            let (name, priority) = endpoint.name.rsplit_once('#').unwrap_or((endpoint.name.as_str(), ""));
            e.sample(&[("endpoint", name), ("priority", priority)], endpoint.pending_estimate as f64);
        }
        let link_dropped = self.sources.link.as_ref().map_or(0, |l| l.status().dropped) as f64;
        e.family(Family::counter("edgehub_messages_dropped_total", "Messages dropped, by reason.", true))
            .sample(&[("reason", "ttl_expiry")], stats.expired_skipped as f64)
            .sample(&[("reason", "store_full")], stats.dropped_full as f64)
            .sample(&[("reason", "no_route")], get(&m.messages_unrouted))
            .sample(&[("reason", "upstream_refused")], link_dropped)
            .sample(&[("reason", "not_subscribed")], get(&m.control_unsubscribed));
        let upstream = self.sources.link.as_ref().map(|l| l.status()).unwrap_or_default();
        e.family(Family::summary(
            "edgehub_message_process_duration_seconds",
            "Time from a message's arrival at the hub to its first write to the endpoint (to=\"upstream\": the cloud; to=\"modules\": module inputs).",
            true,
        ))
        .summary(&[("to", "upstream")], upstream.process_ms_sum as f64 / 1000.0, upstream.processed as f64)
        .summary(&[("to", "modules")], get(&m.process_modules_ms) as f64 / 1000.0, get(&m.process_modules_count));
        e.family(Family::counter("edgehub_gettwin_total", "Twin GETs answered, by client.", true));
        for (id, counts) in &clients {
            e.sample(&[("source", "local"), ("id", id.as_str())], counts[1] as f64);
        }
        e.family(Family::counter(
            "edgehub_reported_properties_total",
            "Reported-property patches applied, by client.",
            true,
        ));
        for (id, counts) in &clients {
            e.sample(&[("target", "local"), ("id", id.as_str())], counts[2] as f64);
        }
        e.single(
            Family::counter("edgehub_direct_methods_total", "Direct-method calls made to modules and devices.", true),
            get(&m.method_calls),
        );
        let connected = m
            .connections_open
            .load(std::sync::atomic::Ordering::Relaxed)
            .saturating_sub(m.connections_unauthenticated.load(std::sync::atomic::Ordering::Relaxed));
        e.single(
            Family::gauge("edgehub_connected_clients", "Clients connected and authenticated.", false),
            connected as f64,
        );
        e.family(Family::counter(
            "edgehub_client_connect_failed_total",
            "Connections that did not become a client, by reason.",
            true,
        ))
        .sample(&[("reason", "refused")], get(&m.connections_refused))
        .sample(&[("reason", "timeout")], get(&m.connect_timeouts))
        .sample(&[("reason", "connection_limit")], get(&m.connections_refused_limit));
    }

    fn store(&self, e: &mut Exposition<'_>) {
        let s = self.sources.store.stats();
        e.single(
            Family::gauge("tinyedge_store_bytes", "Bytes of the store's segments on disk.", false),
            s.bytes_on_disk as f64,
        );
        e.single(Family::gauge("tinyedge_store_segments", "Segment files of the store.", false), s.segments as f64);
        e.single(
            Family::gauge("tinyedge_store_records", "Records in the store, delivered or not.", false),
            s.records_stored as f64,
        );
        e.single(
            Family::counter("tinyedge_store_records_appended_total", "Records written to the store.", false),
            s.records_appended as f64,
        );
        e.single(
            Family::counter(
                "tinyedge_store_dropped_total",
                "Records dropped at max_bytes (when_full = drop_oldest).",
                false,
            ),
            s.dropped_full as f64,
        );
        e.single(
            Family::counter("tinyedge_store_expired_total", "Records skipped past their time to live.", false),
            s.expired_skipped as f64,
        );
        e.single(Family::counter("tinyedge_store_fsyncs_total", "fsync calls of the store.", false), s.fsyncs as f64);
        e.family(Family::counter(
            "tinyedge_store_refused_total",
            "Messages the store refused (no PUBACK), by reason.",
            false,
        ))
        .sample(&[("reason", "full")], s.rejected_full as f64)
        .sample(&[("reason", "disk_full")], s.rejected_no_space as f64);
    }

    fn upstream(&self, e: &mut Exposition<'_>) {
        let Some(link) = &self.sources.link else { return };
        let s = link.status();
        e.single(
            Family::gauge("tinyedge_upstream_connected", "1 while the cloud link is up.", false),
            f64::from(u8::from(s.connected)),
        );
        e.single(
            Family::counter("tinyedge_upstream_reconnects_total", "Reconnections of the cloud link.", false),
            s.reconnects as f64,
        );
        let (open, up) = match link.cloud() {
            Some(cloud) => {
                let links = cloud.links();
                (links.len(), links.iter().filter(|(_, s)| s.connected).count())
            }
            None => (1, usize::from(s.connected)),
        };
        e.family(Family::gauge(
            "tinyedge_upstream_connections",
            "Upstream connections open (protocol iothub: one per identity with cloud traffic), and of them connected.",
            false,
        ))
        .sample(&[("state", "open")], open as f64)
        .sample(&[("state", "connected")], up as f64);
        e.single(
            Family::counter("edgehub_offline_count_total", "Times the cloud link was lost (its reconnections).", true),
            s.reconnects as f64,
        );
        e.single(
            Family::counter("tinyedge_upstream_published_total", "Messages published to the cloud.", false),
            s.published as f64,
        );
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let offline_secs = if s.connected || s.since_unix_ms == 0 {
            0.0
        } else {
            now_ms.saturating_sub(s.since_unix_ms) as f64 / 1000.0
        };
        e.single(
            Family::gauge(
                "edgehub_offline_duration_seconds",
                "How long the cloud link has been down (0 while it is up).",
                true,
            ),
            offline_secs,
        );
    }

    fn agent(&self, e: &mut Exposition<'_>) {
        if self.sources.modules.is_none() {
            return;
        }
        let modules = self.modules.lock().unwrap_or_else(PoisonError::into_inner);
        let families = [
            Family::counter(
                "edgeAgent_module_start_total",
                "Module starts seen by the agent (sampled every 2 s).",
                true,
            ),
            Family::counter("edgeAgent_module_stop_total", "Module exits seen by the agent (sampled every 2 s).", true),
            Family::gauge("edgeAgent_used_memory_bytes", "Memory used by the module's cgroup.", true),
            Family::gauge(
                "edgeAgent_used_cpu_percent",
                "CPU used by the module's cgroup over the last 2 s, percent of one CPU.",
                true,
            ),
            Family::gauge(
                "edgeAgent_total_time_expected_running_seconds",
                "Time the module was desired running (sampled every 2 s).",
                true,
            ),
            Family::gauge(
                "edgeAgent_total_time_running_correctly_seconds",
                "Of the time desired running, the time it was seen running (sampled every 2 s).",
                true,
            ),
        ];
        for (index, family) in families.into_iter().enumerate() {
            e.family(family);
            for (name, m) in &modules.by_name {
                let value = match index {
                    0 => Some(m.starts as f64),
                    1 => Some(m.stops as f64),
                    2 => m.memory_bytes.map(|b| b as f64),
                    3 => m.cpu_percent,
                    4 => Some(m.expected_secs.floor()),
                    _ => Some(m.correct_secs.floor()),
                };
                if let Some(value) = value {
                    e.sample(&[("module_name", name)], value);
                }
            }
        }
        e.family(Family::counter(
            "tinyedge_metrics_series_overflow_total",
            "Modules not given series because SERIES_MAX (64) were tracked.",
            false,
        ))
        .sample(&[("overflow", "true")], modules.overflow as f64);
    }

    fn disk(&self, e: &mut Exposition<'_>) {
        let Ok(fs) = rustix::fs::statvfs(&self.sources.data_dir) else { return };
        let name = self.sources.data_dir.to_string_lossy();
        let block = fs.f_frsize.max(1) as f64;
        e.family(Family::gauge(
            "edgeAgent_available_disk_space_bytes",
            "Free bytes (for unprivileged users) of data_dir's filesystem.",
            true,
        ))
        .sample(&[("disk_name", &name)], fs.f_bavail as f64 * block);
        e.family(Family::gauge("edgeAgent_total_disk_space_bytes", "Size of data_dir's filesystem.", true))
            .sample(&[("disk_name", &name)], fs.f_blocks as f64 * block);
    }
}

/// Every hub counter as `tinyedge_hub_{name}_total` (the two gauges without `_total`): the
/// complete set `tinyedge status` shows. Names are static, so nothing is formatted per scrape
/// beyond the lines themselves.
fn hub_counters(e: &mut Exposition<'_>, metrics: &Metrics) {
    macro_rules! each {
        ($($kind:ident $name:ident $field:ident;)*) => {$(
            e.single(Family::$kind(stringify!($name), concat!("tinyedge hub counter ", stringify!($field), " (see hub/src/metrics.rs)."), false),
                metrics.$field.load(std::sync::atomic::Ordering::Relaxed) as f64);
        )*};
    }
    each! {
        gauge tinyedge_hub_connections_open connections_open;
        gauge tinyedge_hub_connections_unauthenticated connections_unauthenticated;
        counter tinyedge_hub_connections_refused_total connections_refused;
        counter tinyedge_hub_connections_refused_limit_total connections_refused_limit;
        counter tinyedge_hub_connect_timeouts_total connect_timeouts;
        counter tinyedge_hub_accept_errors_total accept_errors;
        counter tinyedge_hub_malformed_packets_total malformed_packets;
        counter tinyedge_hub_unauthorized_topics_total unauthorized_topics;
        counter tinyedge_hub_messages_received_total messages_received;
        counter tinyedge_hub_messages_unrouted_total messages_unrouted;
        counter tinyedge_hub_deliveries_queued_total deliveries_queued;
        counter tinyedge_hub_deliveries_sent_total deliveries_sent;
        counter tinyedge_backpressure_waits_total backpressure_waits;
        counter tinyedge_hub_store_rejected_total store_rejected;
        counter tinyedge_hub_store_errors_total store_errors;
        counter tinyedge_hub_store_refused_disconnects_total store_refused_disconnects;
        counter tinyedge_hub_twin_errors_total twin_errors;
        counter tinyedge_hub_twin_desired_patches_total twin_desired_patches;
        counter tinyedge_hub_iothub_unserved_total iothub_unserved;
        counter tinyedge_hub_method_answers_total method_answers;
        counter tinyedge_hub_method_failures_total method_failures;
    }
}

/// Serves `/metrics` on `listener` and samples the modules every [`modules::SAMPLE_INTERVAL`],
/// until the tasks are dropped.
pub fn spawn(endpoint: Arc<Endpoint>, listener: smol::Async<std::net::TcpListener>) {
    let sampler = endpoint.clone();
    tinyedge_platform::rt::spawn(async move {
        loop {
            sampler.sample();
            smol::Timer::after(modules::SAMPLE_INTERVAL).await;
        }
    })
    .detach();
    tinyedge_platform::rt::spawn(http::serve_tcp(listener, "metrics", LIMITS, move |request| {
        let endpoint = endpoint.clone();
        async move { endpoint.respond(&request) }
    }))
    .detach();
}

/// Makes the metrics (also read by the runtime-quality telemetry), binds `[metrics] listen`
/// and serves them there; not served when the key is `""`. A configured address must bind;
/// the default one, when taken, leaves the endpoint off with a warning.
///
/// # Errors
/// The address cannot be bound.
pub fn start(
    config: &tinyedge_platform::Config,
    broker: &Arc<Broker>,
    link: Option<&Link>,
    modules: Option<ModulesReport>,
) -> Result<Arc<Endpoint>, crate::failure::Failure> {
    let endpoint = Endpoint::new(Sources {
        broker: broker.clone(),
        store: broker.router.store().clone(),
        link: link.cloned(),
        modules,
        namespace: config.agent.namespace.clone(),
        data_dir: config.data_dir.clone(),
        device: DeviceLabels {
            iothub: config.iothub_hostname.clone(),
            edge_device: config.device_id.clone(),
            instance_number: instance_number(),
        },
    });
    let Some(addr) = config.metrics.listen else {
        log::info!("metrics endpoint off ([metrics] listen = \"\")");
        return Ok(endpoint);
    };
    let listener = match smol::Async::<std::net::TcpListener>::bind(addr) {
        Ok(listener) => listener,
        // As the method API's default: a second tinyedge on the host, or IoT Edge itself,
        // holds 9600; the runtime runs without metrics rather than not at all.
        Err(e) if addr == tinyedge_platform::config::DEFAULT_METRICS_ADDR => {
            log::warn!("metrics endpoint off: the default metrics.listen {addr}: {e}; set [metrics] listen to a free address, or \"\" to turn it off");
            return Ok(endpoint);
        }
        Err(e) => {
            return Err(crate::failure::Failure::Runtime(format!("metrics listener on {addr} (metrics.listen): {e}")))
        }
    };
    let local = listener.get_ref().local_addr().map_or(addr, |a| a);
    spawn(endpoint.clone(), listener);
    log::info!("metrics listening on http://{local}{METRICS_PATH}");
    Ok(endpoint)
}
