//! `sagaflow adapter scaffold`: a declarative adapter definition (see
//! docs/adapters.md) and its services.yaml entry, written from a contract:
//! an OpenAPI 3 document (JSON or YAML) or a WSDL 1.1 file (SOAP 1.1/1.2,
//! document/literal). The result is a starting point that validates and
//! runs; what the contract cannot say (which secret to use, which SOAP
//! faults are business failures, optional fields) is left as comments.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use clap::Args;
use serde_json::Value;

use crate::exit::{CliResult, Failure};

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("contract").required(true).args(["openapi", "wsdl"])))]
pub(crate) struct ScaffoldArgs {
    /// An OpenAPI 3.x document (YAML or JSON).
    #[arg(long, value_name = "FILE")]
    openapi: Option<PathBuf>,
    /// A WSDL 1.1 document.
    #[arg(long, value_name = "FILE")]
    wsdl: Option<PathBuf>,
    /// The service name (metrics, topics: `sagaflow.commands.<service>`).
    #[arg(long)]
    service: String,
    /// Base URL of the backend; default: the contract's first server /
    /// SOAP address.
    #[arg(long, value_name = "URL")]
    base_url: Option<String>,
    /// Write `<service>.service.yaml` into this directory (default: the
    /// current one).
    #[arg(long, value_name = "DIR", default_value = ".")]
    out: PathBuf,
    /// Add the service to this services.yaml when it is not listed yet
    /// (default: print the entry).
    #[arg(long, value_name = "FILE")]
    services: Option<PathBuf>,
}

/// What scaffolding produced.
#[derive(Debug)]
pub(crate) struct Scaffold {
    pub(crate) yaml: String,
    pub(crate) description: String,
}

pub(crate) fn run(args: &ScaffoldArgs) -> CliResult {
    let service = &args.service;
    if service.is_empty()
        || !service
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(Failure::Usage(format!(
            "--service `{service}`: use ASCII letters, digits, `-`, `_` or `.`"
        )));
    }
    let (file, result) = match (&args.openapi, &args.wsdl) {
        (Some(f), _) => (
            f,
            openapi(
                &read(f)?,
                &f.display().to_string(),
                service,
                args.base_url.as_deref(),
            ),
        ),
        (None, Some(f)) => (
            f,
            wsdl(
                &read(f)?,
                &f.display().to_string(),
                service,
                args.base_url.as_deref(),
            ),
        ),
        (None, None) => unreachable!("clap requires one of --openapi or --wsdl"),
    };
    let scaffold = result.map_err(Failure::Usage)?;
    let name = format!("{service}.service.yaml");
    let out = args.out.join(&name);
    // The generated definition must load like any other.
    sagaflow_adapter::config::parse_str(&scaffold.yaml, &name)
        .and_then(|raw| raw.validate(&name))
        .map_err(|e| {
            Failure::Usage(format!(
                "the definition scaffolded from {} does not validate ({e}); please report this",
                file.display()
            ))
        })?;
    std::fs::write(&out, &scaffold.yaml)
        .map_err(|e| Failure::Usage(format!("cannot write {}: {e}", out.display())))?;
    println!("wrote {}", out.display());
    let entry = format!(
        "  - name: {service}\n    description: {}\n",
        yaml_str(&scaffold.description)
    );
    match &args.services {
        None => print!("services.yaml entry:\n{entry}"),
        Some(path) => {
            let text = read(path)?;
            let listed = text
                .lines()
                .any(|l| l.trim() == format!("- name: {service}"));
            if listed {
                println!("{} lists `{service}` already", path.display());
            } else {
                let mut text = text;
                if !text.ends_with('\n') {
                    text.push('\n');
                }
                text.push_str(&entry);
                std::fs::write(path, text)
                    .map_err(|e| Failure::Usage(format!("cannot write {}: {e}", path.display())))?;
                println!("added `{service}` to {}", path.display());
            }
        }
    }
    Ok(())
}

fn read(path: &std::path::Path) -> CliResult<String> {
    std::fs::read_to_string(path)
        .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))
}

/// A YAML double-quoted scalar (JSON string syntax is valid YAML).
fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// An operation name: lowercase words joined by `-`.
fn kebab(s: &str) -> String {
    let mut out = String::new();
    let mut prev_lower = false;
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            if c.is_ascii_uppercase() && prev_lower && !out.ends_with('-') {
                out.push('-');
            }
            prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
            out.push(c.to_ascii_lowercase());
        } else {
            if !out.is_empty() && !out.ends_with('-') {
                out.push('-');
            }
            prev_lower = false;
        }
    }
    out.trim_matches('-').to_owned()
}

/// A name usable after `input.` in a template.
fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `{{ input.x }}`, or `{{ input["x-y"] }}` for names that are not
/// identifiers.
fn input_ref(name: &str) -> String {
    if is_ident(name) {
        format!("{{{{ input.{name} }}}}")
    } else {
        format!("{{{{ input[{}] }}}}", yaml_str(name).replace('"', "'"))
    }
}

fn env_name(service: &str, what: &str) -> String {
    let s: String = service
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("{s}_{what}")
}

// ------------------------------------------------------------------ OpenAPI

/// The `auth:` block for one security scheme, or why it cannot be one.
fn auth_block(s: &Value, service: &str) -> Result<String, String> {
    let scheme = s["scheme"].as_str().map(str::to_ascii_lowercase);
    match (s["type"].as_str(), scheme.as_deref()) {
        (Some("apiKey"), _) => {
            let key = yaml_str(s["name"].as_str().unwrap_or("X-Api-Key"));
            let env = env_name(service, "API_KEY");
            match s["in"].as_str() {
                Some("header") => Ok(format!(
                    "auth:\n  type: api-key\n  header: {key}\n  secret: {{ env: {env} }}\n"
                )),
                Some("query") => Ok(format!(
                    "auth:\n  type: api-key\n  query: {key}\n  secret: {{ env: {env} }}\n"
                )),
                other => Err(format!(
                    "an API key in `{}` cannot be expressed (header or query only)",
                    other.unwrap_or("?")
                )),
            }
        }
        (Some("http"), Some("bearer")) => Ok(format!(
            "auth:\n  type: bearer\n  token: {{ env: {} }}\n",
            env_name(service, "TOKEN")
        )),
        (Some("http"), Some("basic")) => Ok(format!(
            "auth:\n  type: basic\n  username: CHANGE-ME\n  password: {{ env: {} }}\n",
            env_name(service, "PASSWORD")
        )),
        (Some("oauth2"), _) => {
            let flow = s.pointer("/flows/clientCredentials").ok_or(
                "OAuth2 without a clientCredentials flow (e.g. implicit or authorization code: a person logs in) cannot be used by a service",
            )?;
            let mut a = format!(
                "auth:\n  type: oauth2-client-credentials\n  token-url: {}\n  client-id: CHANGE-ME\n  client-secret: {{ env: {} }}\n",
                yaml_str(flow["tokenUrl"].as_str().unwrap_or_default()),
                env_name(service, "CLIENT_SECRET")
            );
            let scopes: Vec<&str> = flow["scopes"]
                .as_object()
                .map(|o| o.keys().map(String::as_str).collect())
                .unwrap_or_default();
            if !scopes.is_empty() {
                writeln!(a, "  scope: {}", yaml_str(&scopes.join(" "))).ok();
            }
            Ok(a)
        }
        (t, _) => Err(format!(
            "type `{}` cannot be expressed: an adapter authenticates with an API key, basic, bearer or OAuth2 client credentials",
            t.unwrap_or("?")
        )),
    }
}

/// Follows a local `$ref` (`#/components/schemas/Pet`), a few levels deep.
fn resolve<'a>(doc: &'a Value, mut v: &'a Value) -> &'a Value {
    for _ in 0..8 {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) if r.starts_with("#/") => match doc.pointer(&r[1..]) {
                Some(target) => v = target,
                None => return v,
            },
            _ => return v,
        }
    }
    v
}

fn json_content<'a>(doc: &'a Value, holder: &'a Value) -> Option<&'a Value> {
    let content = resolve(doc, holder).get("content")?.as_object()?;
    content
        .iter()
        .find(|(ct, _)| ct.as_str() == "application/json" || ct.ends_with("+json"))
        .and_then(|(_, media)| media.get("schema"))
        .map(|s| resolve(doc, s))
}

fn required_props(schema: &Value) -> (Vec<String>, Vec<String>) {
    let props: Vec<String> = schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default();
    let required: Vec<String> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| {
            r.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let optional = props
        .iter()
        .filter(|p| !required.contains(p))
        .cloned()
        .collect();
    (
        required.into_iter().filter(|r| props.contains(r)).collect(),
        optional,
    )
}

/// Scaffolds from an OpenAPI 3 document.
pub(crate) fn openapi(
    text: &str,
    file: &str,
    service: &str,
    base_url: Option<&str>,
) -> Result<Scaffold, String> {
    let (doc, _) =
        sagaflow_config::load(text).map_err(|e| format!("{file}:{}: {}", e.position, e.message))?;
    let version = doc["openapi"].as_str().unwrap_or_default();
    if !version.starts_with("3.") {
        return Err(format!(
            "{file}: not an OpenAPI 3 document (`openapi: {version}`); Swagger 2.0 can be converted first"
        ));
    }
    let title = doc
        .pointer("/info/title")
        .and_then(Value::as_str)
        .unwrap_or(service);
    let base = match base_url {
        Some(b) => b.to_owned(),
        None => {
            let server = doc.pointer("/servers/0").cloned().unwrap_or(Value::Null);
            let mut url = server["url"].as_str().unwrap_or("").to_owned();
            if let Some(vars) = server["variables"].as_object() {
                for (k, v) in vars {
                    let d = v["default"].as_str().unwrap_or_default();
                    url = url.replace(&format!("{{{k}}}"), d);
                }
            }
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!(
                    "{file}: the first server URL `{url}` is not absolute; pass --base-url"
                ));
            }
            url
        }
    };
    let mut y = String::new();
    let mut notes: Vec<String> = Vec::new();
    writeln!(
        y,
        "# Scaffolded by `sagaflow adapter scaffold --openapi {file}` from \"{}\" {}.",
        title.replace('"', "'"),
        doc.pointer("/info/version")
            .and_then(Value::as_str)
            .unwrap_or("")
    )
    .ok();
    writeln!(y, "# Review it: see docs/adapters.md for every key.").ok();
    writeln!(y, "service: {service}\nbase-urls:\n  - {}", yaml_str(&base)).ok();
    // Auth: the first scheme an adapter can use, from the global
    // `security`, then the operations' `security`, then the declared ones.
    let schemes = doc
        .pointer("/components/securitySchemes")
        .and_then(Value::as_object);
    if let Some(schemes) = schemes {
        let mut candidates: Vec<String> = Vec::new();
        let mut add = |list: Option<&Value>| {
            for req in list.and_then(Value::as_array).into_iter().flatten() {
                for k in req.as_object().into_iter().flat_map(|o| o.keys()) {
                    if !candidates.contains(k) {
                        candidates.push(k.clone());
                    }
                }
            }
        };
        add(doc.get("security"));
        for item in doc["paths"]
            .as_object()
            .into_iter()
            .flat_map(|p| p.values())
        {
            for op in item.as_object().into_iter().flat_map(|o| o.values()) {
                add(op.get("security"));
            }
        }
        for k in schemes.keys() {
            if !candidates.contains(k) {
                candidates.push(k.clone());
            }
        }
        let mut chosen = None;
        for name in &candidates {
            let Some(s) = schemes.get(name) else { continue };
            match auth_block(resolve(&doc, s), service) {
                Ok(block) if chosen.is_none() => {
                    writeln!(y, "# auth from security scheme `{name}`").ok();
                    y.push_str(&block);
                    chosen = Some(name.clone());
                }
                Ok(_) => notes.push(format!(
                    "security scheme `{name}`: an adapter uses one scheme; `{}` was chosen",
                    chosen.as_deref().unwrap_or("")
                )),
                Err(why) => notes.push(format!("security scheme `{name}`: {why}")),
            }
        }
    }
    writeln!(y, "operations:").ok();
    let paths = doc["paths"]
        .as_object()
        .ok_or_else(|| format!("{file}: no `paths`"))?;
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    let mut count = 0;
    for (path, item) in paths {
        let item = resolve(&doc, item);
        let shared_params: Vec<Value> = item["parameters"].as_array().cloned().unwrap_or_default();
        for method in ["get", "put", "post", "delete", "patch"] {
            let Some(op) = item.get(method) else { continue };
            count += 1;
            let mut name = op["operationId"]
                .as_str()
                .map(kebab)
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| kebab(&format!("{method} {path}")));
            let seen = names.entry(name.clone()).or_default();
            *seen += 1;
            if *seen > 1 {
                name = format!("{name}-{seen}");
            }
            let mut o = String::new();
            if let Some(summary) = op["summary"].as_str() {
                writeln!(o, "  # {}", summary.lines().next().unwrap_or("")).ok();
            }
            writeln!(
                o,
                "  {name}:\n    rest:\n      method: {}",
                method.to_ascii_uppercase()
            )
            .ok();
            // Path: `{petId}` -> `{{ input.petId }}`.
            let mut p = String::new();
            let mut rest = path.as_str();
            while let Some(start) = rest.find('{') {
                p.push_str(&rest[..start]);
                let Some(end) = rest[start..].find('}') else {
                    break;
                };
                p.push_str(&input_ref(&rest[start + 1..start + end]));
                rest = &rest[start + end + 1..];
            }
            p.push_str(rest);
            writeln!(o, "      path: {}", yaml_str(&p)).ok();
            let params: Vec<Value> = shared_params
                .iter()
                .chain(op["parameters"].as_array().into_iter().flatten())
                .map(|v| resolve(&doc, v).clone())
                .collect();
            let mut query = String::new();
            let mut headers = String::new();
            let mut optional = Vec::new();
            for prm in &params {
                let (Some(pname), Some(loc)) = (prm["name"].as_str(), prm["in"].as_str()) else {
                    continue;
                };
                let required = prm["required"].as_bool().unwrap_or(false);
                match loc {
                    "query" if required => writeln!(
                        query,
                        "        {}: {}",
                        yaml_str(pname),
                        yaml_str(&input_ref(pname))
                    )
                    .unwrap_or(()),
                    "header" if required => {
                        let lower = pname.to_ascii_lowercase();
                        if matches!(
                            lower.as_str(),
                            "host"
                                | "authorization"
                                | "idempotency-key"
                                | "content-length"
                                | "traceparent"
                        ) {
                            continue;
                        }
                        writeln!(
                            headers,
                            "        {}: {}",
                            yaml_str(pname),
                            yaml_str(&input_ref(pname))
                        )
                        .unwrap_or(())
                    }
                    "query" | "header" => optional.push(format!("{loc} `{pname}`")),
                    _ => {}
                }
            }
            if !query.is_empty() {
                writeln!(o, "      query:\n{}", query.trim_end()).ok();
            }
            if !headers.is_empty() {
                writeln!(o, "      headers:\n{}", headers.trim_end()).ok();
            }
            if let Some(body) = op.get("requestBody") {
                match json_content(&doc, body) {
                    Some(schema) if schema.get("properties").is_some() => {
                        let (required, opt) = required_props(schema);
                        if required.is_empty() {
                            writeln!(o, "      body: \"{{{{ input }}}}\"        # the whole input; no property is required").ok();
                        } else {
                            writeln!(o, "      body:").ok();
                            for r in &required {
                                writeln!(o, "        {}: {}", yaml_str(r), yaml_str(&input_ref(r)))
                                    .ok();
                            }
                        }
                        optional.extend(opt.iter().map(|p| format!("body `{p}`")));
                    }
                    Some(_) => writeln!(o, "      body: \"{{{{ input }}}}\"").unwrap_or(()),
                    None => notes.push(format!(
                        "operation `{name}`: the request body is not JSON; it is not sent"
                    )),
                }
            }
            if !optional.is_empty() {
                // Templates fail on undefined input, so optional fields are
                // not rendered; add the ones a saga passes.
                let mut line = String::from("      # optional, not sent:");
                for opt in &optional {
                    line.push(' ');
                    line.push_str(opt);
                }
                writeln!(o, "{line}").ok();
            }
            // Outcome rules from the declared responses.
            let mut success = Vec::new();
            let mut business = Vec::new();
            let mut transient = Vec::new();
            let mut ok_schema = None;
            // Whether some success may carry a body: declared content, or
            // a `$ref` whose content is not looked at here.
            let mut ok_content = false;
            if let Some(responses) = op["responses"].as_object() {
                for (code, resp) in responses {
                    let Ok(status) = code.parse::<u16>() else {
                        let class = code.to_ascii_lowercase();
                        if class.len() == 3 && class.ends_with("xx") && class.starts_with('2') {
                            success.push(yaml_str(&class));
                            ok_content = true; // not looked at: keep the body
                        }
                        continue;
                    };
                    match status {
                        200..=299 => {
                            success.push(status.to_string());
                            ok_content |= resp.get("$ref").is_some()
                                || resp["content"].as_object().is_some_and(|c| !c.is_empty());
                            if ok_schema.is_none() {
                                ok_schema = json_content(&doc, resp);
                            }
                        }
                        408 | 425 | 429 | 500..=599 => transient.push(status.to_string()),
                        300..=499 => business.push(status.to_string()),
                        _ => {}
                    }
                }
            }
            if !(success.is_empty() && business.is_empty() && transient.is_empty()) {
                writeln!(o, "      statuses:").ok();
                for (key, list) in [
                    ("success", &success),
                    ("business-failure", &business),
                    ("transient", &transient),
                ] {
                    if !list.is_empty() {
                        writeln!(o, "        {key}: [{}]", list.join(", ")).ok();
                    }
                }
            }
            if !success.is_empty() && !ok_content {
                // Servers often answer such a success with a text anyway
                // (the public petstore: `Pet deleted`), which is not JSON.
                writeln!(
                    o,
                    "      discard-body: true             # the contract declares no content: the status decides"
                )
                .ok();
            }
            if let Some(schema) = ok_schema
                && schema.get("properties").is_some()
            {
                let (required, optional) = required_props(schema);
                let pointer = |p: &str| format!("/{}", p.replace('~', "~0").replace('/', "~1"));
                if !required.is_empty() {
                    writeln!(o, "      response:").ok();
                    for r in &required {
                        writeln!(o, "        {}: {}", yaml_str(r), yaml_str(&pointer(r))).ok();
                    }
                    // A mapped field the body lacks is `invalid_response`,
                    // so optional ones are only offered, ready to
                    // uncomment when a saga reads them (an id, a status).
                    // Without a mapping the whole body is the reply.
                    if !optional.is_empty() {
                        writeln!(
                            o,
                            "        # optional, not mapped (uncomment those a saga reads):"
                        )
                        .ok();
                        for p in &optional {
                            writeln!(o, "        # {}: {}", yaml_str(p), yaml_str(&pointer(p)))
                                .ok();
                        }
                    }
                }
            }
            y.push_str(&o);
        }
    }
    if count == 0 {
        return Err(format!(
            "{file}: the document has no operations under `paths`"
        ));
    }
    if !notes.is_empty() {
        y.push_str("# Not expressed:\n");
        for n in &notes {
            writeln!(y, "#   {n}").ok();
        }
    }
    Ok(Scaffold {
        yaml: y,
        description: format!("{title} (REST/JSON, scaffolded from {})", file_name(file)),
    })
}

fn file_name(file: &str) -> &str {
    file.rsplit('/').next().unwrap_or(file)
}

// --------------------------------------------------------------------- WSDL

const WSDL_NS: &str = "http://schemas.xmlsoap.org/wsdl/";
const SOAP11_BINDING: &str = "http://schemas.xmlsoap.org/wsdl/soap/";
const SOAP12_BINDING: &str = "http://schemas.xmlsoap.org/wsdl/soap12/";
const XSD_NS: &str = "http://www.w3.org/2001/XMLSchema";

fn local(qname: &str) -> &str {
    qname.rsplit(':').next().unwrap_or(qname)
}

/// Scaffolds from a WSDL 1.1 document (document/literal).
pub(crate) fn wsdl(
    text: &str,
    file: &str,
    service: &str,
    base_url: Option<&str>,
) -> Result<Scaffold, String> {
    let opts = roxmltree::ParsingOptions {
        allow_dtd: false,
        ..Default::default()
    };
    let doc = roxmltree::Document::parse_with_options(text, opts)
        .map_err(|e| format!("{file}: not well-formed XML without a DTD: {e}"))?;
    let root = doc.root_element();
    if !(root.has_tag_name((WSDL_NS, "definitions"))) {
        return Err(format!(
            "{file}: not a WSDL 1.1 document (the root is not wsdl:definitions)"
        ));
    }
    let tns = root.attribute("targetNamespace").unwrap_or_default();
    let wsdl_children = |name: &'static str| {
        root.children()
            .filter(move |n| n.has_tag_name((WSDL_NS, name)))
    };
    // Schema elements by name: element -> (namespace, child element names).
    let mut elements: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for schema in root
        .descendants()
        .filter(|n| n.has_tag_name((XSD_NS, "schema")))
    {
        let ns = schema
            .attribute("targetNamespace")
            .unwrap_or(tns)
            .to_owned();
        let named_types: BTreeMap<&str, roxmltree::Node<'_, '_>> = schema
            .children()
            .filter(|n| n.has_tag_name((XSD_NS, "complexType")))
            .filter_map(|n| Some((n.attribute("name")?, n)))
            .collect();
        for el in schema
            .children()
            .filter(|n| n.has_tag_name((XSD_NS, "element")))
        {
            let Some(name) = el.attribute("name") else {
                continue;
            };
            let complex = el
                .children()
                .find(|n| n.has_tag_name((XSD_NS, "complexType")))
                .or_else(|| {
                    el.attribute("type")
                        .and_then(|t| named_types.get(local(t)).copied())
                });
            let fields = complex
                .map(|c| {
                    c.descendants()
                        .filter(|n| n.has_tag_name((XSD_NS, "element")))
                        .filter_map(|n| {
                            n.attribute("name")
                                .or_else(|| n.attribute("ref").map(local))
                        })
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            elements.insert(name.to_owned(), (ns.clone(), fields));
        }
    }
    // message name -> element of its (first) part.
    let messages: BTreeMap<&str, &str> = wsdl_children("message")
        .filter_map(|m| {
            let part = m.children().find(|n| n.has_tag_name((WSDL_NS, "part")))?;
            Some((m.attribute("name")?, local(part.attribute("element")?)))
        })
        .collect();
    // portType operation -> (input element, output element).
    let mut port_ops: BTreeMap<&str, (Option<&str>, Option<&str>)> = BTreeMap::new();
    for pt in wsdl_children("portType") {
        for op in pt
            .children()
            .filter(|n| n.has_tag_name((WSDL_NS, "operation")))
        {
            let Some(name) = op.attribute("name") else {
                continue;
            };
            let msg = |dir: &str| {
                op.children()
                    .find(|n| n.has_tag_name((WSDL_NS, dir)))
                    .and_then(|n| n.attribute("message"))
                    .and_then(|m| messages.get(local(m)).copied())
            };
            port_ops.insert(name, (msg("input"), msg("output")));
        }
    }
    // The first SOAP port: its binding and address.
    let mut chosen = None;
    for svc in wsdl_children("service") {
        for port in svc.children().filter(|n| n.has_tag_name((WSDL_NS, "port"))) {
            for (ns, version) in [(SOAP11_BINDING, "1.1"), (SOAP12_BINDING, "1.2")] {
                if let Some(addr) = port.children().find(|n| n.has_tag_name((ns, "address"))) {
                    chosen.get_or_insert((
                        local(port.attribute("binding").unwrap_or_default()).to_owned(),
                        addr.attribute("location").unwrap_or_default().to_owned(),
                        version,
                        ns,
                    ));
                }
            }
        }
    }
    let Some((binding_name, location, version, soap_ns)) = chosen else {
        return Err(format!(
            "{file}: no SOAP 1.1 or 1.2 port (soap:address) in any wsdl:service"
        ));
    };
    let location = url::Url::parse(&location)
        .map_err(|e| format!("{file}: the SOAP address `{location}` is not a URL ({e})"))?;
    let base = match base_url {
        Some(b) => b.trim_end_matches('/').to_owned(),
        None => location.origin().ascii_serialization(),
    };
    let path = location.path().to_owned();
    let binding = wsdl_children("binding")
        .find(|b| b.attribute("name") == Some(binding_name.as_str()))
        .ok_or_else(|| format!("{file}: no wsdl:binding named `{binding_name}`"))?;
    let title = root.attribute("name").unwrap_or(service);
    let mut y = String::new();
    let mut notes = Vec::new();
    writeln!(y, "# Scaffolded by `sagaflow adapter scaffold --wsdl {file}` ({title}).\n# Review it: see docs/adapters.md for every key.").ok();
    writeln!(
        y,
        "service: {service}\nbase-urls:\n  - {}\noperations:",
        yaml_str(&base)
    )
    .ok();
    let mut count = 0;
    for op in binding
        .children()
        .filter(|n| n.has_tag_name((WSDL_NS, "operation")))
    {
        let Some(name) = op.attribute("name") else {
            continue;
        };
        let action = op
            .children()
            .find(|n| n.has_tag_name((soap_ns, "operation")))
            .and_then(|n| n.attribute("soapAction"))
            .unwrap_or_default();
        if let Some(style) = op
            .descendants()
            .find(|n| n.has_tag_name((soap_ns, "body")))
            .and_then(|n| n.attribute("use"))
            && style != "literal"
        {
            notes.push(format!("operation `{name}`: use=\"{style}\" is not supported (document/literal only); skipped"));
            continue;
        }
        let (input, output) = port_ops.get(name).copied().unwrap_or((None, None));
        let Some(input) = input else {
            notes.push(format!(
                "operation `{name}`: no input element in the portType; skipped"
            ));
            continue;
        };
        let (ns, fields) = elements
            .get(input)
            .cloned()
            .unwrap_or_else(|| (tns.to_owned(), Vec::new()));
        count += 1;
        writeln!(y, "  {name}:\n    soap:\n      version: \"{version}\"\n      path: {}\n      action: {}\n      body: |", yaml_str(&path), yaml_str(action)).ok();
        if fields.is_empty() {
            writeln!(y, "        <t:{input} xmlns:t=\"{ns}\"/>").ok();
        } else {
            writeln!(y, "        <t:{input} xmlns:t=\"{ns}\">").ok();
            for f in &fields {
                writeln!(y, "          <t:{f}>{}</t:{f}>", input_ref(f)).ok();
            }
            writeln!(y, "        </t:{input}>").ok();
        }
        if let Some(output) = output {
            let (_, out_fields) = elements.get(output).cloned().unwrap_or_default();
            if !out_fields.is_empty() {
                writeln!(y, "      response:").ok();
                for f in &out_fields {
                    writeln!(
                        y,
                        "        {}: {}",
                        yaml_str(f),
                        yaml_str(&format!("Body/{output}/{f}"))
                    )
                    .ok();
                }
            }
        }
        if op.children().any(|n| n.has_tag_name((WSDL_NS, "fault"))) {
            notes.push(format!("operation `{name}`: WSDL faults name messages, not fault codes; list the business fault codes in `business-faults`"));
        }
    }
    if count == 0 {
        return Err(format!(
            "{file}: the binding `{binding_name}` has no document/literal operation"
        ));
    }
    if !notes.is_empty() {
        y.push_str("# Not expressed:\n");
        for n in &notes {
            writeln!(y, "#   {n}").ok();
        }
    }
    Ok(Scaffold {
        yaml: y,
        description: format!(
            "{title} (SOAP {version}, scaffolded from {})",
            file_name(file)
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_refs() {
        assert_eq!(kebab("getPetById"), "get-pet-by-id");
        assert_eq!(
            kebab("post /pet/{petId}/uploadImage"),
            "post-pet-pet-id-upload-image"
        );
        assert_eq!(input_ref("petId"), "{{ input.petId }}");
        assert_eq!(input_ref("api-key"), "{{ input['api-key'] }}");
        assert_eq!(env_name("pet-store", "API_KEY"), "PET_STORE_API_KEY");
    }

    #[test]
    fn openapi_refuses_swagger_2_and_relative_servers() {
        let e = openapi("swagger: \"2.0\"\npaths: {}\n", "s.yaml", "x", None).unwrap_err();
        assert!(e.contains("not an OpenAPI 3"), "{e}");
        let e = openapi(
            "openapi: 3.0.0\ninfo: {title: t, version: \"1\"}\nservers: [{url: /api}]\npaths: {}\n",
            "s.yaml",
            "x",
            None,
        )
        .unwrap_err();
        assert!(e.contains("--base-url"), "{e}");
    }

    #[test]
    fn a_success_without_declared_content_discards_the_body() {
        let doc = r##"openapi: 3.0.3
info: {title: t, version: "1"}
servers: [{url: "http://127.0.0.1:9"}]
paths:
  /things/{id}:
    delete:
      operationId: deleteThing
      parameters: [{name: id, in: path, required: true, schema: {type: string}}]
      responses:
        "200": {description: deleted}
        "404": {description: not found}
    get:
      operationId: getThing
      parameters: [{name: id, in: path, required: true, schema: {type: string}}]
      responses:
        "200":
          content:
            application/json:
              schema: {properties: {id: {type: string}}}
    put:
      operationId: putThing
      parameters: [{name: id, in: path, required: true, schema: {type: string}}]
      responses:
        "204": {$ref: "#/components/responses/Done"}
components:
  responses:
    Done: {description: done}
"##;
        let s = openapi(doc, "t.yaml", "things", None).unwrap();
        // An operation's lines: from its key to the next operation's.
        let section = |name: &str| -> String {
            let mut lines = s.yaml.lines().skip_while(|l| *l != format!("  {name}:"));
            let head = lines.next().unwrap_or_default();
            let body = lines.take_while(|l| !l.starts_with("  ") || l.starts_with("   "));
            std::iter::once(head)
                .chain(body)
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert!(
            section("delete-thing").contains("discard-body: true"),
            "{}",
            s.yaml
        );
        assert!(!section("get-thing").contains("discard-body"), "{}", s.yaml);
        // A referenced response is not looked into: its body is kept.
        assert!(!section("put-thing").contains("discard-body"), "{}", s.yaml);
        let raw = sagaflow_adapter::config::parse_str(&s.yaml, "things.service.yaml").unwrap();
        raw.validate("things.service.yaml").unwrap();
    }

    #[test]
    fn optional_response_fields_are_offered_commented_out() {
        let doc = r#"openapi: 3.0.3
info: {title: t, version: "1"}
servers: [{url: "http://127.0.0.1:9"}]
paths:
  /things:
    post:
      operationId: addThing
      responses:
        "201":
          content:
            application/json:
              schema:
                required: [name]
                properties: {name: {type: string}, id: {type: integer}, "a/b": {type: string}}
  /all:
    get:
      operationId: listAll
      responses:
        "200":
          content:
            application/json:
              schema:
                properties: {id: {type: integer}}
"#;
        let s = openapi(doc, "t.yaml", "things", None).unwrap();
        let want = "      response:\n        \"name\": \"/name\"\n        # optional, not mapped (uncomment those a saga reads):\n        # \"a/b\": \"/a~1b\"\n        # \"id\": \"/id\"\n";
        assert!(s.yaml.contains(want), "{}", s.yaml);
        // Nothing required: no mapping, the whole body is the reply.
        let list =
            &s.yaml[s.yaml.find("  list-all:").unwrap()..s.yaml.find("  add-thing:").unwrap()];
        assert!(!list.contains("response:"), "{}", s.yaml);
        // Uncommented, the mapping still loads.
        let edited = s
            .yaml
            .replace("        # \"id\": \"/id\"\n", "        \"id\": \"/id\"\n");
        let raw = sagaflow_adapter::config::parse_str(&edited, "things.service.yaml").unwrap();
        raw.validate("things.service.yaml").unwrap();
    }

    #[test]
    fn wsdl_refuses_dtds() {
        let e = wsdl("<!DOCTYPE x [<!ENTITY a \"b\">]><x/>", "w.wsdl", "x", None).unwrap_err();
        assert!(e.contains("DTD"), "{e}");
    }
}
