//! Whole-document tests: real manifests, both shapes, and each error class with its path.

use super::*;
use serde_json::json;

/// `e2e_deployment_files/quickstart_deployment.template.json` from Azure/iotedge, trimmed, with
/// image tags as in iotedge-reference.md §1.
const QUICKSTART: &str = r#"{"modulesContent":{
 "$edgeAgent":{"properties.desired":{
   "schemaVersion":"1.0",
   "runtime":{"type":"docker","settings":{"minDockerVersion":"v1.25","loggingOptions":"",
     "registryCredentials":{"buildcr":{"username":"<u>","password":"<p>","address":"<reg>"}}}},
   "systemModules":{
     "edgeAgent":{"type":"docker","settings":{"image":"mcr.microsoft.com/azureiotedge-agent:1.5","createOptions":""},"env":{}},
     "edgeHub":{"type":"docker","settings":{"image":"mcr.microsoft.com/azureiotedge-hub:1.5",
        "createOptions":"{\"HostConfig\":{\"PortBindings\":{\"8883/tcp\":[{\"HostPort\":\"8883\"}],\"443/tcp\":[{\"HostPort\":\"443\"}],\"5671/tcp\":[{\"HostPort\":\"5671\"}]}}}"},
        "env":{"NestedEdgeEnabled":{"value":"false"}},"status":"running","restartPolicy":"always"}},
   "modules":{"tempSensor":{"version":"1.0","type":"docker","status":"running","restartPolicy":"always",
      "settings":{"image":"mcr.microsoft.com/azureiotedge-simulated-temperature-sensor:1.5","createOptions":""}}}}},
 "$edgeHub":{"properties.desired":{"schemaVersion":"1.0",
   "routes":{"route":"FROM /* INTO $upstream"},
   "storeAndForwardConfiguration":{"timeToLiveSecs":7200}}}}}"#;

const AGENT_PATH: &str = "modulesContent.$edgeAgent.properties.desired";

fn parse(document: &Value) -> Result<Deployment, DeploymentError> {
    parse_deployment(document.to_string().as_bytes())
}

fn quickstart() -> Value {
    serde_json::from_str(QUICKSTART).expect("quickstart is JSON")
}

/// Asserts `document` is refused with `status` at `path`, and returns the message.
fn refused(document: &Value, status: DeploymentStatus, path: &str) -> String {
    let error = parse(document).expect_err(path);
    assert_eq!((error.status, error.path.as_str()), (status, path), "{error}");
    error.message
}

#[test]
fn quickstart_manifest_parses_with_the_expected_fields() {
    let deployment = parse_deployment(QUICKSTART.as_bytes()).expect("quickstart is valid");
    let agent = &deployment.agent;
    assert_eq!(agent.schema_version, "1.0");
    assert_eq!(agent.registry_credentials.len(), 1);
    let credential = &agent.registry_credentials[0];
    assert_eq!(
        (
            credential.name.as_str(),
            credential.address.as_str(),
            credential.username.as_str(),
            credential.password.as_str()
        ),
        ("buildcr", "<reg>", "<u>", "<p>")
    );

    let [edge_agent, edge_hub] = &agent.system_modules[..] else { panic!("two system modules") };
    assert_eq!(edge_agent.name, "edgeAgent");
    assert_eq!(edge_agent.image, "mcr.microsoft.com/azureiotedge-agent:1.5");
    assert_eq!((edge_agent.status, edge_agent.restart_policy), (DesiredStatus::Running, RestartPolicy::Always));
    assert_eq!(edge_agent.create_options, "");
    assert_eq!(edge_hub.name, "edgeHub");
    assert_eq!(edge_hub.restart_policy, RestartPolicy::Always);
    assert_eq!(edge_hub.env, [("NestedEdgeEnabled".to_string(), "false".to_string())]);
    assert!(edge_hub.create_options.starts_with("{\"HostConfig\""));

    let sensor = deployment.module("tempSensor").expect("tempSensor");
    assert_eq!(sensor.version, "1.0");
    assert_eq!(sensor.module_type, "docker");
    assert_eq!(sensor.image, "mcr.microsoft.com/azureiotedge-simulated-temperature-sensor:1.5");
    assert_eq!((sensor.status, sensor.restart_policy), (DesiredStatus::Running, RestartPolicy::Always));
    assert_eq!((sensor.image_pull_policy, sensor.startup_order), (ImagePullPolicy::OnCreate, DEFAULT_STARTUP_ORDER));
    assert!(deployment.module("edgeHub").is_none(), "module() finds user modules only");

    assert_eq!(deployment.hub.schema_version, "1.0");
    assert_eq!(
        deployment.hub.routes,
        [RouteSpec {
            name: "route".into(),
            route: "FROM /* INTO $upstream".into(),
            priority: None,
            time_to_live_secs: 0
        }]
    );
    assert_eq!(deployment.hub.store_and_forward, StoreAndForward { time_to_live_secs: 7200, max_size_bytes: None });
    assert!(deployment.module_twins.is_empty());
}

#[test]
fn bare_modules_content_parses_like_the_full_manifest() {
    let full = parse(&quickstart()).expect("full");
    let bare = parse(&quickstart()["modulesContent"]).expect("bare");
    assert_eq!(full, bare);
}

#[test]
fn a_leading_byte_order_mark_is_ignored() {
    let with_bom = [&b"\xEF\xBB\xBF"[..], QUICKSTART.as_bytes()].concat();
    assert_eq!(parse_deployment(&with_bom), parse_deployment(QUICKSTART.as_bytes()));
}

#[test]
fn bare_form_errors_have_paths_without_modules_content() {
    let mut bare = quickstart()["modulesContent"].clone();
    bare["$edgeAgent"]["properties.desired"]["modules"]["tempSensor"]["restartPolicy"] = json!("sometimes");
    refused(&bare, DeploymentStatus::BadRequest, "$edgeAgent.properties.desired.modules.tempSensor.restartPolicy");
}

#[test]
fn schema_one_one_route_objects_from_the_priority_and_ttl_doc() {
    let mut document = quickstart();
    document["modulesContent"]["$edgeHub"]["properties.desired"] = json!({
        "schemaVersion": "1.1",
        "routes": {
            "secCamAlerts": {"route": "FROM /messages/modules/SecCamMod/outputs/P0_Alerts INTO $upstream", "priority": 0, "timeToLiveSecs": 86400},
            "upstream": "FROM /messages/* INTO $upstream",
        },
        "storeAndForwardConfiguration": {"timeToLiveSecs": 7200},
    });
    let routes = parse(&document).expect("1.1 routes").hub.routes;
    assert_eq!(
        routes,
        [
            RouteSpec {
                name: "secCamAlerts".into(),
                route: "FROM /messages/modules/SecCamMod/outputs/P0_Alerts INTO $upstream".into(),
                priority: Some(0),
                time_to_live_secs: 86400,
            },
            RouteSpec {
                name: "upstream".into(),
                route: "FROM /messages/* INTO $upstream".into(),
                priority: None,
                time_to_live_secs: 0
            },
        ]
    );
}

#[test]
fn chunked_create_options_are_joined() {
    let options = r#"{"HostConfig":{"Binds":["/data:/data"],"Privileged":false},"Env":["A=1"]}"#;
    let (first, rest) = options.split_at(20);
    let (second, third) = rest.split_at(25);
    let mut document = quickstart();
    document["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]["tempSensor"]["settings"] = json!({
        "image": "img:1", "createOptions": first, "createOptions01": second, "createOptions02": third,
    });
    let deployment = parse(&document).expect("chunks");
    assert_eq!(deployment.module("tempSensor").expect("module").create_options, options);
}

#[test]
fn module_twins_are_collected_and_checked() {
    let mut document = quickstart();
    let content = &mut document["modulesContent"];
    content["tempSensor"] = json!({"properties.desired": {"SendInterval": 5}});
    content["$schema-template"] = json!("4.0.0");
    let deployment = parse(&document).expect("module twin");
    assert_eq!(deployment.module_twins, [("tempSensor".to_string(), json!({"SendInterval": 5}))]);

    document["modulesContent"]["bad name"] = json!({"properties.desired": {}});
    refused(&document, DeploymentStatus::BadRequest, "modulesContent.bad name");
    let mut document = quickstart();
    document["modulesContent"]["twin"] = json!({"properties.reported": {}});
    refused(&document, DeploymentStatus::BadRequest, "modulesContent.twin.properties.desired");
}

#[test]
fn missing_hub_twin_means_no_routes_and_default_store() {
    let mut document = quickstart();
    document["modulesContent"]["$edgeHub"] = Value::Null;
    let hub = parse(&document).expect("no hub").hub;
    assert_eq!(hub, HubDesired::default());
    assert_eq!(hub.store_and_forward.time_to_live_secs, DEFAULT_TIME_TO_LIVE_SECS);
}

#[test]
fn no_deployment_is_417() {
    let table = [
        (json!({}), "$edgeAgent"),
        (json!({"modulesContent": {}}), "modulesContent.$edgeAgent"),
        (json!({"modulesContent": {"$edgeAgent": {}}}), "modulesContent.$edgeAgent"),
        (
            json!({"modulesContent": {"$edgeAgent": {"properties.desired": {"$version": 3}}}}),
            "modulesContent.$edgeAgent",
        ),
    ];
    for (document, path) in table {
        refused(&document, DeploymentStatus::ExpectationFailed, path);
    }
    for empty in [&b""[..], b"  \n\t"] {
        let error = parse_deployment(empty).expect_err("empty input");
        assert_eq!((error.status, error.path.as_str()), (DeploymentStatus::ExpectationFailed, ""));
    }
}

#[test]
fn unsupported_schema_versions_are_412() {
    let mut document = quickstart();
    document["modulesContent"]["$edgeAgent"]["properties.desired"]["schemaVersion"] = json!("1.2");
    let message = refused(&document, DeploymentStatus::PreconditionFailed, &format!("{AGENT_PATH}.schemaVersion"));
    assert_eq!(message, r#"unsupported schema version "1.2"; $edgeAgent accepts "1.0" and "1.1""#);

    let mut document = quickstart();
    document["modulesContent"]["$edgeHub"]["properties.desired"]["schemaVersion"] = json!("2.0");
    refused(
        &document,
        DeploymentStatus::PreconditionFailed,
        "modulesContent.$edgeHub.properties.desired.schemaVersion",
    );

    let mut document = quickstart();
    document["modulesContent"]["$edgeAgent"]["properties.desired"]["schemaVersion"] = Value::Null;
    refused(&document, DeploymentStatus::BadRequest, &format!("{AGENT_PATH}.schemaVersion"));
}

#[test]
fn error_display_matches_the_documented_example() {
    let mut document = quickstart();
    document["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]["tempSensor"]["restartPolicy"] =
        json!("sometimes");
    let error = parse(&document).expect_err("bad policy");
    assert_eq!(
        error.to_string(),
        r#"400 at modulesContent.$edgeAgent.properties.desired.modules.tempSensor.restartPolicy: expected one of "never", "on-failure", "on-unhealthy", "always", got "sometimes""#
    );
}

#[test]
fn invalid_json_reports_line_and_column() {
    let error = parse_deployment(b"{\"modulesContent\":\n{,}}").expect_err("bad JSON");
    assert_eq!((error.status, error.path.as_str()), (DeploymentStatus::BadRequest, ""));
    assert!(error.message.starts_with("invalid JSON: "), "{error}");
    assert!(error.message.contains("line 2 column 2"), "{error}");
    for not_object in [&b"[]"[..], b"5", b"\"x\"", b"null"] {
        let error = parse_deployment(not_object).expect_err("not an object");
        assert_eq!(error.status, DeploymentStatus::BadRequest);
    }
}

#[test]
fn oversized_input_is_refused_before_parsing() {
    let mut big = vec![b' '; DEPLOYMENT_BYTES_MAX + 1];
    big[0] = b'{';
    let error = parse_deployment(&big).expect_err("too big");
    assert_eq!(error.status, DeploymentStatus::BadRequest);
    assert!(error.message.contains("limit"), "{error}");
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert_eq!(parse_deployment(deep.as_bytes()).expect_err("deep").status, DeploymentStatus::BadRequest);
    let options = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let mut document = quickstart();
    document["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"]["tempSensor"]["settings"]
        ["createOptions"] = json!(options);
    refused(
        &document,
        DeploymentStatus::BadRequest,
        &format!("{AGENT_PATH}.modules.tempSensor.settings.createOptions"),
    );
}

#[test]
fn both_shapes_at_once_are_refused() {
    let mut document = quickstart();
    document["$edgeAgent"] = json!({});
    refused(&document, DeploymentStatus::BadRequest, "$edgeAgent");
}

#[test]
fn wrong_types_at_each_level_are_400_with_their_path() {
    let table: [(&str, &[&str], Value); 8] = [
        ("modulesContent", &["modulesContent"], json!([])),
        ("modulesContent.$edgeAgent", &["modulesContent", "$edgeAgent"], json!("x")),
        (AGENT_PATH, &["modulesContent", "$edgeAgent", "properties.desired"], json!(1)),
        (
            "modulesContent.$edgeHub.properties.desired",
            &["modulesContent", "$edgeHub", "properties.desired"],
            json!([]),
        ),
        (
            "modulesContent.$edgeHub.properties.desired.routes",
            &["modulesContent", "$edgeHub", "properties.desired", "routes"],
            json!("r"),
        ),
        (
            "modulesContent.$edgeAgent.properties.desired.systemModules.edgeHub.settings.image",
            &["modulesContent", "$edgeAgent", "properties.desired", "systemModules", "edgeHub", "settings", "image"],
            json!(["img"]),
        ),
        (
            "modulesContent.$edgeAgent.properties.desired.runtime.settings.loggingOptions",
            &["modulesContent", "$edgeAgent", "properties.desired", "runtime", "settings", "loggingOptions"],
            json!({}),
        ),
        (
            "modulesContent.$edgeAgent.properties.desired.modules",
            &["modulesContent", "$edgeAgent", "properties.desired", "modules"],
            json!(["tempSensor"]),
        ),
    ];
    for (path, keys, value) in table {
        let mut document = quickstart();
        let mut slot = &mut document;
        for key in keys {
            slot = &mut slot[*key];
        }
        *slot = value;
        refused(&document, DeploymentStatus::BadRequest, path);
    }
}

#[test]
fn unknown_fields_are_ignored() {
    let mut document = quickstart();
    let desired = &mut document["modulesContent"]["$edgeAgent"]["properties.desired"];
    desired["$version"] = json!(12);
    desired["$metadata"] = json!({"$lastUpdated": "2024-01-01"});
    desired["modules"]["tempSensor"]["configuration"] = json!({"id": "layered-1"});
    desired["modules"]["tempSensor"]["settings"]["extra"] = json!(true);
    let deployment = parse(&document).expect("unknown fields");
    assert_eq!(deployment, parse(&quickstart()).expect("quickstart"));
}

/// A cheap stand-in for the fuzz target that runs with every `cargo test`: every truncation
/// and many single-byte edits of a real manifest give a result or a one-line error.
#[test]
fn mutated_manifests_never_panic_and_errors_stay_on_one_line() {
    let original = QUICKSTART.as_bytes();
    let check = |bytes: &[u8]| {
        if let Err(error) = parse_deployment(bytes) {
            assert!(!error.to_string().contains('\n'), "{error}");
        }
    };
    for length in 0..original.len() {
        check(&original[..length]);
    }
    for position in 0..original.len() {
        for replacement in [b'"', b'{', b'1', b'.', 0xFF] {
            let mut mutated = original.to_vec();
            mutated[position] = replacement;
            check(&mutated);
        }
    }
}
