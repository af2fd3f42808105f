//! The workload API, as aziot-edged serves it to modules: what Azure IoT SDK module clients call
//! from `create_from_edge_environment` (Python; `CreateFromEnvironmentAsync` in C#) to sign their
//! SAS tokens and to trust the hub's certificate.
//!
//! As in IoT Edge, each module has its own socket (`{agent dir}/workload/{module}/workload.sock`
//! here) and only that socket is mounted into the module's container, at the path of
//! `IOTEDGE_WORKLOADURI` (default `/var/run/iotedge/workload.sock`; the directory is mounted, so a
//! socket made again after a restart of tinyedge is seen by running containers). A socket
//! answers for its own module only: signing for another module is 403.
//!
//! Served (`?api-version=` required, as in IoT Edge):
//! - `POST /modules/{module}/genid/{genid}/sign` `{"keyId":"primary","algo":"HMACSHA256","data":b64}`
//!   → `{"digest": b64(HMAC-SHA256(module key, data))}`;
//! - `GET /trust-bundle` → `{"certificate": "<PEM of the edge CA>"}`.
//!
//! Not served yet (404 naming the path): encrypt/decrypt, identity and server certificates.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use tinyedge_platform::http::{self, Head, Limits, Response};

/// Largest `data` to sign (SDKs sign `{resource}\n{expiry}`, about 100 bytes).
pub const SIGN_DATA_BYTES_MAX: usize = 4096;
/// Largest request body: a sign request of [`SIGN_DATA_BYTES_MAX`] bytes in base64 (4/3 of it)
/// with its JSON around, twice over.
pub const BODY_BYTES_MAX: usize = 16 * 1024;
const _: () = assert!(SIGN_DATA_BYTES_MAX * 4 / 3 + 1024 < BODY_BYTES_MAX);
/// A socket's bounds: the platform's defaults ([`http::CONNECTIONS_MAX`] connections at once,
/// [`http::REQUEST_TIMEOUT`]), bodies up to [`BODY_BYTES_MAX`].
pub const LIMITS: Limits = Limits::with_body_max(BODY_BYTES_MAX);

/// The directory of one module's socket on the host.
pub fn module_dir(agent_dir: &Path, module: &str) -> PathBuf {
    agent_dir.join("workload").join(module)
}

/// The socket file name and the directory it is mounted at inside containers, from
/// `IOTEDGE_WORKLOADURI` (`unix:///var/run/iotedge/workload.sock` → (`workload.sock`,
/// `/var/run/iotedge`)).
pub fn container_location(workload_uri: &str) -> (String, String) {
    let path = workload_uri.strip_prefix("unix://").unwrap_or(workload_uri);
    let path = Path::new(path);
    let name = path.file_name().map_or_else(|| "workload.sock".to_owned(), |n| n.to_string_lossy().into_owned());
    let dir = path.parent().map_or_else(|| "/var/run/iotedge".to_owned(), |d| d.display().to_string());
    (name, if dir.is_empty() { "/".to_owned() } else { dir })
}

/// What one module's socket needs.
pub struct ModuleWorkload {
    pub module: String,
    pub key: Vec<u8>,
    /// The edge CA (PEM), read when asked.
    pub trust_bundle: PathBuf,
}

/// Binds `{dir}/{socket_name}` (replacing a stale one) and serves it until the task is dropped.
///
/// # Errors
/// The directory or socket cannot be made.
pub fn start(dir: &Path, socket_name: &str, workload: ModuleWorkload) -> std::io::Result<smol::Task<()>> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(socket_name);
    let _ = std::fs::remove_file(&path);
    let listener = smol::Async::<std::os::unix::net::UnixListener>::bind(&path)?;
    // The module's processes may run as any user: the socket is the module's own anyway.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
    let workload = Arc::new(workload);
    Ok(tinyedge_platform::rt::spawn(http::serve_unix(listener, "workload API", LIMITS, move |request| {
        let workload = workload.clone();
        async move { answer(&request.head, &request.body, &workload) }
    })))
}

/// The answer to one request (pure but for reading the trust bundle file).
pub fn answer(head: &Head, body: &[u8], workload: &ModuleWorkload) -> Response {
    if head.query_param("api-version").is_none_or(str::is_empty) {
        return Response::message(400, "the api-version query parameter is required");
    }
    match (head.method.as_str(), head.segments().as_slice()) {
        ("GET", ["trust-bundle"]) => match std::fs::read_to_string(&workload.trust_bundle) {
            Ok(pem) => Response::json(200, &serde_json::json!({"certificate": pem})),
            Err(e) => Response::message(500, &format!("trust bundle {}: {e}", workload.trust_bundle.display())),
        },
        ("POST", ["modules", module, "genid", _genid, "sign"]) => {
            let module = tinyedge_platform::urlenc::decode(module).map(|m| m.into_owned()).unwrap_or_default();
            if module != workload.module {
                return Response::message(
                    403,
                    &format!("this socket belongs to module {:?}, not {module:?}", workload.module),
                );
            }
            sign(body, &workload.key)
        }
        _ => Response::message(404, &format!("{} {} is not served by tinyedge's workload API", head.method, head.path)),
    }
}

fn sign(body: &[u8], key: &[u8]) -> Response {
    let request: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return Response::message(400, &format!("invalid JSON: {e}")),
    };
    if let Some(algo) = request.get("algo").and_then(|a| a.as_str()) {
        if algo != "HMACSHA256" {
            return Response::message(400, &format!("algo {algo:?} is not supported (HMACSHA256 is)"));
        }
    }
    let Some(data) = request.get("data").and_then(|d| d.as_str()) else {
        return Response::message(400, "data (base64) is required");
    };
    let data = match base64::engine::general_purpose::STANDARD.decode(data) {
        Ok(d) if d.len() <= SIGN_DATA_BYTES_MAX => d,
        Ok(d) => return Response::message(400, &format!("data of {} bytes, at most {SIGN_DATA_BYTES_MAX}", d.len())),
        Err(e) => return Response::message(400, &format!("data is not base64: {e}")),
    };
    let tag = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key), &data);
    let digest = base64::engine::general_purpose::STANDARD.encode(tag.as_ref());
    Response::json(200, &serde_json::json!({"digest": digest}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(method: &str, target: &str) -> Head {
        Head::new(method, target)
    }

    fn body_of(answer: &Response) -> (u16, serde_json::Value) {
        (answer.status, serde_json::from_slice(&answer.body).unwrap_or_default())
    }

    #[test]
    fn signs_for_its_own_module_only() {
        let w = ModuleWorkload { module: "m1".into(), key: vec![7; 32], trust_bundle: "/nonexistent".into() };
        let data = base64::engine::general_purpose::STANDARD.encode("hub/devices/d/modules/m1\n1700000000");
        let body = serde_json::json!({"keyId": "primary", "algo": "HMACSHA256", "data": data}).to_string();
        let (code, json) =
            body_of(&answer(&head("POST", "/modules/m1/genid/1/sign?api-version=2022-08-03"), body.as_bytes(), &w));
        assert_eq!(code, 200);
        let expected = tinyedge_platform::sas::sign(&[7; 32], "hub/devices/d/modules/m1", 1_700_000_000);
        assert_eq!(json["digest"], expected.as_str(), "the same signature as a SAS token's");
        let (code, _) =
            body_of(&answer(&head("POST", "/modules/m2/genid/1/sign?api-version=2022-08-03"), body.as_bytes(), &w));
        assert_eq!(code, 403);
        let (code, _) = body_of(&answer(&head("POST", "/modules/m1/genid/1/sign"), body.as_bytes(), &w));
        assert_eq!(code, 400);
        let (code, json) = body_of(&answer(&head("GET", "/trust-bundle?api-version=2022-08-03"), b"", &w));
        assert_eq!(code, 500, "{json}");
        let (code, _) =
            body_of(&answer(&head("POST", "/modules/m1/genid/1/encrypt?api-version=2022-08-03"), b"{}", &w));
        assert_eq!(code, 404);
        let (code, _) =
            body_of(&answer(&head("POST", "/modules/m1/genid/1/sign?api-version=1"), b"{\"data\":\"!!\"}", &w));
        assert_eq!(code, 400);
    }

    #[test]
    fn container_paths_from_the_uri() {
        assert_eq!(
            container_location("unix:///var/run/iotedge/workload.sock"),
            ("workload.sock".into(), "/var/run/iotedge".into())
        );
        assert_eq!(container_location("unix:///w.sock"), ("w.sock".into(), "/".into()));
    }
}
