use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Value, json};

use super::store::rfc3339;
use super::*;
use crate::identity::SpiffeId;
use crate::intent::TaskName;

const AGENT: &str = "spiffe://example.org/ns/agents/sa/triage";
const OTHER: &str = "spiffe://example.org/ns/agents/sa/other";

fn memory() -> KillSwitch {
    KillSwitch::open(None).unwrap()
}

fn task(t: &str) -> KillTarget {
    KillTarget::Task(TaskName::parse(t).unwrap())
}

fn spiffe(id: &str) -> KillTarget {
    KillTarget::SpiffeId(SpiffeId::parse(id).unwrap())
}

// --- check() ---

#[test]
fn accepts_callers_when_nothing_is_killed() {
    let switch = memory();
    assert!(switch.check(Some(AGENT), Some("t-1")).is_none());
    assert!(switch.check(None, None).is_none());
    assert_eq!(switch.active(), 0);
}

#[test]
fn rejects_killed_spiffe_id_and_only_it() {
    let switch = memory();
    let kill = switch.kill(spiffe(AGENT), None).unwrap().0;
    assert_eq!(switch.check(Some(AGENT), None), Some(kill.clone()));
    assert_eq!(switch.check(Some(AGENT), Some("t-1")), Some(kill));
    assert!(switch.check(Some(OTHER), None).is_none());
    assert!(switch.check(None, None).is_none());
    // A task that happens to equal the ID is not the ID.
    assert!(switch.check(None, Some(AGENT)).is_none());
    // Exact match: a prefix or a longer path is a different workload.
    assert!(
        switch
            .check(Some("spiffe://example.org/ns/agents/sa"), None)
            .is_none()
    );
    assert!(switch.check(Some(&format!("{AGENT}/x")), None).is_none());
}

#[test]
fn rejects_killed_task_from_any_caller() {
    let switch = memory();
    let kill = switch.kill(task("t-42"), None).unwrap().0;
    assert_eq!(switch.check(Some(AGENT), Some("t-42")), Some(kill.clone()));
    assert_eq!(switch.check(None, Some("t-42")), Some(kill));
    assert!(switch.check(Some(AGENT), Some("t-43")).is_none());
    assert!(switch.check(Some(AGENT), Some("t-4")).is_none());
    assert!(switch.check(Some(AGENT), None).is_none());
}

#[test]
fn rejects_everyone_including_unauthenticated_when_all_is_killed() {
    let switch = memory();
    let kill = switch
        .kill(KillTarget::All, Some("incident".into()))
        .unwrap()
        .0;
    assert_eq!(switch.check(Some(AGENT), Some("t-1")), Some(kill.clone()));
    assert_eq!(switch.check(None, None), Some(kill));
}

#[test]
fn rejects_with_broadest_kill_when_several_match() {
    let switch = memory();
    let by_task = switch.kill(task("t-1"), None).unwrap().0;
    let by_id = switch.kill(spiffe(AGENT), None).unwrap().0;
    assert_eq!(switch.check(Some(AGENT), Some("t-1")), Some(by_id));
    assert_eq!(switch.check(Some(OTHER), Some("t-1")), Some(by_task));
    let all = switch.kill(KillTarget::All, None).unwrap().0;
    assert_eq!(switch.check(Some(AGENT), Some("t-1")), Some(all));
}

#[test]
fn accepts_target_matches_in_step_with_check() {
    assert!(spiffe(AGENT).matches(Some(AGENT), None));
    assert!(!spiffe(AGENT).matches(None, Some(AGENT)));
    assert!(task("t").matches(None, Some("t")));
    assert!(!task("t").matches(Some("t"), None));
    assert!(KillTarget::All.matches(None, None));
}

// --- kill() ---

#[test]
fn accepts_same_target_twice_as_one_kill() {
    let switch = memory();
    let (first, created) = switch.kill(task("t-1"), Some("first".into())).unwrap();
    assert!(created);
    let (second, created) = switch.kill(task("t-1"), Some("second".into())).unwrap();
    assert!(!created, "the kill already in force is returned");
    assert!(Arc::ptr_eq(&first, &second));
    assert_eq!(second.reason.as_deref(), Some("first"));
    assert_eq!(switch.active(), 1);
}

#[test]
fn accepts_kill_with_uuid_v7_id_and_millisecond_time() {
    let switch = memory();
    let kill = switch.kill(task("t-1"), None).unwrap().0;
    let id = uuid::Uuid::parse_str(&kill.id).unwrap();
    assert_eq!(id.get_version_num(), 7);
    let since = kill.created.duration_since(UNIX_EPOCH).unwrap();
    assert_eq!(since.subsec_nanos() % 1_000_000, 0);
}

#[test]
fn rejects_invalid_targets_and_reasons() {
    let fields = |id: Option<&str>, task: Option<&str>| {
        KillTarget::from_fields(id.map(str::to_owned), task.map(str::to_owned), None)
    };
    assert_eq!(
        fields(Some("https://example.org/agent"), None),
        Err(KillError::InvalidSpiffeId(SpiffeIdError::WrongScheme))
    );
    let long = format!("spiffe://example.org/{}", "a".repeat(2048));
    assert_eq!(
        fields(Some(&long), None),
        Err(KillError::InvalidSpiffeId(SpiffeIdError::TooLong))
    );
    for bad in ["", "t 1", "t%2F", &"a".repeat(129)] {
        assert_eq!(
            fields(None, Some(bad)),
            Err(KillError::InvalidTask),
            "{bad:?}"
        );
    }
    let switch = memory();
    assert_eq!(
        switch.kill(task("t-1"), Some("line\nbreak".into())),
        Err(KillError::InvalidReason)
    );
    assert_eq!(
        switch.kill(task("t-1"), Some("x".repeat(1025))),
        Err(KillError::InvalidReason)
    );
    assert_eq!(switch.active(), 0);
}

#[test]
fn accepts_task_with_full_charset_and_max_length() {
    let switch = memory();
    assert!(switch.kill(task("Az09._:/-"), None).is_ok());
    assert!(switch.kill(task(&"a".repeat(128)), None).is_ok());
}

// --- lift() ---

#[test]
fn accepts_lift_by_id() {
    let switch = memory();
    let kill = switch.kill(task("t-1"), None).unwrap().0;
    let keep = switch.kill(task("t-2"), None).unwrap().0;
    let lifted = switch.lift(LiftBy::Id(kill.id.clone()), None).unwrap();
    assert_eq!(lifted, vec![kill]);
    assert!(switch.check(None, Some("t-1")).is_none());
    assert_eq!(switch.check(None, Some("t-2")), Some(keep));
}

#[test]
fn accepts_lift_by_id_in_any_uuid_spelling() {
    let switch = memory();
    let kill = switch.kill(task("t-1"), None).unwrap().0;
    let upper = kill.id.to_uppercase();
    assert_eq!(switch.lift(LiftBy::Id(upper), None).unwrap(), vec![kill]);
}

#[test]
fn accepts_lift_by_target() {
    let switch = memory();
    let kill = switch.kill(spiffe(AGENT), None).unwrap().0;
    assert_eq!(
        switch.lift(LiftBy::Target(spiffe(AGENT)), None).unwrap(),
        vec![kill]
    );
    assert!(switch.check(Some(AGENT), None).is_none());
}

#[test]
fn accepts_lift_of_all_leaving_narrower_kills() {
    let switch = memory();
    let all = switch.kill(KillTarget::All, None).unwrap().0;
    let by_task = switch.kill(task("t-1"), None).unwrap().0;
    assert_eq!(
        switch.lift(LiftBy::Target(KillTarget::All), None).unwrap(),
        vec![all]
    );
    assert!(switch.check(Some(AGENT), None).is_none());
    assert_eq!(switch.check(Some(AGENT), Some("t-1")), Some(by_task));
}

#[test]
fn accepts_lift_that_matches_nothing_as_empty() {
    let switch = memory();
    switch.kill(task("t-1"), None).unwrap();
    let changes = switch.subscribe();
    assert!(
        switch
            .lift(LiftBy::Id("nope".into()), None)
            .unwrap()
            .is_empty()
    );
    assert!(
        switch
            .lift(LiftBy::Target(task("t-2")), None)
            .unwrap()
            .is_empty()
    );
    assert!(!changes.has_changed().unwrap());
    assert_eq!(*changes.borrow(), 1);
    assert_eq!(switch.active(), 1);
}

#[test]
fn accepts_list_newest_first() {
    let switch = memory();
    let a = switch.kill(task("a"), None).unwrap().0;
    let b = switch.kill(task("b"), None).unwrap().0;
    let c = switch.kill(task("c"), None).unwrap().0;
    assert_eq!(switch.list(), vec![c, b, a]);
}

// --- subscribe() ---

#[test]
fn accepts_subscriber_seeing_each_kill_and_lift() {
    let switch = memory();
    let mut changes = switch.subscribe();
    assert!(!changes.has_changed().unwrap());
    let kill = switch.kill(task("t-1"), None).unwrap().0;
    assert!(changes.has_changed().unwrap());
    assert_eq!(*changes.borrow_and_update(), 1);
    // The tunnel re-checks after the bump and sees the kill.
    assert!(switch.check(None, Some("t-1")).is_some());
    // Idempotent kill: nothing changed, no bump.
    switch.kill(task("t-1"), None).unwrap();
    assert!(!changes.has_changed().unwrap());
    switch.lift(LiftBy::Id(kill.id.clone()), None).unwrap();
    assert!(changes.has_changed().unwrap());
    assert_eq!(*changes.borrow_and_update(), 2);
}

#[tokio::test]
async fn accepts_tunnel_waking_on_kill() {
    let switch = Arc::new(memory());
    let mut changes = switch.subscribe();
    let waiter = {
        let switch = switch.clone();
        tokio::spawn(async move {
            loop {
                changes.changed().await.unwrap();
                if let Some(kill) = switch.check(Some(AGENT), None) {
                    return kill;
                }
            }
        })
    };
    switch.kill(task("unrelated"), None).unwrap();
    let kill = switch.kill(spiffe(AGENT), None).unwrap().0;
    let seen = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen, kill);
}

// --- persistence ---

#[test]
fn accepts_kills_surviving_a_restart_and_lifts_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kills.json");
    let (by_id, by_task, all) = {
        let switch = KillSwitch::open(Some(path.clone())).unwrap();
        (
            switch
                .kill(spiffe(AGENT), Some("leaked token".into()))
                .unwrap()
                .0,
            switch.kill(task("t-9"), None).unwrap().0,
            switch.kill(KillTarget::All, None).unwrap().0,
        )
    };
    let reopened = KillSwitch::open(Some(path.clone())).unwrap();
    assert_eq!(
        reopened.list(),
        vec![all.clone(), by_task.clone(), by_id.clone()]
    );
    assert_eq!(reopened.check(None, None), Some(all.clone()));
    reopened
        .lift(LiftBy::Target(KillTarget::All), None)
        .unwrap();
    reopened.lift(LiftBy::Id(by_task.id.clone()), None).unwrap();
    drop(reopened);

    let again = KillSwitch::open(Some(path.clone())).unwrap();
    assert_eq!(again.list(), vec![by_id.clone()]);
    assert_eq!(again.check(Some(AGENT), None), Some(by_id));
    assert!(again.check(None, Some("t-9")).is_none());
    assert!(again.check(None, None).is_none());
}

#[test]
fn accepts_missing_file_as_no_kills_and_writes_it_private() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kills.json");
    let switch = KillSwitch::open(Some(path.clone())).unwrap();
    assert_eq!(switch.active(), 0);
    assert!(!path.exists(), "open() must not create the file");
    let kill = switch.kill(task("t-1"), None).unwrap().0;
    let text = std::fs::read_to_string(&path).unwrap();
    let file: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        file,
        json!({"version": 1, "kills": [{
            "id": kill.id, "target": {"task": "t-1"},
            "created": rfc3339(kill.created), "reason": null,
        }]})
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // No temp or probe files left behind: the file and its lock file only.
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            std::ffi::OsString::from("kills.json"),
            std::ffi::OsString::from("kills.json.lock")
        ]
    );
}

#[test]
fn rejects_a_second_owner_of_the_file_until_the_first_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kills.json");
    let first = KillSwitch::open(Some(path.clone())).unwrap();
    first.kill(task("t-1"), None).unwrap();
    let err = KillSwitch::open(Some(path.clone())).unwrap_err();
    assert_eq!(
        err,
        KillError::InUse {
            path: path.clone(),
            lock: dir.path().join("kills.json.lock"),
        }
    );
    assert!(
        err.to_string()
            .contains("in use by another running tollgate"),
        "{err}"
    );
    assert!(!err.is_request_error());
    // Another file in the same folder has its own lock.
    KillSwitch::open(Some(dir.path().join("other.json"))).unwrap();
    // The first owner's kills are intact, and once it is gone the file can be owned again.
    drop(first);
    let second = KillSwitch::open(Some(path)).unwrap();
    assert!(second.check(None, Some("t-1")).is_some());
}

#[test]
fn accepts_hand_written_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kills.json");
    std::fs::write(
        &path,
        r#"{"version": 1, "kills": [
            {"id": "{0190C2A4-7B9E-7000-8000-000000000001}", "target": {"task": "t-1"},
             "created": "2026-11-22T10:00:00Z"}
        ]}"#,
    )
    .unwrap();
    let switch = KillSwitch::open(Some(path)).unwrap();
    let kill = switch.check(None, Some("t-1")).unwrap();
    assert_eq!(kill.id, "0190c2a4-7b9e-7000-8000-000000000001");
    assert_eq!(kill.reason, None);
    assert_eq!(rfc3339(kill.created), "2026-11-22T10:00:00.000Z");
}

fn open_error(contents: &str) -> (PathBuf, KillError) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kills.json");
    std::fs::write(&path, contents).unwrap();
    let err = KillSwitch::open(Some(path.clone())).unwrap_err();
    (path, err)
}

fn corrupt_message(contents: &str) -> String {
    let (path, err) = open_error(contents);
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "error must name the file: {err}"
    );
    match err {
        KillError::Corrupt { message, .. } => message,
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn rejects_corrupt_file_naming_it() {
    assert!(corrupt_message(r#"{"version": 1, "kills": ["#).contains("EOF"));
    assert_eq!(corrupt_message(""), "the file is empty");
    assert_eq!(corrupt_message("{}"), "missing field `version`");
    assert!(corrupt_message(r#"{"version": 2, "kills": []}"#).contains("version 2"));
    assert!(
        corrupt_message(r#"{"version": 1, "kills": [], "extra": 1}"#)
            .contains("unknown field `extra`")
    );
}

#[test]
fn rejects_file_with_invalid_kill() {
    let kill = |id: &str, target: &str, created: &str| {
        format!(r#"{{"id": "{id}", "target": {target}, "created": "{created}"}}"#)
    };
    let file = |kills: &[String]| format!(r#"{{"version": 1, "kills": [{}]}}"#, kills.join(","));
    let id1 = "0190c2a4-7b9e-7000-8000-000000000001";
    let id2 = "0190c2a4-7b9e-7000-8000-000000000002";
    let when = "2026-11-22T10:00:00Z";
    assert!(
        corrupt_message(&file(&[kill(id1, r#"{"task": "bad task"}"#, when)]))
            .contains("task must be")
    );
    assert!(
        corrupt_message(&file(&[kill(id1, r#"{"spiffe_id": "https://x"}"#, when)]))
            .contains("spiffe://")
    );
    assert!(
        corrupt_message(&file(&[kill(id1, r#"{"task": "a", "all": true}"#, when)]))
            .contains("exclusive")
    );
    assert!(
        corrupt_message(&file(&[kill(id1, r#"["spiffe://example.org/a"]"#, when)]))
            .contains("invalid type: sequence, expected a map")
    );
    assert!(
        corrupt_message(&file(&[kill("k-1", r#"{"all": true}"#, when)])).contains("not a UUID")
    );
    assert!(
        corrupt_message(&file(&[kill(id1, r#"{"all": true}"#, "yesterday")])).contains("RFC 3339")
    );
    assert!(
        corrupt_message(&file(&[
            kill(id1, r#"{"task": "a"}"#, when),
            kill(id2, r#"{"task": "a"}"#, when)
        ]))
        .contains("repeats")
    );
    assert!(
        corrupt_message(&file(&[
            kill(id1, r#"{"task": "a"}"#, when),
            kill(id1, r#"{"task": "b"}"#, when)
        ]))
        .contains("repeats")
    );
}

#[test]
fn rejects_unreadable_file_naming_it() {
    // A folder where the file should be: unreadable even for root.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kills.json");
    std::fs::create_dir(&path).unwrap();
    let err = KillSwitch::open(Some(path.clone())).unwrap_err();
    assert!(matches!(err, KillError::Read { .. }), "{err:?}");
    assert!(err.to_string().contains(&path.display().to_string()));
}

#[test]
fn rejects_file_in_missing_folder_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-folder").join("kills.json");
    let err = KillSwitch::open(Some(path.clone())).unwrap_err();
    assert!(matches!(err, KillError::Read { .. }), "{err:?}");
    assert!(err.to_string().contains("cannot create files in"), "{err}");
}

#[test]
fn rejects_kill_and_lift_when_file_cannot_be_written_leaving_state_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kills.json");
    let switch = KillSwitch::open(Some(path.clone())).unwrap();
    let kept = switch.kill(task("t-1"), None).unwrap().0;
    let changes = switch.subscribe();

    // A non-empty folder in the file's place makes the rename fail, even for root.
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    std::fs::write(path.join("occupied"), "").unwrap();

    let err = switch.kill(task("t-2"), None).unwrap_err();
    assert!(matches!(err, KillError::Persist { .. }), "{err:?}");
    assert!(err.to_string().starts_with("cannot persist the kill file"));
    assert!(switch.check(None, Some("t-2")).is_none());
    assert_eq!(switch.list(), vec![kept.clone()]);

    let err = switch.lift(LiftBy::Id(kept.id.clone()), None).unwrap_err();
    assert!(matches!(err, KillError::Persist { .. }), "{err:?}");
    assert_eq!(switch.check(None, Some("t-1")), Some(kept));
    assert!(!changes.has_changed().unwrap());

    // The failed writes cleaned up their temp files (the file's place and its lock file stay).
    let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(leftovers, 2);
    assert!(
        !err.is_request_error(),
        "tollgate's own file: a 500 for the admin API"
    );
}

#[test]
fn rejects_kill_when_folder_disappeared() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("state");
    std::fs::create_dir(&sub).unwrap();
    let switch = KillSwitch::open(Some(sub.join("kills.json"))).unwrap();
    std::fs::remove_dir_all(&sub).unwrap();
    assert!(matches!(
        switch.kill(KillTarget::All, None),
        Err(KillError::Persist { .. })
    ));
    assert_eq!(switch.active(), 0);
}

// --- concurrency ---

#[test]
fn accepts_concurrent_checks_during_kills_and_lifts() {
    let switch = memory();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let expected = std::thread::scope(|scope| {
        for reader in 0..8 {
            let (switch, stop) = (&switch, &stop);
            scope.spawn(move || {
                let caller = format!("spiffe://example.org/agent/{}", reader % 4);
                let task = format!("t-{}", reader % 4);
                let mut seen = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Some(kill) = switch.check(Some(&caller), Some(&task)) {
                        // Whatever snapshot we saw, the kill must really cover us.
                        assert!(kill.target.matches(Some(&caller), Some(&task)));
                        seen += 1;
                    }
                    for kill in switch.list() {
                        assert!(!kill.id.is_empty());
                    }
                }
                seen
            });
        }
        let mut expected = std::collections::HashSet::new();
        let (me, my_task) = ("spiffe://example.org/agent/0", "t-0");
        for round in 0..200 {
            let target = match round % 3 {
                0 => spiffe(&format!("spiffe://example.org/agent/{}", round % 4)),
                1 => task(&format!("t-{}", round % 4)),
                _ => KillTarget::All,
            };
            let kill = switch.kill(target.clone(), None).unwrap().0;
            expected.insert(target.clone());
            // Effective from the very next check, and only for what it covers.
            let covered = expected.iter().any(|t| t.matches(Some(me), Some(my_task)));
            assert_eq!(switch.check(Some(me), Some(my_task)).is_some(), covered);
            if round % 2 == 0 {
                assert_eq!(
                    switch.lift(LiftBy::Target(target.clone()), None).unwrap(),
                    vec![kill]
                );
                expected.remove(&target);
            }
            let covered = expected.iter().any(|t| t.matches(Some(me), Some(my_task)));
            assert_eq!(switch.check(Some(me), Some(my_task)).is_some(), covered);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        expected
    });
    // The final state is exactly what the writer left.
    let actual: std::collections::HashSet<KillTarget> =
        switch.list().iter().map(|k| k.target.clone()).collect();
    assert_eq!(actual, expected);
    assert_eq!(switch.active(), expected.len());
}
