//! The admin resources, answered without a listener: status and JSON of each kill request.

use http::StatusCode;
use serde_json::{Value, json};

use super::Reply;
use super::kill::{self, KillRequestError};
use crate::identity::{SpiffeId, SpiffeIdError};
use crate::intent::TaskName;
use crate::kill::{KillError, KillSwitch, KillTarget};

const AGENT: &str = "spiffe://example.org/ns/agents/sa/triage";

fn memory() -> KillSwitch {
    KillSwitch::open(None).unwrap()
}

fn task(t: &str) -> KillTarget {
    KillTarget::Task(TaskName::parse(t).unwrap())
}

fn spiffe(id: &str) -> KillTarget {
    KillTarget::SpiffeId(SpiffeId::parse(id).unwrap())
}

fn message(body: &Value) -> &str {
    body["message"].as_str().unwrap_or_default()
}

fn answer(reply: Reply) -> (StatusCode, Value) {
    match reply {
        Reply::Json(status, body) => (status, body),
        Reply::RawJson(status, body) => (status, serde_json::from_slice(&body).unwrap()),
        Reply::Metrics(_) => panic!("not JSON"),
    }
}

fn post(switch: &KillSwitch, body: &[u8]) -> (StatusCode, Value) {
    answer(Reply::from(kill::engage(switch, body)))
}

fn get(switch: &KillSwitch) -> (StatusCode, Value) {
    answer(Reply::from(Ok(kill::list(switch))))
}

fn delete(switch: &KillSwitch, rest: &str, body: &[u8]) -> (StatusCode, Value) {
    answer(Reply::from(kill::lift(switch, rest, body)))
}

#[test]
fn accepts_post_with_201_then_200() {
    let switch = memory();
    let (status, body) = post(
        &switch,
        br#"{"spiffe_id": "spiffe://example.org/a", "reason": "r"}"#,
    );
    assert_eq!(status, StatusCode::CREATED);
    let kill = &body["kill"];
    assert_eq!(
        kill["target"],
        json!({"spiffe_id": "spiffe://example.org/a"})
    );
    assert_eq!(kill["reason"], "r");
    assert!(kill["id"].is_string());
    assert!(humantime::parse_rfc3339(kill["created"].as_str().unwrap()).is_ok());
    // The kill's four fields, and how many open flows it ended (none here).
    assert_eq!(kill["flows_ended"], 0);
    assert_eq!(kill.as_object().unwrap().len(), 5);

    let (status, again) = post(&switch, br#"{"spiffe_id": "spiffe://example.org/a"}"#);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again, body);
}

#[test]
fn accepts_post_of_task_and_all() {
    let switch = memory();
    let (status, body) = post(&switch, br#"{"task": "t-1"}"#);
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["kill"]["target"], json!({"task": "t-1"}));
    assert_eq!(body["kill"]["reason"], Value::Null);
    let (status, body) = post(&switch, br#" {"all": true} "#);
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["kill"]["target"], json!({"all": true}));
}

fn post_error(body: &[u8]) -> String {
    let switch = memory();
    let (status, response) = post(&switch, body);
    assert_eq!(status, StatusCode::BAD_REQUEST, "{response}");
    assert_eq!(response["error"], "bad_request");
    assert_eq!(response.as_object().unwrap().len(), 2);
    assert_eq!(switch.active(), 0);
    message(&response).to_owned()
}

#[test]
fn rejects_post_with_bad_json() {
    assert!(post_error(b"{not json").starts_with("the body is not a valid kill: "));
    assert_eq!(
        post_error(b"[]"),
        "the body is not a valid kill: expected a JSON object"
    );
    assert_eq!(
        post_error(br#"["spiffe://example.org/a"]"#),
        "the body is not a valid kill: expected a JSON object"
    );
    assert!(post_error(br#"{"all": true, "reason": 1}"#).contains("invalid type"));
    assert!(post_error(br#"{"task": 42}"#).contains("invalid type"));
    assert!(post_error(br#"{"spiffeid": "spiffe://a/b"}"#).contains("unknown field `spiffeid`"));
    assert!(post_error(b"").starts_with("the body is empty"));
}

#[test]
fn rejects_post_without_exactly_one_target() {
    assert_eq!(
        post_error(br#"{"task": "t", "spiffe_id": "spiffe://a/b"}"#),
        KillError::TwoTargets.to_string()
    );
    assert_eq!(
        post_error(br#"{"task": "t", "all": true}"#),
        KillError::TwoTargets.to_string()
    );
    assert_eq!(
        post_error(br#"{"reason": "r"}"#),
        KillError::NoTarget.to_string()
    );
    assert_eq!(
        post_error(br#"{"all": false}"#),
        KillError::AllNotTrue.to_string()
    );
}

#[test]
fn rejects_post_with_invalid_target() {
    assert_eq!(
        post_error(br#"{"task": "t 1"}"#),
        "task must be 1 to 128 characters from A-Z a-z 0-9 . _ : / -"
    );
    assert_eq!(
        post_error(br#"{"spiffe_id": "https://example.org/a"}"#),
        "spiffe_id is not a valid SPIFFE ID: a SPIFFE ID must start with spiffe://"
    );
    assert_eq!(
        post_error(br#"{"spiffe_id": "spiffe://Example.org/a"}"#),
        format!(
            "spiffe_id is not a valid SPIFFE ID: {}",
            SpiffeIdError::BadTrustDomainChar
        )
    );
    assert_eq!(
        post_error(br#"{"task": "t", "reason": "a\u0007b"}"#),
        KillError::InvalidReason.to_string()
    );
}

#[test]
fn accepts_list_handler_newest_first() {
    let switch = memory();
    let (status, body) = get(&switch);
    assert_eq!((status, body), (StatusCode::OK, json!({"kills": []})));
    let a = switch.kill(task("a"), None).unwrap().0;
    let b = switch.kill(KillTarget::All, Some("why".into())).unwrap().0;
    let (status, body) = get(&switch);
    assert_eq!(status, StatusCode::OK);
    let listed = |kill: &crate::kill::Kill| {
        let mut value = json!(kill);
        value["flows_ended"] = 0.into();
        value
    };
    assert_eq!(body, json!({"kills": [listed(&b), listed(&a)]}));
}

#[test]
fn accepts_delete_by_id_path() {
    let switch = memory();
    let kill = switch.kill(task("t-1"), None).unwrap().0;
    let (status, body) = delete(&switch, &format!("/{}", kill.id), b"");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"lifted": [json!(kill.as_ref())]}));
    assert_eq!(switch.active(), 0);
}

#[test]
fn accepts_delete_by_target_paths() {
    let switch = memory();
    let all = switch.kill(KillTarget::All, None).unwrap().0;
    let t = switch.kill(task("ns/t:1"), None).unwrap().0;
    let s = switch.kill(spiffe(AGENT), None).unwrap().0;

    let (status, body) = delete(&switch, "/all", b"");
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"lifted": [json!(all.as_ref())]}))
    );
    // Tasks may hold '/', encoded or not.
    let (status, body) = delete(&switch, "/task/ns%2Ft%3A1", b"");
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"lifted": [json!(t.as_ref())]}))
    );
    let encoded = percent_encoding::utf8_percent_encode(AGENT, percent_encoding::NON_ALPHANUMERIC)
        .to_string();
    let (status, body) = delete(&switch, &format!("/spiffe_id/{encoded}"), b"\n");
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"lifted": [json!(s.as_ref())]}))
    );
    assert_eq!(switch.active(), 0);
}

#[test]
fn accepts_delete_of_unencoded_spiffe_id_and_task_with_slash() {
    let switch = memory();
    switch.kill(spiffe(AGENT), None).unwrap();
    switch.kill(task("a/b"), None).unwrap();
    assert_eq!(
        delete(&switch, &format!("/spiffe_id/{AGENT}"), b"").0,
        StatusCode::OK
    );
    assert_eq!(delete(&switch, "/task/a/b", b"").0, StatusCode::OK);
    assert_eq!(switch.active(), 0);
}

#[test]
fn accepts_delete_with_json_body() {
    let switch = memory();
    let kill = switch.kill(task("t-1"), None).unwrap().0;
    let (status, body) = delete(&switch, "", br#"{"task": "t-1", "reason": "fixed"}"#);
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"lifted": [json!(kill.as_ref())]}))
    );
    let kill = switch.kill(KillTarget::All, None).unwrap().0;
    let (status, body) = delete(&switch, "/", br#"{"all": true}"#);
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"lifted": [json!(kill.as_ref())]}))
    );
}

#[test]
fn rejects_delete_of_unknown_kill_with_404() {
    let switch = memory();
    switch.kill(task("t-1"), None).unwrap();
    for rest in [
        "/0190c2a4-7b9e-7000-8000-000000000001",
        "/no-such-id",
        "/all",
        "/task/t-2",
        "/spiffe_id/spiffe%3A%2F%2Fexample.org%2Fa",
    ] {
        let (status, body) = delete(&switch, rest, b"");
        assert_eq!(status, StatusCode::NOT_FOUND, "{rest}");
        assert_eq!(body["error"], "not_found");
        assert!(
            message(&body).starts_with("no kill in force matches"),
            "{body}"
        );
    }
    let (status, _) = delete(&switch, "", br#"{"spiffe_id": "spiffe://example.org/a"}"#);
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = delete(&switch, "xyz", b"");
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(switch.active(), 1);
}

#[test]
fn rejects_bad_delete_with_400() {
    let switch = memory();
    switch.kill(task("t-1"), None).unwrap();
    let cases: [(&str, &[u8], KillRequestError); 8] = [
        ("", b"", KillRequestError::EmptyBody),
        (
            "",
            br#"{"task": "t-1", "all": true}"#,
            KillError::TwoTargets.into(),
        ),
        (
            "/task/t-1",
            br#"{"task": "t-1"}"#,
            KillRequestError::PathAndBody,
        ),
        ("/task/bad%20task", b"", KillError::InvalidTask.into()),
        (
            "",
            b"{\"task\": \"t-1\", \"reason\": \"a\\u0000\"}",
            KillError::InvalidReason.into(),
        ),
        ("/task", b"", KillRequestError::BadPath("/task".into())),
        (
            "/spiffe_id/%FF",
            b"",
            KillRequestError::BadPath("/spiffe_id/%FF".into()),
        ),
        (
            "/spiffe_id/https%3A%2F%2Fexample.org",
            b"",
            KillError::InvalidSpiffeId(SpiffeIdError::WrongScheme).into(),
        ),
    ];
    for (rest, body, expected) in cases {
        let (status, response) = delete(&switch, rest, body);
        assert_eq!(status, StatusCode::BAD_REQUEST, "{rest}");
        assert_eq!(
            response,
            json!({"error": "bad_request", "message": expected.to_string()}),
            "{rest}"
        );
    }
    assert_eq!(switch.active(), 1);
}

#[test]
fn rejects_a_kill_that_cannot_be_saved_with_500() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kills.json");
    let switch = KillSwitch::open(Some(path.clone())).unwrap();
    // A non-empty folder in the file's place makes the rename fail, even for root.
    std::fs::create_dir(&path).unwrap();
    std::fs::write(path.join("occupied"), "").unwrap();
    let (status, body) = post(&switch, br#"{"task": "t-3"}"#);
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body["error"], "internal_error");
    assert!(message(&body).starts_with("cannot persist the kill file"));
    assert_eq!(switch.active(), 0);
}

#[test]
fn lists_recent_decisions_as_written_newest_first() {
    let recent = crate::telemetry::decision_log::Recent::default();
    let (status, body) = answer(super::decisions::recent(&recent, None));
    assert_eq!((status, body), (StatusCode::OK, json!({"decisions": []})));
    for line in [br#"{"n":1}"#.as_slice(), br#"{"n":2}"#, br#"{"n":3}"#] {
        recent.push(line);
    }
    let (status, body) = answer(super::decisions::recent(&recent, Some("limit=2")));
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"decisions": [{"n": 3}, {"n": 2}]}))
    );
    let (status, _) = answer(super::decisions::recent(&recent, Some("limit=0")));
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = answer(super::decisions::recent(&recent, Some("other=1")));
    assert_eq!(status, StatusCode::BAD_REQUEST);
}
