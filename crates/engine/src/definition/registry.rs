//! The registry of validated definitions, keyed by (type, version).

use std::collections::{BTreeMap, BTreeSet};

use crate::error::{DefCode, DefinitionError, DefinitionErrors};
use crate::yaml::Position;

use super::validate::error;
use super::{SagaDefinition, ServiceCatalog, StepKind};

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

    /// The topics the definitions read and write (names without the
    /// deployment's prefix), for every version registered.
    pub fn topics(&self) -> DeploymentTopics {
        let mut t = DeploymentTopics::default();
        let add = |map: &mut BTreeMap<String, BTreeSet<String>>, topic: &str, event_type: &str| {
            map.entry(topic.to_string())
                .or_default()
                .insert(event_type.to_string());
        };
        for def in self.iter() {
            add(&mut t.triggers, &def.trigger.topic, &def.trigger.event_type);
            for step in def.steps() {
                match &step.kind {
                    StepKind::Call(c) => {
                        t.services.insert(c.service.clone());
                        if let Some(comp) = &c.compensate {
                            t.services.insert(comp.service.clone());
                        }
                    }
                    StepKind::Await(a) => add(&mut t.awaited, &a.topic, &a.event_type),
                    StepKind::Emit(e) => add(&mut t.emitted, &e.topic, &e.event_type),
                    _ => {}
                }
            }
        }
        t
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

/// The topics a deployment's definitions use, by role: topic (without the
/// deployment's prefix) → event types. The runtime's own topics (replies,
/// saga state and events, dead letters) do not depend on the definitions;
/// the command topic of a service is `sagaflow.commands.<service>`
/// (`sagaflow_bus::TopicNames` names both).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeploymentTopics {
    /// Events that start sagas (`trigger`): read.
    pub triggers: BTreeMap<String, BTreeSet<String>>,
    /// Events sagas wait for (`await`): read.
    pub awaited: BTreeMap<String, BTreeSet<String>>,
    /// Events sagas publish (`emit`): written.
    pub emitted: BTreeMap<String, BTreeSet<String>>,
    /// Services commanded (calls and compensations): their command topics
    /// are written, their replies read.
    pub services: BTreeSet<String>,
}

impl DeploymentTopics {
    /// The domain topics the orchestrator consumes: triggers and awaited
    /// events.
    pub fn sources(&self) -> BTreeSet<&str> {
        self.triggers
            .keys()
            .chain(self.awaited.keys())
            .map(String::as_str)
            .collect()
    }

    /// Every domain topic named, read or written.
    pub fn domain(&self) -> BTreeSet<&str> {
        let mut all = self.sources();
        all.extend(self.emitted.keys().map(String::as_str));
        all
    }

    /// Every domain event named (read or written), by topic.
    pub fn events(&self) -> BTreeMap<String, BTreeSet<String>> {
        let mut out = self.triggers.clone();
        for (topic, types) in self.awaited.iter().chain(&self.emitted) {
            out.entry(topic.clone())
                .or_default()
                .extend(types.iter().cloned());
        }
        out
    }
}
