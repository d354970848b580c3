//! `tollgate inject`, the running webhook: AdmissionReview documents are POSTed to it over
//! HTTPS with curl (as the API server would), the returned JSON Patch is applied to the pod
//! with Python's `jsonpatch` (RFC 6902, independent of tollgate), and the patched pod is
//! validated with `kubernetes-validate --strict` for Kubernetes 1.29 and 1.33. The injector's
//! settings are the ones the chart renders. No API server can run here: docs/KUBERNETES.md says
//! what a cluster adds (selectors, reinvocation, the kubelet running the containers).

#[path = "support/k8s.rs"]
mod k8s;
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s::*;
use serde_json::{Value, json};
use support::*;

/// A running injector and what a client needs to reach it.
struct Injector {
    _child: ChildGuard,
    stderr: Lines,
    port: u16,
    ca: PathBuf,
    dir: tempfile::TempDir,
    _pki: Pki,
}

impl Injector {
    /// Starts `tollgate inject` with the settings the chart renders for `helm_args`.
    fn start(helm_args: &[&str]) -> Injector {
        let dir = tempfile::tempdir().unwrap();
        let rendered = documents(&helm_template(helm_args).expect("helm template"));
        let settings = of_kind(&rendered, "ConfigMap")
            .into_iter()
            .find(|c| c["metadata"]["name"] == "tollgate-injector")
            .expect("the injector's settings")["data"]["settings.yaml"]
            .as_str()
            .unwrap()
            .to_string();
        let settings_file = dir.path().join("settings.yaml");
        std::fs::write(&settings_file, settings).unwrap();
        let pki = Pki::new();
        // Copies, so a test can replace them (rotation).
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::copy(pki.server_cert(), &cert).unwrap();
        std::fs::copy(pki.server_key(), &key).unwrap();
        let mut child = command(env!("CARGO_BIN_EXE_tollgate"))
            .args(["inject", "--listen", "127.0.0.1:0", "--tls-cert"])
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            .arg("--config")
            .arg(&settings_file)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn tollgate inject");
        let stderr = Lines::capture(child.stderr.take().unwrap(), "inject");
        let child = ChildGuard::new(child);
        let (_, ready) = stderr
            .wait_for(0, |l| l.contains("injector ready"), Duration::from_secs(20))
            .unwrap_or_else(|| panic!("tollgate inject did not start:\n{}", stderr.text()));
        let line: Value = serde_json::from_str(&ready).expect("a JSON log line");
        let port = line["addr"]
            .as_str()
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .expect("the bound address");
        Injector {
            _child: child,
            stderr,
            port,
            ca: pki.ca_cert(),
            dir,
            _pki: pki,
        }
    }

    /// curl against the injector: `(HTTP status, body)`; panics when curl fails.
    fn curl(&self, extra: &[&str]) -> (u16, String) {
        self.try_curl(&self.ca, extra)
            .unwrap_or_else(|e| panic!("curl {extra:?}: {e}"))
    }

    /// curl trusting `ca`: `(HTTP status, body)` or curl's error.
    fn try_curl(&self, ca: &Path, extra: &[&str]) -> Result<(u16, String), String> {
        let resolve = format!("localhost:{}:127.0.0.1", self.port);
        let mut args: Vec<String> = vec![
            "-sS".into(),
            "--max-time".into(),
            "10".into(),
            "--cacert".into(),
            ca.display().to_string(),
            "--resolve".into(),
            resolve,
            "-w".into(),
            "\n%{http_code}".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let out = curl(&args);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').expect("status line");
        Ok((
            code.trim().parse().expect("an HTTP status"),
            body.to_string(),
        ))
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    /// POSTs a body file to /mutate.
    fn post_file(&self, file: &Path) -> (u16, String) {
        self.curl(&[
            "-H",
            "content-type: application/json",
            "--data-binary",
            &format!("@{}", file.display()),
            &self.url("/mutate"),
        ])
    }

    /// POSTs an AdmissionReview for `pod`; returns the review response (HTTP 200 required).
    fn review(&self, pod: &Value, name: &str) -> Value {
        let review = json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": format!("uid-{name}"),
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "agents",
                "operation": "CREATE",
                "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
                "object": pod,
                "dryRun": false
            }
        });
        let file = self.dir.path().join(format!("{name}-review.json"));
        std::fs::write(&file, serde_json::to_vec(&review).unwrap()).unwrap();
        let (status, body) = self.post_file(&file);
        assert_eq!(status, 200, "{body}");
        let answer: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(answer["kind"], "AdmissionReview");
        assert_eq!(answer["response"]["uid"], format!("uid-{name}"));
        answer
    }

    /// Reviews `pod`, applies the patch with Python's jsonpatch, returns the patched pod.
    fn inject(&self, pod: &Value, name: &str) -> Value {
        let answer = self.review(pod, name);
        assert_eq!(answer["response"]["allowed"], true, "{answer}");
        let pod_file = self.dir.path().join(format!("{name}-pod.json"));
        let answer_file = self.dir.path().join(format!("{name}-answer.json"));
        let patched_file = self.dir.path().join(format!("{name}-patched.json"));
        std::fs::write(&pod_file, serde_json::to_vec(pod).unwrap()).unwrap();
        std::fs::write(&answer_file, serde_json::to_vec(&answer).unwrap()).unwrap();
        run_checked(
            command(python())
                .arg(repo_root().join("tests/k8s/apply_patch.py"))
                .args([&pod_file, &answer_file, &patched_file]),
            Duration::from_secs(30),
        );
        let patched: Value =
            serde_json::from_slice(&std::fs::read(&patched_file).unwrap()).unwrap();
        assert_validates(&patched_file);
        patched
    }
}

fn simple_pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "triage-", "namespace": "agents", "labels": {"app": "triage"}},
        "spec": {"containers": [{"name": "agent", "image": "python:3.12-slim",
                                 "command": ["python", "-m", "agent"],
                                 "securityContext": {"runAsUser": 1000, "runAsNonRoot": true,
                                                     "allowPrivilegeEscalation": false}}]}
    })
}

fn container<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .and_then(|l| l.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no container {name} in {list}"))
}

/// The `name` of every element of a JSON list (containers, volumes, mounts).
fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .map(|l| l.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default()
}

/// A container's args as one line.
fn args_line(container: &Value) -> String {
    strings(&container["args"]).join(" ")
}

fn strings(list: &Value) -> Vec<&str> {
    list.as_array()
        .map(|l| l.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn env_value<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)?["value"]
        .as_str()
}

#[test]
fn injects_a_valid_pod_with_the_init_step_native_sidecar_and_agent_trust() {
    let injector = Injector::start(&[]);
    let pod = injector.inject(&simple_pod(), "simple");
    let spec = &pod["spec"];
    let init_names = names(&spec["initContainers"]);
    assert_eq!(init_names, vec!["tollgate-init", "tollgate"]);

    // The init step: root with NET_ADMIN as its only capability, running the redirect.
    let init = container(&spec["initContainers"], "tollgate-init");
    assert_eq!(
        args_line(init),
        "redirect install --proxy-uid 1337 --proxy-port 15001 --ipv6 auto"
    );
    let sc = &init["securityContext"];
    assert_eq!(sc["runAsUser"], 0);
    assert_eq!(
        sc["capabilities"],
        json!({"drop": ["ALL"], "add": ["NET_ADMIN"]})
    );
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["privileged"], false);

    // The native sidecar: restartPolicy Always, locked down, probes, SPIFFE socket.
    let sidecar = container(&spec["initContainers"], "tollgate");
    assert_eq!(sidecar["restartPolicy"], "Always");
    assert_locked_down(sidecar);
    assert_eq!(sidecar["securityContext"]["runAsUser"], 1337);
    assert_eq!(sidecar["startupProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(sidecar["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(sidecar["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(sidecar["livenessProbe"]["httpGet"]["port"], 15020);
    assert_eq!(
        env_value(sidecar, "SPIFFE_ENDPOINT_SOCKET"),
        Some("unix:///spiffe-workload-api/spire-agent.sock")
    );
    assert_eq!(
        sidecar["args"],
        json!(["run", "-c", "/etc/tollgate/config/config.yaml"])
    );
    let sidecar_mounts = names(&sidecar["volumeMounts"]);
    assert_eq!(
        sidecar_mounts,
        vec![
            "tollgate-config",
            "tollgate-ca",
            "tollgate-spiffe",
            "tollgate-run"
        ]
    );

    // The agent: the CA certificate only, and the three trust variables.
    let agent = container(&spec["containers"], "agent");
    for var in ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS"] {
        assert_eq!(
            env_value(agent, var),
            Some("/etc/tollgate/ca/ca.crt"),
            "{var}"
        );
    }
    assert_eq!(
        agent["volumeMounts"],
        json!([{"name": "tollgate-ca-bundle", "mountPath": "/etc/tollgate/ca", "readOnly": true}])
    );
    let volumes = spec["volumes"].as_array().unwrap();
    let volume = |name: &str| volumes.iter().find(|v| v["name"] == name).unwrap();
    assert_eq!(
        volume("tollgate-ca-bundle")["configMap"]["items"],
        json!([{"key": "ca.crt", "path": "ca.crt"}]),
        "the agent's volume projects the certificate alone"
    );
    assert_eq!(
        volume("tollgate-ca")["secret"]["secretName"],
        "tollgate-intercept-ca"
    );
    assert_eq!(volume("tollgate-spiffe")["csi"]["driver"], "csi.spiffe.io");
    assert_eq!(volume("tollgate-spiffe")["csi"]["readOnly"], true);
    assert_eq!(
        volume("tollgate-config")["configMap"]["name"],
        "tollgate-sidecar"
    );
    assert_eq!(
        pod["metadata"]["annotations"]["tollgate.io/injected"],
        "0.1.0"
    );
    // The pod's own fields are untouched.
    assert_eq!(pod["metadata"]["labels"], json!({"app": "triage"}));
    assert_eq!(agent["command"], json!(["python", "-m", "agent"]));

    // Idempotent: the injected pod comes back unchanged.
    let again = injector.review(&pod, "again");
    assert_eq!(again["response"]["allowed"], true);
    assert!(again["response"].get("patch").is_none(), "{again}");
    assert!(
        injector
            .stderr
            .wait_for(
                0,
                |l| l.contains("skipped: already injected"),
                Duration::from_secs(5)
            )
            .is_some()
    );
}

#[test]
fn keeps_the_pods_own_init_containers_env_volumes_and_honours_its_annotations() {
    let injector = Injector::start(&["--set", "sidecar.excludeOutboundPorts=22"]);
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "research-0",
            "namespace": "agents",
            "annotations": {
                "tollgate.io/config": "research-policy",
                "tollgate.io/exclude-outbound-ports": "5432",
                "tollgate.io/exclude-outbound-cidrs": "10.96.0.0/12,fd00::/108",
                "team": "research"
            }
        },
        "spec": {
            "securityContext": {"runAsNonRoot": true, "runAsUser": 1000},
            "initContainers": [{"name": "fetch-model", "image": "busybox:1.36",
                                "command": ["true"]}],
            "containers": [{
                "name": "agent", "image": "node:22",
                "env": [{"name": "NODE_EXTRA_CA_CERTS", "value": "/opt/corp-ca.pem"},
                        {"name": "LOG_LEVEL", "value": "debug"}],
                "volumeMounts": [{"name": "work", "mountPath": "/work"}]
            }, {"name": "tools", "image": "python:3.12-slim"}],
            "volumes": [{"name": "work", "emptyDir": {}}]
        }
    });
    let patched = injector.inject(&pod, "complex");
    let spec = &patched["spec"];
    let init_names = names(&spec["initContainers"]);
    assert_eq!(init_names, vec!["tollgate-init", "tollgate", "fetch-model"]);
    // The pod's own init container runs after the sidecar started, so it trusts the CA too.
    let fetch = container(&spec["initContainers"], "fetch-model");
    assert_eq!(
        env_value(fetch, "SSL_CERT_FILE"),
        Some("/etc/tollgate/ca/ca.crt")
    );
    let init = container(&spec["initContainers"], "tollgate-init");
    assert_eq!(
        args_line(init),
        "redirect install --proxy-uid 1337 --proxy-port 15001 --exclude-ports 22,5432 --exclude-cidrs 10.96.0.0/12,fd00::/108 --ipv6 auto"
    );
    let agent = container(&spec["containers"], "agent");
    assert_eq!(
        env_value(agent, "NODE_EXTRA_CA_CERTS"),
        Some("/opt/corp-ca.pem"),
        "kept"
    );
    assert_eq!(env_value(agent, "LOG_LEVEL"), Some("debug"));
    assert_eq!(
        env_value(agent, "SSL_CERT_FILE"),
        Some("/etc/tollgate/ca/ca.crt")
    );
    assert_eq!(agent["volumeMounts"].as_array().unwrap().len(), 2);
    let tools = container(&spec["containers"], "tools");
    assert_eq!(
        env_value(tools, "REQUESTS_CA_BUNDLE"),
        Some("/etc/tollgate/ca/ca.crt")
    );
    let volumes = names(&spec["volumes"]);
    assert_eq!(
        volumes,
        vec![
            "work",
            "tollgate-config",
            "tollgate-ca",
            "tollgate-ca-bundle",
            "tollgate-spiffe",
            "tollgate-run"
        ]
    );
    let config = spec["volumes"].as_array().unwrap()[1].clone();
    assert_eq!(config["configMap"]["name"], "research-policy");
    assert_eq!(patched["metadata"]["annotations"]["team"], "research");
    // The pod-level runAsNonRoot stays; the init step overrides it for itself only.
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    assert_eq!(init["securityContext"]["runAsNonRoot"], false);
}

#[test]
fn legacy_iptables_adds_net_raw_to_the_init_step_only() {
    let injector = Injector::start(&["--set", "sidecar.legacyIptables=true"]);
    let pod = injector.inject(&simple_pod(), "legacy");
    let init = container(&pod["spec"]["initContainers"], "tollgate-init");
    assert_eq!(
        init["securityContext"]["capabilities"],
        json!({"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]})
    );
    assert_locked_down(container(&pod["spec"]["initContainers"], "tollgate"));
}

#[test]
fn opted_out_pods_pass_unchanged() {
    let injector = Injector::start(&[]);
    let mut pod = simple_pod();
    pod["metadata"]["annotations"] = json!({"tollgate.io/inject": "false"});
    let answer = injector.review(&pod, "optout");
    assert_eq!(answer["response"]["allowed"], true);
    assert!(answer["response"].get("patch").is_none());
}

#[test]
fn refuses_bad_annotations_and_host_network_pods_with_a_reason() {
    let injector = Injector::start(&[]);
    let mut bad_ports = simple_pod();
    bad_ports["metadata"]["annotations"] = json!({"tollgate.io/exclude-outbound-ports": "ssh"});
    let answer = injector.review(&bad_ports, "badports");
    assert_eq!(answer["response"]["allowed"], false);
    assert_eq!(answer["response"]["status"]["code"], 400);
    let message = answer["response"]["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("annotation tollgate.io/exclude-outbound-ports: --exclude-ports: `ssh`"),
        "{message}"
    );
    let mut host = simple_pod();
    host["spec"]["hostNetwork"] = json!(true);
    let answer = injector.review(&host, "host");
    assert_eq!(answer["response"]["allowed"], false);
    assert_eq!(answer["response"]["status"]["code"], 403);
}

/// The webhook's `tollgate_injector_exceptions_total` series, by exception.
fn exception_counts(injector: &Injector) -> Vec<(String, u64)> {
    let (status, text) = injector.curl(&[&injector.url("/metrics")]);
    assert_eq!(status, 200, "{text}");
    text.lines()
        .filter_map(|l| l.strip_prefix("tollgate_injector_exceptions_total{exception=\""))
        .filter_map(|l| l.split_once("\"} "))
        .map(|(name, n)| (name.to_string(), n.parse().expect("a count")))
        .collect()
}

#[test]
fn refuses_agent_containers_that_could_step_around_tollgate_unless_an_annotation_waives_it() {
    let injector = Injector::start(&[]);
    let with = |security: Value| {
        let mut pod = simple_pod();
        pod["spec"]["containers"][0]["securityContext"] = security;
        pod
    };
    let cases = [
        (
            "proxyuid",
            with(json!({"runAsUser": 1337})),
            "proxy-uid",
            "runs as UID 1337, the proxy's UID",
        ),
        (
            "root",
            with(json!({"runAsUser": 0})),
            "root",
            "runs as UID 0 (root)",
        ),
        ("maybe-root", with(json!({})), "root", "may run as root"),
        (
            "privileged",
            with(json!({"runAsNonRoot": true, "privileged": true})),
            "privileged",
            "is privileged",
        ),
        (
            "netadmin",
            with(json!({"runAsNonRoot": true, "capabilities": {"add": ["NET_ADMIN"]}})),
            "net-capabilities",
            "adds NET_ADMIN",
        ),
        (
            "netraw",
            with(json!({"runAsNonRoot": true, "capabilities": {"add": ["NET_RAW"]}})),
            "net-capabilities",
            "adds NET_RAW",
        ),
    ];
    for (name, pod, exception, says) in &cases {
        let answer = injector.review(pod, name);
        let response = &answer["response"];
        assert_eq!(response["allowed"], false, "{name}: {answer}");
        assert_eq!(response["status"]["code"], 403, "{name}");
        let message = response["status"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{name}: {message}");
        assert!(
            message.contains(&format!("(exception `{exception}`)"))
                && message.contains("tollgate.io/agent-exceptions"),
            "{name}: {message}"
        );
    }
    // The pod's own init containers run after the sidecar: the same rules hold for them.
    let mut init = simple_pod();
    init["spec"]["initContainers"] = json!([{"name": "setup", "image": "busybox:1.36",
        "securityContext": {"runAsUser": 0, "capabilities": {"add": ["NET_ADMIN"]}}}]);
    let answer = injector.review(&init, "init");
    let message = answer["response"]["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("container `setup` runs as UID 0")
            && message.contains("container `setup` adds NET_ADMIN"),
        "{message}"
    );
    // A container of the pod's cannot mount the volume with the CA key or the admin socket.
    for volume in ["tollgate-ca", "tollgate-run", "tollgate-credentials"] {
        let mut steal = simple_pod();
        steal["spec"]["containers"][0]["volumeMounts"] =
            json!([{"name": volume, "mountPath": "/loot"}]);
        let answer = injector.review(&steal, &format!("steal-{volume}"));
        assert_eq!(answer["response"]["allowed"], false, "{volume}");
        assert!(
            answer["response"]["status"]["message"]
                .as_str()
                .unwrap()
                .contains("a volume for tollgate alone"),
            "{answer}"
        );
    }
    assert!(exception_counts(&injector).iter().all(|(_, n)| *n == 0));

    // Each waived by the annotation: admitted (the patched pod validates), logged, counted.
    for (name, pod, exception, _) in &cases {
        let mut pod = pod.clone();
        pod["metadata"]["annotations"] = json!({"tollgate.io/agent-exceptions": exception});
        injector.inject(&pod, &format!("{name}-waived"));
    }
    assert_eq!(
        exception_counts(&injector),
        vec![
            ("proxy-uid".to_string(), 1),
            ("root".to_string(), 2),
            ("privileged".to_string(), 1),
            ("net-capabilities".to_string(), 2),
        ]
    );
    let (_, line) = injector
        .stderr
        .wait_for(
            0,
            |l| l.contains("trust-boundary exceptions") && l.contains("\"exceptions\":\"root\""),
            Duration::from_secs(5),
        )
        .unwrap_or_else(|| panic!("no exception log line:\n{}", injector.stderr.text()));
    assert!(line.contains("agents/triage-*"), "{line}");
    // A misspelt exception refuses the pod (400), rather than admitting it unwaived or waived.
    let mut typo = with(json!({"runAsUser": 0}));
    typo["metadata"]["annotations"] = json!({"tollgate.io/agent-exceptions": "rooot"});
    let answer = injector.review(&typo, "typo");
    assert_eq!(answer["response"]["status"]["code"], 400, "{answer}");
}

#[test]
fn only_the_tollgate_container_mounts_the_ca_key_credentials_and_admin_socket() {
    let injector = Injector::start(&["--set", "sidecar.credentialsSecret=agent-credentials"]);
    let pod = injector.inject(&simple_pod(), "credentials");
    let spec = &pod["spec"];
    let volumes = spec["volumes"].as_array().unwrap();
    let credentials = volumes
        .iter()
        .find(|v| v["name"] == "tollgate-credentials")
        .unwrap();
    assert_eq!(credentials["secret"]["secretName"], "agent-credentials");
    let secret_volumes: Vec<&str> = [
        "tollgate-ca",
        "tollgate-credentials",
        "tollgate-run",
        "tollgate-config",
        "tollgate-spiffe",
    ]
    .to_vec();
    let containers = spec["containers"]
        .as_array()
        .unwrap()
        .iter()
        .chain(spec["initContainers"].as_array().unwrap());
    for c in containers {
        let mounts = names(&c["volumeMounts"]);
        let name = c["name"].as_str().unwrap();
        let private: Vec<&&str> = mounts
            .iter()
            .filter(|m| secret_volumes.contains(m))
            .collect();
        if name == "tollgate" {
            assert_eq!(private.len(), 5, "{name}: {mounts:?}");
            let mount = c["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["name"] == "tollgate-credentials")
                .unwrap();
            assert_eq!(
                (mount["mountPath"].as_str(), mount["readOnly"].as_bool()),
                (Some("/etc/tollgate/credentials"), Some(true))
            );
        } else {
            assert!(private.is_empty(), "{name} mounts {private:?}");
        }
    }
    let agent = container(&spec["containers"], "agent");
    assert_eq!(names(&agent["volumeMounts"]), vec!["tollgate-ca-bundle"]);
}

#[test]
fn malformed_reviews_get_errors_and_the_webhook_keeps_serving() {
    let injector = Injector::start(&[]);
    let garbage = injector.dir.path().join("garbage.json");
    for body in [
        &b"{not json"[..],
        b"[]",
        b"{\"kind\":\"AdmissionReview\"}",
        b"\xff\xfe\x00",
    ] {
        std::fs::write(&garbage, body).unwrap();
        let (status, text) = injector.post_file(&garbage);
        assert_eq!(status, 400, "{text}");
        let v: Value = serde_json::from_str(&text).expect("a JSON error");
        assert_eq!(v["error"], "bad_request");
    }
    // A review whose pod is not a pod: answered, refused, with the reason.
    let answer = injector.review(&json!({"spec": 7}), "notapod");
    assert_eq!(answer["response"]["allowed"], false);
    assert!(
        answer["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("the pod cannot be read")
    );
    // Too large: 413, not a crash.
    let big = injector.dir.path().join("big.json");
    std::fs::write(&big, vec![b' '; 5 << 20]).unwrap();
    assert_eq!(injector.post_file(&big).0, 413);
    assert_eq!(
        injector.curl(&["-X", "GET", &injector.url("/mutate")]).0,
        405
    );
    assert_eq!(injector.curl(&[&injector.url("/nope")]).0, 404);
    // Still alive and healthy.
    for path in ["/healthz", "/readyz"] {
        let (status, body) = injector.curl(&[&injector.url(path)]);
        assert_eq!((status, body.as_str()), (200, "{\"status\":\"ok\"}"));
    }
    assert!(injector.simple_still_injects());
}

impl Injector {
    fn simple_still_injects(&self) -> bool {
        self.review(&simple_pod(), "after")["response"]["patch"].is_string()
    }
}

#[test]
fn serves_a_rotated_certificate_without_a_restart_and_keeps_the_last_good_one() {
    let injector = Injector::start(&[]);
    let (cert, key) = (
        injector.dir.path().join("tls.crt"),
        injector.dir.path().join("tls.key"),
    );
    // A broken rotation (half-written pair) is not taken: the old certificate keeps serving.
    std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nnot a key\n").unwrap();
    let rotated = Pki::with_ca_name("rotated webhook CA");
    std::fs::copy(rotated.server_cert(), &cert).unwrap();
    assert!(
        injector
            .stderr
            .wait_for(
                0,
                |l| l.contains("cannot be used; keeping the last good one"),
                Duration::from_secs(25)
            )
            .is_some(),
        "{}",
        injector.stderr.text()
    );
    assert_eq!(injector.curl(&[&injector.url("/healthz")]).0, 200);
    // The pair completed: within one reload period the new certificate serves new handshakes.
    std::fs::copy(rotated.server_key(), &key).unwrap();
    let (_, _) = injector
        .stderr
        .wait_for(
            0,
            |l| l.contains("webhook serving certificate reloaded"),
            Duration::from_secs(25),
        )
        .unwrap_or_else(|| panic!("no reload:\n{}", injector.stderr.text()));
    let url = injector.url("/healthz");
    let (status, _) = injector
        .try_curl(&rotated.ca_cert(), &[&url])
        .expect("the rotated certificate serves");
    assert_eq!(status, 200);
    assert!(
        injector.try_curl(&injector.ca, &[&url]).is_err(),
        "the old certificate is gone"
    );
}

#[test]
fn refuses_to_start_with_bad_settings_or_certificate_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let settings = dir.path().join("settings.yaml");
    std::fs::write(
        &settings,
        "proxyUid: 0\nimagePullPolicy: Sometimes\nproxyPortt: 1\n",
    )
    .unwrap();
    let pki = Pki::new();
    let run = |cert: &Path, key: &Path, config: &Path| {
        run_with_timeout(
            command(env!("CARGO_BIN_EXE_tollgate"))
                .args(["inject", "--listen", "127.0.0.1:0", "--tls-cert"])
                .arg(cert)
                .arg("--tls-key")
                .arg(key)
                .arg("--config")
                .arg(config),
            Duration::from_secs(20),
        )
    };
    let out = run(&pki.server_cert(), &pki.server_key(), &settings);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("settings.yaml: unknown field `proxyPortt`"),
        "{stderr}"
    );

    std::fs::write(&settings, "").unwrap();
    let out = run(
        &pki.server_cert(),
        &dir.path().join("missing.pem"),
        &settings,
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("--tls-cert/--tls-key: cannot read"),
        "{stderr}"
    );
    assert!(stderr.contains("missing.pem"), "{stderr}");
}
