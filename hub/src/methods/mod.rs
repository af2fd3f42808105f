//! Direct methods: a caller (the CLI through the management socket, another module through the
//! method HTTP API, later the cloud) invokes a method on a connected module or leaf device; the
//! call goes out on the target's control lane and its answer comes back by request id.
//!
//! Protocol-neutral: the MQTT adapter turns [`Control::MethodRequest`] into
//! `$iothub/methods/POST/{name}/?$rid={rid}` and hands the client's
//! `$iothub/methods/res/{status}/?$rid={rid}` to [`Methods::complete`].
//!
//! - A target must be connected and subscribed to method calls within the call's connect
//!   timeout, else 404 (edgeHub's "Client … not found"); no answer within the response timeout
//!   is 504.
//! - Request ids are GUID-shaped (the C# SDK parses them), random per process, and matched
//!   case-insensitively as edgeHub does; an answer is taken only from the identity called.
//! - At most [`CALLS_MAX`] calls wait at once; more are refused.
//!
//! [`Control::MethodRequest`]: crate::broker::session::Control::MethodRequest

pub mod http;
pub mod listener;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use event_listener::Event;

use crate::broker::session::{Control, Slot};

/// Calls waiting for an answer at once, hub-wide: each holds its payload (≤ 128 KiB) until it
/// is answered or times out.
pub const CALLS_MAX: usize = 256;
/// Longest method name (edgeHub's `MethodRequestValidator`).
pub const NAME_CHARS_MAX: usize = 100;
/// Largest payload, request or response (IoT Hub's direct-method limit).
pub const PAYLOAD_BYTES_MAX: usize = 128 * 1024;
/// Longest response timeout a caller may ask for (IoT Hub's 300 s).
pub const RESPONSE_TIMEOUT_MAX: Duration = Duration::from_secs(300);
/// Longest connect timeout a caller may ask for.
pub const CONNECT_TIMEOUT_MAX: Duration = Duration::from_secs(300);

/// One call.
#[derive(Debug, Clone)]
pub struct MethodCall {
    /// `"{device}/{module}"` of the calling module, or empty for the operator's CLI.
    pub caller: String,
    /// `"{device}/{module}"` or a leaf device's `"{device}"`.
    pub target: String,
    pub name: String,
    /// JSON text.
    pub payload: Bytes,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
}

/// The callee's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodResponse {
    pub status: i32,
    /// JSON text from the callee (`null` if it sent nothing).
    pub payload: Bytes,
}

/// Why a call got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MethodError {
    /// Not connected or not subscribed within the connect timeout (HTTP 404).
    NotConnected(String),
    /// No answer within the response timeout (HTTP 504).
    Timeout(String),
    /// The call itself is invalid, or too many are waiting (HTTP 400).
    Invalid(String),
}

impl fmt::Display for MethodError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MethodError::NotConnected(why) | MethodError::Timeout(why) | MethodError::Invalid(why) => f.write_str(why),
        }
    }
}

/// How callers reach the hub's methods (the management socket, the HTTPS method API).
pub type Invoker =
    Arc<dyn Fn(MethodCall) -> Pin<Box<dyn Future<Output = Result<MethodResponse, MethodError>> + Send>> + Send + Sync>;

/// Checks a call against the limits; `Err` is the 400 message.
pub fn validate(call: &MethodCall) -> Result<(), String> {
    if call.name.is_empty() || call.name.chars().count() > NAME_CHARS_MAX {
        return Err(format!("methodName must be 1 to {NAME_CHARS_MAX} characters"));
    }
    if call.name.contains(['/', '?', '#', '+']) || call.name.chars().any(char::is_control) {
        return Err("methodName may not contain '/', '?', '#', '+' or control characters".to_string());
    }
    if call.payload.len() > PAYLOAD_BYTES_MAX {
        return Err(format!("payload of {} bytes is over the limit of {PAYLOAD_BYTES_MAX}", call.payload.len()));
    }
    if serde_json::from_slice::<serde_json::Value>(&call.payload).is_err() {
        return Err("payload is not JSON".to_string());
    }
    if call.response_timeout > RESPONSE_TIMEOUT_MAX || call.connect_timeout > CONNECT_TIMEOUT_MAX {
        return Err("timeouts may be at most 300 s".to_string());
    }
    Ok(())
}

/// A waiting call: who was called, and where its answer goes.
struct Pending {
    target: String,
    answer: Arc<Answer>,
}

#[derive(Default)]
struct Answer {
    value: Mutex<Option<MethodResponse>>,
    ready: Event,
}

/// The calls waiting for answers.
pub struct Methods {
    pending: Mutex<HashMap<String, Pending>>,
    /// Random per process, so request ids do not repeat across restarts.
    seed: u64,
    counter: AtomicU64,
}

impl fmt::Debug for Methods {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Methods").field("pending", &self.lock().len()).finish()
    }
}

impl Default for Methods {
    fn default() -> Methods {
        Methods { pending: Mutex::new(HashMap::new()), seed: random_seed(), counter: AtomicU64::new(1) }
    }
}

/// 64 bits from the kernel, or the clock if /dev/urandom cannot be read.
fn random_seed() -> u64 {
    use std::io::Read as _;
    let mut bytes = [0u8; 8];
    match std::fs::File::open("/dev/urandom").and_then(|mut file| file.read_exact(&mut bytes)) {
        Ok(()) => u64::from_le_bytes(bytes),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x5eed, |elapsed| elapsed.as_nanos() as u64),
    }
}

/// SplitMix64: spreads the counter over 64 bits (ids need to be unique, not secret).
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Methods {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Pending>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new GUID-shaped (version 4 layout) request id, lower case.
    fn request_id(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let (high, low) = (mix(self.seed ^ n), mix(self.seed.rotate_left(32) ^ n.wrapping_mul(31)));
        let bytes: [u8; 16] = {
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&high.to_be_bytes());
            b[8..].copy_from_slice(&low.to_be_bytes());
            b[6] = (b[6] & 0x0F) | 0x40;
            b[8] = (b[8] & 0x3F) | 0x80;
            b
        };
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
    }

    /// Calls `call.name` on the client of `slot` (the slot of `call.target`).
    pub async fn invoke(&self, slot: &Slot, call: MethodCall) -> Result<MethodResponse, MethodError> {
        validate(&call).map_err(MethodError::Invalid)?;
        wait_for_subscriber(slot, call.connect_timeout).await.map_err(|()| {
            MethodError::NotConnected(format!(
                "Client {} not found (not connected or not subscribed to methods)",
                call.target
            ))
        })?;
        let rid = self.request_id();
        let answer = Arc::new(Answer::default());
        {
            let mut pending = self.lock();
            if pending.len() >= CALLS_MAX {
                return Err(MethodError::Invalid(format!("{CALLS_MAX} method calls are waiting already; try again")));
            }
            pending.insert(rid.clone(), Pending { target: call.target.clone(), answer: answer.clone() });
        }
        let outcome = self.send_and_wait(slot, &call, &rid, &answer).await;
        self.lock().remove(&rid);
        outcome
    }

    async fn send_and_wait(
        &self,
        slot: &Slot,
        call: &MethodCall,
        rid: &str,
        answer: &Answer,
    ) -> Result<MethodResponse, MethodError> {
        let deadline = Instant::now() + call.response_timeout;
        let request =
            Control::MethodRequest { name: call.name.clone(), rid: rid.to_string(), payload: call.payload.clone() };
        let timed_out = || {
            MethodError::Timeout(format!(
                "{} did not answer {} within {:?}",
                call.target, call.name, call.response_timeout
            ))
        };
        let queued = smol::future::or(async { slot.control.push(request).await.is_ok() }, async {
            smol::Timer::at(deadline).await;
            false
        })
        .await;
        if !queued {
            return Err(timed_out());
        }
        loop {
            let listener = answer.ready.listen();
            if let Some(response) = answer.value.lock().unwrap_or_else(PoisonError::into_inner).take() {
                return Ok(response);
            }
            let woke = smol::future::or(
                async {
                    listener.await;
                    true
                },
                async {
                    smol::Timer::at(deadline).await;
                    false
                },
            )
            .await;
            if !woke {
                return Err(timed_out());
            }
        }
    }

    /// The answer `identity` sent for request `rid`; false (and ignored) if no call to
    /// `identity` waits for that id.
    pub fn complete(&self, identity: &str, rid: &str, response: MethodResponse) -> bool {
        let rid = rid.to_ascii_lowercase();
        let pending = self.lock();
        let Some(call) = pending.get(&rid).filter(|call| call.target == identity) else {
            return false;
        };
        *call.answer.value.lock().unwrap_or_else(PoisonError::into_inner) = Some(response);
        call.answer.ready.notify(usize::MAX);
        true
    }
}

/// Waits until the slot's client is connected and subscribed to methods, at most `timeout`.
async fn wait_for_subscriber(slot: &Slot, timeout: Duration) -> Result<(), ()> {
    let deadline = Instant::now() + timeout;
    loop {
        let changed = crate::broker::queue::listen(&slot.changed);
        if slot.takes_methods() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(());
        }
        let woke = smol::future::or(
            async {
                changed.await;
                true
            },
            async {
                smol::Timer::at(deadline).await;
                false
            },
        )
        .await;
        if !woke && !slot.takes_methods() {
            return Err(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(name: &str, payload: &str) -> MethodCall {
        MethodCall {
            caller: String::new(),
            target: "gw/m".into(),
            name: name.into(),
            payload: Bytes::from(payload.to_string()),
            connect_timeout: Duration::ZERO,
            response_timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn calls_are_checked_against_the_limits() {
        assert!(validate(&call("reboot", "{}")).is_ok());
        assert!(validate(&call("reboot", "null")).is_ok());
        assert!(validate(&call("", "{}")).is_err());
        assert!(validate(&call(&"n".repeat(101), "{}")).is_err());
        assert!(validate(&call("a/b", "{}")).is_err());
        assert!(validate(&call("reboot", "{not json")).is_err());
        let big = format!("\"{}\"", "x".repeat(PAYLOAD_BYTES_MAX));
        assert!(validate(&call("reboot", &big)).is_err());
    }

    #[test]
    fn request_ids_are_unique_and_guid_shaped() {
        let methods = Methods::default();
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| methods.request_id()).collect();
        assert_eq!(ids.len(), 1000);
        for id in ids.iter().take(10) {
            assert_eq!(id.len(), 36);
            assert_eq!(id.matches('-').count(), 4);
            assert_eq!(&id[14..15], "4");
        }
    }

    #[test]
    fn an_unsubscribed_target_is_not_found_and_an_answer_only_counts_from_the_callee() {
        let slot = Slot::new(4);
        let methods = Methods::default();
        let error = smol::block_on(methods.invoke(&slot, call("reboot", "{}"))).expect_err("not subscribed");
        assert!(matches!(error, MethodError::NotConnected(_)), "{error:?}");
        assert!(!methods.complete(
            "gw/m",
            "00000000-0000-4000-8000-000000000000",
            MethodResponse { status: 200, payload: Bytes::from_static(b"{}") }
        ));
    }
}
