//! `rxgate backup create|verify|restore`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;

use crate::admin::{self, Reply, Request};

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Take an encrypted backup now, while the gateway runs (through it) or not: store, CA,
    /// certificates and keys, config and the files it names, encrypted to [backup].recipients.
    Create {
        /// Write it into this directory instead of [backup].destinations (nothing is pruned).
        #[arg(long)]
        to: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Check a backup. With --identity: decrypt it and check the manifest, every file's
    /// SHA-256, the store snapshot and its audit chain. Without: only that it is an age file,
    /// and whether its SHA-256 is that of a backup this gateway audited as written (so it is
    /// unchanged since).
    Verify {
        file: PathBuf,
        /// The age identity file (AGE-SECRET-KEY-1...) of one of the backup's recipients.
        #[arg(long)]
        identity: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Restore a backup into an empty data_dir (of --config, or --data-dir): store, CA,
    /// certificates and keys. Devices keep their certificates; nothing is re-enrolled.
    Restore {
        file: PathBuf,
        /// The age identity file (AGE-SECRET-KEY-1...) of one of the backup's recipients.
        #[arg(long)]
        identity: PathBuf,
        /// Restore into this directory instead of the config's data_dir.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Also write the backed-up config file and the files it names under this (empty)
        /// directory, each at its original path below it, to review and put in place.
        #[arg(long)]
        config_to: Option<PathBuf>,
    },
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).map_err(|e| anyhow::anyhow!("cannot resolve {}: {e}", path.display()))
}

pub fn run(config_path: &Path, command: BackupCommand) -> anyhow::Result<ExitCode> {
    match command {
        BackupCommand::Create { to, json } => {
            let config = super::load(config_path)?;
            // The daemon resolves paths from its own working directory: send an absolute one.
            let to = to.as_deref().map(absolute).transpose()?;
            let reply = admin::call(&config, Request::BackupCreate { to })?;
            let Reply::BackupCreated { created } = reply else {
                anyhow::bail!("unexpected answer from the gateway");
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&created)?);
            } else {
                for path in &created.written {
                    println!("{}", path.display());
                }
                eprintln!(
                    "backup {} ({} bytes, SHA-256 {}) holds the audit trail up to entry {}",
                    created.file_name,
                    created.size,
                    created.sha256,
                    created
                        .audit_head
                        .map_or_else(|| "none".to_owned(), |h| h.to_string())
                );
                for warning in &created.warnings {
                    eprintln!("warning: {warning}");
                }
                for old in &created.pruned {
                    eprintln!("removed the older backup {}", old.display());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        BackupCommand::Verify {
            file,
            identity: Some(identity),
            json,
        } => {
            let identities = crate::backup::identities(&identity)?;
            let verified = crate::backup::verify(&file, &identities)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&verified)?);
            } else {
                println!(
                    "{}: ok: a backup of {} taken at {} by rxgate {}; {} files match the \
                     manifest; the audit trail verifies ({} entries, up to entry {})",
                    file.display(),
                    verified.site,
                    verified.created,
                    verified.version,
                    verified.files,
                    verified.audit_entries,
                    verified
                        .audit_head
                        .map_or_else(|| "none".to_owned(), |h| h.to_string())
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        BackupCommand::Verify {
            file,
            identity: None,
            json,
        } => verify_sealed(config_path, &file, json),
        BackupCommand::Restore {
            file,
            identity,
            data_dir,
            config_to,
        } => {
            let config = super::load(config_path);
            // The key-encryption key of the gateway restored to seals the keys; without a
            // config, the systemd credential alone is looked for.
            let keys = config.as_ref().map(|c| c.keys.clone()).unwrap_or_default();
            let data_dir = match data_dir {
                Some(dir) => absolute(&dir)?,
                None => {
                    config
                        .map_err(|e| {
                            anyhow::anyhow!(
                                "{e}\n(give --data-dir to restore without a working config)"
                            )
                        })?
                        .gateway
                        .data_dir
                }
            };
            let identities = crate::backup::identities(&identity)?;
            let options = crate::backup::RestoreOptions {
                data_dir,
                config_to: config_to.as_deref().map(absolute).transpose()?,
                keys,
            };
            let clock = crate::clock::system(false);
            let restored = crate::backup::restore(
                &file,
                &identities,
                &options,
                clock.as_ref(),
                &admin::current_user(),
            )?;
            println!(
                "restored {} into {}: a backup of {} taken at {}; audit trail up to entry {} \
                 verified, the restore recorded as entry {}",
                file.display(),
                restored.data_dir.display(),
                restored.verified.site,
                restored.verified.created,
                restored
                    .verified
                    .audit_head
                    .map_or_else(|| "none".to_owned(), |h| h.to_string()),
                restored.audit_seq
            );
            if restored.config_written {
                println!("config files written (review them, then put them in place):");
            } else if !restored.config_files.is_empty() {
                println!(
                    "the backup also holds these config files (restore them with --config-to DIR):"
                );
            }
            for (key, path) in &restored.config_files {
                println!("  {key}: {}", path.display());
            }
            println!(
                "start the gateway (rxgate run): devices reconnect with their certificates, and \
                 what waited in the outbox is sent"
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Without an identity: an age file, and its SHA-256 looked up among this gateway's
/// `backup.created` entries when the gateway can be asked.
fn verify_sealed(config_path: &Path, file: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let sealed = crate::backup::inspect(file)?;
    let found = match crate::config::Config::load(config_path) {
        Err(_) => None,
        Ok(config) => Some(admin::session(&config, |send| {
            let mut matched = None;
            admin::export_pages(send, None, None, admin::EXPORT_PAGE, |entry| {
                if entry.kind == crate::audit::Kind::BackupCreated
                    && entry.detail["sha256"].as_str() == Some(sealed.sha256.as_str())
                {
                    matched = Some((entry.seq, entry.ts.clone()));
                }
                Ok(())
            })?;
            Ok(matched)
        })?),
    };
    if json {
        println!(
            "{}",
            serde_json::json!({
                "size": sealed.size,
                "sha256": sealed.sha256,
                "audited": found.as_ref().map(|m| m.as_ref().map(|(seq, ts)| serde_json::json!({"seq": seq, "ts": ts}))),
            })
        );
    }
    match found {
        Some(Some((seq, ts))) => {
            if !json {
                println!(
                    "{}: an age file of {} bytes, SHA-256 {}, the one audited as written in \
                     entry {seq} ({ts}): unchanged since. Give --identity to check its contents.",
                    file.display(),
                    sealed.size,
                    sealed.sha256
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(None) => {
            if !json {
                println!(
                    "{}: an age file of {} bytes, SHA-256 {}, but no backup.created entry of this \
                     gateway has that SHA-256: it was changed since it was written, or another \
                     gateway wrote it. Give --identity to check its contents.",
                    file.display(),
                    sealed.size,
                    sealed.sha256
                );
            }
            Ok(ExitCode::FAILURE)
        }
        None => {
            if !json {
                println!(
                    "{}: an age file of {} bytes, SHA-256 {} (compare it with the backup.created \
                     entry in the gateway's audit trail). Give --identity to check its contents.",
                    file.display(),
                    sealed.size,
                    sealed.sha256
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
