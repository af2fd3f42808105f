//! `$edgeHub` desired properties: routes and store-and-forward settings.
//!
//! Sources (Azure/iotedge, `edge-hub/core/src/Microsoft.Azure.Devices.Edge.Hub.Core/`):
//! `config/EdgeHubConfigParser.cs` (one DTO per schema minor; 1.0 skips blank routes),
//! `config/EdgeHubDesiredProperties_1_0.cs` (routes are strings), `config/RouteSpecConverter.cs`
//! and `config/RouteSpec.cs` (1.1+: string or object; priority 0-9; TTL uint, 0 = global),
//! `StoreAndForwardConfiguration.cs` and `StoreLimits.cs` (int TTL, negative = forever; long
//! size).
//!
//! The route text is not parsed here: the hub compiles each route and refuses bad ones one by
//! one, so one typo does not take the whole deployment down.

use serde_json::Value;

use super::error::DeploymentError;
use super::json::{as_object, as_str, describe, field, integer, required, Object, Path};
use super::names::check_key_name;
use super::schema_version::{self, Twin};

/// Message time-to-live when `storeAndForwardConfiguration.timeToLiveSecs` is absent: the value
/// IoT Edge's templates and docs use (two hours).
pub const DEFAULT_TIME_TO_LIVE_SECS: i64 = 7200;

/// The `$edgeHub` twin's desired properties, validated.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HubDesired {
    /// `schemaVersion` as written; `""` when the deployment has no `$edgeHub` section.
    pub schema_version: String,
    /// `routes`, sorted by name; blank schema-1.0 routes are left out, as IoT Edge does.
    pub routes: Vec<RouteSpec>,
    /// `storeAndForwardConfiguration`, or its defaults.
    pub store_and_forward: StoreAndForward,
}

/// One named route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// The key under `routes`.
    pub name: String,
    /// The route text (`FROM … WHERE … INTO …`), unparsed.
    pub route: String,
    /// 0 (highest) to 9; `None` when unset, which ranks below every explicit priority
    /// (`RouteFactory.DefaultPriority`).
    pub priority: Option<u8>,
    /// Message TTL for this route; 0 means "use the store-and-forward TTL".
    pub time_to_live_secs: u32,
}

/// How long edgeHub keeps undelivered messages, and how much it may store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreAndForward {
    /// Seconds to keep a message; negative means forever (`TimeSpan.MaxValue` in IoT Edge).
    pub time_to_live_secs: i64,
    /// `storeLimits.maxSizeBytes`: the store's size cap, when set.
    pub max_size_bytes: Option<u64>,
}

impl Default for StoreAndForward {
    fn default() -> Self {
        Self { time_to_live_secs: DEFAULT_TIME_TO_LIVE_SECS, max_size_bytes: None }
    }
}

/// Highest route priority (`RouteSpec.cs`: "priority can only be between 0-9").
const ROUTE_PRIORITY_MAX: u8 = 9;

/// Reads the `$edgeHub` desired properties at `path`.
pub(crate) fn parse(desired: &Object, path: &Path) -> Result<HubDesired, DeploymentError> {
    let (version, schema_version) = schema_version::read(desired, path, Twin::Hub)?;
    let schema_version = schema_version.to_string();
    // Route objects (priority, TTL) arrived with schema 1.1; 1.0's DTO holds strings only.
    let objects_allowed = version.minor >= 1;
    let routes = match field(desired, "routes") {
        None => Vec::new(),
        Some(routes) => parse_routes(routes, &path.push("routes"), objects_allowed)?,
    };
    let store_and_forward = match field(desired, "storeAndForwardConfiguration") {
        None => StoreAndForward::default(),
        Some(value) => parse_store_and_forward(value, &path.push("storeAndForwardConfiguration"))?,
    };
    Ok(HubDesired { schema_version, routes, store_and_forward })
}

/// `routes`: `{name: "text"}`, or from schema 1.1 also `{name: {route, priority, timeToLiveSecs}}`.
fn parse_routes(value: &Value, path: &Path, objects_allowed: bool) -> Result<Vec<RouteSpec>, DeploymentError> {
    let entries = as_object(value, path)?;
    let mut routes = Vec::with_capacity(entries.len());
    for (name, entry) in entries {
        let entry_path = path.push(name);
        check_key_name(name, "route").map_err(|why| entry_path.bad(why))?;
        let route = match entry {
            // Deleted from the twin.
            Value::Null => continue,
            // Schema 1.0 skips blank routes (`string.IsNullOrWhiteSpace` in
            // EdgeHubConfigParser); from 1.1 `RouteSpec` requires non-blank text.
            Value::String(text) if text.trim().is_empty() && !objects_allowed => continue,
            Value::String(text) => RouteSpec {
                name: name.clone(),
                route: route_text(text, &entry_path)?,
                priority: None,
                time_to_live_secs: 0,
            },
            Value::Object(object) if objects_allowed => parse_route_object(name, object, &entry_path)?,
            Value::Object(_) => {
                return Err(entry_path.bad(
                    "route objects with priority and timeToLiveSecs need $edgeHub schemaVersion \
                     \"1.1\" or later; in \"1.0\" a route is a string",
                ))
            }
            other => {
                let expected = if objects_allowed { "a route string or object" } else { "a route string" };
                return Err(entry_path.bad(format!("expected {expected}, got {}", describe(other))));
            }
        };
        routes.push(route);
    }
    routes.sort_by(|left, right| left.name.cmp(&right.name));
    Ok(routes)
}

/// `{route, priority?, timeToLiveSecs?}` (`RouteSpec.cs`).
fn parse_route_object(name: &str, object: &Object, path: &Path) -> Result<RouteSpec, DeploymentError> {
    let route_path = path.push("route");
    let route = route_text(as_str(required(object, "route", path)?, &route_path)?, &route_path)?;
    let priority = match field(object, "priority") {
        None => None,
        Some(value) => Some(integer(value, &path.push("priority"), 0, ROUTE_PRIORITY_MAX)?),
    };
    let time_to_live_secs = match field(object, "timeToLiveSecs") {
        None => 0,
        Some(value) => integer(value, &path.push("timeToLiveSecs"), 0, u32::MAX)?,
    };
    Ok(RouteSpec { name: name.to_string(), route, priority, time_to_live_secs })
}

/// Route text must not be blank (`Preconditions.CheckNonWhiteSpace(route)`).
fn route_text(text: &str, path: &Path) -> Result<String, DeploymentError> {
    if text.trim().is_empty() {
        return Err(path.bad("route text is empty; expected \"FROM <source> [WHERE <condition>] INTO <sink>\""));
    }
    Ok(text.to_string())
}

/// `{timeToLiveSecs?: int, storeLimits?: {maxSizeBytes?: long}}`.
///
/// The TTL is a C# `int`, so it is bounded to i32 like there; `maxSizeBytes` is a `long` and a
/// store of zero bytes could hold nothing, so it must be positive.
fn parse_store_and_forward(value: &Value, path: &Path) -> Result<StoreAndForward, DeploymentError> {
    let config = as_object(value, path)?;
    let time_to_live_secs = match field(config, "timeToLiveSecs") {
        None => DEFAULT_TIME_TO_LIVE_SECS,
        Some(ttl) => integer(ttl, &path.push("timeToLiveSecs"), i64::from(i32::MIN), i64::from(i32::MAX))?,
    };
    let max_size_bytes = match field(config, "storeLimits") {
        None => None,
        Some(limits) => {
            let limits_path = path.push("storeLimits");
            let limits = as_object(limits, &limits_path)?;
            match field(limits, "maxSizeBytes") {
                None => None,
                Some(size) => Some(integer(size, &limits_path.push("maxSizeBytes"), 1, i64::MAX.unsigned_abs())?),
            }
        }
    };
    Ok(StoreAndForward { time_to_live_secs, max_size_bytes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::error::DeploymentStatus;
    use serde_json::json;

    fn hub(document: Value) -> Result<HubDesired, DeploymentError> {
        parse(document.as_object().expect("object literal"), &Path::root())
    }

    fn route(name: &str, text: &str, priority: Option<u8>, ttl: u32) -> RouteSpec {
        RouteSpec { name: name.into(), route: text.into(), priority, time_to_live_secs: ttl }
    }

    #[test]
    fn schema_one_zero_routes_are_strings_and_blank_ones_are_skipped() {
        let parsed = hub(json!({"schemaVersion": "1.0", "routes": {"r": "FROM /* INTO $upstream", "blank": " "}}))
            .expect("1.0 routes");
        assert_eq!(parsed.routes, [route("r", "FROM /* INTO $upstream", None, 0)]);
        assert_eq!(parsed.store_and_forward, StoreAndForward { time_to_live_secs: 7200, max_size_bytes: None });
    }

    #[test]
    fn schema_one_zero_refuses_route_objects() {
        let error = hub(json!({"schemaVersion": "1.0", "routes": {"r": {"route": "FROM /* INTO $upstream"}}}))
            .expect_err("object in 1.0");
        assert_eq!((error.status, error.path.as_str()), (DeploymentStatus::BadRequest, "routes.r"));
    }

    #[test]
    fn route_objects_carry_priority_and_ttl() {
        let parsed = hub(json!({"schemaVersion": "1.3", "routes": {
            "a": {"route": "FROM /a INTO $upstream", "priority": 0, "timeToLiveSecs": 86400},
            "b": {"route": "FROM /b INTO $upstream"},
            "c": "FROM /c INTO $upstream",
        }}))
        .expect("1.3 routes");
        assert_eq!(
            parsed.routes,
            [
                route("a", "FROM /a INTO $upstream", Some(0), 86400),
                route("b", "FROM /b INTO $upstream", None, 0),
                route("c", "FROM /c INTO $upstream", None, 0),
            ]
        );
    }

    #[test]
    fn route_errors_name_the_field() {
        let table = [
            (json!({"a.b": "FROM /* INTO $upstream"}), "routes.a.b"),
            (json!({"r": 5}), "routes.r"),
            (json!({"r": ""}), "routes.r"),
            (json!({"r": {"priority": 1}}), "routes.r.route"),
            (json!({"r": {"route": " "}}), "routes.r.route"),
            (json!({"r": {"route": "x", "priority": 10}}), "routes.r.priority"),
            (json!({"r": {"route": "x", "timeToLiveSecs": -1}}), "routes.r.timeToLiveSecs"),
            (json!(["FROM /* INTO $upstream"]), "routes"),
        ];
        for (routes, path) in table {
            let error = hub(json!({"schemaVersion": "1.1", "routes": routes})).expect_err(path);
            assert_eq!((error.status, error.path.as_str()), (DeploymentStatus::BadRequest, path));
        }
    }

    #[test]
    fn store_and_forward_reads_ttl_and_size_limit() {
        let parsed = hub(json!({"schemaVersion": "1.1", "storeAndForwardConfiguration":
            {"timeToLiveSecs": -1, "storeLimits": {"maxSizeBytes": 1048576}}}))
        .expect("store settings");
        assert_eq!(parsed.store_and_forward, StoreAndForward { time_to_live_secs: -1, max_size_bytes: Some(1 << 20) });
        let table = [
            (json!({"timeToLiveSecs": "7200"}), "storeAndForwardConfiguration.timeToLiveSecs"),
            (json!({"timeToLiveSecs": 4294967296u64}), "storeAndForwardConfiguration.timeToLiveSecs"),
            (json!({"storeLimits": {"maxSizeBytes": 0}}), "storeAndForwardConfiguration.storeLimits.maxSizeBytes"),
            (json!({"storeLimits": 5}), "storeAndForwardConfiguration.storeLimits"),
        ];
        for (config, path) in table {
            let error = hub(json!({"schemaVersion": "1.1", "storeAndForwardConfiguration": config})).expect_err(path);
            assert_eq!(error.path, path);
        }
    }

    #[test]
    fn unsupported_hub_schema_is_412() {
        let error = hub(json!({"schemaVersion": "1.4", "routes": {}})).expect_err("1.4");
        assert_eq!((error.status, error.path.as_str()), (DeploymentStatus::PreconditionFailed, "schemaVersion"));
    }
}
