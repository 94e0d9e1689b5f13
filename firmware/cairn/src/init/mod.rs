//! `cairn init`: PID 1.

#[derive(clap::Args, Default)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
