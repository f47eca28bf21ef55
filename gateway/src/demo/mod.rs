//! `rxgate demo`: the first thing a newcomer runs.

/// Runs the demo.
pub async fn run() -> anyhow::Result<()> {
    anyhow::bail!("the demo is not built yet")
}
