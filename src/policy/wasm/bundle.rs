//! Reading an OPA bundle (`.tar.gz`) in memory: `/policy.wasm`, the data documents and
//! `/.manifest`.
//!
//! Nothing is extracted to disk. OPA writes entry names with a leading `/` (`/policy.wasm`), so a
//! leading `/` or `./` is read as the bundle root; a `..` component is refused, as is anything
//! that is not a regular file or folder. Sizes are bounded before they are read, so a hostile
//! or corrupt archive (a gzip bomb) costs at most [`MAX_ENTRY_BYTES`] per entry and
//! [`MAX_TOTAL_BYTES`] in all.

use std::io::Read;
use std::path::Path;

use serde_json::{Map, Value as Json};

use crate::policy::PolicyLoadError;

/// Largest single entry read from a bundle (the Wasm module or one data document).
pub const MAX_ENTRY_BYTES: u64 = 64 * 1024 * 1024;
/// Largest total of uncompressed entry bytes read from one bundle.
pub const MAX_TOTAL_BYTES: u64 = 256 * 1024 * 1024;
/// Largest compressed bundle file accepted.
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// What a bundle holds, ready for the Wasm engine.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The bytes of `/policy.wasm`.
    pub wasm: Vec<u8>,
    /// Every `data.json` of the bundle merged at its folder's path (`/a/b/data.json` → `a.b`).
    pub data: Json,
    /// `.manifest`'s `revision`, when it has a non-empty one.
    pub revision: Option<String>,
}

/// Reads and checks the bundle at `path`.
pub fn read(path: &Path) -> Result<Bundle, PolicyLoadError> {
    let err = |message: String| PolicyLoadError::Bundle {
        path: path.to_path_buf(),
        message,
    };
    let file = std::fs::File::open(path).map_err(|e| PolicyLoadError::Read {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    if size > MAX_FILE_BYTES {
        return Err(err(format!(
            "{size} bytes, more than the {MAX_FILE_BYTES} accepted"
        )));
    }
    parse(file).map_err(err)
}

/// Reads a bundle from any gzip'd tar stream (the unit tests build them in memory).
pub fn parse(reader: impl Read) -> Result<Bundle, String> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(reader));
    let entries = archive
        .entries()
        .map_err(|e| format!("not a gzip'd tar archive: {e}"))?;
    let mut wasm = None;
    let mut data = Json::Object(Map::new());
    let mut revision = None;
    let mut total: u64 = 0;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("not a gzip'd tar archive: {e}"))?;
        let kind = entry.header().entry_type();
        let raw_name = entry
            .path()
            .map_err(|e| format!("unreadable entry name: {e}"))?
            .to_string_lossy()
            .into_owned();
        let name = normalize(&raw_name)?;
        if kind.is_dir() {
            continue;
        }
        if !kind.is_file() {
            return Err(format!("{raw_name}: only regular files are accepted"));
        }
        let is_data = name == "data.json" || name.ends_with("/data.json");
        if name != "policy.wasm" && name != ".manifest" && !is_data {
            // Rego sources, signatures, other modules: not needed to evaluate.
            continue;
        }
        let size = entry.header().size().unwrap_or(u64::MAX);
        if size > MAX_ENTRY_BYTES {
            return Err(format!("{raw_name}: larger than {MAX_ENTRY_BYTES} bytes"));
        }
        total = total.saturating_add(size);
        if total > MAX_TOTAL_BYTES {
            return Err(format!("more than {MAX_TOTAL_BYTES} bytes in all"));
        }
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        (&mut entry)
            .take(MAX_ENTRY_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("{raw_name}: {e}"))?;
        if name == "policy.wasm" {
            wasm = Some(bytes);
        } else if name == ".manifest" {
            revision = manifest_revision(&bytes).map_err(|e| format!(".manifest: {e}"))?;
        } else {
            let doc: Json =
                serde_json::from_slice(&bytes).map_err(|e| format!("{raw_name}: {e}"))?;
            let folder: Vec<&str> = name
                .trim_end_matches("data.json")
                .split('/')
                .filter(|part| !part.is_empty())
                .collect();
            merge_at(&mut data, &folder, doc).map_err(|e| format!("{raw_name}: {e}"))?;
        }
    }
    let wasm = wasm.ok_or_else(|| "no /policy.wasm in the bundle".to_string())?;
    Ok(Bundle {
        wasm,
        data,
        revision,
    })
}

/// `/a/./b` → `a/b`; refuses `..`.
fn normalize(name: &str) -> Result<String, String> {
    let mut parts = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(format!("{name}: `..` in a bundle path")),
            other => parts.push(other),
        }
    }
    Ok(parts.join("/"))
}

fn manifest_revision(bytes: &[u8]) -> Result<Option<String>, String> {
    let manifest: Json = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    match manifest.get("revision") {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(text)) if text.is_empty() => Ok(None),
        Some(Json::String(text)) => {
            // It becomes a metric label and a log field: keep it short and printable.
            if text.len() > 128 || text.chars().any(|c| c.is_control()) {
                return Err("revision must be at most 128 printable characters".into());
            }
            Ok(Some(text.clone()))
        }
        Some(_) => Err("revision must be a string".into()),
    }
}

/// Puts `doc` at `folder` inside `data`, merging objects; two values at one path conflict.
fn merge_at(data: &mut Json, folder: &[&str], doc: Json) -> Result<(), String> {
    let mut node = data;
    for key in folder {
        let Json::Object(map) = node else {
            return Err(format!("conflicts with a value at {key}"));
        };
        node = map
            .entry((*key).to_string())
            .or_insert_with(|| Json::Object(Map::new()));
    }
    merge(node, doc)
}

fn merge(into: &mut Json, doc: Json) -> Result<(), String> {
    match (into, doc) {
        (Json::Object(target), Json::Object(source)) => {
            for (key, value) in source {
                match target.get_mut(&key) {
                    Some(existing) => merge(existing, value)?,
                    None => {
                        target.insert(key, value);
                    }
                }
            }
            Ok(())
        }
        (Json::Object(target), _) if target.is_empty() => {
            Err("a data document must be a JSON object".into())
        }
        _ => Err("two data documents set the same key".into()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a `.tar.gz` in memory from (name, bytes) pairs, names written verbatim.
    pub(crate) fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        for (name, bytes) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_entry_type(tar::EntryType::Regular);
            // set_path refuses `..` and absolute names; OPA writes `/policy.wasm`: raw bytes.
            let raw = &mut header.as_old_mut().name;
            raw[..name.len()].copy_from_slice(name.as_bytes());
            header.set_cksum();
            builder.append(&header, *bytes).unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn reads_an_opa_style_bundle() {
        let bytes = tar_gz(&[
            ("/.manifest", br#"{"revision": "r-42", "roots": [""]}"#),
            ("/data.json", br#"{"a": {"x": 1}}"#),
            ("/a/b/data.json", br#"{"y": 2}"#),
            ("/policy.wasm", b"\0asm"),
            ("/tollgate.rego", b"package tollgate"),
        ]);
        let bundle = parse(&bytes[..]).unwrap();
        assert_eq!(bundle.wasm, b"\0asm");
        assert_eq!(bundle.revision.as_deref(), Some("r-42"));
        assert_eq!(
            bundle.data,
            serde_json::json!({"a": {"x": 1, "b": {"y": 2}}})
        );
    }

    #[test]
    fn refuses_a_bundle_without_policy_wasm() {
        let bytes = tar_gz(&[("/data.json", b"{}")]);
        assert!(parse(&bytes[..]).unwrap_err().contains("no /policy.wasm"));
    }

    #[test]
    fn refuses_dot_dot_paths() {
        let bytes = tar_gz(&[("../policy.wasm", b"\0asm")]);
        assert!(parse(&bytes[..]).unwrap_err().contains("`..`"));
    }

    #[test]
    fn refuses_garbage_and_bad_data() {
        assert!(parse(&b"not gzip"[..]).is_err());
        let bytes = tar_gz(&[("/policy.wasm", b"\0asm"), ("/data.json", b"{nope")]);
        assert!(parse(&bytes[..]).unwrap_err().contains("data.json"));
        let bytes = tar_gz(&[
            ("/policy.wasm", b"\0asm"),
            ("/.manifest", br#"{"revision": 7}"#),
        ]);
        assert!(parse(&bytes[..]).unwrap_err().contains("revision"));
    }

    #[test]
    fn without_a_manifest_there_is_no_revision() {
        let bytes = tar_gz(&[("policy.wasm", b"\0asm")]);
        let bundle = parse(&bytes[..]).unwrap();
        assert_eq!(bundle.revision, None);
        assert_eq!(bundle.data, serde_json::json!({}));
    }
}
