//! The management socket `{data_dir}/mgmt.sock` (mode 0600: root only), served by the runtime
//! whether or not the agent runs, over [`tinyedge_platform::http`]:
//!
//! - `PUT /deployment` (or `POST`): IoT Edge's codes (200, 400 naming the field, 412, 417,
//!   500) with `{"code", "message"}`. With the agent, the agent validates and applies it (and
//!   updates the hub through its hook); without, the hub alone is updated
//!   ([`crate::deploy::without_agent`]).
//! - `GET /modules`: the agent's reported document; 409 when the agent is disabled.
//! - `GET /twins/{identity}`: the twin document of a module (`filter`, or `gw/filter`) or a
//!   device (`sensor-7`); 404 for an identity without a twin.
//! - `POST /modules/{identity}/methods` with `{"methodName", "payload",
//!   "responseTimeoutInSeconds", "connectTimeoutInSeconds"}`: a direct method call from the
//!   operator, answered as edgeHub's method API answers (200 `{"status", "payload"}`, 404,
//!   504, 400 `{"message"}`).
//!
//! The CLI side (`tinyedge deploy`, `twin show`, `invoke`) is at the end.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tinyedge_agent::manifest::DEPLOYMENT_BYTES_MAX;
use tinyedge_hub::broker::Broker;
use tinyedge_hub::methods::{http as method_http, Invoker};
use tinyedge_platform::http::{self, Limits, Request, Response};
use tinyedge_platform::{urlenc, Config};

use crate::deploy::{self, HubTargets};
use crate::failure::Failure;

/// The socket's bounds: the platform's defaults, bodies up to a deployment (a method call's
/// body is smaller).
pub const LIMITS: Limits = Limits::with_body_max(DEPLOYMENT_BYTES_MAX);
const _: () = assert!(method_http::BODY_BYTES_MAX <= DEPLOYMENT_BYTES_MAX);
/// How long the CLI waits for a deployment's answer (the agent may be busy pulling; it answers
/// "queued" well before this).
const DEPLOY_ANSWER_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the CLI waits for anything else that does not wait on a module.
const READ_ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// What the CLI waits beyond a method call's own timeouts before giving up on the socket.
const INVOKE_ANSWER_MARGIN: Duration = Duration::from_secs(10);

/// The socket's path under `data_dir`.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(http::MANAGEMENT_SOCKET_FILE)
}

/// A future answering one request.
pub type Answering = Pin<Box<dyn Future<Output = Response> + Send>>;

/// The agent's endpoints, when it runs.
#[derive(Clone)]
pub struct AgentApi {
    /// `PUT /deployment`.
    pub deploy: Arc<dyn Fn(Vec<u8>) -> Answering + Send + Sync>,
    /// `GET /modules`.
    pub modules: Arc<dyn Fn() -> Response + Send + Sync>,
}

/// A twin document by identity (`d/m` or `d`), or the status and message to answer.
pub type TwinReader = Arc<dyn Fn(&str) -> Result<serde_json::Value, (u16, String)> + Send + Sync>;

/// The hub's twins as the management API reads them.
pub fn twin_reader(broker: &Arc<Broker>) -> TwinReader {
    let broker = broker.clone();
    Arc::new(move |id| broker.twins.get(id).map_err(|e| (e.status(), e.to_string())))
}

/// Everything the management API serves.
pub struct Management {
    pub hub: Arc<HubTargets>,
    /// `Err` says why there is no agent (disabled, or built without it).
    pub agent: Result<AgentApi, &'static str>,
    /// `None` until the hub keeps twins (answered 501).
    pub twins: Option<TwinReader>,
    pub invoker: Invoker,
}

/// Binds the socket (replacing a stale one; a live one is another tinyedge) and serves it
/// until the process ends.
///
/// # Errors
/// The socket cannot be bound.
pub fn start(management: Management) -> Result<PathBuf, Failure> {
    let socket = socket_path(&management.hub.config.data_dir);
    let listener = http::bind_unix(&socket, 0o600)
        .map_err(|e| Failure::Runtime(format!("management socket {}: {e}", socket.display())))?;
    let management = Arc::new(management);
    tinyedge_platform::rt::spawn(http::serve_unix(listener, "management", LIMITS, move |request| {
        let management = management.clone();
        async move { answer(&management, request).await }
    }))
    .detach();
    Ok(socket)
}

/// A word from the command line → an identity: `d/m` as given; a configured leaf device or
/// the edge device by its id; anything else a module of this device.
pub fn identity_of(word: &str, config: &Config) -> String {
    if word.contains('/') || word == config.device_id || config.devices.iter().any(|d| d.id == word) {
        word.to_owned()
    } else {
        format!("{}/{word}", config.device_id)
    }
}

/// The answer to one request.
async fn answer(management: &Management, request: Request) -> Response {
    let Request { head, body } = request;
    let segments = head.segments();
    let decoded = |segment: &str| urlenc::decode(segment).ok().map(|s| s.into_owned()).filter(|s| !s.is_empty());
    match (head.method.as_str(), segments.as_slice()) {
        ("PUT" | "POST", ["deployment"]) => match &management.agent {
            Ok(agent) => (agent.deploy)(body).await,
            Err(_) => {
                let hub = management.hub.clone();
                // Parsing and applying a deployment of up to 2 MiB is work for a thread, not
                // for the executor that also serves the hub's sockets.
                let (code, text) = smol::unblock(move || deploy::without_agent(&hub, &body)).await;
                if code != 200 {
                    log::warn!("management API: deployment rejected ({code}): {text}");
                }
                Response::message(code, &text)
            }
        },
        ("GET", ["modules"]) => match &management.agent {
            Ok(agent) => (agent.modules)(),
            Err(why) => Response::message(409, why),
        },
        ("GET", ["twins", id]) => {
            let Some(id) = decoded(id) else {
                return Response::message(400, "the twin's identity is not valid percent-encoding");
            };
            let id = identity_of(&id, &management.hub.config);
            match &management.twins {
                None => Response::message(501, "twins are not kept by this tinyedge yet"),
                Some(read) => match read(&id) {
                    Ok(twin) => Response::json(200, &twin),
                    Err((code, message)) => Response::message(code, &message),
                },
            }
        }
        ("POST", ["modules", target, "methods"]) => {
            let Some(target) = decoded(target) else {
                return Response::message(400, "the method's target is not valid percent-encoding");
            };
            let call = match method_http::parse_body(&body) {
                Ok(call) => call.into_call(String::new(), identity_of(&target, &management.hub.config)),
                Err(message) => return Response::json(400, &serde_json::json!({ "message": message })),
            };
            let (name, target) = (call.name.clone(), call.target.clone());
            let response = method_http::answer((management.invoker)(call).await);
            log::info!("management API: method {name:?} on {target}: {}", response.status);
            response
        }
        (_, ["deployment"] | ["modules"] | ["twins", _] | ["modules", _, "methods"]) => {
            Response::message(405, &format!("{} is not allowed on {}", head.method, head.path))
        }
        _ => Response::message(404, &format!("no such endpoint {}", head.path)),
    }
}

/// The `message` of an answer's `{"message": …}` body, else the body as text.
fn message_of(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned())
}

/// `tinyedge deploy FILE`.
pub fn deploy(config: &Config, file: &str) -> Result<String, Failure> {
    let bytes = std::fs::read(file).map_err(|e| Failure::Usage(format!("{file}: {e}")))?;
    let (code, body) =
        http::unix_request(&socket_path(&config.data_dir), "PUT", "/deployment", &bytes, DEPLOY_ANSWER_TIMEOUT)
            .map_err(Failure::Runtime)?;
    let text = message_of(&body);
    if code == 200 {
        Ok(format!("{code} {text}"))
    } else {
        Err(Failure::Rejected(code, text))
    }
}

/// `tinyedge twin show IDENTITY [--json]`: the twin document, pretty-printed (`--json`: on one
/// line, for scripts).
pub fn twin_show(config: &Config, identity: &str, json: bool) -> Result<String, Failure> {
    let target = format!("/twins/{}", urlenc::encode(identity));
    let (code, body) = http::unix_request(&socket_path(&config.data_dir), "GET", &target, b"", READ_ANSWER_TIMEOUT)
        .map_err(Failure::Runtime)?;
    if code != 200 {
        return Err(Failure::Runtime(format!("twin of {identity}: {code} {}", message_of(&body))));
    }
    let twin: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| Failure::Runtime(format!("management socket answered invalid JSON: {e}")))?;
    Ok(if json { twin.to_string() } else { serde_json::to_string_pretty(&twin).unwrap_or_default() })
}

/// What `tinyedge invoke` calls.
pub struct Invocation<'a> {
    pub target: &'a str,
    pub method: &'a str,
    /// JSON text (checked by the caller).
    pub payload: &'a str,
    pub response_timeout_secs: u64,
}

/// `tinyedge invoke MODULE METHOD [--payload JSON] [--timeout S]`: prints the callee's
/// `{"status", "payload"}`; 404 (not connected), 504 (no answer in time) and 400 (invalid call)
/// fail with the message.
pub fn invoke(config: &Config, call: &Invocation<'_>) -> Result<String, Failure> {
    if let Err(e) = serde_json::from_str::<serde_json::Value>(call.payload) {
        return Err(Failure::Usage(format!("--payload is not JSON: {e}")));
    }
    // The payload goes as written (key order and all), the rest as JSON values.
    let body = format!(
        "{{\"methodName\":{},\"payload\":{},\"responseTimeoutInSeconds\":{},\"connectTimeoutInSeconds\":0}}",
        serde_json::Value::from(call.method),
        call.payload,
        call.response_timeout_secs
    );
    let target = format!("/modules/{}/methods", urlenc::encode(call.target));
    let wait = Duration::from_secs(call.response_timeout_secs) + INVOKE_ANSWER_MARGIN;
    let (code, answer) = http::unix_request(&socket_path(&config.data_dir), "POST", &target, body.as_bytes(), wait)
        .map_err(Failure::Runtime)?;
    if code == 200 {
        Ok(String::from_utf8_lossy(&answer).into_owned())
    } else {
        Err(Failure::Runtime(format!("{} on {}: {code} {}", call.method, call.target, message_of(&answer))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_words_name_modules_devices_or_full_identities() {
        let config = Config::from_toml_str(
            "device_id = \"gw\"\n[[devices]]\nid = \"sensor-7\"\nkey = \"MDEyMzQ1Njc4OWFiY2RlZg==\"\n",
            Path::new("/"),
        )
        .expect("config");
        assert_eq!(identity_of("filter", &config), "gw/filter");
        assert_eq!(identity_of("sensor-7", &config), "sensor-7", "a configured leaf device");
        assert_eq!(identity_of("gw", &config), "gw", "the edge device itself");
        assert_eq!(identity_of("gw/$edgeAgent", &config), "gw/$edgeAgent");
    }
}
