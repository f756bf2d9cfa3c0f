//! The schemas of a `schemas/` directory and the subject each is registered
//! under (`schemas/subjects.json`, see `schemas/README.md`).

use std::path::{Path, PathBuf};

use apache_avro::Schema;
use serde::Deserialize;

/// Name of the subject mapping file in a schemas directory.
pub const SUBJECTS_FILE: &str = "subjects.json";

/// One schema file and its subject.
#[derive(Debug, Clone)]
pub struct SchemaFile {
    /// Path of the `.avsc` file.
    pub path: PathBuf,
    /// Subject it is registered under.
    pub subject: String,
    /// Full name of the record.
    pub full_name: String,
    /// The file's text, registered as it is.
    pub text: String,
    /// The parsed schema.
    pub schema: Schema,
    /// Topics `subjects.json` says the record is published on (without the
    /// deployment's topic prefix); empty when it does not say.
    pub topics: Vec<String>,
}

/// Why a schemas directory could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, sagaflow_codes::Coded)]
#[error("SF-CODEC-021: {path}: {message}")]
pub struct SchemaSetError {
    /// The offending file.
    pub path: PathBuf,
    /// What is wrong.
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubjectsFile {
    #[serde(default)]
    #[allow(dead_code)]
    doc: Option<String>,
    subjects: Vec<SubjectEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubjectEntry {
    schema: PathBuf,
    subject: String,
    #[serde(default)]
    topics: Vec<String>,
    #[serde(default)]
    #[allow(dead_code)]
    strategy: Option<String>,
}

fn err(path: &Path, message: impl Into<String>) -> SchemaSetError {
    SchemaSetError {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn collect_avsc(dir: &Path, out: &mut Vec<PathBuf>, depth: usize) -> Result<(), SchemaSetError> {
    if depth > 16 {
        return Err(err(dir, "directory nesting deeper than 16 levels"));
    }
    let entries = std::fs::read_dir(dir).map_err(|e| err(dir, e.to_string()))?;
    for entry in entries {
        let path = entry.map_err(|e| err(dir, e.to_string()))?.path();
        if path.is_dir() {
            collect_avsc(&path, out, depth + 1)?;
        } else if path.extension().is_some_and(|e| e == "avsc") {
            out.push(path);
        }
    }
    Ok(())
}

fn load_file(
    path: &Path,
    subject: Option<String>,
    topics: Vec<String>,
) -> Result<SchemaFile, SchemaSetError> {
    let text = std::fs::read_to_string(path).map_err(|e| err(path, e.to_string()))?;
    let schema =
        Schema::parse_str(&text).map_err(|e| err(path, format!("invalid Avro schema: {e}")))?;
    let Schema::Record(record) = &schema else {
        return Err(err(path, "the top-level schema must be a record"));
    };
    let full_name = record.name.fullname(None);
    Ok(SchemaFile {
        path: path.to_path_buf(),
        subject: subject.unwrap_or_else(|| full_name.clone()),
        full_name,
        text,
        schema,
        topics,
    })
}

/// Loads every `.avsc` under `dir`. Subjects come from `dir/subjects.json`;
/// a schema it does not list is registered under its record's full name
/// (record-name strategy). Sorted by path.
pub fn load_dir(dir: &Path) -> Result<Vec<SchemaFile>, SchemaSetError> {
    let mapping_path = dir.join(SUBJECTS_FILE);
    let mapping: Vec<SubjectEntry> = if mapping_path.exists() {
        let text = std::fs::read_to_string(&mapping_path)
            .map_err(|e| err(&mapping_path, e.to_string()))?;
        serde_json::from_str::<SubjectsFile>(&text)
            .map_err(|e| err(&mapping_path, e.to_string()))?
            .subjects
    } else {
        Vec::new()
    };
    let mut paths = Vec::new();
    collect_avsc(dir, &mut paths, 0)?;
    paths.sort();
    for entry in &mapping {
        if !paths.contains(&dir.join(&entry.schema)) {
            return Err(err(
                &mapping_path,
                format!(
                    "lists `{}`, which is not a .avsc file in {}",
                    entry.schema.display(),
                    dir.display()
                ),
            ));
        }
    }
    paths
        .iter()
        .map(|path| {
            let entry = mapping.iter().find(|e| dir.join(&e.schema) == *path);
            load_file(
                path,
                entry.map(|e| e.subject.clone()),
                entry.map(|e| e.topics.clone()).unwrap_or_default(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_the_repository_schemas_with_their_subjects() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas");
        let files = load_dir(&dir).unwrap();
        assert_eq!(files.len(), 12);
        let reply = files
            .iter()
            .find(|f| f.full_name == "io.sagaflow.v1.Reply")
            .unwrap();
        assert_eq!(reply.subject, "sagaflow.replies-value");
        let command = files
            .iter()
            .find(|f| f.full_name == "io.sagaflow.v1.Command")
            .unwrap();
        assert_eq!(command.subject, "io.sagaflow.v1.Command");
        let placed = files
            .iter()
            .find(|f| f.full_name == "io.sagaflow.examples.orders.OrderPlaced")
            .unwrap();
        assert_eq!(placed.topics, ["orders.events"]);
    }

    #[test]
    fn unlisted_schema_defaults_to_record_name_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("A.avsc"),
            r#"{"type":"record","name":"A","namespace":"x","fields":[]}"#,
        )
        .unwrap();
        assert_eq!(load_dir(dir.path()).unwrap()[0].subject, "x.A");
        std::fs::write(dir.path().join("B.avsc"), "{").unwrap();
        let e = load_dir(dir.path()).unwrap_err();
        assert!(e.path.ends_with("B.avsc"), "{e}");
    }
}
