//! `sagaflow demo-services`: the demo backends (`sagaflow_demo`) as a
//! process of their own, for docker-compose and manual experiments.

use clap::Args;

use crate::exit::{CliResult, Failure};

#[derive(Debug, Args)]
pub(crate) struct DemoServicesArgs {
    /// Address to serve every demo service on (REST at /{service}/{op},
    /// SOAP billing at /billing/soap).
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: std::net::SocketAddr,
}

pub(crate) async fn run(args: DemoServicesArgs) -> CliResult {
    let services = sagaflow_demo::DemoServices::start_on(args.listen)
        .await
        .map_err(|e| Failure::Usage(format!("--listen {}: {e}", args.listen)))?;
    println!("sagaflow demo-services: {} (Ctrl-C stops)", services.url());
    crate::signals::terminated().await;
    Ok(())
}
