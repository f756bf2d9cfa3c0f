//! Validates saga definition files against a services file:
//! `cargo run -p sagaflow-engine --example validate -- topology/services.yaml topology/sagas/*.yaml`

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(services_path) = args.next() else {
        eprintln!("usage: validate SERVICES.yaml DEFINITION.yaml…");
        std::process::exit(2);
    };
    let read = |p: &str| {
        std::fs::read_to_string(p).unwrap_or_else(|e| {
            eprintln!("{p}: {e}");
            std::process::exit(2)
        })
    };
    let services =
        match sagaflow_engine::ServiceCatalog::from_yaml(&services_path, &read(&services_path)) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1)
            }
        };
    let files: Vec<(String, String)> = args.map(|p| (read(&p), p)).map(|(t, p)| (p, t)).collect();
    match sagaflow_engine::DefinitionRegistry::from_sources(
        files.iter().map(|(p, t)| (p.as_str(), t.as_str())),
        &services,
    ) {
        Ok(reg) => {
            for d in reg.iter() {
                println!(
                    "ok: {} v{} ({} steps) from {}",
                    d.saga_type,
                    d.version,
                    d.steps().len(),
                    d.file
                );
            }
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1)
        }
    }
}
