use std::time::Instant;
use tollgate::policy::wasm::WasmPolicy;
fn p50(mut f: impl FnMut()) -> (std::time::Duration, std::time::Duration) {
    for _ in 0..2000 { f(); }
    let mut v = Vec::new();
    for _ in 0..20000 { let t = Instant::now(); f(); v.push(t.elapsed()); }
    v.sort();
    (v[v.len() / 2], v[v.len() * 99 / 100])
}
fn main() {
    let root = env!("CARGO_MANIFEST_DIR");
    let fx = |n: &str| wat::parse_file(format!("{root}/tests/fixtures/wasm/{n}.wat")).unwrap();
    let data = serde_json::json!({"tollgate_config": {"agents": {"spiffe://example.org/a": {"rules": []}}}});
    let input = regorus::Value::from_json_str(r#"{"source": {"spiffe_id": "spiffe://example.org/a"}}"#).unwrap();
    let d = WasmPolicy::load(&fx("decision"), data.clone(), "tollgate/decision").unwrap();
    println!("decision (no builtin): {:?}", p50(|| { d.evaluate(&input).unwrap(); }));
    let s = WasmPolicy::load(&fx("sprintf"), data.clone(), "cases/q").unwrap();
    println!("sprintf fixture (1 host call): {:?}", p50(|| { s.evaluate(&input).unwrap(); }));
    let s = WasmPolicy::load(&fx("sprintf"), data.clone(), "cases/object").unwrap();
    println!("sprintf fixture object arg (1 host call): {:?}", p50(|| { s.evaluate(&input).unwrap(); }));
    let bytes = std::fs::read("/work/opa-wasm-samples/python-opa-wasm/policy_with_builtins.wasm").unwrap();
    let t = Instant::now();
    let real = WasmPolicy::load(&bytes, serde_json::json!({"company_name": "ACME"}), "example").unwrap();
    println!("real module load (compile + 4 instances): {:?}", t.elapsed());
    let alice = regorus::Value::from_json_str(r#"{"user": "alice"}"#).unwrap();
    println!("real module with sprintf host call: {:?}", p50(|| { real.evaluate(&alice).unwrap(); }));
    let bytes = std::fs::read("/work/opa-wasm-samples/python-opa-wasm/policy_simple.wasm").unwrap();
    let simple = WasmPolicy::load(&bytes, serde_json::json!({}), "example").unwrap();
    println!("real module, no builtin: {:?}", p50(|| { simple.evaluate(&alice).unwrap(); }));
}
