//! Serving twins: the GET body, reported patches, desired properties from deployments and the
//! patches clients are owed.

use std::sync::Arc;

use serde_json::Value;

use super::{j, open, versions, TempDir, LEAF, MODULE};
use crate::twin::{merge_patch, TwinError};

#[test]
fn a_new_twin_is_served_empty_at_version_1() {
    let dir = TempDir::new("new");
    let (twins, _) = open(&dir, &[MODULE, LEAF]);
    assert_eq!(twins.get(MODULE).expect("module twin"), j(r#"{"desired":{"$version":1},"reported":{"$version":1}}"#));
    assert_eq!(twins.identities(), vec![MODULE.to_string(), LEAF.to_string()]);
    assert_eq!(twins.pending_desired(MODULE), None);
}

#[test]
fn an_identity_without_a_twin_is_not_found() {
    let dir = TempDir::new("not-found");
    let (twins, _) = open(&dir, &[MODULE]);
    for result in [twins.get("gw/other").map(drop), twins.patch_reported("gw/other", b"{}").map(drop)] {
        match result {
            Err(error @ TwinError::NotFound(_)) => assert_eq!(error.status(), 404),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(twins.pending_desired("gw/other"), None);
}

#[test]
fn reported_patches_merge_and_bump_the_version_only_when_they_change_something() {
    let dir = TempDir::new("reported");
    let (twins, _) = open(&dir, &[MODULE]);
    assert_eq!(twins.patch_reported(MODULE, br#"{"a":1,"b":{"c":true}}"#).expect("patch"), 2);
    assert_eq!(twins.patch_reported(MODULE, br#"{"b":{"c":null,"d":"x"},"a":null}"#).expect("patch"), 3);
    assert_eq!(twins.patch_reported(MODULE, br#"{"b":{"d":"x"}}"#).expect("same values"), 3);
    assert_eq!(twins.patch_reported(MODULE, b"{}").expect("empty"), 3);
    let body = twins.get(MODULE).expect("get");
    assert_eq!(body["reported"], j(r#"{"b":{"d":"x"},"$version":3}"#));
    assert_eq!(versions(&body), (1, 3));
}

#[test]
fn invalid_reported_patches_are_400_and_change_nothing() {
    let dir = TempDir::new("reported-invalid");
    let (twins, _) = open(&dir, &[MODULE]);
    let table: [(&[u8], &str); 4] = [
        (b"{\"a\":", "reported patch is not valid JSON: EOF while parsing a value at line 1 column 5"),
        (b"[]", "reported patch must be a JSON object, got an array"),
        (br#"{"$version":3}"#, "reported patch: \"$version\" is read-only (the hub sets it); remove it from the patch"),
        (br#"{"a b":3}"#, "reported patch: the property name \"a b\" in reported contains ' '"),
    ];
    for (patch, expected) in table {
        match twins.patch_reported(MODULE, patch) {
            Err(error @ TwinError::Invalid(_)) => {
                assert_eq!(error.status(), 400);
                assert!(error.to_string().starts_with(expected), "{error}");
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(versions(&twins.get(MODULE).expect("get")), (1, 1));
}

#[test]
fn set_desired_returns_the_diff_with_the_new_version() {
    let dir = TempDir::new("set-desired");
    let (twins, _) = open(&dir, &[MODULE]);
    let first = j(r#"{"interval":5,"limits":{"low":1,"high":9},"$version":77,"$metadata":{}}"#);
    assert_eq!(
        twins.set_desired(MODULE, &first).expect("first"),
        Some(j(r#"{"interval":5,"limits":{"low":1,"high":9},"$version":2}"#))
    );
    assert_eq!(twins.set_desired(MODULE, &first).expect("same again"), None);
    let second = j(r#"{"limits":{"low":1,"high":8},"mode":"fast"}"#);
    assert_eq!(
        twins.set_desired(MODULE, &second).expect("second"),
        Some(j(r#"{"interval":null,"limits":{"high":8},"mode":"fast","$version":3}"#))
    );
    assert_eq!(
        twins.get(MODULE).expect("get")["desired"],
        j(r#"{"limits":{"low":1,"high":8},"mode":"fast","$version":3}"#)
    );
}

#[test]
fn invalid_desired_properties_are_refused_and_change_nothing() {
    let dir = TempDir::new("desired-invalid");
    let (twins, _) = open(&dir, &[MODULE]);
    for (desired, expected) in [
        (j("[1]"), "desired properties of \"gw/filter\" must be a JSON object, got an array"),
        (
            j(r##"{"a":{"#b":1}}"##),
            "desired properties of \"gw/filter\": the property name \"#b\" in desired.a contains '#'",
        ),
    ] {
        match twins.set_desired(MODULE, &desired) {
            Err(TwinError::Invalid(reason)) => assert!(reason.starts_with(expected), "{reason}"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(versions(&twins.get(MODULE).expect("get")), (1, 1));
}

#[test]
fn a_client_that_never_received_desired_properties_gets_them_all() {
    let dir = TempDir::new("never-delivered");
    let (twins, _) = open(&dir, &[MODULE]);
    twins.set_desired(MODULE, &j(r#"{"a":1,"b":{"c":2}}"#)).expect("set");
    assert_eq!(twins.pending_desired(MODULE), Some(j(r#"{"a":1,"b":{"c":2},"$version":2}"#)));
    twins.mark_delivered(MODULE, 2).expect("mark");
    assert_eq!(twins.pending_desired(MODULE), None);
}

#[test]
fn a_client_that_missed_patches_gets_one_patch_with_the_full_diff() {
    let dir = TempDir::new("missed");
    let (twins, _) = open(&dir, &[MODULE]);
    let seen = j(r#"{"keep":1,"change":{"x":1,"y":2},"drop":true}"#);
    twins.set_desired(MODULE, &seen).expect("v2");
    twins.mark_delivered(MODULE, 2).expect("delivered v2");
    twins.set_desired(MODULE, &j(r#"{"keep":1,"change":{"x":1,"y":3},"drop":true,"added":[1]}"#)).expect("v3");
    twins.set_desired(MODULE, &j(r#"{"keep":1,"change":{"x":1,"y":3},"transient":1,"added":[1]}"#)).expect("v4");
    let last = j(r#"{"keep":1,"change":{"y":4},"added":[1]}"#);
    twins.set_desired(MODULE, &last).expect("v5");

    let pending = twins.pending_desired(MODULE).expect("a patch is owed");
    assert_eq!(pending, j(r#"{"change":{"x":null,"y":4},"drop":null,"added":[1],"$version":5}"#));
    let mut client = seen;
    merge_patch(&mut client, &pending);
    client.as_object_mut().expect("object").remove("$version");
    assert_eq!(client, last);

    twins.mark_delivered(MODULE, 5).expect("delivered v5");
    assert_eq!(twins.pending_desired(MODULE), None);
}

#[test]
fn a_get_marked_after_a_deployment_change_still_records_what_the_client_saw() {
    let dir = TempDir::new("late-mark");
    let (twins, _) = open(&dir, &[MODULE]);
    twins.set_desired(MODULE, &j(r#"{"a":1,"b":1}"#)).expect("v2");
    let body = twins.get(MODULE).expect("GET at v2");
    twins.set_desired(MODULE, &j(r#"{"a":2}"#)).expect("v3 while the GET answer is on its way");
    twins.mark_delivered(MODULE, versions(&body).0).expect("mark v2");
    assert_eq!(twins.pending_desired(MODULE), Some(j(r#"{"a":2,"b":null,"$version":3}"#)));
}

#[test]
fn an_older_delivery_does_not_undo_a_newer_one() {
    let dir = TempDir::new("older-mark");
    let (twins, _) = open(&dir, &[MODULE]);
    twins.set_desired(MODULE, &j(r#"{"a":1}"#)).expect("v2");
    twins.set_desired(MODULE, &j(r#"{"a":2}"#)).expect("v3");
    twins.mark_delivered(MODULE, 3).expect("mark v3");
    twins.mark_delivered(MODULE, 2).expect("mark v2, late");
    assert_eq!(twins.pending_desired(MODULE), None);
    match twins.mark_delivered(MODULE, 4) {
        Err(TwinError::Invalid(reason)) => {
            assert_eq!(reason, "desired version 4 of \"gw/filter\" was never sent: the current one is 3")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_desired_change_back_and_forth_still_moves_the_client_to_the_new_version() {
    let dir = TempDir::new("back-and-forth");
    let (twins, _) = open(&dir, &[MODULE]);
    twins.set_desired(MODULE, &j(r#"{"a":1}"#)).expect("v2");
    twins.mark_delivered(MODULE, 2).expect("mark v2");
    twins.set_desired(MODULE, &j(r#"{"a":2}"#)).expect("v3");
    twins.set_desired(MODULE, &j(r#"{"a":1}"#)).expect("v4");
    assert_eq!(twins.pending_desired(MODULE), Some(j(r#"{"$version":4}"#)));
}

#[test]
fn concurrent_patches_each_get_their_own_version() {
    let dir = TempDir::new("concurrent");
    let (twins, _) = open(&dir, &[MODULE]);
    let twins = Arc::new(twins);
    let threads: Vec<_> = (0..4)
        .map(|thread| {
            let twins = Arc::clone(&twins);
            std::thread::spawn(move || {
                (0..10)
                    .map(|round| {
                        let patch = format!(r#"{{"t{thread}":{round}}}"#);
                        twins.patch_reported(MODULE, patch.as_bytes()).expect("patch")
                    })
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut all: Vec<u64> = threads.into_iter().flat_map(|thread| thread.join().expect("thread")).collect();
    all.sort_unstable();
    assert_eq!(all, (2..42).collect::<Vec<u64>>());
    let reported = &twins.get(MODULE).expect("get")["reported"];
    assert_eq!(reported, &j(r#"{"t0":9,"t1":9,"t2":9,"t3":9,"$version":41}"#));
    assert!(matches!(reported["$version"], Value::Number(_)));
}
