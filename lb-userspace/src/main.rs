use anyhow::Result;
use clap::Parser;

/// wklb: XDP L4 load balancer for WuKongIM edge hosts.
#[derive(Parser)]
#[command(version)]
enum Cli {
    /// Load the data plane, print the verifier's instruction count, and unload.
    Verify,
}

fn main() -> Result<()> {
    env_logger::init();
    match Cli::parse() {
        Cli::Verify => {
            let mut dp = lb_userspace::dataplane::Dataplane::load(&Default::default())?;
            println!("verified instructions: {}", dp.verified_instructions()?);
        }
    }
    Ok(())
}
