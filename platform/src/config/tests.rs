use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::*;
use crate::fsutil::testdir::TestDir;

/// base64 of b"abcdefghijklmnopqrstuvwxyz123456".
const KEY_B64: &str = "YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXoxMjM0NTY=";
const KEY: &[u8] = b"abcdefghijklmnopqrstuvwxyz123456";

fn base() -> &'static Path {
    Path::new("/etc/tinyedge")
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str(text, base())
}

fn parse_error(text: &str) -> ConfigError {
    match parse(text) {
        Ok(config) => panic!("expected an error for {text:?}, got {config:?}"),
        Err(error) => error,
    }
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

#[test]
fn empty_config_gives_defaults_with_data_dir_beside_the_file() {
    let config = parse("").unwrap();
    let expected = Config { data_dir: base().join("tinyedge-data"), ..Config::default() };
    assert_eq!(config, expected);
    assert_eq!(config.hostname, "localhost");
    assert_eq!(config.iothub_hostname, "localhost");
    assert_eq!(config.device_id, "tinyedge");
    assert_eq!(config.log_level, log::LevelFilter::Info);
    assert_eq!(config.hub.mqtt, Some(addr("127.0.0.1:1883")));
    assert_eq!(config.hub.mqtts, Some(addr("127.0.0.1:8883")));
    assert_eq!(config.hub.https, Some(addr("127.0.0.1:443")));
    assert_eq!(config.hub.max_packet_bytes, 262_144);
    assert_eq!(config.hub.subscriber_queue_max, 1000);
    assert_eq!(config.hub.max_inflight, 16);
    assert_eq!(config.hub.max_connections, 10_000);
    assert_eq!(config.hub.max_unauthenticated, 64);
    assert_eq!(config.hub.connect_timeout_secs, 10);
}

#[test]
fn default_data_dir_is_relative_to_the_working_directory() {
    assert_eq!(Config::default().data_dir, PathBuf::from("./tinyedge-data"));
}

#[test]
fn full_config_parses() {
    let text = format!(
        r#"
hostname = "gateway.local"
iothub_hostname = "myhub.azure-devices.net"
device_id = "gateway-1"
device_key = "{KEY_B64}"
data_dir = "/var/lib/tinyedge"
deployment = "deployment.json"
log_level = "debug"
[hub]
mqtt = ""
mqtts = "[::]:8883"
https = "0.0.0.0:8443"
tls_cert = "certs/server.pem"
tls_key = "/secure/server.key.pem"
max_packet_bytes = 1024
subscriber_queue_max = 1
max_inflight = 65535
max_connections = 5
max_unauthenticated = 2
connect_timeout_secs = 300
[[devices]]
id = "sensor-7"
key = "{KEY_B64}"
[[devices]]
id = "sensor-8:$x@y"
key = "MDEyMzQ1Njc4OWFiY2RlZg=="
"#
    );
    let config = parse(&text).unwrap();
    assert_eq!(config.hostname, "gateway.local");
    assert_eq!(config.iothub_hostname, "myhub.azure-devices.net");
    assert_eq!(config.device_id, "gateway-1");
    assert_eq!(config.device_key.as_deref(), Some(KEY));
    assert_eq!(config.data_dir, PathBuf::from("/var/lib/tinyedge"));
    assert_eq!(config.deployment, Some(base().join("deployment.json")));
    assert_eq!(config.log_level, log::LevelFilter::Debug);
    let hub = &config.hub;
    assert_eq!(hub.mqtt, None);
    assert_eq!(hub.mqtts, Some(addr("[::]:8883")));
    assert_eq!(hub.https, Some(addr("0.0.0.0:8443")));
    assert_eq!(hub.tls_cert, Some(base().join("certs/server.pem")));
    assert_eq!(hub.tls_key, Some(PathBuf::from("/secure/server.key.pem")));
    assert_eq!((hub.max_packet_bytes, hub.subscriber_queue_max), (1024, 1));
    assert_eq!((hub.max_inflight, hub.max_connections), (65_535, 5));
    assert_eq!((hub.max_unauthenticated, hub.connect_timeout_secs), (2, 300));
    assert_eq!(config.devices.len(), 2);
    assert_eq!(config.devices[0], DeviceConfig { id: "sensor-7".into(), key: KEY.to_vec() });
    assert_eq!(config.devices[1].id, "sensor-8:$x@y");
    assert_eq!(config.devices[1].key, b"0123456789abcdef");
}

#[test]
fn iothub_hostname_defaults_to_hostname() {
    let config = parse("hostname = \"10.0.0.5\"").unwrap();
    assert_eq!(config.iothub_hostname, "10.0.0.5");
}

#[test]
fn log_levels_parse_case_insensitively() {
    for (text, level) in
        [("error", log::LevelFilter::Error), ("TRACE", log::LevelFilter::Trace), ("off", log::LevelFilter::Off)]
    {
        assert_eq!(parse(&format!("log_level = \"{text}\"")).unwrap().log_level, level);
    }
}

#[test]
fn unknown_keys_are_named_with_their_table() {
    let table = [
        ("mqtt = \"x\"", "mqtt"),
        ("[hub]\nmqttt = \"127.0.0.1:1\"", "hub.mqttt"),
        ("[[devices]]\nid = \"a\"\nkey = \"k\"\nkeys = \"x\"", "devices[0].keys"),
        ("[extra]\na = 1", "extra"),
    ];
    for (text, key) in table {
        let error = parse_error(text);
        assert!(matches!(&error, ConfigError::UnknownKey { key: k } if k == key), "{error}");
        assert_eq!(error.to_string(), format!("config: unknown key \"{key}\""));
    }
}

#[test]
fn wrong_types_name_the_key_and_both_types() {
    let table = [
        ("hostname = 5", "hostname", "a string", "integer"),
        ("hub = \"x\"", "hub", "a table", "string"),
        ("devices = 3", "devices", "an array of [[devices]] tables", "integer"),
        ("devices = [1]", "devices[0]", "a table", "integer"),
        ("[hub]\nmax_inflight = \"16\"", "hub.max_inflight", "an integer", "string"),
        ("[hub]\nmqtt = 1883", "hub.mqtt", "a string", "integer"),
        ("log_level = true", "log_level", "a string", "boolean"),
    ];
    for (text, key, expected, found) in table {
        match parse_error(text) {
            ConfigError::WrongType { key: k, expected: e, found: f } => {
                assert_eq!((k.as_str(), e, f), (key, expected, found), "{text:?}")
            }
            other => panic!("{text:?}: {other}"),
        }
    }
}

#[test]
fn bad_socket_address_names_key_and_value() {
    for value in ["localhost:1883", "127.0.0.1", "1883", "127.0.0.1:99999", " 127.0.0.1:1883"] {
        let error = parse_error(&format!("[hub]\nmqtts = \"{value}\""));
        assert!(matches!(&error, ConfigError::BadAddress { key, value: v } if key == "hub.mqtts" && v == value));
        assert!(error.to_string().contains(&format!("\"hub.mqtts\" = \"{value}\"")), "{error}");
    }
}

#[test]
fn same_address_for_both_listeners_is_refused_unless_port_zero() {
    assert!(matches!(
        parse_error("[hub]\nmqtt = \"0.0.0.0:1883\"\nmqtts = \"0.0.0.0:1883\""),
        ConfigError::SameAddress { .. }
    ));
    assert!(parse("[hub]\nmqtt = \"127.0.0.1:0\"\nmqtts = \"127.0.0.1:0\"").is_ok());
    let error = parse_error("[hub]\nmqtts = \"0.0.0.0:8883\"\nhttps = \"0.0.0.0:8883\"");
    assert!(matches!(&error, ConfigError::SameAddress { first: "hub.mqtts", second: "hub.https", .. }), "{error:?}");
    assert!(error.to_string().contains("\"hub.mqtts\" and \"hub.https\" are both \"0.0.0.0:8883\""), "{error}");
    let error = parse_error("[hub]\nhttps = \"127.0.0.1:1883\"");
    assert!(matches!(&error, ConfigError::SameAddress { first: "hub.mqtt", second: "hub.https", .. }), "{error:?}");
}

#[test]
fn the_method_api_listener_can_be_turned_off_or_moved() {
    assert_eq!(parse("[hub]\nhttps = \"\"").unwrap().hub.https, None);
    assert_eq!(parse("[hub]\nhttps = \"[::]:8443\"").unwrap().hub.https, Some(addr("[::]:8443")));
    let error = parse_error("[hub]\nhttps = \"443\"");
    assert!(matches!(&error, ConfigError::BadAddress { key, .. } if key == "hub.https"), "{error:?}");
}

#[test]
fn bad_keys_name_the_key() {
    let table = [
        ("device_key = \"not base64!\"", "device_key"),
        ("device_key = \"YWJj\"", "device_key"),
        ("device_key = \"\"", "device_key"),
        ("device_key = \"YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXoxMjM0NTY\"", "device_key"),
        ("[[devices]]\nid = \"a\"\nkey = \"%%%\"", "devices[0].key"),
    ];
    for (text, key) in table {
        let error = parse_error(text);
        assert!(matches!(&error, ConfigError::BadKey { key: k, .. } if k == key), "{text:?}: {error}");
        assert!(error.to_string().starts_with(&format!("config: \"{key}\" is not a valid symmetric key")));
    }
}

#[test]
fn limits_out_of_range_are_refused() {
    let table = [
        ("max_packet_bytes", 1023),
        ("max_packet_bytes", 256 * 1024 * 1024 + 1),
        ("subscriber_queue_max", 0),
        ("subscriber_queue_max", -1),
        ("subscriber_queue_max", 1_000_001),
        ("max_inflight", 0),
        ("max_inflight", 65_536),
        ("max_connections", 0),
        ("max_connections", i64::MIN),
        ("max_unauthenticated", 0),
        ("max_unauthenticated", 1_000_001),
        ("connect_timeout_secs", 0),
        ("connect_timeout_secs", 301),
        ("connect_timeout_secs", -5),
    ];
    for (name, value) in table {
        match parse_error(&format!("[hub]\n{name} = {value}")) {
            ConfigError::OutOfRange { key, value: v, .. } => {
                assert_eq!((key, v), (format!("hub.{name}"), value))
            }
            other => panic!("{name} = {value}: {other}"),
        }
    }
    let upper = format!("[hub]\nmax_packet_bytes = {}", 256 * 1024 * 1024);
    assert_eq!(parse(&upper).unwrap().hub.max_packet_bytes, MAX_PACKET_BYTES_MAX);
}

#[test]
fn ids_outside_iot_hub_charset_are_refused() {
    let long = "a".repeat(129);
    let table = ["", "has space", "slash/id", "plus+", "hash#", "ünicode", &long];
    for id in table {
        let error = parse_error(&format!("device_id = \"{id}\""));
        assert!(matches!(&error, ConfigError::BadId { key, .. } if key == "device_id"), "{id:?}: {error}");
        let error = parse_error(&format!("[[devices]]\nid = \"{id}\"\nkey = \"{KEY_B64}\""));
        assert!(matches!(&error, ConfigError::BadId { key, .. } if key == "devices[0].id"), "{error}");
    }
    let longest = "a".repeat(128);
    assert!(parse(&format!("device_id = \"{longest}\"")).is_ok());
    assert!(parse("device_id = \"A-z.0%_*?!(),:=@$'\"").is_ok());
}

#[test]
fn bad_hostnames_are_refused() {
    let long_label = "a".repeat(64);
    let gateway_too_long = format!("{}.local", "a".repeat(60));
    let table = ["", "gate way", "-gw", "gw-", "a..b", "gw.", "under_score", &long_label, &gateway_too_long];
    for hostname in table {
        let error = parse_error(&format!("hostname = \"{hostname}\""));
        assert!(matches!(&error, ConfigError::BadHostname { key, .. } if key == "hostname"), "{hostname:?}: {error}");
    }
    // The IoT Hub name is no certificate common name, so the 64-character cap does not apply.
    assert!(parse(&format!("iothub_hostname = \"{gateway_too_long}\"")).is_ok());
    assert!(parse("hostname = \"::1\"").is_ok());
}

#[test]
fn devices_need_id_and_key_and_unique_ids() {
    let entry = |id: &str| format!("[[devices]]\nid = \"{id}\"\nkey = \"{KEY_B64}\"\n");
    assert!(
        matches!(parse_error("[[devices]]\nkey = \"x\""), ConfigError::MissingKey { key } if key == "devices[0].id")
    );
    let missing_key = format!("{}[[devices]]\nid = \"b\"", entry("a"));
    assert!(matches!(parse_error(&missing_key), ConfigError::MissingKey { key } if key == "devices[1].key"));
    let duplicate = format!("{}{}{}", entry("a"), entry("b"), entry("a"));
    assert!(matches!(parse_error(&duplicate), ConfigError::DuplicateDevice { id } if id == "a"));
    // Ids are case-sensitive in IoT Hub.
    assert_eq!(parse(&format!("{}{}", entry("a"), entry("A"))).unwrap().devices.len(), 2);
    let edge = format!("device_id = \"gw\"\n{}", entry("gw"));
    assert!(matches!(parse_error(&edge), ConfigError::DeviceIsEdge { id } if id == "gw"));
}

#[test]
fn tls_cert_and_key_go_together() {
    let only_cert = parse_error("[hub]\ntls_cert = \"c.pem\"");
    assert!(matches!(only_cert, ConfigError::TlsPairIncomplete { present: "hub.tls_cert", missing: "hub.tls_key" }));
    let only_key = parse_error("[hub]\ntls_key = \"k.pem\"");
    assert!(matches!(only_key, ConfigError::TlsPairIncomplete { present: "hub.tls_key", missing: "hub.tls_cert" }));
}

#[test]
fn empty_paths_are_refused() {
    for (text, name) in [("data_dir = \"\"", "data_dir"), ("deployment = \"\"", "deployment")] {
        assert!(matches!(parse_error(text), ConfigError::Empty { key } if key == name));
    }
}

#[test]
fn bad_log_level_is_refused() {
    assert!(matches!(parse_error("log_level = \"verbose\""), ConfigError::BadLogLevel { value } if value == "verbose"));
}

#[test]
fn syntax_errors_give_line_and_column() {
    let table = [
        ("hostname = \"a\"\n[hub\nmqtt = \"\"", 2),
        ("a = 1\nb = 2\nhostname = \"unterminated\n", 3),
        ("hostname = \"a\"\nhostname = \"b\"", 2),
    ];
    for (text, expected_line) in table {
        match parse_error(text) {
            ConfigError::Syntax { line, column, ref message } => {
                assert_eq!(line, expected_line, "{text:?}: {message}");
                assert!(column >= 1);
            }
            other => panic!("{text:?}: {other}"),
        }
    }
}

#[test]
fn oversized_text_is_refused_before_parsing() {
    let text = format!("# {}", "x".repeat(CONFIG_MAX_BYTES));
    assert!(matches!(parse_error(&text), ConfigError::TooLarge { max_bytes: CONFIG_MAX_BYTES, .. }));
}

#[test]
fn load_resolves_paths_against_the_file_and_names_it_in_errors() {
    let dir = TestDir::new("config-load");
    let file = dir.path().join("tinyedge.toml");
    fs::write(&file, "deployment = \"deployment.json\"\n[hub]\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n").unwrap();
    let config = Config::load(&file).unwrap();
    assert_eq!(config.deployment, Some(dir.path().join("deployment.json")));
    assert_eq!(config.data_dir, dir.path().join("tinyedge-data"));
    assert_eq!(config.hub.tls_key, Some(dir.path().join("k.pem")));

    fs::write(&file, "[hub]\nmqttt = \"127.0.0.1:1883\"\n").unwrap();
    let error = Config::load(&file).unwrap_err();
    assert_eq!(error.to_string(), format!("config: unknown key \"hub.mqttt\" in {}", file.display()));
    assert!(matches!(error.without_file(), ConfigError::UnknownKey { .. }));
}

#[test]
fn missing_config_file_is_named() {
    let dir = TestDir::new("config-missing");
    let file = dir.path().join("nope.toml");
    let error = Config::load(&file).unwrap_err();
    assert!(matches!(&error, ConfigError::Read { file: f, .. } if f == &file));
    assert!(error.to_string().contains(&file.display().to_string()), "{error}");
}

#[test]
fn non_utf8_config_file_is_a_syntax_error() {
    let dir = TestDir::new("config-utf8");
    let file = dir.path().join("bad.toml");
    fs::write(&file, b"hostname = \"\xff\"").unwrap();
    assert!(matches!(Config::load(&file).unwrap_err().without_file(), ConfigError::Syntax { .. }));
}

#[test]
fn check_files_names_key_and_file() {
    let dir = TestDir::new("config-files");
    let text = "deployment = \"deployment.json\"\n[hub]\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"";
    let config = Config::from_toml_str(text, dir.path()).unwrap();
    let error = config.check_files().unwrap_err();
    assert!(matches!(&error, ConfigError::MissingFile { key: "deployment", .. }), "{error}");
    assert!(error.to_string().contains(&dir.path().join("deployment.json").display().to_string()));

    fs::write(dir.path().join("deployment.json"), "{}").unwrap();
    fs::write(dir.path().join("c.pem"), "").unwrap();
    assert!(matches!(config.check_files(), Err(ConfigError::MissingFile { key: "hub.tls_key", .. })));
    fs::create_dir(dir.path().join("k.pem")).unwrap();
    assert!(matches!(config.check_files(), Err(ConfigError::NotAFile { key: "hub.tls_key", .. })));
    fs::remove_dir(dir.path().join("k.pem")).unwrap();
    fs::write(dir.path().join("k.pem"), "").unwrap();
    assert!(config.check_files().is_ok());
    assert!(Config::default().check_files().is_ok());
}

#[test]
fn every_error_displays_on_one_line() {
    let texts = [
        "[hub\n",
        "nope = 1",
        "hostname = 1",
        "hostname = \"a\\nb\"",
        "log_level = \"x\\ny\"",
        "device_id = \"a\\nb\"",
        "[hub]\nmqtt = \"\\n\"",
        "device_key = \"\\n\"",
        "\"new\\nline\" = 1",
        "[hub]\nmax_inflight = 0",
        "[hub]\ntls_key = \"k\"",
    ];
    for text in texts {
        let message = parse_error(text).to_string();
        assert!(!message.contains('\n'), "{message:?}");
        assert!(message.starts_with("config: "), "{message:?}");
    }
}

#[test]
fn debug_output_redacts_keys() {
    let text = format!("device_key = \"{KEY_B64}\"\n[[devices]]\nid = \"a\"\nkey = \"{KEY_B64}\"");
    let debug = format!("{:?}", parse(&text).unwrap());
    assert!(!debug.contains("97, 98, 99"), "{debug}");
    assert!(debug.contains("<redacted>"));
}

#[test]
fn store_and_upstream_tables_parse_with_defaults() {
    let config = Config::from_toml_str(
        "[store]\nmax_bytes = 2097152\nfsync = \"always\"\nwhen_full = \"reject_new\"\n[upstream]\nurl = \"mqtts://hub.example.net:8883\"\nca = \"ca.pem\"\n",
        Path::new("/etc/tinyedge"),
    )
    .expect("valid");
    assert_eq!(config.store.max_bytes, Some(2_097_152));
    assert_eq!(config.store.fsync, FsyncSetting::Always);
    assert_eq!(config.store.when_full, WhenFull::RejectNew);
    let upstream = config.upstream.expect("upstream");
    assert_eq!(upstream.url, "mqtts://hub.example.net:8883");
    assert_eq!(upstream.ca, Some(PathBuf::from("/etc/tinyedge/ca.pem")));
    assert_eq!(upstream.api_url, "https://hub.example.net");
    assert_eq!(upstream.scope_refresh_secs, DEFAULT_SCOPE_REFRESH_SECS);
    let scope = Config::from_toml_str(
        "[upstream]\nurl = \"mqtts://[::1]:8883\"\napi_url = \"https://localhost:8443/\"\nscope_refresh_secs = 2\n",
        Path::new("."),
    )
    .expect("valid")
    .upstream
    .expect("upstream");
    assert_eq!((scope.api_url.as_str(), scope.scope_refresh_secs), ("https://localhost:8443", 2));
    let v6 = Config::from_toml_str("[upstream]\nurl = \"mqtts://[::1]:8883\"\n", Path::new(".")).expect("valid");
    assert_eq!(v6.upstream.expect("upstream").api_url, "https://[::1]");
    let defaults = Config::from_toml_str("", Path::new(".")).expect("valid");
    assert_eq!(defaults.store, StoreSettings::default());
    assert_eq!(defaults.store.fsync, FsyncSetting::Background(DEFAULT_FSYNC_INTERVAL_MS));
    assert!(defaults.upstream.is_none());
    let interval = Config::from_toml_str("[store]\nfsync_interval_ms = 50\n", Path::new(".")).expect("valid");
    assert_eq!(interval.store.fsync, FsyncSetting::Background(50));
    let old_name = Config::from_toml_str("[store]\nfsync = \"interval_ms\"\n", Path::new(".")).expect("valid");
    assert_eq!(old_name.store.fsync, FsyncSetting::Background(DEFAULT_FSYNC_INTERVAL_MS));
}

#[test]
fn bad_store_and_upstream_values_name_the_key() {
    for (text, key) in [
        ("[store]\nfsync = \"sometimes\"\n", "store.fsync"),
        ("[store]\nwhen_full = \"explode\"\n", "store.when_full"),
        ("[store]\nmax_bytes = 10\n", "store.max_bytes"),
        ("[store]\nsize = 10\n", "store.size"),
        ("[upstream]\nurl = \"http://hub:80\"\n", "upstream.url"),
        ("[upstream]\nurl = \"mqtts://hub:99999\"\n", "upstream.url"),
        ("[upstream]\nca = \"x.pem\"\n", "upstream.url"),
        ("[upstream]\nurl = \"mqtt://hub\"\nprotocol = \"amqp\"\n", "upstream.protocol"),
        ("[upstream]\nurl = \"mqtt://hub\"\napi_url = \"http://hub\"\n", "upstream.api_url"),
        ("[upstream]\nurl = \"mqtt://hub\"\napi_url = \"https://hub/path\"\n", "upstream.api_url"),
        ("[upstream]\nurl = \"mqtt://hub\"\nscope_refresh_secs = 0\n", "upstream.scope_refresh_secs"),
    ] {
        let error = Config::from_toml_str(text, Path::new(".")).expect_err(text).to_string();
        assert!(error.contains(key), "{text:?}: {error}");
        assert_eq!(error.lines().count(), 1, "{error}");
    }
}

#[test]
fn agent_section() {
    let config = Config::from_toml_str(
        "[agent]\nenabled = false\ncontainerd = \"/tmp/c.sock\"\nnamespace = \"t-1\"\ncool_off_ms = 200\ninsecure_registries = [\"r:5000\"]",
        Path::new("/etc"),
    )
    .unwrap();
    assert!(!config.agent.enabled);
    assert_eq!(config.agent.containerd, PathBuf::from("/tmp/c.sock"));
    assert_eq!((config.agent.namespace.as_str(), config.agent.cool_off_ms), ("t-1", 200));
    assert_eq!(config.agent.insecure_registries, vec!["r:5000".to_owned()]);
    let defaults = Config::default().agent;
    assert!(defaults.enabled);
    assert_eq!(defaults.containerd, PathBuf::from("/run/containerd/containerd.sock"));
    for (text, key) in [
        ("[agent]\nenabled = 1", "agent.enabled"),
        ("[agent]\nnamespace = \"a b\"", "agent.namespace"),
        ("[agent]\ncool_off_ms = 0", "agent.cool_off_ms"),
        ("[agent]\nbogus = 1", "agent.bogus"),
        ("[agent]\ninsecure_registries = [1]", "agent.insecure_registries[0]"),
    ] {
        let error = Config::from_toml_str(text, Path::new("/etc")).unwrap_err();
        assert!(error.to_string().contains(key), "{text}: {error}");
    }
}

#[test]
fn metrics_section() {
    use std::net::SocketAddr;
    assert_eq!(Config::default().metrics.listen, Some("127.0.0.1:9600".parse::<SocketAddr>().unwrap()));
    let config = Config::from_toml_str("[metrics]\nlisten = \"0.0.0.0:9601\"", Path::new("/etc")).unwrap();
    assert_eq!(config.metrics.listen, Some("0.0.0.0:9601".parse().unwrap()));
    let off = Config::from_toml_str("[metrics]\nlisten = \"\"", Path::new("/etc")).unwrap();
    assert_eq!(off.metrics.listen, None);
    for (text, key) in [
        ("[metrics]\nlisten = \"9600\"", "metrics.listen"),
        ("[metrics]\nlisten = 9600", "metrics.listen"),
        ("[metrics]\nport = 1", "metrics.port"),
        ("[hub]\nmqtt = \"127.0.0.1:9600\"", "metrics.listen"),
    ] {
        let error = Config::from_toml_str(text, Path::new("/etc")).unwrap_err();
        assert!(error.to_string().contains(key), "{text}: {error}");
    }
}
