//! Per-request cost of a cached credential: the cache hit (shard read lock, lock-free entry
//! load, expiry check, metric increment) and applying the prepared injection to the origin
//! request's headers or URI. Also the cost of a miss for a `jwt` credential (one signature).
//!
//! Run: `cargo bench --bench credentials`. Results go in docs/BENCHMARKS.md.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use http::HeaderMap;

use tollgate::config::credentials::{
    AgentSecretsConfig, CredentialConfig, CredentialKind, InjectConfig, JwtConfig, SecretRef,
};
use tollgate::credentials::jwt::{Claims, JwtSigner};
use tollgate::credentials::{CredentialStore, RequestContext};
use tollgate::policy::decision::CredentialRequest;
use tollgate::telemetry::metrics::Metrics;

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("token");
    std::fs::write(&secret, "ghp_benchmarktokenvalue0123456789").unwrap();
    let key = dir.path().join("jwt.pem");
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    std::fs::write(&key, pair.serialize_pem()).unwrap();
    let jwt = JwtConfig {
        signing_key: key,
        issuer: "tollgate".into(),
        max_ttl: Duration::from_secs(900),
        default_ttl: Duration::from_secs(300),
    };
    let mut configs = BTreeMap::new();
    configs.insert(
        "github".to_string(),
        CredentialConfig {
            name: "github".into(),
            kind: CredentialKind::Static {
                source: SecretRef::File(secret),
            },
            inject: InjectConfig::default(),
        },
    );
    configs.insert(
        "internal".to_string(),
        CredentialConfig {
            name: "internal".into(),
            kind: CredentialKind::Jwt(jwt.clone()),
            inject: InjectConfig::Query {
                param: "access_token".into(),
            },
        },
    );
    let metrics = Metrics::new(&["agents".to_string()], false).unwrap();
    let store = CredentialStore::build(
        &configs,
        &AgentSecretsConfig::default(),
        &metrics,
        None,
        false,
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ctx = RequestContext {
        caller: Some("spiffe://example.org/ns/agents/sa/triage"),
        task: Some("t-42"),
        intent: Some("issues.read"),
        destination: "api.github.com",
    };
    let request = |name: &str| CredentialRequest {
        name: name.to_string(),
        scopes: vec!["issues:read".to_string()],
        ttl: Some(Duration::from_secs(300)),
    };
    let github = request("github");
    let internal = request("internal");
    // Warm the cache.
    rt.block_on(store.get(&github, &ctx)).unwrap();
    rt.block_on(store.get(&internal, &ctx)).unwrap();
    let headers = {
        let mut h = HeaderMap::new();
        h.insert("user-agent", "agent/1.0".parse().unwrap());
        h.insert("accept", "application/json".parse().unwrap());
        h
    };
    let uri: http::Uri = "https://api.github.com/repos/acme/app/issues?state=open"
        .parse()
        .unwrap();

    c.bench_function("runtime block_on baseline", |b| {
        b.iter(|| rt.block_on(async { black_box(1) }))
    });
    c.bench_function("static: cache hit + header injection", |b| {
        b.iter(|| {
            let token = rt.block_on(store.get(black_box(&github), &ctx)).unwrap();
            let mut h = headers.clone();
            let mut u = uri.clone();
            token.injection.apply(&mut h, &mut u).unwrap();
            black_box((h, u))
        })
    });
    c.bench_function("jwt: cache hit + query injection", |b| {
        b.iter(|| {
            let token = rt.block_on(store.get(black_box(&internal), &ctx)).unwrap();
            let mut h = headers.clone();
            let mut u = uri.clone();
            token.injection.apply(&mut h, &mut u).unwrap();
            black_box((h, u))
        })
    });
    c.bench_function("clone headers + uri (baseline of the two above)", |b| {
        b.iter(|| black_box((headers.clone(), uri.clone())))
    });
    let signer = JwtSigner::load(&jwt).unwrap();
    let scopes = vec!["issues:read".to_string()];
    c.bench_function("jwt: mint one ES256 token (cache miss)", |b| {
        b.iter(|| {
            let claims = Claims {
                subject: "spiffe://example.org/ns/agents/sa/triage",
                audience: "api.github.com",
                intent: Some("issues.read"),
                task: Some("t-42"),
                scopes: &scopes,
            };
            black_box(signer.mint(&claims, None, SystemTime::now()).unwrap())
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
