//! A connected client's twin and method requests, served protocol-neutrally: twin GET (at once,
//! from the local twin), reported-property PATCH (merged, persisted off the executor thread, then
//! answered with the new `$version`), and answers to direct-method calls. The MQTT adapter
//! parses `$iothub/…` topics into [`IotHubRequest`]s (see [`crate::topic`]); an AMQP adapter maps
//! its twin and method links to the same requests. Answers go back as
//! [`Control::TwinResponse`] on the client's control lane.

use bytes::Bytes;

use crate::auth::Identity;
use crate::methods::MethodResponse;
use crate::metrics::Metrics;
use crate::topic::{IotHubRequest, RequestError};

use super::session::Control;
use super::Broker;

/// What serving a request came to: the answer for the client, if any, and a line for the
/// adapter's log (it knows the peer), if something was refused or went unmatched.
#[derive(Debug, Default)]
pub struct Served {
    pub answer: Option<Control>,
    pub note: Option<String>,
}

fn error_body(message: &str) -> Bytes {
    Bytes::from(serde_json::json!({ "message": message }).to_string())
}

fn answer(status: u16, rid: &str, version: Option<u64>, body: Bytes, desired_version: Option<u64>) -> Option<Control> {
    Some(Control::TwinResponse { status, rid: rid.to_string(), version, body, desired_version })
}

/// Serves one request of `identity`; `payload` is the request's body. A request the adapter
/// could not parse is answered with its error (never silence), on its request id if it had one.
pub async fn serve(
    broker: &Broker,
    identity: &Identity,
    request: Result<IotHubRequest<'_>, RequestError<'_>>,
    payload: Bytes,
) -> Served {
    let id = identity.client_id();
    let metrics = &broker.metrics;
    match request {
        Ok(IotHubRequest::TwinGet { rid }) => match {
            if let Some(cloud) = broker.cloud() {
                cloud.twin_used(&id, false);
            }
            broker.twins.get(&id)
        } {
            Ok(document) => {
                Metrics::inc(&metrics.twin_gets);
                Metrics::inc(&broker.clients.of(&id).twin_gets);
                // Recorded as delivered by the adapter once the answer is on the wire.
                let desired = document.pointer("/desired/$version").and_then(serde_json::Value::as_u64);
                Served { answer: answer(200, rid, None, Bytes::from(document.to_string()), desired), note: None }
            }
            Err(error) => {
                Metrics::inc(&metrics.twin_errors);
                Served { answer: answer(error.status(), rid, None, error_body(&error.to_string()), None), note: None }
            }
        },
        Ok(IotHubRequest::TwinPatchReported { rid }) => {
            // The twin is written (and fsynced) before the answer: off the executor thread.
            let (twins, twin_id) = (broker.twins.clone(), id.clone());
            match smol::unblock(move || twins.patch_reported(&twin_id, &payload)).await {
                Ok(version) => {
                    Metrics::inc(&metrics.twin_reported_patches);
                    Metrics::inc(&broker.clients.of(&id).reported_patches);
                    if let Some(cloud) = broker.cloud() {
                        cloud.twin_used(&id, true);
                    }
                    Served {
                        answer: rid.and_then(|rid| answer(204, rid, Some(version), Bytes::new(), None)),
                        note: None,
                    }
                }
                Err(error) => {
                    Metrics::inc(&metrics.twin_errors);
                    Served {
                        answer: rid
                            .and_then(|rid| answer(error.status(), rid, None, error_body(&error.to_string()), None)),
                        note: Some(format!("reported properties refused: {error}")),
                    }
                }
            }
        }
        Ok(IotHubRequest::MethodResponse { status, rid }) => {
            let payload = if payload.is_empty() { Bytes::from_static(b"null") } else { payload };
            let matched = broker.methods.complete(&id, rid, MethodResponse { status, payload });
            Served {
                answer: None,
                note: (!matched).then(|| format!("answered method request {rid}, which nobody waits for")),
            }
        }
        Err(error) => {
            Metrics::inc(&metrics.iothub_unserved);
            Served {
                answer: answer(error.status, error.rid.unwrap_or_default(), None, error_body(&error.reason), None),
                note: Some(format!("{} ({})", error.reason, error.status)),
            }
        }
    }
}
