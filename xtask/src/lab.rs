use anyhow::Result;
#[derive(clap::Args)]
pub struct LabArgs {}
pub fn run(_args: LabArgs) -> Result<()> { Ok(()) }
