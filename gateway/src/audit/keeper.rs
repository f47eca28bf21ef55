//! The audit keeper task: signs a checkpoint of the chain's head regularly and sends it to the
//! cloud (`rxgate/v1/<site>/audit/checkpoints`), and prunes entries past their retention.

use std::time::Duration;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::checkpoint::{Checkpoint, Signer};
use crate::clock::SharedClock;
use crate::error::Result;
use crate::outbox::{NewRecord, Outbox, Priority};
use crate::pipeline::envelope::{self, Stamp};
use crate::store::Store;

/// `[audit]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// How often the chain's head is signed and sent to the cloud (when it has new entries).
    #[serde(default = "defaults::checkpoint_every", with = "humantime_serde")]
    pub checkpoint_every: Duration,
    /// How long entries are kept; at least two years (controlled-substance records).
    #[serde(default = "defaults::retention", with = "humantime_serde")]
    pub retention: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            checkpoint_every: defaults::checkpoint_every(),
            retention: defaults::retention(),
        }
    }
}

mod defaults {
    use std::time::Duration;

    pub fn checkpoint_every() -> Duration {
        Duration::from_secs(3600)
    }
    pub fn retention() -> Duration {
        Duration::from_secs(731 * 86_400)
    }
}

/// The shortest retention allowed: two years.
pub const MIN_RETENTION: Duration = Duration::from_secs(730 * 86_400);

/// `audit/checkpoints` topic.
pub fn checkpoints_topic(site: &str) -> String {
    format!("rxgate/{}/{site}/audit/checkpoints", envelope::VERSION)
}

pub struct AuditKeeper {
    store: Store,
    outbox: Outbox,
    clock: SharedClock,
    signer: Option<Signer>,
    site: String,
    config: AuditConfig,
}

impl AuditKeeper {
    pub fn new(
        store: Store,
        outbox: Outbox,
        clock: SharedClock,
        signer: Option<Signer>,
        site: &str,
        config: AuditConfig,
    ) -> Self {
        AuditKeeper {
            store,
            outbox,
            clock,
            signer,
            site: site.to_owned(),
            config,
        }
    }

    /// Signs the head (if it moved) and queues the checkpoint for the cloud.
    pub fn checkpoint(&self) -> Result<Option<Checkpoint>> {
        let Some(signer) = &self.signer else {
            return Ok(None);
        };
        let now = self.clock.now();
        let Some(checkpoint) = signer.checkpoint(&self.store, now)? else {
            return Ok(None);
        };
        let stamp = Stamp::new(None, now, self.clock.synced());
        let site = self.site.clone();
        // Nested: the checkpoint's own `seq` (the audit entry) is not the message's stream seq.
        let body = serde_json::json!({ "checkpoint": checkpoint });
        let record = NewRecord {
            priority: Priority::High,
            topic: checkpoints_topic(&site),
            retain: false,
            accepted_ms: u64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(0),
            payload: Box::new(move |seq| {
                envelope::encode(&site, None, "audit_checkpoint", &stamp, seq, &body)
            }),
        };
        self.outbox.append(vec![record])?;
        tracing::info!(seq = checkpoint.seq, "Audit checkpoint signed.");
        Ok(Some(checkpoint))
    }

    fn prune(&self) {
        let cutoff = self.clock.now() - self.config.retention.max(MIN_RETENTION);
        if !self.clock.synced() {
            // A clock at 1970 or years ahead must not decide what is old enough to delete.
            return;
        }
        match super::prune(&self.store, cutoff) {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "Audit entries past their retention removed."),
            Err(e) => tracing::error!(error = %e, "Cannot prune the audit trail."),
        }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let mut every = tokio::time::interval(self.config.checkpoint_every);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks = 0u64;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = every.tick() => {
                    if let Err(e) = self.checkpoint() {
                        tracing::error!(error = %e, "Cannot sign an audit checkpoint.");
                    }
                    if ticks.is_multiple_of(24) {
                        self.prune();
                    }
                    ticks += 1;
                }
            }
        }
        if let Err(e) = self.checkpoint() {
            tracing::error!(error = %e, "Cannot sign the final audit checkpoint.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::ReadableTable;

    use crate::audit::{Kind, Record, append, verify};

    fn signer_and_ca() -> (Signer, Vec<u8>) {
        let now = time::OffsetDateTime::now_utc();
        let ca = rxgate_certs::CertificateAuthority::generate("test CA", now).unwrap();
        let issued = ca
            .issue_server(&["localhost".to_owned()], Duration::from_secs(86_400), now)
            .unwrap();
        let key =
            rustls_pki_types::pem::PemObject::from_pem_slice(issued.key_pem.as_bytes()).unwrap();
        let key: rustls_pki_types::PrivatePkcs8KeyDer = key;
        (
            Signer::new("store-1", key.secret_pkcs8_der(), &issued.cert.pem).unwrap(),
            ca.cert_der().to_vec(),
        )
    }

    fn add(store: &Store, n: usize) {
        for _ in 0..n {
            store
                .write(|txn| {
                    append(
                        txn,
                        time::OffsetDateTime::now_utc(),
                        true,
                        Record::new(Kind::TokenCreated, "cli"),
                    )
                })
                .unwrap();
        }
    }

    #[test]
    fn deleting_the_tail_and_rewriting_the_head_is_caught_by_the_last_signed_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(&dir.path().join("s.redb")).unwrap();
        let (signer, ca) = signer_and_ca();
        add(&store, 5);
        let checkpoint = signer
            .checkpoint(&store, time::OffsetDateTime::now_utc())
            .unwrap()
            .unwrap();
        assert_eq!(checkpoint.seq, 5);
        checkpoint.verify_signature(&ca).unwrap();
        assert_eq!(verify(&store, Some(&ca), &[]).unwrap(), Ok(5));

        // An attacker removes entries 4 and 5 and makes the head agree with entry 3.
        store
            .write(|txn| {
                let mut audit = txn.open_table(crate::audit::AUDIT)?;
                let hash = audit.get(3)?.unwrap().value()[..32].to_vec();
                audit.remove(4)?;
                audit.remove(5)?;
                let mut head = 3u64.to_be_bytes().to_vec();
                head.extend_from_slice(&hash);
                txn.open_table(crate::audit::META)?
                    .insert("head", head.as_slice())?;
                Ok(())
            })
            .unwrap();
        let broken = verify(&store, Some(&ca), &[]).unwrap().unwrap_err();
        assert_eq!(broken.seq, 4);
        assert!(broken.reason.contains("checkpoint"), "{}", broken.reason);

        // Even with the local checkpoints deleted too, the copy the cloud holds catches it.
        store
            .write(|txn| {
                txn.open_table(super::super::checkpoint::CHECKPOINTS)?
                    .retain(|_, _| false)?;
                Ok(())
            })
            .unwrap();
        assert_eq!(verify(&store, Some(&ca), &[]).unwrap(), Ok(3));
        let broken = verify(&store, Some(&ca), &[checkpoint])
            .unwrap()
            .unwrap_err();
        assert_eq!(broken.seq, 4);
    }

    #[test]
    fn a_forged_checkpoint_does_not_verify() {
        let (signer, ca) = signer_and_ca();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(&dir.path().join("s.redb")).unwrap();
        add(&store, 2);
        let mut checkpoint = signer
            .checkpoint(&store, time::OffsetDateTime::now_utc())
            .unwrap()
            .unwrap();
        checkpoint.seq = 1;
        assert!(checkpoint.verify_signature(&ca).is_err());
        let (_, other_ca) = signer_and_ca();
        let good = signer
            .checkpoint(&store, time::OffsetDateTime::now_utc())
            .unwrap();
        assert!(good.is_none(), "nothing new to sign");
        let stored = crate::audit::checkpoint::checkpoints(&store).unwrap();
        assert!(
            stored[0].verify_signature(&other_ca).is_err(),
            "another CA's gateway did not sign it"
        );
    }

    #[test]
    fn pruning_keeps_the_chain_verifiable_from_the_last_removed_entry() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(&dir.path().join("s.redb")).unwrap();
        let old = time::OffsetDateTime::now_utc() - time::Duration::days(900);
        for _ in 0..3 {
            store
                .write(|txn| append(txn, old, true, Record::new(Kind::TokenCreated, "cli")))
                .unwrap();
        }
        add(&store, 2);
        let removed = crate::audit::prune(
            &store,
            time::OffsetDateTime::now_utc() - time::Duration::days(731),
        )
        .unwrap();
        assert_eq!(removed, 3);
        assert_eq!(verify(&store, None, &[]).unwrap(), Ok(2));
        assert_eq!(crate::audit::entries(&store, 1, 10).unwrap()[0].seq, 4);
    }
}
