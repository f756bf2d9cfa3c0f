//! The registry of validated definitions, keyed by (type, version).

use std::collections::BTreeMap;

use crate::error::{DefCode, DefinitionError, DefinitionErrors};
use crate::yaml::Position;

use super::validate::error;
use super::{SagaDefinition, ServiceCatalog};

/// Validated definitions keyed by (type, version).
#[derive(Debug, Default)]
pub struct DefinitionRegistry {
    defs: BTreeMap<(String, u32), std::sync::Arc<SagaDefinition>>,
}

impl DefinitionRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a definition; a (type, version) may be registered once.
    pub fn insert(&mut self, def: SagaDefinition) -> Result<(), DefinitionError> {
        let key = (def.saga_type.clone(), def.version);
        if let Some(existing) = self.defs.get(&key) {
            return Err(error(
                DefCode::DuplicateDefinition,
                &def.file,
                Position { line: 1, column: 1 },
                format!("saga `{}` version {} is already defined in {}", def.saga_type, def.version, existing.file),
                Some("bump `version` when you change a definition; running sagas stay on their version".into()),
            ));
        }
        self.defs.insert(key, std::sync::Arc::new(def));
        Ok(())
    }

    /// Parses and validates definition files (name, text) against the
    /// services, collecting every error of every file.
    pub fn from_sources<'a, I>(
        sources: I,
        services: &ServiceCatalog,
    ) -> Result<Self, DefinitionErrors>
    where
        I: IntoIterator<Item = (&'a str, &'a str)>,
    {
        let mut reg = Self::new();
        let mut errors = Vec::new();
        for (file, source) in sources {
            match SagaDefinition::from_yaml(file, source, services) {
                Ok(def) => {
                    if let Err(e) = reg.insert(def) {
                        errors.push(e);
                    }
                }
                Err(DefinitionErrors(es)) => errors.extend(es),
            }
        }
        if errors.is_empty() {
            Ok(reg)
        } else {
            Err(DefinitionErrors(errors))
        }
    }

    /// The definition of `saga_type` at `version`.
    pub fn get(&self, saga_type: &str, version: u32) -> Option<&SagaDefinition> {
        self.defs
            .get(&(saga_type.to_string(), version))
            .map(|d| &**d)
    }

    /// The highest version of `saga_type`.
    pub fn latest(&self, saga_type: &str) -> Option<&SagaDefinition> {
        self.defs
            .range((saga_type.to_string(), 0)..=(saga_type.to_string(), u32::MAX))
            .next_back()
            .map(|(_, d)| &**d)
    }

    /// Every registered definition.
    pub fn iter(&self) -> impl Iterator<Item = &SagaDefinition> {
        self.defs.values().map(|d| &**d)
    }

    /// Latest definitions started by events of `event_type` on `topic`.
    pub fn triggered_by(&self, topic: &str, event_type: &str) -> Vec<&SagaDefinition> {
        let mut latest: BTreeMap<&str, &SagaDefinition> = BTreeMap::new();
        for d in self.iter() {
            if d.trigger.topic == topic && d.trigger.event_type == event_type {
                latest.insert(&d.saga_type, d);
            }
        }
        latest.into_values().collect()
    }
}
