//! Safe XML handling for SOAP responses.
//!
//! SOAP messages must not contain a DTD (SOAP 1.1 §3, SOAP 1.2 part 1 §5),
//! so any `<!DOCTYPE` is rejected before parsing, and the parser
//! (`roxmltree`) runs with DTDs disallowed and a node limit. Nothing is ever
//! fetched: external entities cannot be resolved, internal entity bombs
//! cannot be declared. The body size is already bounded by the executor.

use std::collections::BTreeMap;

use roxmltree::{Document, Node, ParsingOptions};

/// SOAP 1.1 envelope namespace.
pub const SOAP11_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";
/// SOAP 1.2 envelope namespace.
pub const SOAP12_NS: &str = "http://www.w3.org/2003/05/soap-envelope";

/// Upper bound on parsed nodes, independent of the byte limit.
const MAX_NODES: u32 = 200_000;

/// Why a response body was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XmlError {
    /// The document tried something unsafe (DTD, entities).
    Unsafe(String),
    /// The document is not well-formed or not what was expected.
    Invalid(String),
}

/// A SOAP fault, codes reduced to local names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SoapFault {
    /// `Client`, `Server.Busy`, `Sender`, `Receiver`, …
    pub code: String,
    /// SOAP 1.2 subcodes, outermost first.
    pub subcodes: Vec<String>,
    pub message: String,
}

/// What a SOAP response said.
#[derive(Debug, Clone, PartialEq)]
pub enum SoapReply {
    /// Requested values by reply field name.
    Values(serde_json::Map<String, serde_json::Value>),
    Fault(SoapFault),
}

/// Parses `text` refusing DTDs, entity declarations and huge node counts.
pub fn parse_safely(text: &str) -> Result<Document<'_>, XmlError> {
    if contains_ignore_ascii_case(text, "<!DOCTYPE") || contains_ignore_ascii_case(text, "<!ENTITY")
    {
        return Err(XmlError::Unsafe(
            "document contains a DTD or entity declaration".into(),
        ));
    }
    let opts = ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_NODES,
    };
    Document::parse_with_options(text, opts).map_err(|e| match e {
        roxmltree::Error::DtdDetected
        | roxmltree::Error::EntityReferenceLoop(_)
        | roxmltree::Error::NodesLimitReached => XmlError::Unsafe(e.to_string()),
        other => XmlError::Invalid(format!("malformed XML: {other}")),
    })
}

fn contains_ignore_ascii_case(haystack: &str, needle: &str) -> bool {
    haystack
        .as_bytes()
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

fn local(qname: &str) -> &str {
    qname.rsplit(':').next().unwrap_or(qname)
}

fn child<'a, 'i>(node: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    node.children()
        .find(|c| c.is_element() && c.tag_name().name() == name)
}

fn text_of(node: Node<'_, '_>) -> String {
    node.descendants()
        .filter(|n| n.is_text())
        .filter_map(|n| n.text())
        .collect::<String>()
        .trim()
        .to_owned()
}

/// Finds an element by a path of local names below the root element; a
/// leading segment naming the root itself (`Envelope`) is skipped.
pub fn find_path<'a, 'i>(doc: &'a Document<'i>, path: &[String]) -> Option<Node<'a, 'i>> {
    let root = doc.root_element();
    let mut segments = path.iter().map(String::as_str).peekable();
    if segments.peek() == Some(&root.tag_name().name()) {
        segments.next();
    }
    segments.try_fold(root, child)
}

/// Interprets a SOAP response: a fault, or the values named by `mapping`.
pub fn read_soap_reply(
    text: &str,
    mapping: &BTreeMap<String, Vec<String>>,
) -> Result<SoapReply, XmlError> {
    let doc = parse_safely(text)?;
    let root = doc.root_element();
    if root.tag_name().name() != "Envelope" {
        return Err(XmlError::Invalid(format!(
            "root element is `{}`, expected a SOAP `Envelope`",
            root.tag_name().name()
        )));
    }
    let body = child(root, "Body")
        .ok_or_else(|| XmlError::Invalid("SOAP envelope has no `Body`".into()))?;
    if let Some(fault) = child(body, "Fault") {
        return Ok(SoapReply::Fault(read_fault(fault)));
    }
    let mut values = serde_json::Map::new();
    for (field, path) in mapping {
        let node = find_path(&doc, path).ok_or_else(|| {
            XmlError::Invalid(format!(
                "response has no element `{}` (for reply field `{field}`)",
                path.join("/")
            ))
        })?;
        values.insert(field.clone(), serde_json::Value::String(text_of(node)));
    }
    Ok(SoapReply::Values(values))
}

fn read_fault(fault: Node<'_, '_>) -> SoapFault {
    // SOAP 1.1: faultcode / faultstring
    if let Some(code) = child(fault, "faultcode") {
        return SoapFault {
            code: local(&text_of(code)).to_owned(),
            subcodes: Vec::new(),
            message: child(fault, "faultstring").map(text_of).unwrap_or_default(),
        };
    }
    // SOAP 1.2: Code/Value, Code/Subcode/Value…, Reason/Text
    let mut code = String::new();
    let mut subcodes = Vec::new();
    if let Some(c) = child(fault, "Code") {
        code = child(c, "Value")
            .map(|v| local(&text_of(v)).to_owned())
            .unwrap_or_default();
        let mut cur = child(c, "Subcode");
        while let Some(sc) = cur {
            if let Some(v) = child(sc, "Value") {
                subcodes.push(local(&text_of(v)).to_owned());
            }
            cur = child(sc, "Subcode");
        }
    }
    let message = child(fault, "Reason")
        .and_then(|r| child(r, "Text"))
        .map(text_of)
        .unwrap_or_default();
    SoapFault {
        code,
        subcodes,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.split('/').map(str::to_owned).collect()))
            .collect()
    }

    #[test]
    fn values_are_found_by_local_names() {
        let xml = r#"<?xml version="1.0"?>
<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/">
  <s:Body><m:OpenAccountResponse xmlns:m="urn:bank"><m:AccountId> A-42 </m:AccountId></m:OpenAccountResponse></s:Body>
</s:Envelope>"#;
        let got = read_soap_reply(
            xml,
            &mapping(&[
                ("account_id", "Body/OpenAccountResponse/AccountId"),
                ("again", "Envelope/Body/OpenAccountResponse/AccountId"),
            ]),
        )
        .unwrap();
        let SoapReply::Values(v) = got else { panic!() };
        assert_eq!(v["account_id"], "A-42");
        assert_eq!(v["again"], "A-42");
    }

    #[test]
    fn soap11_and_12_faults_are_read() {
        let f11 = r#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><soap:Fault><faultcode>soap:Client.Duplicate</faultcode><faultstring>exists</faultstring></soap:Fault></soap:Body></soap:Envelope>"#;
        assert_eq!(
            read_soap_reply(f11, &BTreeMap::new()).unwrap(),
            SoapReply::Fault(SoapFault {
                code: "Client.Duplicate".into(),
                subcodes: vec![],
                message: "exists".into()
            })
        );
        let f12 = r#"<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope" xmlns:m="urn:x"><env:Body><env:Fault><env:Code><env:Value>env:Sender</env:Value><env:Subcode><env:Value>m:Blocked</env:Value></env:Subcode></env:Code><env:Reason><env:Text xml:lang="en">blocked</env:Text></env:Reason></env:Fault></env:Body></env:Envelope>"#;
        assert_eq!(
            read_soap_reply(f12, &BTreeMap::new()).unwrap(),
            SoapReply::Fault(SoapFault {
                code: "Sender".into(),
                subcodes: vec!["Blocked".into()],
                message: "blocked".into()
            })
        );
    }

    #[test]
    fn billion_laughs_and_xxe_are_unsafe() {
        let laughs = r#"<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<Envelope><Body>&lol3;</Body></Envelope>"#;
        assert!(matches!(parse_safely(laughs), Err(XmlError::Unsafe(_))));
        let xxe = r#"<?xml version="1.0"?><!doctype foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><Envelope><Body>&xxe;</Body></Envelope>"#;
        assert!(matches!(parse_safely(xxe), Err(XmlError::Unsafe(_))));
        // roxmltree on its own (without our pre-check) also refuses DTDs:
        assert!(matches!(
            Document::parse_with_options(laughs, ParsingOptions::default()),
            Err(roxmltree::Error::DtdDetected)
        ));
    }

    #[test]
    fn undeclared_entities_and_garbage_are_invalid() {
        assert!(matches!(
            parse_safely("<a>&xxe;</a>"),
            Err(XmlError::Invalid(_))
        ));
        assert!(matches!(parse_safely("not xml"), Err(XmlError::Invalid(_))));
        assert!(matches!(
            read_soap_reply("<a/>", &BTreeMap::new()),
            Err(XmlError::Invalid(_))
        ));
    }
}
