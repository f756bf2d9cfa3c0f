//! Reading a deployment's definitions from disk: the services catalogue
//! and every `*.yaml` / `*.yml` saga file of a directory, in name order.

use std::path::Path;

use crate::definition::{DefinitionRegistry, ServiceCatalog};
use crate::error::DefinitionErrors;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file or the directory could not be read.
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The catalogue or a saga file is not valid.
    #[error(transparent)]
    Invalid(#[from] DefinitionErrors),
}

/// Loads the catalogue `services` and the saga definitions of `dir`,
/// validated against it.
pub fn load_definitions(
    dir: &Path,
    services: &Path,
) -> Result<(ServiceCatalog, DefinitionRegistry), LoadError> {
    let failed = |p: &Path| {
        let path = p.display().to_string();
        move |source| LoadError::Read { path, source }
    };
    let read = |p: &Path| std::fs::read_to_string(p).map_err(failed(p));
    let catalog = ServiceCatalog::from_yaml(&services.display().to_string(), &read(services)?)?;
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(failed(dir))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    let sources: Vec<(String, String)> = files
        .iter()
        .map(|p| Ok((p.display().to_string(), read(p)?)))
        .collect::<Result<_, LoadError>>()?;
    let registry = DefinitionRegistry::from_sources(
        sources.iter().map(|(f, s)| (f.as_str(), s.as_str())),
        &catalog,
    )?;
    Ok((catalog, registry))
}
