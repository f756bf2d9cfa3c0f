//! Claims in docs/ and deploy/ that a test can check, checked: error codes,
//! API queries in runbooks, and that the Kubernetes base deploys an adapter
//! for every service the shipped sagas call. These read files only (no
//! broker), so they run in well under a second.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use yaml_rust2::{Yaml, YamlLoader};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every file under `dir` (recursively) whose name ends with one of `exts`.
fn files(dir: &Path, exts: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if exts
                .iter()
                .any(|x| path.to_string_lossy().ends_with(&format!(".{x}")))
            {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// `SF-AREA-NNN` codes in `text` (exactly three digits, not part of a
/// longer number).
fn codes(text: &str) -> BTreeSet<String> {
    let b = text.as_bytes();
    let mut out = BTreeSet::new();
    let mut i = 0;
    while let Some(at) = text[i..].find("SF-") {
        let start = i + at;
        let mut j = start + 3;
        while j < b.len() && b[j].is_ascii_uppercase() {
            j += 1;
        }
        let area_len = j - (start + 3);
        if area_len > 0
            && j + 4 <= b.len()
            && b[j] == b'-'
            && b[j + 1..j + 4].iter().all(u8::is_ascii_digit)
            && !b.get(j + 4).is_some_and(u8::is_ascii_digit)
        {
            out.insert(text[start..j + 4].to_owned());
        }
        i = start + 3;
    }
    out
}

#[test]
fn code_scanner_finds_codes_and_nothing_else() {
    let found = codes("[SF-ORCH-020] x SF-API-4000 SF--001 sf-api-001 (SF-HTTP-001)");
    assert_eq!(
        found.into_iter().collect::<Vec<_>>(),
        ["SF-HTTP-001", "SF-ORCH-020"]
    );
}

#[test]
fn every_error_code_in_the_source_is_documented_and_every_documented_code_exists() {
    let mut in_source: BTreeMap<String, PathBuf> = BTreeMap::new();
    for dir in fs::read_dir(root().join("crates")).unwrap() {
        let src = dir.unwrap().path().join("src");
        if !src.is_dir() {
            continue;
        }
        for f in files(&src, &["rs"]) {
            for c in codes(&fs::read_to_string(&f).unwrap()) {
                in_source.entry(c).or_insert_with(|| f.clone());
            }
        }
    }
    assert!(
        in_source.len() > 50,
        "the scan found too few codes: {in_source:?}"
    );
    let documented = codes(&fs::read_to_string(root().join("docs/errors.md")).unwrap());
    let undocumented: Vec<String> = in_source
        .iter()
        .filter(|(c, _)| !documented.contains(*c))
        .map(|(c, f)| format!("{c} ({})", f.display()))
        .collect();
    let stale: Vec<&String> = documented
        .iter()
        .filter(|c| !in_source.contains_key(*c))
        .collect();
    assert!(
        undocumented.is_empty(),
        "codes used in crates/*/src but missing from docs/errors.md: {undocumented:?}"
    );
    assert!(
        stale.is_empty(),
        "codes in docs/errors.md that no crate uses any more: {stale:?}"
    );
}

/// Query parameters the orchestrator's API reads, per path pattern
/// (crates/orchestrator/src/http.rs).
fn accepted_params(path: &str) -> Option<&'static [&'static str]> {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    match segments.as_slice() {
        ["", "v1", "sagas"] => Some(&["type", "status", "limit"]),
        ["", "v1", "sagas", _] => Some(&["wait"]),
        _ => None,
    }
}

#[test]
fn every_api_query_in_docs_and_deploy_uses_parameters_the_api_reads() {
    let mut checked = 0;
    let mut wrong = Vec::new();
    let mut sources = files(&root().join("docs"), &["md", "json"]);
    sources.extend(files(
        &root().join("deploy"),
        &["yml", "yaml", "json", "md"],
    ));
    sources.push(root().join("README.md"));
    for f in sources {
        let text = fs::read_to_string(&f).unwrap();
        let mut rest = text.as_str();
        while let Some(at) = rest.find("/v1/") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| c.is_whitespace() || "`\"')],<>".contains(c))
                .unwrap_or(tail.len());
            let url = &tail[..end];
            rest = &tail[end.max(1)..];
            let Some((path, query)) = url.split_once('?') else {
                continue;
            };
            let Some(allowed) = accepted_params(path) else {
                wrong.push(format!("{}: `{url}`: no query on this path", f.display()));
                continue;
            };
            for pair in query.split('&') {
                let name = pair.split('=').next().unwrap_or_default();
                checked += 1;
                if !allowed.contains(&name) {
                    wrong.push(format!(
                        "{}: `{url}`: `{name}` is not read (the API reads {allowed:?})",
                        f.display()
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert!(checked > 0, "no API query found in docs/ or deploy/");
}

fn yaml_docs(path: &Path) -> Vec<Yaml> {
    let text = fs::read_to_string(path).unwrap();
    YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `(service, operation)` of every call and compensation in a saga.
fn calls(node: &Yaml, out: &mut BTreeSet<(String, String)>) {
    match node {
        Yaml::Hash(h) => {
            if let (Some(service), Some(op)) =
                (node["service"].as_str(), node["operation"].as_str())
            {
                out.insert((service.to_owned(), op.to_owned()));
                if let Some(op) = node["compensate"]["operation"].as_str() {
                    let service = node["compensate"]["service"].as_str().unwrap_or(service);
                    out.insert((service.to_owned(), op.to_owned()));
                }
            }
            for v in h.values() {
                calls(v, out);
            }
        }
        Yaml::Array(a) => a.iter().for_each(|v| calls(v, out)),
        _ => {}
    }
}

fn shipped_calls() -> BTreeSet<(String, String)> {
    let mut used = BTreeSet::new();
    for f in files(&root().join("topology/sagas"), &["yaml"]) {
        for d in yaml_docs(&f) {
            calls(&d, &mut used);
        }
    }
    used
}

fn k8s_objects() -> Vec<Yaml> {
    files(&root().join("deploy/k8s"), &["yaml"])
        .iter()
        .filter(|f| !f.ends_with("kustomization.yaml"))
        .flat_map(|f| yaml_docs(f))
        .collect()
}

fn named<'a>(objects: &'a [Yaml], kind: &str, name: &str) -> Option<&'a Yaml> {
    objects
        .iter()
        .find(|o| o["kind"].as_str() == Some(kind) && o["metadata"]["name"].as_str() == Some(name))
}

#[test]
fn kubernetes_base_deploys_an_adapter_for_every_service_the_shipped_sagas_call() {
    let used = shipped_calls();
    assert!(
        used.len() > 10,
        "too few calls found in topology/sagas: {used:?}"
    );
    let objects = k8s_objects();
    let kustomization = fs::read_to_string(root().join("deploy/k8s/kustomization.yaml")).unwrap();

    // The orchestrator's services catalogue lists them all (a missing
    // entry makes it refuse to start with SF-DEF-004).
    let catalogue = named(&objects, "ConfigMap", "sagaflow-services").expect("sagaflow-services");
    let catalogue = YamlLoader::load_from_str(catalogue["data"]["services.yaml"].as_str().unwrap())
        .unwrap()
        .remove(0);
    let listed: BTreeSet<&str> = catalogue["services"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();

    let mut problems = Vec::new();
    for (service, op) in &used {
        if !listed.contains(service.as_str()) {
            problems.push(format!(
                "`{service}` is not in the sagaflow-services ConfigMap"
            ));
        }
        let name = format!("adapter-{service}");
        let Some(deployment) = named(&objects, "Deployment", &name) else {
            problems.push(format!("no Deployment `{name}` for service `{service}`"));
            continue;
        };
        let volumes = deployment["spec"]["template"]["spec"]["volumes"]
            .as_vec()
            .unwrap();
        let config_name = volumes
            .iter()
            .find_map(|v| v["configMap"]["name"].as_str())
            .unwrap_or_default();
        let Some(config) = named(&objects, "ConfigMap", config_name) else {
            problems.push(format!(
                "`{name}` mounts a missing ConfigMap `{config_name}`"
            ));
            continue;
        };
        let adapter = YamlLoader::load_from_str(config["data"]["adapter.yaml"].as_str().unwrap())
            .unwrap()
            .remove(0);
        let file = adapter["service"].as_str().unwrap_or_default();
        let Some(service_file) = config["data"][file].as_str() else {
            problems.push(format!("`{config_name}` has no `{file}`"));
            continue;
        };
        let def = YamlLoader::load_from_str(service_file).unwrap().remove(0);
        if def["service"].as_str() != Some(service.as_str()) {
            problems.push(format!("`{config_name}`'s {file} is not for `{service}`"));
        }
        if def["operations"][op.as_str()].is_badvalue() {
            problems.push(format!(
                "`{config_name}` has no operation `{op}` of `{service}`"
            ));
        }
        if named(&objects, "PodDisruptionBudget", &name).is_none() {
            problems.push(format!("no PodDisruptionBudget `{name}`"));
        }
    }
    for f in files(&root().join("deploy/k8s"), &["yaml"]) {
        let file = f.file_name().unwrap().to_string_lossy().into_owned();
        if file != "kustomization.yaml" && !kustomization.contains(&format!("- {file}")) {
            problems.push(format!("kustomization.yaml does not list {file}"));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn kubernetes_orchestrator_takes_its_group_instance_id_from_the_pod_name() {
    let objects = k8s_objects();
    let set = named(&objects, "StatefulSet", "orchestrator").expect("the orchestrator StatefulSet");
    let pod = &set["spec"]["template"]["spec"];
    assert!(
        pod["initContainers"].is_badvalue(),
        "no init container is needed to write the config"
    );
    let env = pod["containers"][0]["env"].as_vec().unwrap();
    let var = env
        .iter()
        .find(|e| e["name"].as_str() == Some("SAGAFLOW_KAFKA__PROPERTIES__GROUP_INSTANCE_ID"))
        .expect("SAGAFLOW_KAFKA__PROPERTIES__GROUP_INSTANCE_ID in the orchestrator's env");
    assert_eq!(
        var["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
        Some("metadata.name")
    );
    let pdb = named(&objects, "PodDisruptionBudget", "orchestrator").expect("orchestrator PDB");
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        set["spec"]["selector"]["matchLabels"]
    );
}

#[test]
fn demo_doc_says_dev_runs_every_worked_saga() {
    let demo = fs::read_to_string(root().join("docs/demo.md")).unwrap();
    assert!(
        !demo.contains("order-checkout saga only"),
        "docs/demo.md still says `dev` runs order-checkout only"
    );
    for f in files(&root().join("topology/sagas"), &["yaml"]) {
        let saga = f.file_stem().unwrap().to_string_lossy().into_owned();
        assert!(demo.contains(&saga), "docs/demo.md does not name `{saga}`");
    }
}

/// Metric names registered in `crates/*/src` (string literals
/// `"sagaflow_…"` outside `#[cfg(test)]` modules).
fn metrics_in_source() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for dir in fs::read_dir(root().join("crates")).unwrap() {
        let src = dir.unwrap().path().join("src");
        if !src.is_dir() {
            continue;
        }
        for f in files(&src, &["rs"]) {
            let text = fs::read_to_string(&f).unwrap();
            let text = text.split("#[cfg(test)]").next().unwrap_or_default();
            let mut rest = text;
            while let Some(at) = rest.find("\"sagaflow_") {
                let tail = &rest[at + 1..];
                let end = tail
                    .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                    .unwrap_or(tail.len());
                if tail[end..].starts_with('"') {
                    out.insert(tail[..end].to_owned());
                }
                rest = &tail[end..];
            }
        }
    }
    out
}

/// Metrics that need no panel of their own, and why.
const NO_PANEL: &[(&str, &str)] = &[];

#[test]
fn every_exported_metric_has_a_dashboard_panel_and_dashboards_pick_their_data_source() {
    let metrics = metrics_in_source();
    assert!(
        metrics.contains("sagaflow_sagas_started_total")
            && metrics.contains("sagaflow_adapter_calls_total")
            && metrics.contains("sagaflow_build_info"),
        "the metric scan is broken: {metrics:?}"
    );
    let mut exprs = String::new();
    let mut problems = Vec::new();
    for f in files(&root().join("deploy/grafana/dashboards"), &["json"]) {
        let d: serde_json::Value = serde_json::from_str(&fs::read_to_string(&f).unwrap()).unwrap();
        let name = f.display();
        let vars = d["templating"]["list"].as_array().unwrap();
        if !vars.iter().any(|v| {
            v["type"] == "datasource" && v["name"] == "datasource" && v["query"] == "prometheus"
        }) {
            problems.push(format!(
                "{name}: no `datasource` variable of type prometheus"
            ));
        }
        let text = d.to_string();
        let mut rest = text.as_str();
        while let Some(at) = rest.find("\"uid\":") {
            let tail = &rest[at + 6..];
            let value = tail.split('"').nth(1).unwrap_or_default();
            if d["uid"] != value && value != "${datasource}" {
                problems.push(format!("{name}: a data source pinned to uid `{value}`"));
            }
            rest = tail;
        }
        for p in d["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().unwrap() {
                exprs.push_str(t["expr"].as_str().unwrap());
                exprs.push('\n');
            }
        }
    }
    for m in &metrics {
        if !NO_PANEL.iter().any(|(n, _)| n == m) && !exprs.contains(m.as_str()) {
            problems.push(format!("no dashboard panel queries `{m}`"));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// Compose services without a healthcheck, and why.
const NO_HEALTHCHECK: &[(&str, &str)] = &[(
    "demo-events",
    "a publisher that serves nothing; a check could only restate that its process runs",
)];

#[test]
fn every_compose_service_has_a_healthcheck_and_waits_for_healthy_dependencies() {
    let compose = yaml_docs(&root().join("docker-compose.yml")).remove(0);
    let services = compose["services"].as_hash().expect("services");
    assert!(services.len() > 15, "{} services", services.len());
    let mut problems = Vec::new();
    for (name, service) in services {
        let name = name.as_str().unwrap();
        // `<<: *adapter` is kept as a key by the parser: look through it.
        let get = |key: &str| {
            let own = &service[key];
            if own.is_badvalue() {
                &service["<<"][key]
            } else {
                own
            }
        };
        let exempt = NO_HEALTHCHECK.iter().any(|(n, _)| *n == name);
        let check = get("healthcheck");
        if !exempt && check["test"].as_vec().is_none_or(|t| t.len() < 2) {
            problems.push(format!("`{name}` has no healthcheck test"));
        }
        if let Some(deps) = get("depends_on").as_hash() {
            for (dep, how) in deps {
                let dep = dep.as_str().unwrap();
                let dep_exempt = NO_HEALTHCHECK.iter().any(|(n, _)| *n == dep);
                if !dep_exempt && how["condition"].as_str() != Some("service_healthy") {
                    problems.push(format!("`{name}` does not wait for `{dep}` to be healthy"));
                }
            }
        } else if !get("depends_on").is_badvalue() {
            problems.push(format!(
                "`{name}`: depends_on as a list (no health condition)"
            ));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// The README's layout names every crate of the workspace, and no crate
/// that is gone.
#[test]
fn readme_layout_names_every_crate() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let listed: BTreeSet<String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `crates/"))
        .filter_map(|l| l.split_once('`'))
        .map(|(name, _)| name.trim_end_matches('/').to_owned())
        .collect();
    let crates: BTreeSet<String> = std::fs::read_dir(root().join("crates"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("Cargo.toml").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!listed.is_empty(), "the layout table was not found");
    let missing: Vec<_> = crates.difference(&listed).collect();
    let gone: Vec<_> = listed.difference(&crates).collect();
    assert!(
        missing.is_empty() && gone.is_empty(),
        "README layout: crates not listed {missing:?}, listed but absent {gone:?}"
    );
}
