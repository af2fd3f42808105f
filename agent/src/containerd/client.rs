//! The containerd gRPC adapter: one method per containerd call the agent makes, with the
//! namespace (and the pull's lease) attached, and every error turned into one line naming the
//! call and the object.
//!
//! containerd-client is tonic over tokio; tinyedge runs on smol. Every call is wrapped in
//! `async_compat::Compat`, which provides a tokio context (a one-thread tokio runtime beside
//! smol's executor) so tonic's connection and timers work.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};

use async_compat::Compat;
use containerd_client::services::v1 as api;
use containerd_client::services::v1::snapshots as snap;
use containerd_client::tonic::{self, Code, Request};
use containerd_client::types::{Descriptor, Mount};
use containerd_client::Client;

/// The snapshotter used for images and containers (what containerd and ctr default to).
pub const SNAPSHOTTER: &str = "overlayfs";
/// The runtime (shim) modules run under.
pub const RUNTIME: &str = "io.containerd.runc.v2";
/// type_url of an OCI runtime spec inside a protobuf `Any` (containerd's typeurl registration).
const SPEC_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
/// type_url of an OCI process spec (for exec).
const PROCESS_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
/// Chunk size of content writes (containerd's own client uses 1 MiB).
const WRITE_CHUNK: usize = 1024 * 1024;

/// A containerd failure: one line, and whether containerd itself is unreachable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtrError {
    pub message: String,
    /// The socket is missing, refused, or the connection broke: reconnect with backoff.
    pub unavailable: bool,
    /// containerd answered NotFound.
    pub not_found: bool,
}

impl std::fmt::Display for CtrError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CtrError {}

impl CtrError {
    pub fn other(message: impl Into<String>) -> CtrError {
        CtrError { message: message.into(), unavailable: false, not_found: false }
    }
}

fn status_error(what: &str, status: &tonic::Status) -> CtrError {
    // Only the transport says containerd is gone (tonic reports a broken or refused
    // connection as Unavailable); Unknown carries runc's and the module's own error text.
    CtrError {
        message: format!("containerd {what}: {} ({:?})", status.message(), status.code()),
        unavailable: status.code() == Code::Unavailable,
        not_found: status.code() == Code::NotFound,
    }
}

/// Runs a tonic future inside tokio's context.
async fn compat<F: Future>(future: F) -> F::Output {
    Compat::new(future).await
}

/// Longest wait for containerd's answer to a unary call (not for waits on processes, layer
/// applies or the event stream, which take as long as they take).
pub const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A unary call with [`CALL_TIMEOUT`]: a hung containerd or shim must not freeze the agent.
async fn unary<T, F: Future<Output = Result<T, tonic::Status>>>(future: F) -> Result<T, tonic::Status> {
    smol::future::or(compat(future), async {
        smol::Timer::after(CALL_TIMEOUT).await;
        Err(tonic::Status::deadline_exceeded(format!("no answer within {} s", CALL_TIMEOUT.as_secs())))
    })
    .await
}

/// A task as containerd reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskInfo {
    pub pid: u32,
    pub running: bool,
    /// Exit status when stopped.
    pub exit_status: Option<u32>,
    pub exited_at_unix_ms: Option<u64>,
}

/// A container the agent made, as listed back.
#[derive(Debug, Clone)]
pub struct ContainerInfo {
    pub id: String,
    pub image: String,
    pub labels: HashMap<String, String>,
}

/// One exit, from the `/tasks/exit` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskExit {
    pub container_id: String,
    /// The process: the container id for the init process, the exec id otherwise.
    pub process_id: String,
    pub exit_status: u32,
    pub exited_at_unix_ms: u64,
}

fn timestamp_ms(ts: Option<&prost_types::Timestamp>) -> Option<u64> {
    let ts = ts?;
    if ts.seconds <= 0 {
        return None;
    }
    Some((ts.seconds as u64) * 1000 + (ts.nanos.max(0) as u64) / 1_000_000)
}

/// A connection to containerd in one namespace.
#[derive(Clone)]
pub struct Containerd {
    client: std::sync::Arc<Client>,
    namespace: String,
    socket: PathBuf,
}

impl Containerd {
    /// Connects to the socket and checks that containerd answers.
    ///
    /// # Errors
    /// A missing socket, a refused connection or a failed version call, as one line.
    pub async fn connect(socket: &Path, namespace: &str) -> Result<Containerd, CtrError> {
        let unavailable = |why: String| CtrError {
            message: format!("containerd at {}: {why}", socket.display()),
            unavailable: true,
            not_found: false,
        };
        if !socket.exists() {
            return Err(unavailable("no such socket (is containerd installed and running?)".to_owned()));
        }
        let channel = compat(containerd_client::connect(socket)).await.map_err(|e| {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text = format!("{text}: {s}");
                source = s.source();
            }
            unavailable(text)
        })?;
        let ctr = Containerd {
            client: std::sync::Arc::new(Client::from(channel)),
            namespace: namespace.to_owned(),
            socket: socket.to_owned(),
        };
        let version = unary(ctr.client.version().version(ctr.req(()))).await.map_err(|s| {
            let mut e = status_error("version", &s);
            e.unavailable = true;
            e
        })?;
        log::info!("containerd {} at {} (namespace {namespace})", version.into_inner().version, socket.display());
        Ok(ctr)
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// containerd's version and revision (`1.6.20`, `2806fc1…`), for `tinyedge check`.
    pub async fn version(&self) -> Result<(String, String), CtrError> {
        let answer =
            unary(self.client.version().version(self.req(()))).await.map_err(|s| status_error("version", &s))?;
        let answer = answer.into_inner();
        Ok((answer.version, answer.revision))
    }

    fn req<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Ok(value) = self.namespace.parse() {
            request.metadata_mut().insert("containerd-namespace", value);
        }
        request
    }

    fn leased<T>(&self, message: T, lease: &str) -> Request<T> {
        let mut request = self.req(message);
        if let Ok(value) = lease.parse() {
            request.metadata_mut().insert("containerd-lease", value);
        }
        request
    }

    // ---- leases ----

    /// Creates a lease that keeps what a pull writes from garbage collection until the image
    /// references it; expires by itself after an hour if the agent dies mid-pull.
    pub async fn create_lease(&self, id: &str) -> Result<(), CtrError> {
        let labels = HashMap::from([("containerd.io/gc.expire".to_owned(), expire_in_an_hour())]);
        let request = self.req(api::CreateRequest { id: id.to_owned(), labels });
        unary(self.client.leases().create(request)).await.map_err(|s| status_error(&format!("lease {id}"), &s))?;
        Ok(())
    }

    pub async fn delete_lease(&self, id: &str) -> Result<(), CtrError> {
        let request = self.req(api::DeleteRequest { id: id.to_owned(), sync: false });
        unary(self.client.leases().delete(request))
            .await
            .map_err(|s| status_error(&format!("delete lease {id}"), &s))?;
        Ok(())
    }

    // ---- content ----

    /// Whether the content store has `digest`.
    pub async fn content_exists(&self, digest: &str) -> Result<bool, CtrError> {
        let request = self.req(api::InfoRequest { digest: digest.to_owned() });
        match unary(self.client.content().info(request)).await {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(status_error(&format!("content {digest}"), &s)),
        }
    }

    /// Reads a whole blob (documents only: manifests and configs), at most `max` bytes.
    pub async fn read_content(&self, digest: &str, max: usize) -> Result<Vec<u8>, CtrError> {
        let request = self.req(api::ReadContentRequest { digest: digest.to_owned(), offset: 0, size: 0 });
        let what = format!("read content {digest}");
        let mut stream =
            compat(self.client.content().read(request)).await.map_err(|s| status_error(&what, &s))?.into_inner();
        let mut out = Vec::new();
        while let Some(chunk) = compat(stream.message()).await.map_err(|s| status_error(&what, &s))? {
            out.extend_from_slice(&chunk.data);
            if out.len() > max {
                return Err(CtrError::other(format!("{what}: larger than {max} bytes")));
            }
        }
        Ok(out)
    }

    /// Writes `file` (already verified to hash to `digest`) into the content store under the
    /// lease, with `labels`; containerd verifies size and digest again at commit.
    pub async fn write_content(
        &self,
        path: &Path,
        digest: &str,
        size: u64,
        labels: HashMap<String, String>,
        lease: &str,
    ) -> Result<(), CtrError> {
        let what = format!("write content {digest}");
        let file =
            std::fs::File::open(path).map_err(|e| CtrError::other(format!("{what}: {}: {e}", path.display())))?;
        let reference = format!("tinyedge-{digest}");
        let chunks = Chunks {
            file,
            reference: reference.clone(),
            digest: digest.to_owned(),
            size,
            offset: 0,
            labels: Some(labels),
            done: false,
        };
        let outbound = tonic::codegen::tokio_stream::iter(chunks);
        let request = self.leased(outbound, lease);
        let result = compat(async {
            let mut responses = self.client.content().write(request).await?.into_inner();
            while responses.message().await?.is_some() {}
            Ok::<(), tonic::Status>(())
        })
        .await;
        match result {
            Ok(()) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => Ok(()),
            Err(s) => {
                let _ = unary(self.client.content().abort(self.req(api::AbortRequest { r#ref: reference }))).await;
                Err(status_error(&what, &s))
            }
        }
    }

    // ---- images ----

    /// The image's target descriptor (manifest or index), or `None` when absent.
    pub async fn image(&self, name: &str) -> Result<Option<Descriptor>, CtrError> {
        let request = self.req(api::GetImageRequest { name: name.to_owned() });
        match unary(self.client.images().get(request)).await {
            Ok(r) => Ok(r.into_inner().image.and_then(|i| i.target)),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(status_error(&format!("image {name}"), &s)),
        }
    }

    /// Creates the image record, or points an existing one at `target`.
    /// Deletes the image record; containerd's garbage collector then frees its content and
    /// snapshots that nothing else references.
    pub async fn delete_image(&self, name: &str) -> Result<(), CtrError> {
        let request = self.req(api::DeleteImageRequest { name: name.to_owned(), sync: false, target: None });
        match unary(self.client.images().delete(request)).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(status_error(&format!("delete image {name}"), &s)),
        }
    }

    pub async fn put_image(&self, name: &str, target: Descriptor, lease: &str) -> Result<(), CtrError> {
        let image = api::Image {
            name: name.to_owned(),
            labels: HashMap::new(),
            target: Some(target),
            created_at: None,
            updated_at: None,
        };
        let request =
            self.leased(api::CreateImageRequest { image: Some(image.clone()), source_date_epoch: None }, lease);
        match unary(self.client.images().create(request)).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => {
                let request = self.leased(
                    api::UpdateImageRequest { image: Some(image), update_mask: None, source_date_epoch: None },
                    lease,
                );
                unary(self.client.images().update(request))
                    .await
                    .map_err(|s| status_error(&format!("update image {name}"), &s))?;
                Ok(())
            }
            Err(s) => Err(status_error(&format!("create image {name}"), &s)),
        }
    }

    // ---- snapshots and diff ----

    pub async fn snapshot_exists(&self, key: &str) -> Result<bool, CtrError> {
        let request = self.req(snap::StatSnapshotRequest { snapshotter: SNAPSHOTTER.to_owned(), key: key.to_owned() });
        match unary(self.client.snapshots().stat(request)).await {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(status_error(&format!("snapshot {key}"), &s)),
        }
    }

    /// Prepares an active snapshot `key` on `parent` ("" for none) and returns its mounts.
    pub async fn prepare(&self, key: &str, parent: &str, lease: Option<&str>) -> Result<Vec<Mount>, CtrError> {
        let message = snap::PrepareSnapshotRequest {
            snapshotter: SNAPSHOTTER.to_owned(),
            key: key.to_owned(),
            parent: parent.to_owned(),
            labels: HashMap::new(),
        };
        let request = match lease {
            Some(lease) => self.leased(message, lease),
            None => self.req(message),
        };
        let response = unary(self.client.snapshots().prepare(request))
            .await
            .map_err(|s| status_error(&format!("prepare snapshot {key}"), &s))?;
        Ok(response.into_inner().mounts)
    }

    pub async fn mounts(&self, key: &str) -> Result<Vec<Mount>, CtrError> {
        let request = self.req(snap::MountsRequest { snapshotter: SNAPSHOTTER.to_owned(), key: key.to_owned() });
        let response = unary(self.client.snapshots().mounts(request))
            .await
            .map_err(|s| status_error(&format!("snapshot mounts {key}"), &s))?;
        Ok(response.into_inner().mounts)
    }

    pub async fn commit(&self, name: &str, key: &str, lease: &str) -> Result<(), CtrError> {
        let request = self.leased(
            snap::CommitSnapshotRequest {
                snapshotter: SNAPSHOTTER.to_owned(),
                name: name.to_owned(),
                key: key.to_owned(),
                labels: HashMap::new(),
            },
            lease,
        );
        match unary(self.client.snapshots().commit(request)).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => {
                self.remove_snapshot(key).await?;
                Ok(())
            }
            Err(s) => Err(status_error(&format!("commit snapshot {name}"), &s)),
        }
    }

    pub async fn remove_snapshot(&self, key: &str) -> Result<(), CtrError> {
        let request =
            self.req(snap::RemoveSnapshotRequest { snapshotter: SNAPSHOTTER.to_owned(), key: key.to_owned() });
        match unary(self.client.snapshots().remove(request)).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(status_error(&format!("remove snapshot {key}"), &s)),
        }
    }

    /// Applies a layer onto `mounts` with containerd's diff service (it decompresses and
    /// hashes); returns the applied (uncompressed) descriptor.
    pub async fn apply(&self, layer: Descriptor, mounts: Vec<Mount>) -> Result<Descriptor, CtrError> {
        let digest = layer.digest.clone();
        let request =
            self.req(api::ApplyRequest { diff: Some(layer), mounts, payloads: HashMap::new(), sync_fs: true });
        let response = compat(self.client.diff().apply(request))
            .await
            .map_err(|s| status_error(&format!("apply layer {digest}"), &s))?;
        response
            .into_inner()
            .applied
            .ok_or_else(|| CtrError::other(format!("apply layer {digest}: no descriptor in the answer")))
    }

    // ---- containers ----

    /// Containers carrying `label` (e.g. `tinyedge.module`).
    pub async fn containers_with_label(&self, label: &str) -> Result<Vec<ContainerInfo>, CtrError> {
        let request = self.req(api::ListContainersRequest { filters: vec![format!("labels.\"{label}\"")] });
        let response =
            unary(self.client.containers().list(request)).await.map_err(|s| status_error("list containers", &s))?;
        Ok(response
            .into_inner()
            .containers
            .into_iter()
            .map(|c| ContainerInfo { id: c.id, image: c.image, labels: c.labels })
            .collect())
    }

    /// Creates the container record with its OCI spec (JSON) and its rootfs snapshot key.
    pub async fn create_container(
        &self,
        id: &str,
        image: &str,
        spec_json: Vec<u8>,
        labels: HashMap<String, String>,
    ) -> Result<(), CtrError> {
        let container = api::Container {
            id: id.to_owned(),
            labels,
            image: image.to_owned(),
            runtime: Some(api::container::Runtime { name: RUNTIME.to_owned(), options: None }),
            spec: Some(prost_types::Any { type_url: SPEC_TYPE.to_owned(), value: spec_json }),
            snapshotter: SNAPSHOTTER.to_owned(),
            snapshot_key: id.to_owned(),
            created_at: None,
            updated_at: None,
            extensions: HashMap::new(),
            sandbox: String::new(),
        };
        let request = self.req(api::CreateContainerRequest { container: Some(container) });
        unary(self.client.containers().create(request))
            .await
            .map_err(|s| status_error(&format!("create container {id}"), &s))?;
        Ok(())
    }

    pub async fn delete_container(&self, id: &str) -> Result<(), CtrError> {
        let request = self.req(api::DeleteContainerRequest { id: id.to_owned() });
        match unary(self.client.containers().delete(request)).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(status_error(&format!("delete container {id}"), &s)),
        }
    }

    // ---- tasks ----

    /// The container's task, or `None` when it has none.
    pub async fn task(&self, id: &str) -> Result<Option<TaskInfo>, CtrError> {
        let request = self.req(api::GetRequest { container_id: id.to_owned(), exec_id: String::new() });
        match unary(self.client.tasks().get(request)).await {
            Ok(r) => Ok(r.into_inner().process.map(|p| {
                // A Created task was never started (a crash between create and start): not
                // running, and never exited, so the planner starts it.
                use containerd_client::types::v1::Status;
                let running = [Status::Running, Status::Paused, Status::Pausing].iter().any(|s| p.status == *s as i32);
                let exited = p.status == Status::Stopped as i32;
                TaskInfo {
                    pid: p.pid,
                    running,
                    exit_status: exited.then_some(p.exit_status),
                    exited_at_unix_ms: timestamp_ms(p.exited_at.as_ref()),
                }
            })),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(status_error(&format!("task {id}"), &s)),
        }
    }

    /// Creates the task (the shim mounts `rootfs` and opens the stdio paths) and starts it.
    pub async fn start_task(
        &self,
        id: &str,
        rootfs: Vec<Mount>,
        stdout: &Path,
        stderr: &Path,
    ) -> Result<u32, CtrError> {
        let request = self.req(api::CreateTaskRequest {
            container_id: id.to_owned(),
            rootfs,
            stdin: String::new(),
            stdout: stdout.display().to_string(),
            stderr: stderr.display().to_string(),
            terminal: false,
            checkpoint: None,
            options: None,
            runtime_path: String::new(),
        });
        unary(self.client.tasks().create(request)).await.map_err(|s| status_error(&format!("create task {id}"), &s))?;
        let request = self.req(api::StartRequest { container_id: id.to_owned(), exec_id: String::new() });
        match unary(self.client.tasks().start(request)).await {
            Ok(response) => Ok(response.into_inner().pid),
            Err(s) => {
                // Leave no Created task behind: the next start begins from scratch.
                let _ = self.delete_task(id).await;
                Err(status_error(&format!("start task {id}"), &s))
            }
        }
    }

    /// Sends `signal` to the init process (`exec_id` empty) or an exec'd one.
    pub async fn kill(&self, id: &str, exec_id: &str, signal: u32) -> Result<(), CtrError> {
        let request = self.req(api::KillRequest {
            container_id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            signal,
            all: exec_id.is_empty(),
        });
        match unary(self.client.tasks().kill(request)).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(status_error(&format!("kill {id} {exec_id}"), &s)),
        }
    }

    /// Deletes the (stopped) task; returns its exit status when it had one.
    pub async fn delete_task(&self, id: &str) -> Result<Option<u32>, CtrError> {
        let request = self.req(api::DeleteTaskRequest { container_id: id.to_owned() });
        match unary(self.client.tasks().delete(request)).await {
            Ok(r) => Ok(Some(r.into_inner().exit_status)),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(status_error(&format!("delete task {id}"), &s)),
        }
    }

    /// Waits for a process to exit; returns its exit status.
    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<u32, CtrError> {
        let request = self.req(api::WaitRequest { container_id: id.to_owned(), exec_id: exec_id.to_owned() });
        let response = compat(self.client.tasks().wait(request))
            .await
            .map_err(|s| status_error(&format!("wait {id} {exec_id}"), &s))?;
        Ok(response.into_inner().exit_status)
    }

    /// Starts `process_json` (an OCI process spec) inside the running container as `exec_id`,
    /// with no stdio.
    pub async fn exec(&self, id: &str, exec_id: &str, process_json: Vec<u8>) -> Result<(), CtrError> {
        let request = self.req(api::ExecProcessRequest {
            container_id: id.to_owned(),
            stdin: String::new(),
            stdout: String::new(),
            stderr: String::new(),
            terminal: false,
            spec: Some(prost_types::Any { type_url: PROCESS_TYPE.to_owned(), value: process_json }),
            exec_id: exec_id.to_owned(),
        });
        unary(self.client.tasks().exec(request)).await.map_err(|s| status_error(&format!("exec in {id}"), &s))?;
        let request = self.req(api::StartRequest { container_id: id.to_owned(), exec_id: exec_id.to_owned() });
        unary(self.client.tasks().start(request))
            .await
            .map_err(|s| status_error(&format!("start exec in {id}"), &s))?;
        Ok(())
    }

    pub async fn delete_process(&self, id: &str, exec_id: &str) -> Result<(), CtrError> {
        let request = self.req(api::DeleteProcessRequest { container_id: id.to_owned(), exec_id: exec_id.to_owned() });
        match unary(self.client.tasks().delete_process(request)).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(status_error(&format!("delete exec {exec_id} in {id}"), &s)),
        }
    }

    // ---- events ----

    /// Subscribes to `/tasks/exit` in this namespace; `on_exit` gets each exit until the
    /// stream ends (containerd went away), then this returns the reason.
    pub async fn watch_exits(&self, mut on_exit: impl FnMut(TaskExit)) -> CtrError {
        use prost::Message as _;
        let filter = format!("namespace=={},topic==\"/tasks/exit\"", self.namespace);
        let request = self.req(api::SubscribeRequest { filters: vec![filter] });
        let mut stream = match compat(self.client.events().subscribe(request)).await {
            Ok(r) => r.into_inner(),
            Err(s) => {
                let mut e = status_error("subscribe to events", &s);
                e.unavailable = true;
                return e;
            }
        };
        loop {
            match compat(stream.message()).await {
                Ok(Some(envelope)) => {
                    let Some(event) = envelope.event else { continue };
                    match containerd_client::events::TaskExit::decode(event.value.as_slice()) {
                        Ok(exit) => on_exit(TaskExit {
                            container_id: exit.container_id,
                            process_id: exit.id,
                            exit_status: exit.exit_status,
                            exited_at_unix_ms: timestamp_ms(exit.exited_at.as_ref()).unwrap_or_else(now_ms),
                        }),
                        Err(e) => log::warn!("containerd event {}: undecodable TaskExit: {e}", envelope.topic),
                    }
                }
                Ok(None) => {
                    return CtrError {
                        message: "containerd closed the event stream".to_owned(),
                        unavailable: true,
                        not_found: false,
                    }
                }
                Err(s) => {
                    let mut e = status_error("event stream", &s);
                    e.unavailable = true;
                    return e;
                }
            }
        }
    }
}

/// Wall clock in Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn expire_in_an_hour() -> String {
    tinyedge_platform::utc::UtcDateTime::from_unix_millis(now_ms() + 3_600_000).to_string()
}

/// A file as content-write requests of [`WRITE_CHUNK`] bytes, the last one committing with the
/// labels; read lazily, so a layer never sits in memory whole. A read error ends the stream
/// without a commit, which containerd refuses (size mismatch), so nothing partial is kept.
struct Chunks {
    file: std::fs::File,
    reference: String,
    digest: String,
    size: u64,
    offset: u64,
    labels: Option<HashMap<String, String>>,
    done: bool,
}

impl Iterator for Chunks {
    type Item = api::WriteContentRequest;

    fn next(&mut self) -> Option<api::WriteContentRequest> {
        use std::io::Read as _;
        if self.done {
            return None;
        }
        let want = (self.size - self.offset).min(WRITE_CHUNK as u64) as usize;
        let mut data = vec![0u8; want];
        if let Err(e) = self.file.read_exact(&mut data) {
            log::warn!("content {}: reading the downloaded blob: {e}", self.digest);
            self.done = true;
            return None;
        }
        let offset = self.offset;
        self.offset += want as u64;
        let last = self.offset >= self.size;
        self.done = last;
        Some(api::WriteContentRequest {
            action: if last { api::WriteAction::Commit as i32 } else { api::WriteAction::Write as i32 },
            r#ref: self.reference.clone(),
            total: self.size as i64,
            expected: self.digest.clone(),
            offset: offset as i64,
            data,
            labels: if last { self.labels.take().unwrap_or_default() } else { HashMap::new() },
        })
    }
}
