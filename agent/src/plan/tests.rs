//! Tests of the planner: what each difference between desired and actual produces, in what
//! order, and that executing a plan leaves nothing more to do.

use super::state::config_hash;
use super::test_support::*;
use super::{next_wakeup, plan, Command, ModuleState};
use crate::manifest::{DesiredStatus, ImagePullPolicy, ModuleSpec, RestartPolicy};

#[test]
fn new_module_is_pulled_created_and_started() {
    let desired = [spec("sensor", 1)];
    let result = plan_now(&desired, &[]);
    assert_eq!(result.commands, [pull("sensor", "example.azurecr.io/sensor:1"), create("sensor"), start("sensor")]);
    assert_eq!(result.reasons, [("sensor".to_owned(), "new module".to_owned())]);
}

#[test]
fn new_module_desired_stopped_is_created_but_not_started() {
    let mut desired = [spec("sensor", 1)];
    desired[0].status = DesiredStatus::Stopped;
    let result = plan_now(&desired, &[]);
    assert_eq!(result.commands, [pull("sensor", "example.azurecr.io/sensor:1"), create("sensor")]);
}

#[test]
fn never_pull_policy_with_present_image_creates_without_pulling() {
    let mut desired = [spec("sensor", 1)];
    desired[0].image_pull_policy = ImagePullPolicy::Never;
    let result = plan_now(&desired, &[]);
    assert_eq!(result.commands, [create("sensor"), start("sensor")]);
}

#[test]
fn never_pull_policy_with_absent_image_creates_nothing_and_says_why() {
    let mut desired = [spec("sensor", 1)];
    desired[0].image_pull_policy = ImagePullPolicy::Never;
    let result = plan(&desired, &[], &never_present, &settings(), NOW);
    assert!(result.commands.is_empty());
    let (module, reason) = &result.reasons[0];
    assert_eq!(module, "sensor");
    assert!(reason.contains("imagePullPolicy is never"), "{reason}");
}

#[test]
fn never_pull_policy_with_absent_new_image_keeps_the_old_container() {
    let old = spec("sensor", 1);
    let mut new = old.clone();
    new.image = "example.azurecr.io/sensor:2".to_owned();
    new.image_pull_policy = ImagePullPolicy::Never;
    let result = plan(&[new], &[running(&old)], &never_present, &settings(), NOW);
    assert!(result.commands.is_empty());
    assert_eq!(result.reasons.len(), 1);
}

#[test]
fn changed_image_create_options_or_env_recreates_exactly_that_module() {
    let changes: [fn(&mut ModuleSpec); 4] = [
        |spec| spec.image = "example.azurecr.io/sensor:2".to_owned(),
        |spec| spec.create_options = r#"{"HostConfig":{"Privileged":true}}"#.to_owned(),
        |spec| spec.env.push(("EXTRA".to_owned(), "1".to_owned())),
        |spec| spec.digest = Some(format!("sha256:{}", "a".repeat(64))),
    ];
    for change in changes {
        let other = spec("other", 2);
        let old = spec("sensor", 1);
        let mut new = old.clone();
        change(&mut new);
        let result = plan_now(&[new.clone(), other.clone()], &[running(&old), running(&other)]);
        assert_eq!(
            result.commands,
            [pull("sensor", &new.image), stop("sensor"), remove("sensor"), create("sensor"), start("sensor"),]
        );
    }
}

#[test]
fn changed_status_policy_order_or_version_does_not_recreate() {
    let old = spec("sensor", 1);
    let mut new = old.clone();
    new.restart_policy = RestartPolicy::Always;
    new.startup_order = 7;
    new.version = "2.0".to_owned();
    new.image_pull_policy = ImagePullPolicy::Never;
    assert!(plan_now(&[new.clone()], &[running(&old)]).commands.is_empty());

    new.status = DesiredStatus::Stopped;
    let mut actual = vec![running(&old)];
    let result = plan_now(&[new.clone()], &actual);
    assert_eq!(result.commands, [stop("sensor")]);

    execute(&result, &[new.clone()], &mut actual, NOW);
    new.status = DesiredStatus::Running;
    let result = plan_now(&[new], &actual);
    assert_eq!(result.commands, [start("sensor")], "agent-stopped module is started again");
}

#[test]
fn removed_module_is_stopped_and_removed_first() {
    let kept = spec("kept", 1);
    let gone = spec("gone", 1);
    let mut stopped_gone = running(&spec("stale", 1));
    stopped_gone.running = false;
    let result = plan_now(&[kept.clone(), spec("new", 0)], &[running(&kept), running(&gone), stopped_gone]);
    assert_eq!(result.commands[..3], [stop("gone"), remove("gone"), remove("stale")]);
    assert_eq!(result.commands.len(), 6, "{:?}", result.commands);
}

#[test]
fn starts_follow_startup_order_and_stops_go_in_reverse() {
    let specs = [spec("hub", 0), spec("zeta", 1), spec("alpha", 1), spec("last", 9)];
    let result = plan_now(&specs, &[]);
    let starts: Vec<&str> = result
        .commands
        .iter()
        .filter(|command| matches!(command, Command::Start { .. }))
        .map(Command::module)
        .collect();
    assert_eq!(starts, ["hub", "alpha", "zeta", "last"]);

    let actual: Vec<ModuleState> = specs.iter().map(running).collect();
    let stopping: Vec<ModuleSpec> =
        specs.iter().map(|spec| ModuleSpec { status: DesiredStatus::Stopped, ..spec.clone() }).collect();
    let result = plan_now(&stopping, &actual);
    assert_eq!(result.commands, [stop("last"), stop("zeta"), stop("alpha"), stop("hub")]);
}

#[test]
fn crashed_module_waits_for_its_cool_off_then_restarts_once() {
    let desired = [spec("sensor", 1)];
    let mut crashed = running(&desired[0]);
    crashed.running = false;
    crashed.exit_code = Some(1);
    crashed.last_exit_unix_ms = Some(NOW - 50);
    crashed.restart_count = 1; // cool-off 200 ms, due at NOW + 150
    let actual = vec![crashed];

    let early = plan_now(&desired, &actual);
    assert!(early.commands.is_empty());
    assert!(early.reasons[0].1.contains("backoff"), "{:?}", early.reasons);
    assert_eq!(next_wakeup(&desired, &actual, &settings(), NOW), Some(NOW + 150));

    let due = plan(&desired, &actual, &always_present, &settings(), NOW + 150);
    assert_eq!(due.commands, [start("sensor")]);
    assert_eq!(due.restarted, ["sensor"]);
}

#[test]
fn clean_exit_under_on_failure_is_left_alone() {
    let desired = [spec("sensor", 1)];
    let mut done = running(&desired[0]);
    done.running = false;
    done.exit_code = Some(0);
    done.last_exit_unix_ms = Some(NOW - 50);
    let actual = [done];
    assert!(plan_now(&desired, &actual).commands.is_empty());
    assert_eq!(next_wakeup(&desired, &actual, &settings(), NOW), None);
}

#[test]
fn module_out_of_restarts_stays_down() {
    let desired = [spec("sensor", 1)];
    let mut crashed = running(&desired[0]);
    crashed.running = false;
    crashed.exit_code = Some(2);
    crashed.last_exit_unix_ms = Some(0);
    crashed.restart_count = settings().max_restart_count;
    let actual = [crashed];
    let result = plan_now(&desired, &actual);
    assert!(result.commands.is_empty());
    assert!(result.reasons[0].1.contains("failed"), "{:?}", result.reasons);
    assert_eq!(next_wakeup(&desired, &actual, &settings(), NOW), None);
}

#[test]
fn unhealthy_module_is_restarted_under_on_unhealthy() {
    let mut desired = [spec("sensor", 1)];
    desired[0].restart_policy = RestartPolicy::OnUnhealthy;
    let mut sick = running(&desired[0]);
    sick.healthy = Some(false);
    let result = plan_now(&desired, &[sick]);
    assert_eq!(result.commands, [stop("sensor"), start("sensor")]);
    assert_eq!(result.restarted, ["sensor"]);
}

#[test]
fn long_run_resets_restart_counts_and_next_wakeup_says_when() {
    let desired = [spec("sensor", 1)];
    let mut state = running(&desired[0]);
    state.restart_count = 2;
    state.last_start_unix_ms = Some(NOW - 1000);
    let mut actual = vec![state];
    assert_eq!(next_wakeup(&desired, &actual, &settings(), NOW), Some(NOW + 4000));
    assert!(plan_now(&desired, &actual).reset_counts.is_empty());

    let later = NOW + 4000;
    let result = plan(&desired, &actual, &always_present, &settings(), later);
    assert_eq!(result.reset_counts, ["sensor"]);
    assert!(result.commands.is_empty());
    execute(&result, &desired, &mut actual, later);
    assert_eq!(actual[0].restart_count, 0);
    assert_eq!(next_wakeup(&desired, &actual, &settings(), later), None);
}

#[test]
fn next_wakeup_is_the_earliest_backoff() {
    let desired = [spec("a", 1), spec("b", 1)];
    let crashed = |spec: &ModuleSpec, exit_ms: u64| ModuleState {
        running: false,
        exit_code: Some(1),
        last_exit_unix_ms: Some(exit_ms),
        ..running(spec)
    };
    let actual = [crashed(&desired[0], NOW - 10), crashed(&desired[1], NOW - 60)];
    assert_eq!(next_wakeup(&desired, &actual, &settings(), NOW), Some(NOW + 40));
    assert_eq!(next_wakeup(&desired, &[], &settings(), NOW), None);
}

#[test]
fn executing_a_plan_leaves_nothing_to_do() {
    let mut changed = spec("changed", 2);
    let mut stopping = spec("stopping", 3);
    let mut sick = spec("sick", 4);
    sick.restart_policy = RestartPolicy::Always;
    let crashed = spec("crashed", 5);
    let old_changed = changed.clone();
    changed.image = "example.azurecr.io/changed:2".to_owned();
    stopping.status = DesiredStatus::Stopped;
    let desired = vec![spec("new", 1), changed, stopping.clone(), sick.clone(), crashed.clone()];

    let mut sick_state = running(&sick);
    sick_state.healthy = Some(false);
    let mut crashed_state = running(&crashed);
    crashed_state.running = false;
    crashed_state.exit_code = Some(1);
    crashed_state.last_exit_unix_ms = Some(NOW - 5000);
    let mut actual =
        vec![running(&spec("gone", 1)), running(&old_changed), running(&stopping), sick_state, crashed_state];

    let first = plan_now(&desired, &actual);
    assert!(!first.commands.is_empty());
    execute(&first, &desired, &mut actual, NOW);
    let second = plan_now(&desired, &actual);
    assert_eq!(second.commands, [], "{:?}", second.reasons);
    assert!(second.restarted.is_empty() && second.reset_counts.is_empty());
    assert_eq!(actual.len(), desired.len());
}

#[test]
fn config_hash_is_stable_and_unambiguous() {
    let base = spec("sensor", 1);
    assert_eq!(config_hash(&base), config_hash(&base.clone()));
    assert_eq!(config_hash(&base).len(), 16);
    let mut split_a = base.clone();
    split_a.env = vec![("AB".to_owned(), "C".to_owned())];
    let mut split_b = base;
    split_b.env = vec![("A".to_owned(), "BC".to_owned())];
    assert_ne!(config_hash(&split_a), config_hash(&split_b));
}
