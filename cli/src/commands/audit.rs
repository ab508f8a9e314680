//! `policybind audit ...` (placeholder until the audit tools land).
#[derive(clap::Args, Debug)]
pub struct AuditArgs {}

pub async fn run(_args: AuditArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("not built yet")
}
