//! How command results are printed: tables for people, `--json` for scripts.

use crate::admin::Reply;
use std::io::Write as _;

use crate::audit::AuditBody;
use crate::clock::rfc3339_seconds as rfc3339;
use crate::pki::InitReport;

fn opt_time(t: Option<time::OffsetDateTime>) -> String {
    t.map(rfc3339).unwrap_or_else(|| "-".to_owned())
}

/// Prints rows as left-aligned columns.
pub(super) fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}

pub(super) fn json(value: &impl serde::Serialize) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("error: cannot encode the result as JSON: {e}"),
    }
}

pub fn reply(reply: &Reply, as_json: bool) {
    if super::users::print(reply, as_json) {
        return;
    }
    match reply {
        // Only the secret on stdout, so `TOKEN=$(rxgate token create ...)` just works.
        Reply::TokenCreated { token, secret } => {
            println!("{secret}");
            eprintln!(
                "token {} for {} device {} expires at {}; it can be used once and is not shown again",
                token.id,
                token.kind,
                token.device,
                rfc3339(token.expires_at)
            );
        }
        Reply::Tokens { tokens } if as_json => json(tokens),
        Reply::Tokens { tokens } => table(
            &["ID", "DEVICE", "KIND", "STATE", "EXPIRES", "FAILED"],
            tokens
                .iter()
                .map(|t| {
                    vec![
                        t.id.clone(),
                        t.device.clone(),
                        t.kind.clone(),
                        t.state.clone(),
                        rfc3339(t.expires_at),
                        t.failed_attempts.to_string(),
                    ]
                })
                .collect(),
        ),
        Reply::Token { token } => {
            println!("token {} for device {} revoked", token.id, token.device)
        }
        Reply::Devices { devices } if as_json => json(devices),
        Reply::Devices { devices } => table(
            &["ID", "KIND", "STATUS", "SERIAL", "NOT_AFTER", "LAST_SEEN"],
            devices
                .iter()
                .map(|d| {
                    vec![
                        d.id.clone(),
                        d.kind.clone(),
                        d.status.to_string(),
                        d.serial.clone().unwrap_or_else(|| "-".to_owned()),
                        opt_time(d.not_after),
                        opt_time(d.last_seen),
                    ]
                })
                .collect(),
        ),
        Reply::Device { device } => println!("device {} is now {}", device.id, device.status),
        Reply::AuditPage { entries, .. } => json(entries),
        Reply::Alerts { alerts } if as_json => json(alerts),
        Reply::Alerts { alerts } => {
            if alerts.is_empty() {
                println!("no alerts");
                return;
            }
            table(
                &[
                    "ID", "DEVICE", "KIND", "SEVERITY", "STATE", "ACTIVE", "STARTED", "VALUE",
                ],
                alerts
                    .iter()
                    .map(|a| {
                        vec![
                            a.id.to_string(),
                            a.device.clone(),
                            a.kind.as_str().to_owned(),
                            format!("{:?}", a.severity).to_lowercase(),
                            a.state.as_str().to_owned(),
                            if a.active { "yes" } else { "no" }.to_owned(),
                            rfc3339(a.started),
                            a.value
                                .map(|v| format!("{v:.1} °C"))
                                .unwrap_or_else(|| "-".to_owned()),
                        ]
                    })
                    .collect(),
            )
        }
        Reply::Alert { alert } => println!(
            "alert {} ({}) acknowledged by {}: now {}",
            alert.id,
            alert.headline(),
            alert.acknowledged_by.as_deref().unwrap_or("-"),
            alert.state.as_str()
        ),
        Reply::Report(data) => print!("{}", data.csv()),
        Reply::Fridges { fridges } => json(fridges),
        Reply::UserSetupLink { .. } | Reply::Users { .. } | Reply::User { .. } => {}
        Reply::AuditVerified { .. } => {
            audit_verified(reply);
        }
        Reply::Status(status) if as_json => json(status),
        Reply::Status(status) => {
            println!("rxgate {} at site {}", status.version, status.site);
            if status.running {
                println!("daemon: running");
                for (name, addr) in &status.listeners {
                    println!("  {name:<8} {addr}");
                }
            } else {
                println!("daemon: not running");
            }
            println!(
                "clock synchronised: {}",
                if status.clock_synced { "yes" } else { "no" }
            );
            println!(
                "devices: {} active, {} pending, {} revoked",
                status.devices_active, status.devices_pending, status.devices_revoked
            );
            for notice in &status.calibration {
                println!("notice: {notice}");
            }
        }
        Reply::MinMaxChecked { check } => json(check),
        Reply::BackupCreated { created } => json(created),
    }
}

pub fn init(report: &InitReport) {
    println!("Initialised {}", report.data_dir.display());
    println!(
        "  CA:          {} ({})",
        report.ca_subject,
        if report.imported {
            "imported intermediate"
        } else {
            "new root"
        }
    );
    println!("  CA SHA-256:  {}", report.ca_sha256);
    println!("  server names: {}", report.server_names.join(", "));
    if report.sealed {
        println!("  keys:        sealed under the key-encryption key");
    } else {
        println!(
            "  keys:        NOT sealed: no key-encryption key ([keys] in the config); `rxgate keys \
             seal` seals them later"
        );
    }
    println!(
        "Next: `rxgate run`, then `rxgate token create --device ID --kind KIND` for each device."
    );
}

/// `rxgate audit verify`: exit status tells whether the chain is intact.
pub fn audit_verified(reply: &Reply) -> std::process::ExitCode {
    match reply {
        Reply::AuditVerified {
            entries,
            broken: None,
        } => {
            println!("audit trail intact: {entries} entries verified");
            std::process::ExitCode::SUCCESS
        }
        Reply::AuditVerified {
            entries,
            broken: Some((seq, reason)),
        } => {
            println!("audit trail BROKEN at entry {seq}: {reason}");
            eprintln!(
                "{entries} entries before it verified; entry {seq} and everything after it cannot be trusted"
            );
            std::process::ExitCode::FAILURE
        }
        _ => std::process::ExitCode::FAILURE,
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// `rxgate audit export`, written entry by entry as the pages come: a JSON array with one entry
/// per line, or CSV with a header.
pub struct AuditExport<W: std::io::Write> {
    out: std::io::BufWriter<W>,
    format: super::ExportFormat,
    written: u64,
}

impl<W: std::io::Write> AuditExport<W> {
    pub fn new(out: W, format: super::ExportFormat) -> Self {
        AuditExport {
            out: std::io::BufWriter::new(out),
            format,
            written: 0,
        }
    }

    pub fn begin(&mut self) -> std::io::Result<()> {
        match self.format {
            super::ExportFormat::Json => write!(self.out, "["),
            super::ExportFormat::Csv => {
                writeln!(
                    self.out,
                    "seq,ts,clock_synced,kind,actor,device,source,detail,prev"
                )
            }
        }
    }

    pub fn entry(&mut self, e: &AuditBody) -> std::io::Result<()> {
        match self.format {
            super::ExportFormat::Json => {
                let sep = if self.written == 0 { "\n" } else { ",\n" };
                let line = serde_json::to_string(e).map_err(std::io::Error::other)?;
                write!(self.out, "{sep}{line}")?;
            }
            super::ExportFormat::Csv => {
                let kind = serde_json::to_value(e.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                writeln!(
                    self.out,
                    "{},{},{},{},{},{},{},{},{}",
                    e.seq,
                    e.ts,
                    e.clock_synced,
                    kind,
                    csv_field(&e.actor),
                    csv_field(e.device.as_deref().unwrap_or("")),
                    csv_field(e.source.as_deref().unwrap_or("")),
                    csv_field(&e.detail.to_string()),
                    e.prev
                )?;
            }
        }
        self.written += 1;
        Ok(())
    }

    pub fn end(mut self) -> std::io::Result<()> {
        if let super::ExportFormat::Json = self.format {
            if self.written == 0 {
                writeln!(self.out, "]")?;
            } else {
                writeln!(self.out, "\n]")?;
            }
        }
        self.out.flush()
    }
}
