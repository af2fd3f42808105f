//! `tinyedge`: the command line. It parses arguments, loads the config and the deployment,
//! and wires the crates together; everything else lives in `hub/`, `agent/` and `platform/`.

#[cfg(feature = "agent")]
mod agent;
mod bundle;
mod check;
mod cloud;
mod cloud_deploy;
mod deploy;
mod failure;
mod metrics;
mod mgmt;
mod pages;
mod plan;
mod runtime;
mod scope;
mod status;
mod telemetry;

use std::path::PathBuf;
use std::process::ExitCode;

use failure::Failure;
use tinyedge_platform::Config;

const USAGE: &str = "\
usage: tinyedge [--config FILE] <command>

commands:
  run                                  start the runtime (hub; agent when enabled)
  identity connection-string <ID>      print the connection string of a module of the
                                       deployment or of a configured downstream device
  identity mqtt-login <ID> [TTL_SECS]  print MQTT client id, username and a SAS token
                                       (default 3600 s) for tools like mosquitto_pub
  deploy <FILE>                        apply a deployment manifest to the running runtime:
                                       hub (routes, identities, twins) and agent (modules);
                                       answers IoT Edge's 200/400/412/417/500
  list [--json]                        modules and their status, like `iotedge list`;
                                       --json prints the agent's reported properties
  logs <MODULE> [--tail N] [-f]        a module's stdout/stderr
  twin show <MODULE|DEVICE> [--json]   the twin document (desired, reported, versions) of
                                       a module or a configured device; --json: one line
  invoke <MODULE|DEVICE> <METHOD>      call a direct method on a connected module or leaf
      [--payload JSON] [--timeout S]   device: prints {\"status\":…,\"payload\":…}; payload
                                       default null, timeout 5-300 s (default 30); fails
                                       with the message when not connected (404), not
                                       answered in time (504) or invalid (400)
  status                               counters, store and upstream state of the running runtime
  store stats                          the store part of `status`
  check [--json]                       check the setup like `iotedge check`: config, keys and
                                       certificates, hostname, ports, disk, store, containerd,
                                       cgroups, clock, upstream; one pass/warn/fail line each;
                                       exit code 1 when a check fails
  support-bundle [--output FILE]       a tar.gz for support: the config (secrets redacted),
                                       logs, twins, store stats, `check --json`, versions
                                       (default FILE: tinyedge-support-bundle-<UTC time>.tar.gz)
  version                              print the version

options:
  -c, --config FILE   TOML config (default: $TINYEDGE_CONFIG, else embedded defaults)
  -h, --help          this text
  -V, --version       print the version";

/// Exit code for a usage or configuration error (as the issue and sysexits-ish tools do).
const EXIT_CONFIG: u8 = 2;
/// `invoke --timeout` when not given: edgeHub's default response timeout.
const INVOKE_TIMEOUT_DEFAULT_SECS: u64 = tinyedge_hub::methods::http::RESPONSE_TIMEOUT_DEFAULT.as_secs();

struct Cli {
    config: Option<PathBuf>,
    command: Vec<String>,
}

fn parse_args(args: impl Iterator<Item = String>) -> Result<Cli, String> {
    let mut config = None;
    let mut command = Vec::new();
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-c" | "--config" => config = Some(PathBuf::from(args.next().ok_or("--config needs a FILE")?)),
            "-h" | "--help" => command = vec!["help".to_string()],
            "-V" | "--version" => command = vec!["version".to_string()],
            other if other.starts_with("--config=") => config = Some(PathBuf::from(&other["--config=".len()..])),
            other if other.starts_with('-') && command.is_empty() => return Err(format!("unknown option {other:?}")),
            _ => command.push(arg),
        }
    }
    if config.is_none() {
        config = std::env::var_os("TINYEDGE_CONFIG").filter(|v| !v.is_empty()).map(PathBuf::from);
    }
    Ok(Cli { config, command })
}

fn load_config(path: Option<&PathBuf>) -> Result<Config, String> {
    let config = match path {
        Some(path) => Config::load(path).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    config.check_files().map_err(|e| e.to_string())?;
    tinyedge_hub::broker::Limits::check(&config.hub)?;
    Ok(config)
}

/// Prints a command's output; a closed pipe (`tinyedge status | head`) is not an error.
fn out(text: &str) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{text}");
}

/// `logs MODULE [--tail N] [-f|--follow]`.
#[cfg(feature = "agent")]
fn logs_command(config: &Config, module: &str, rest: &[&str]) -> Result<(), Failure> {
    let mut tail = None;
    let mut follow = false;
    let mut words = rest.iter();
    while let Some(word) = words.next() {
        match *word {
            "-f" | "--follow" => follow = true,
            "--tail" | "-n" => {
                let n = words.next().ok_or_else(|| Failure::Usage("--tail needs a number".into()))?;
                tail = Some(n.parse().map_err(|_| Failure::Usage(format!("--tail needs a number, got {n:?}")))?);
            }
            other => return Err(Failure::Usage(format!("logs: unknown option {other:?}"))),
        }
    }
    agent::logs(config, module, tail, follow)
}

/// `invoke TARGET METHOD [--payload JSON] [--timeout S]`.
fn invoke_command(config: &Config, target: &str, method: &str, rest: &[&str]) -> Result<(), Failure> {
    let mut call =
        mgmt::Invocation { target, method, payload: "null", response_timeout_secs: INVOKE_TIMEOUT_DEFAULT_SECS };
    let mut words = rest.iter();
    while let Some(word) = words.next() {
        match *word {
            "--payload" => {
                call.payload = words.next().ok_or_else(|| Failure::Usage("--payload needs JSON".into()))?;
            }
            "--timeout" => {
                let s = words.next().ok_or_else(|| Failure::Usage("--timeout needs seconds".into()))?;
                call.response_timeout_secs =
                    s.parse().map_err(|_| Failure::Usage(format!("--timeout needs seconds, got {s:?}")))?;
            }
            other => return Err(Failure::Usage(format!("invoke: unknown option {other:?}"))),
        }
    }
    mgmt::invoke(config, &call).map(|s| out(&s))
}

fn main() -> ExitCode {
    let cli = match parse_args(std::env::args().skip(1)) {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("tinyedge: {e}\n{USAGE}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let words: Vec<&str> = cli.command.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["help"] => {
            out(USAGE);
            return ExitCode::SUCCESS;
        }
        ["version"] => {
            out(&format!("tinyedge {}", env!("CARGO_PKG_VERSION")));
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    let config = match load_config(cli.config.as_ref()) {
        Ok(config) => config,
        Err(e) if words.first() == Some(&"check") => {
            // A config that does not load is the first failed check.
            out(&check::config_failure(&e, words.contains(&"--json")));
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("tinyedge: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let result = match words.as_slice() {
        ["run"] => runtime::run(config),
        ["identity", "connection-string", id] => runtime::connection_string(&config, id).map(|s| out(&s)),
        ["status"] => status::render(&config.data_dir, None).map(|s| out(&s)).map_err(Failure::Runtime),
        ["store", "stats"] => {
            status::render(&config.data_dir, Some("store")).map(|s| out(&s)).map_err(Failure::Runtime)
        }
        ["identity", "mqtt-login", id] => runtime::mqtt_login(&config, id, 3600).map(|s| out(&s)),
        ["identity", "mqtt-login", id, ttl] => match ttl.parse() {
            Ok(ttl) => runtime::mqtt_login(&config, id, ttl).map(|s| out(&s)),
            Err(_) => Err(Failure::Usage(format!("TTL_SECS must be a number of seconds, got {ttl:?}"))),
        },
        ["check"] => check::command(&config, cli.config.as_deref(), false),
        ["check", "--json"] => check::command(&config, cli.config.as_deref(), true),
        ["support-bundle"] => bundle::command(&config, cli.config.as_deref(), None),
        ["support-bundle", "--output" | "-o", file] => bundle::command(&config, cli.config.as_deref(), Some(file)),
        ["deploy", file] => mgmt::deploy(&config, file).map(|s| out(&s)),
        ["twin", "show", id] => mgmt::twin_show(&config, id, false).map(|s| out(&s)),
        ["twin", "show", id, "--json"] => mgmt::twin_show(&config, id, true).map(|s| out(&s)),
        ["invoke", target, method, rest @ ..] => invoke_command(&config, target, method, rest),
        #[cfg(feature = "agent")]
        ["list"] => agent::list(&config, false).map(|s| out(&s)),
        #[cfg(feature = "agent")]
        ["list", "--json"] => agent::list(&config, true).map(|s| out(&s)),
        #[cfg(feature = "agent")]
        ["logs", module, rest @ ..] => logs_command(&config, module, rest),
        #[cfg(not(feature = "agent"))]
        ["list" | "logs", ..] => {
            Err(Failure::Usage("this tinyedge was built without the agent (cargo feature `agent`)".into()))
        }
        [] => Err(Failure::Usage("no command given".into())),
        _ => Err(Failure::Usage(format!("unknown command {:?}", cli.command.join(" ")))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(e)) => {
            eprintln!("tinyedge: {e}\n{USAGE}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(Failure::Config(e)) => {
            eprintln!("tinyedge: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("tinyedge: {e}");
            ExitCode::FAILURE
        }
        Err(Failure::Rejected(code, e)) => {
            eprintln!("tinyedge: deployment rejected: {code} {e}");
            ExitCode::FAILURE
        }
    }
}
