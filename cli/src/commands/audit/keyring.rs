//! Keys and keyrings: `policybind audit keygen`, `public-key` and `keyring ...`.
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use policybind_engine::audit::{AuditSigningKey, KeyringDocument, KeyringEntry};

use super::EXIT_OK;
use super::export::parse_time;
use super::sources::verifying_key;

pub(super) const KEYGEN_ABOUT: &str = "Generate an Ed25519 signing key and its verification key.\n\n\
Writes <out>/audit-signing-key.pem (PKCS#8 private key, mode 0600; put it in the Secret the \
writers read, data key `signing-key`) and <out>/audit-verify-key.pem (public key; bind it to \
its writers in a keyring with `policybind audit keyring add`, and give that to auditors).";

/// `policybind audit keyring ...`.
#[derive(clap::Subcommand, Debug)]
pub(super) enum KeyringCommand {
    /// Add a verification key bound to writer patterns (creates the keyring file
    /// if missing).
    Add(KeyringAddArgs),
    /// Mark a key retired: it still verifies what it signed before that time.
    Retire(KeyringRetireArgs),
    /// List the keys of a keyring and the writers each may sign for.
    Show(KeyringShowArgs),
    /// Read the keyring the operator publishes (ConfigMap policybind-audit-keys)
    /// from the cluster, check it, and print or save it: a pinned copy to verify
    /// with later (--keyring) and to compare with the last reviewed one.
    Fetch(KeyringFetchArgs),
}

#[derive(clap::Args, Debug)]
pub(super) struct KeyringFetchArgs {
    /// PolicyBind's namespace, where the operator publishes the keyring.
    #[arg(long, short = 'n', value_name = "NAMESPACE", default_value = super::DEFAULT_POLICYBIND_NAMESPACE)]
    namespace: String,
    /// Write the keyring to this file instead of stdout.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Kubeconfig (default: $KUBECONFIG, ~/.kube/config, or in-cluster).
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use.
    #[arg(long, value_name = "NAME")]
    context: Option<String>,
}

#[derive(clap::Args, Debug)]
pub(super) struct KeyringAddArgs {
    /// The keyring file to create or update (JSON).
    #[arg(long, value_name = "FILE")]
    keyring: PathBuf,
    /// Verification key (PEM public key, hex, raw bytes, or a signing key file).
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// Writer identities the key may sign for, as globs (`sidecar/team-a/*`,
    /// `webhook/*`, `operator/*`). Repeatable, at least one.
    #[arg(long = "writers", value_name = "PATTERN", required = true)]
    writers: Vec<String>,
    /// Start of validity: RFC 3339, a date or an age (`30d` ago). Default: now.
    #[arg(long, value_parser = parse_time)]
    not_before: Option<DateTime<Utc>>,
}

#[derive(clap::Args, Debug)]
pub(super) struct KeyringRetireArgs {
    /// The keyring file to update.
    #[arg(long, value_name = "FILE")]
    keyring: PathBuf,
    /// Id of the key to retire (16 hex characters).
    #[arg(long, value_name = "ID")]
    key_id: String,
    /// Retirement time (same forms as --not-before). Default: now.
    #[arg(long, value_parser = parse_time)]
    at: Option<DateTime<Utc>>,
}

#[derive(clap::Args, Debug)]
pub(super) struct KeyringShowArgs {
    /// The keyring file.
    #[arg(long, value_name = "FILE")]
    keyring: PathBuf,
}

#[derive(clap::Args, Debug)]
pub(super) struct KeygenArgs {
    /// Directory to write the two key files into.
    #[arg(long, value_name = "DIR", default_value = ".")]
    out: PathBuf,
    /// Overwrite existing key files.
    #[arg(long)]
    force: bool,
}

#[derive(clap::Args, Debug)]
pub(super) struct PublicKeyArgs {
    /// Signing key file (PKCS#8 PEM or 32 raw bytes).
    #[arg(value_name = "SIGNING_KEY")]
    signing_key: PathBuf,
    /// Also print the C2SP verifier key (`name+id+key`, as Go's `note` package
    /// and transparency-log witnesses take it) for this writer's checkpoints.
    #[arg(long, value_name = "WRITER")]
    verifier_key_for: Option<String>,
}

pub(super) async fn run(command: KeyringCommand) -> anyhow::Result<u8> {
    match command {
        KeyringCommand::Fetch(args) => fetch(args).await,
        KeyringCommand::Add(args) => {
            let mut document = read_or_new(&args.keyring)?;
            let entry = KeyringEntry::new(
                &verifying_key(&args.key)?,
                args.writers,
                args.not_before.unwrap_or_else(Utc::now),
            )?;
            println!(
                "key {} may sign for {}",
                entry.key_id,
                entry.writers.join(", ")
            );
            document.upsert(entry);
            write_document(&args.keyring, &document)
        }
        KeyringCommand::Retire(args) => {
            let mut document = read_or_new(&args.keyring)?;
            if !document.retire(&args.key_id, args.at.unwrap_or_else(Utc::now)) {
                bail!("key {} is not in {}", args.key_id, args.keyring.display());
            }
            write_document(&args.keyring, &document)
        }
        KeyringCommand::Show(args) => {
            let document = read_or_new(&args.keyring)?;
            document.compile()?;
            list(&mut std::io::stdout().lock(), &document)?;
            Ok(EXIT_OK)
        }
    }
}

/// One line per key: id, writers, validity.
fn list(out: &mut impl Write, document: &KeyringDocument) -> std::io::Result<()> {
    for entry in &document.keys {
        writeln!(
            out,
            "{}  writers: {}  valid from {}{}",
            entry.key_id,
            entry.writers.join(", "),
            entry.not_before.to_rfc3339(),
            entry
                .retired_at
                .map_or(String::new(), |r| format!(", retired {}", r.to_rfc3339()))
        )?;
    }
    Ok(())
}

async fn fetch(args: KeyringFetchArgs) -> anyhow::Result<u8> {
    let client =
        super::sources::kube_client(args.kubeconfig.as_deref(), args.context.as_deref()).await?;
    let document = policybind_audit::keys::keyring_from_config_map(client, &args.namespace)
        .await
        .with_context(|| {
            format!(
                "reading the published audit keyring in namespace {}",
                args.namespace
            )
        })?;
    match &args.out {
        Some(path) => {
            write_document(path, &document)?;
            // The summary goes to stderr, so stdout stays clean for pipes.
            list(&mut std::io::stderr().lock(), &document)?;
        }
        None => println!("{}", document.to_json()),
    }
    Ok(EXIT_OK)
}

fn read_or_new(path: &Path) -> anyhow::Result<KeyringDocument> {
    match std::fs::read(path) {
        Ok(bytes) => {
            Ok(policybind_audit::keys::keyring_from_bytes(&bytes, &path.display().to_string())?.0)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(KeyringDocument::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn write_document(path: &Path, document: &KeyringDocument) -> anyhow::Result<u8> {
    // Refuse to write a keyring that would not load.
    document.compile()?;
    std::fs::write(path, document.to_json() + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(EXIT_OK)
}

pub(super) fn keygen(args: KeygenArgs) -> anyhow::Result<u8> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let key = AuditSigningKey::from_seed(&seed);
    let private_path = args.out.join("audit-signing-key.pem");
    let public_path = args.out.join("audit-verify-key.pem");
    for path in [&private_path, &public_path] {
        if path.exists() && !args.force {
            bail!("{} exists (pass --force to overwrite)", path.display());
        }
    }
    std::fs::create_dir_all(&args.out)?;
    write_private(&private_path, key.to_pkcs8_pem()?.as_bytes())?;
    std::fs::write(&public_path, key.verifying_key().to_public_key_pem()?)?;
    println!(
        "key id {}\nsigning key:      {} (keep secret; Secret data key `signing-key`)\nverification key: {} (publish; add it to a keyring with `policybind audit keyring add`)",
        key.key_id(),
        private_path.display(),
        public_path.display()
    );
    Ok(EXIT_OK)
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)?;
    Ok(())
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("creating {}", path.display()))
}

pub(super) fn public_key(args: PublicKeyArgs) -> anyhow::Result<u8> {
    let key = policybind_audit::keys::signing_key_from_file(&args.signing_key)?;
    print!("{}", key.verifying_key().to_public_key_pem()?);
    eprintln!("key id {}", key.key_id());
    if let Some(writer) = &args.verifier_key_for {
        let origin = policybind_engine::audit::checkpoint::origin_of(writer);
        println!(
            "{}",
            policybind_engine::audit::checkpoint::verifier_key(&origin, &key.verifying_key())
        );
    }
    Ok(EXIT_OK)
}
