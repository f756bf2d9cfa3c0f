//! The service catalog (`services.yaml`): which services steps may call.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::error::{DefCode, DefinitionErrors};

use super::validate::{deserialize, error, load_yaml};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct RawServices {
    services: Vec<ServiceInfo>,
}

/// A known service (a command target).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ServiceInfo {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
}

/// The services steps may call, e.g. from `topology/services.yaml`.
#[derive(Debug, Clone, Default)]
pub struct ServiceCatalog {
    services: BTreeMap<String, ServiceInfo>,
}

impl ServiceCatalog {
    /// A catalog of bare names.
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(names: I) -> Self {
        Self {
            services: names
                .into_iter()
                .map(|n| {
                    let name = n.into();
                    (
                        name.clone(),
                        ServiceInfo {
                            name,
                            description: None,
                        },
                    )
                })
                .collect(),
        }
    }

    /// Parses a services file (`services: [{name, description}]`).
    pub fn from_yaml(file: &str, source: &str) -> Result<Self, DefinitionErrors> {
        let (value, spans) = load_yaml(file, source)?;
        let raw: RawServices =
            deserialize(file, &spans, value, "").map_err(|e| DefinitionErrors(vec![e]))?;
        let mut services = BTreeMap::new();
        let mut errors = Vec::new();
        for (i, s) in raw.services.into_iter().enumerate() {
            if services.contains_key(&s.name) {
                errors.push(error(
                    DefCode::DuplicateName,
                    file,
                    spans.find(&format!("services[{i}].name")),
                    format!("service `{}` is listed twice", s.name),
                    None,
                ));
            }
            services.insert(s.name.clone(), s);
        }
        if errors.is_empty() {
            Ok(Self { services })
        } else {
            Err(DefinitionErrors(errors))
        }
    }

    /// Whether `name` is known.
    pub fn contains(&self, name: &str) -> bool {
        self.services.contains_key(name)
    }

    /// Known services, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &ServiceInfo> {
        self.services.values()
    }

    pub(super) fn names(&self) -> String {
        self.services.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}
