//! AdmissionReview (admission.k8s.io/v1) in, AdmissionReview out: the webhook's protocol
//! around [`mutate`](super::mutate::mutate). Pure as well: bytes in, status and bytes out, plus
//! a one-line outcome for the log. A document that is not a readable review gets HTTP 400 with
//! a JSON error (there is no `uid` to answer to); a readable review always gets a review back.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde_json::{Value, json};

use super::mutate::{Verdict, mutate};
use super::settings::Settings;

/// The webhook's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// HTTP status: 200 for every review answered, 400 for an unreadable document.
    pub status: u16,
    /// JSON body.
    pub body: Vec<u8>,
    /// For the log: `injected`, `skipped: …`, `denied: …`, `bad request: …`.
    pub outcome: String,
    /// `namespace/name` (or `generateName*`) of the pod, when known.
    pub pod: String,
    /// The trust-boundary exceptions an admitted pod took (the webhook counts them).
    pub exceptions: Vec<super::boundary::Exception>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReviewView {
    api_version: String,
    kind: String,
    request: RequestView,
}

#[derive(Debug, Deserialize)]
struct RequestView {
    uid: String,
    kind: GroupVersionKind,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    operation: String,
    object: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct GroupVersionKind {
    #[serde(default)]
    group: String,
    kind: String,
}

/// Answers one AdmissionReview document.
pub fn handle(body: &[u8], settings: &Settings) -> Reply {
    let review: ReviewView = match serde_json::from_slice(body) {
        Ok(review) => review,
        Err(e) => return bad_request(format!("not an AdmissionReview: {e}")),
    };
    if review.api_version != "admission.k8s.io/v1" || review.kind != "AdmissionReview" {
        return bad_request(format!(
            "expected apiVersion admission.k8s.io/v1, kind AdmissionReview; got {} {}",
            review.api_version, review.kind
        ));
    }
    let request = review.request;
    let pod = pod_name(&request);
    let is_pod_create = request.kind.group.is_empty()
        && request.kind.kind == "Pod"
        && request.operation == "CREATE";
    let verdict = match (&request.object, is_pod_create) {
        (_, false) => Verdict::Skip("not a pod creation"),
        (None, true) => Verdict::Deny {
            code: 400,
            message: "tollgate injector: the review carries no pod object".into(),
        },
        (Some(object), true) => mutate(object, settings),
    };
    let mut exceptions = Vec::new();
    let (response, outcome) = match verdict {
        Verdict::Patch(ops, taken) => {
            let patch = serde_json::to_vec(&ops).unwrap_or_default();
            let mut outcome = format!("injected ({} operations)", ops.len());
            if !taken.is_empty() {
                let names: Vec<&str> = taken.iter().map(|e| e.as_str()).collect();
                outcome.push_str(&format!(
                    " with trust-boundary exceptions: {}",
                    names.join(", ")
                ));
            }
            exceptions = taken.into_iter().collect();
            (
                json!({"uid": request.uid, "allowed": true, "patchType": "JSONPatch",
                       "patch": STANDARD.encode(patch)}),
                outcome,
            )
        }
        Verdict::Skip(why) => (
            json!({"uid": request.uid, "allowed": true}),
            format!("skipped: {why}"),
        ),
        Verdict::Deny { code, message } => {
            let outcome = format!("denied: {message}");
            (
                json!({"uid": request.uid, "allowed": false,
                       "status": {"code": code, "message": message}}),
                outcome,
            )
        }
    };
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": response
    });
    Reply {
        status: 200,
        body: serde_json::to_vec(&review).unwrap_or_default(),
        outcome,
        pod,
        exceptions,
    }
}

fn pod_name(request: &RequestView) -> String {
    let meta = request.object.as_ref().and_then(|o| o.get("metadata"));
    let field = |key: &str| {
        meta.and_then(|m| m.get(key))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let name = match field("name") {
        name if !name.is_empty() => name,
        _ => format!("{}*", field("generateName")),
    };
    format!("{}/{name}", request.namespace)
}

fn bad_request(message: String) -> Reply {
    let body = json!({"error": "bad_request", "message": message});
    Reply {
        status: 400,
        body: serde_json::to_vec(&body).unwrap_or_default(),
        outcome: format!("bad request: {message}"),
        pod: String::new(),
        exceptions: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review(object: Value, operation: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u-1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                        "namespace": "agents", "operation": operation, "object": object}
        }))
        .unwrap()
    }

    fn response(reply: &Reply) -> Value {
        serde_json::from_slice::<Value>(&reply.body).unwrap()["response"].clone()
    }

    #[test]
    fn answers_a_pod_creation_with_a_base64_json_patch() {
        let pod = json!({"metadata": {"generateName": "agent-"},
                         "spec": {"containers": [{"name": "a"}],
                                  "securityContext": {"runAsNonRoot": true}}});
        let reply = handle(&review(pod, "CREATE"), &Settings::default());
        assert_eq!(reply.status, 200);
        assert_eq!(reply.pod, "agents/agent-*");
        let r = response(&reply);
        assert_eq!(r["uid"], "u-1");
        assert_eq!(r["allowed"], true);
        assert_eq!(r["patchType"], "JSONPatch");
        let patch: Vec<Value> =
            serde_json::from_slice(&STANDARD.decode(r["patch"].as_str().unwrap()).unwrap())
                .unwrap();
        assert!(patch.iter().all(|op| op["op"] == "add"));
    }

    #[test]
    fn lets_other_operations_through_unchanged() {
        let reply = handle(&review(json!({"spec": {}}), "UPDATE"), &Settings::default());
        let r = response(&reply);
        assert_eq!((r["allowed"].clone(), r.get("patch")), (json!(true), None));
    }

    #[test]
    fn malformed_documents_get_errors_never_a_panic() {
        for body in [&b""[..], b"{", b"[]", b"{\"apiVersion\":\"v1\"}", b"\xff\xfe",
                     br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"x","kind":{"kind":"Pod"}}}"#] {
            let reply = handle(body, &Settings::default());
            assert_eq!(reply.status, 400, "{}", String::from_utf8_lossy(body));
            let v: Value = serde_json::from_slice(&reply.body).unwrap();
            assert_eq!(v["error"], "bad_request");
        }
        let reply = handle(&review(json!({"spec": 7}), "CREATE"), &Settings::default());
        let r = response(&reply);
        assert_eq!(r["allowed"], false);
        assert_eq!(r["status"]["code"], 400);
        let no_object = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"x","kind":{"kind":"Pod"},"operation":"CREATE"}}"#;
        assert_eq!(
            response(&handle(no_object, &Settings::default()))["allowed"],
            false
        );
    }
}
