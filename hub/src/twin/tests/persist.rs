//! Twin files: restarts, damage, torn writes, retired identities and the bounds.

use std::fs;

use serde_json::{Map, Value};

use super::{j, open, versions, TempDir, LEAF, MODULE};
use crate::twin::file::file_stem;
use crate::twin::limits::{TWINS_MAX, TWIN_FILE_BYTES_MAX, VERSION_LEASE};
use crate::twin::{TwinError, Twins, VersionsLoad};

fn twin_file(dir: &TempDir, id: &str) -> std::path::PathBuf {
    dir.twins().join(format!("{}.twin", file_stem(id)))
}

fn ids(names: &[&str]) -> Vec<String> {
    names.iter().map(|name| name.to_string()).collect()
}

#[test]
fn a_restart_keeps_documents_versions_and_deliveries() {
    let dir = TempDir::new("restart");
    let before = {
        let (twins, _) = open(&dir, &[MODULE, LEAF]);
        twins.set_desired(MODULE, &j(r#"{"a":1,"b":{"c":"x"}}"#)).expect("v2");
        twins.mark_delivered(MODULE, 2).expect("delivered");
        twins.set_desired(MODULE, &j(r#"{"a":2}"#)).expect("v3, not delivered");
        twins.patch_reported(MODULE, br#"{"state":"running"}"#).expect("reported");
        twins.patch_reported(LEAF, br#"{"battery":55}"#).expect("leaf reported");
        (twins.get(MODULE).expect("get"), twins.get(LEAF).expect("get"))
    };
    let (twins, report) = open(&dir, &[MODULE, LEAF]);
    assert_eq!((report.loaded, report.damaged.len(), report.versions), (2, 0, VersionsLoad::Intact));
    assert_eq!((twins.get(MODULE).expect("get"), twins.get(LEAF).expect("get")), before);
    assert_eq!(versions(&before.0), (3, 2));
    assert_eq!(twins.pending_desired(MODULE), Some(j(r#"{"a":2,"b":null,"$version":3}"#)));
    assert_eq!(twins.set_desired(MODULE, &j(r#"{"a":2}"#)).expect("same deployment after restart"), None);
}

#[test]
fn a_twin_that_never_changed_has_no_file_and_the_same_versions_after_a_restart() {
    let dir = TempDir::new("unwritten");
    drop(open(&dir, &[MODULE]));
    assert!(!twin_file(&dir, MODULE).exists());
    let (twins, report) = open(&dir, &[MODULE]);
    assert_eq!((report.loaded, report.versions), (0, VersionsLoad::Created));
    assert_eq!(versions(&twins.get(MODULE).expect("get")), (1, 1));
}

#[test]
fn a_damaged_file_costs_only_its_twin_and_versions_keep_growing() {
    let dir = TempDir::new("damaged");
    {
        let (twins, _) = open(&dir, &[MODULE, LEAF]);
        twins.set_desired(MODULE, &j(r#"{"a":1}"#)).expect("module v2");
        twins.patch_reported(MODULE, br#"{"r":1}"#).expect("module reported v2");
        twins.patch_reported(LEAF, br#"{"battery":55}"#).expect("leaf");
    }
    let path = twin_file(&dir, MODULE);
    let mut bytes = fs::read(&path).expect("read");
    bytes[10] ^= 0x20;
    fs::write(&path, &bytes).expect("flip a bit");

    let (twins, report) = open(&dir, &[MODULE, LEAF]);
    assert_eq!((report.loaded, report.lost), (1, 1));
    assert_eq!(report.damaged.len(), 1);
    assert_eq!(report.damaged[0].reason, "checksum mismatch");
    assert!(report.to_string().contains("gw%2Ffilter.twin: checksum mismatch"), "{report}");
    assert!(dir.twins().join("gw%2Ffilter.twin.damaged").exists());
    assert_eq!(twins.get(LEAF).expect("leaf intact")["reported"]["battery"], 55);
    let body = twins.get(MODULE).expect("recreated");
    let (desired, reported) = versions(&body);
    assert!(desired > 2 && reported > 2, "versions went back: {body}");
    assert_eq!(body["desired"], j(&format!(r#"{{"$version":{desired}}}"#)));
    // The deployment restores the desired properties, above the old versions.
    assert_eq!(
        twins.set_desired(MODULE, &j(r#"{"a":1}"#)).expect("redeploy").map(|p| p["$version"].clone()),
        Some(Value::from(desired + 1))
    );
    drop(twins);

    let (twins, report) = open(&dir, &[MODULE, LEAF]);
    assert_eq!((report.loaded, report.lost, report.damaged.len()), (2, 0, 0));
    assert_eq!(versions(&twins.get(MODULE).expect("get")), (desired + 1, reported));
}

#[test]
fn a_twin_recreated_but_never_written_restarts_higher_again() {
    let dir = TempDir::new("lost-twice");
    {
        let (twins, _) = open(&dir, &[MODULE]);
        twins.patch_reported(MODULE, br#"{"r":1}"#).expect("write");
    }
    fs::write(twin_file(&dir, MODULE), b"garbage").expect("damage");
    let first = {
        let (twins, report) = open(&dir, &[MODULE]);
        assert_eq!(report.damaged[0].reason, "no final newline (a write cut short?)");
        versions(&twins.get(MODULE).expect("get"))
    };
    let (twins, report) = open(&dir, &[MODULE]);
    assert_eq!((report.damaged.len(), report.lost), (0, 1));
    let second = versions(&twins.get(MODULE).expect("get"));
    assert!(second.0 > first.0 && second.1 > first.1, "{first:?} then {second:?}");
}

#[test]
fn a_torn_temporary_file_is_removed_and_the_previous_twin_kept() {
    let dir = TempDir::new("torn-temp");
    {
        let (twins, _) = open(&dir, &[MODULE]);
        twins.patch_reported(MODULE, br#"{"r":1}"#).expect("write");
    }
    let temp = dir.twins().join("gw%2Ffilter.twin.tmp");
    fs::write(&temp, br#"{"format":1,"id":"gw/filter","desiredVers"#).expect("torn write");
    let (twins, report) = open(&dir, &[MODULE]);
    assert_eq!((report.temp_files_removed, report.loaded, report.damaged.len()), (1, 1, 0));
    assert!(!temp.exists());
    assert_eq!(twins.get(MODULE).expect("get")["reported"], j(r#"{"r":1,"$version":2}"#));
}

#[test]
fn a_truncated_twin_file_is_damaged() {
    let dir = TempDir::new("truncated");
    {
        let (twins, _) = open(&dir, &[MODULE]);
        twins.patch_reported(MODULE, br#"{"r":1}"#).expect("write");
    }
    let path = twin_file(&dir, MODULE);
    let bytes = fs::read(&path).expect("read");
    for cut in [bytes.len() - 1, bytes.len() - 5, bytes.len() / 2, 0] {
        fs::write(&path, &bytes[..cut]).expect("truncate");
        let (_, report) = open(&dir, &[MODULE]);
        assert_eq!(report.damaged.len(), 1, "cut at {cut}");
        fs::remove_file(dir.twins().join("gw%2Ffilter.twin.damaged")).expect("remove the damaged copy");
    }
}

#[test]
fn a_file_holding_another_identity_is_damaged() {
    let dir = TempDir::new("renamed");
    {
        let (twins, _) = open(&dir, &[MODULE]);
        twins.patch_reported(MODULE, br#"{"r":1}"#).expect("write");
    }
    fs::rename(twin_file(&dir, MODULE), twin_file(&dir, LEAF)).expect("rename");
    let (twins, report) = open(&dir, &[MODULE, LEAF]);
    assert_eq!(report.damaged[0].reason, "it holds the twin of \"gw/filter\", whose file has another name");
    assert_eq!(versions(&twins.get(MODULE).expect("get")), (1, 1));
}

#[test]
fn a_lost_versions_file_is_rebuilt_above_the_twins() {
    let dir = TempDir::new("versions-lost");
    {
        let (twins, _) = open(&dir, &[MODULE]);
        twins.patch_reported(MODULE, br#"{"r":1}"#).expect("write");
    }
    fs::remove_file(dir.twins().join("versions")).expect("remove");
    let (twins, report) = open(&dir, &[MODULE]);
    assert_eq!(report.versions, VersionsLoad::Rebuilt("the versions file is missing".to_string()));
    assert_eq!(twins.patch_reported(MODULE, br#"{"r":2}"#).expect("write"), 3);
    let text = fs::read_to_string(dir.twins().join("versions")).expect("rewritten");
    assert!(text.starts_with(&format!(r#"{{"ceiling":{},"format":1}}"#, 2 + VERSION_LEASE)), "{text}");
}

#[test]
fn file_names_encode_the_identity() {
    assert_eq!(file_stem("gw/$edgeHub"), "gw%2F$edgeHub");
    assert_eq!(file_stem("dev-1.a:b@c"), "dev-1.a:b@c");
    assert_eq!(file_stem("a%b#c d/é"), "a%25b%23c%20d%2F%C3%A9");
    let long = format!("{}/{}", "%".repeat(128), "m".repeat(128));
    let stem = file_stem(&long);
    assert!(stem.starts_with('~') && stem.len() == 17, "{stem}");
    let dir = TempDir::new("long-name");
    {
        let (twins, _) = open(&dir, &[&long]);
        twins.patch_reported(&long, br#"{"r":1}"#).expect("write");
    }
    let (twins, report) = open(&dir, &[&long]);
    assert_eq!(report.loaded, 1);
    assert_eq!(versions(&twins.get(&long).expect("get")), (1, 2));
}

#[test]
fn malformed_identities_are_refused() {
    let dir = TempDir::new("bad-ids");
    let (twins, _) = Twins::open(dir.twins()).expect("open");
    for (id, expected) in [
        ("", "identity \"\" has an empty device id"),
        ("gw/", "identity \"gw/\" has an empty module id"),
        ("a/b/c", "identity \"a/b/c\" has more than one '/'"),
        ("a\nb", "identity \"a\\nb\": the device id contains a control character"),
    ] {
        match twins.set_identities(&ids(&[MODULE, id])) {
            Err(TwinError::Invalid(reason)) => assert!(reason.starts_with(expected), "{reason}"),
            other => panic!("{id:?}: {other:?}"),
        }
    }
    let too_long = "d".repeat(129);
    assert!(matches!(twins.set_identities(&ids(&[&too_long])), Err(TwinError::Invalid(_))));
    assert!(twins.identities().is_empty(), "a refused listing changes nothing");
}

#[test]
fn unlisted_twins_are_kept_but_not_served() {
    let dir = TempDir::new("retired");
    let (twins, _) = open(&dir, &[MODULE, LEAF]);
    twins.patch_reported(LEAF, br#"{"battery":55}"#).expect("write");
    twins.set_identities(&ids(&[MODULE])).expect("leaf removed");
    assert!(matches!(twins.get(LEAF), Err(TwinError::NotFound(_))));
    assert!(twin_file(&dir, LEAF).exists());
    drop(twins);
    let (twins, _) = open(&dir, &[MODULE, LEAF]);
    assert_eq!(twins.get(LEAF).expect("served again")["reported"], j(r#"{"battery":55,"$version":2}"#));
}

#[test]
fn the_twin_count_is_bounded_and_retired_twins_make_room_oldest_first() {
    let dir = TempDir::new("bounded");
    let (twins, _) = open(&dir, &["old1", "old2"]);
    twins.patch_reported("old1", br#"{"r":1}"#).expect("write");
    twins.patch_reported("old2", br#"{"r":1}"#).expect("write");
    twins.set_identities(&ids(&["old2"])).expect("old1 retired first");
    twins.set_identities(&[]).expect("old2 retired next");

    let many: Vec<String> = (0..TWINS_MAX + 1).map(|index| format!("leaf{index}")).collect();
    match twins.set_identities(&many) {
        Err(error @ TwinError::TooMany { .. }) => {
            assert_eq!(
                error.to_string(),
                "1025 identities need twins, over the limit of 1024: deploy fewer modules or configure fewer devices"
            )
        }
        other => panic!("{other:?}"),
    }
    twins.set_identities(&many[..TWINS_MAX - 1]).expect("room for one retired twin");
    assert!(!twin_file(&dir, "old1").exists(), "the longest retired twin goes first");
    assert!(twin_file(&dir, "old2").exists());
    twins.set_identities(&ids(&["old1", "old2"])).expect("both back");
    assert_eq!(twins.get("old2").expect("kept")["reported"]["r"], 1);
    assert_eq!(twins.get("old1").expect("a new twin"), j(r#"{"desired":{"$version":1},"reported":{"$version":1}}"#));
}

#[test]
fn a_twin_file_at_every_limit_stays_within_its_bound() {
    let dir = TempDir::new("file-bound");
    let (twins, _) = open(&dir, &[MODULE]);
    let full = |fill: &str| {
        let members: Map<String, Value> =
            (0..8).map(|index| (format!("k{index}"), Value::from(fill.repeat(4070)))).collect();
        Value::Object(members)
    };
    twins.set_desired(MODULE, &full("a")).expect("desired v2");
    twins.mark_delivered(MODULE, 2).expect("delivered v2");
    twins.set_desired(MODULE, &full("b")).expect("desired v3, the delivered snapshot kept");
    twins.patch_reported(MODULE, full("c").to_string().as_bytes()).expect("reported");
    let bytes = fs::metadata(twin_file(&dir, MODULE)).expect("file").len();
    assert!(bytes > 3 * 32_000 && bytes <= TWIN_FILE_BYTES_MAX as u64, "{bytes} bytes");
    drop(twins);
    let (_, report) = open(&dir, &[MODULE]);
    assert_eq!((report.loaded, report.damaged.len()), (1, 0));
}
