//! `sagaflow topology asyncapi` on the checked-in topology, validated by
//! the official AsyncAPI parser (`@asyncapi/parser` with the Avro schema
//! parser, run by node). The parser lives in `$HOME/.cache/sagaflow/asyncapi`;
//! `.ci/run` installs it, and this test installs it with npm when missing.
//! Without node/npm it reports the skip on stderr, unless
//! `SAGAFLOW_REQUIRE_ASYNCAPI=1` (set by `.ci/run`) makes that a failure.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn generate(extra: &[&str]) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("asyncapi.json");
    let status = Command::new(env!("CARGO_BIN_EXE_sagaflow"))
        .args(["topology", "asyncapi", "--dir"])
        .arg(repo().join("topology"))
        .arg("--schemas")
        .arg(repo().join("schemas"))
        .arg("--out")
        .arg(&out)
        .args(extra)
        .status()
        .unwrap();
    assert!(status.success());
    (tmp, out)
}

/// `node_modules` holding the parser, installed on first use.
fn parser_modules() -> Result<PathBuf, String> {
    let home = std::env::var_os("HOME").ok_or("HOME is not set")?;
    let dir = Path::new(&home).join(".cache/sagaflow/asyncapi");
    let modules = dir.join("node_modules");
    let present = |m: &Path| {
        m.join("@asyncapi/parser/package.json").exists()
            && m.join("@asyncapi/avro-schema-parser/package.json").exists()
    };
    if present(&modules) {
        return Ok(modules);
    }
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let status = Command::new("npm")
        .current_dir(&dir)
        .args([
            "install",
            "--no-audit",
            "--no-fund",
            "@asyncapi/parser@3",
            "@asyncapi/avro-schema-parser@3",
        ])
        .status()
        .map_err(|e| format!("npm: {e}"))?;
    if status.success() && present(&modules) {
        Ok(modules)
    } else {
        Err(format!("npm install into {} failed", dir.display()))
    }
}

#[test]
fn the_document_is_valid_asyncapi_3_for_the_official_parser() {
    let (_tmp, out) = generate(&[]);
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(doc["asyncapi"], "3.0.0");
    let modules = match parser_modules() {
        Ok(m) => m,
        Err(why) if std::env::var_os("SAGAFLOW_REQUIRE_ASYNCAPI").is_none() => {
            eprintln!("SKIPPED the AsyncAPI parser check: {why}");
            return;
        }
        Err(why) => panic!("the AsyncAPI parser is required (SAGAFLOW_REQUIRE_ASYNCAPI): {why}"),
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/asyncapi/validate.cjs");
    let run = |file: &Path| {
        let output = Command::new("node")
            .arg(&script)
            .arg(file)
            .env("NODE_PATH", &modules)
            .output()
            .expect("node runs");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr),
        )
    };
    let (code, text) = run(&out);
    eprintln!("{text}");
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("VALID: AsyncAPI 3.0.0"), "{text}");
    assert!(!text.lines().any(|l| l.starts_with("error")), "{text}");

    // The validator does reject a broken document: a message whose Avro
    // payload is not a valid Avro schema.
    let mut broken = doc.clone();
    broken["components"]["messages"]["Command"]["payload"]["schema"]["fields"][0]["type"] =
        serde_json::json!("no-such-type");
    let bad = out.with_file_name("broken.json");
    std::fs::write(&bad, broken.to_string()).unwrap();
    let (code, text) = run(&bad);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("INVALID"), "{text}");
}

#[test]
fn a_prefixed_document_names_prefixed_topics() {
    let (_tmp, out) = generate(&["--prefix", "staging."]);
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let addresses: Vec<&str> = doc["channels"]
        .as_object()
        .unwrap()
        .values()
        .map(|c| c["address"].as_str().unwrap())
        .collect();
    assert!(
        addresses.contains(&"staging.sagaflow.commands.workspaces"),
        "{addresses:?}"
    );
    assert!(
        addresses.contains(&"staging.sagaflow.replies"),
        "{addresses:?}"
    );
    assert!(
        addresses.iter().all(|a| a.starts_with("staging.")),
        "{addresses:?}"
    );
}
