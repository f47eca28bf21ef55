//! Signed checkpoints: from time to time the gateway signs the audit chain's head (sequence
//! number and hash) with its own key and sends the checkpoint to the cloud. A chain truncated or
//! rewritten on the gateway no longer contains what a checkpoint held outside says it contained.
//!
//! Signed text (UTF-8, newline-terminated lines):
//! `rxgate-audit-checkpoint\n<site>\n<seq>\n<hash hex>\n<ts RFC 3339>\n`, ECDSA P-256 with
//! SHA-256 (ASN.1 DER signature, base64), by the key of the gateway's TLS server certificate,
//! which is included (PEM) and chains to the gateway's CA.
//!
//! Table `audit_checkpoints`: seq → [`Checkpoint`] (JSON), every checkpoint made.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use redb::{ReadableTable, TableDefinition};
use ring::signature::{self, EcdsaKeyPair, KeyPair};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{GENESIS, META, head_of};
use crate::clock::rfc3339;
use crate::error::{Error, Result};
use crate::store::{self, Store, to_json};

pub(crate) const CHECKPOINTS: TableDefinition<u64, &[u8]> =
    TableDefinition::new("audit_checkpoints");

/// A signed statement: "the audit chain of `site` had entry `seq` with hash `hash` at `ts`".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub site: String,
    pub seq: u64,
    /// Hex SHA-256 of entry `seq`.
    pub hash: String,
    pub ts: String,
    /// base64 DER ECDSA P-256 SHA-256 signature over [`Checkpoint::signed_text`].
    pub signature: String,
    /// The signer's certificate (PEM), issued by the gateway's CA.
    pub certificate: String,
}

impl Checkpoint {
    pub fn signed_text(site: &str, seq: u64, hash: &str, ts: &str) -> String {
        format!("rxgate-audit-checkpoint\n{site}\n{seq}\n{hash}\n{ts}\n")
    }

    /// Checks the signature against the public key of the included certificate, and that the
    /// certificate was issued by `ca_der` (the gateway's CA).
    pub fn verify_signature(&self, ca_der: &[u8]) -> std::result::Result<(), String> {
        let pem = rustls_pki_types::pem::PemObject::from_pem_slice(self.certificate.as_bytes())
            .map_err(|e| format!("the checkpoint's certificate is not PEM: {e}"))?;
        let cert: rustls_pki_types::CertificateDer = pem;
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert)
            .map_err(|e| format!("bad certificate: {e}"))?;
        let (_, ca) = x509_parser::parse_x509_certificate(ca_der)
            .map_err(|e| format!("bad CA certificate: {e}"))?;
        parsed
            .verify_signature(Some(ca.public_key()))
            .map_err(|_| {
                "the checkpoint's certificate was not issued by this gateway's CA".to_owned()
            })?;
        let key = parsed.public_key().subject_public_key.data.to_vec();
        let sig = STANDARD
            .decode(&self.signature)
            .map_err(|_| "the signature is not base64".to_owned())?;
        signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, key)
            .verify(
                Self::signed_text(&self.site, self.seq, &self.hash, &self.ts).as_bytes(),
                &sig,
            )
            .map_err(|_| "the signature does not match".to_owned())
    }
}

/// Signs checkpoints with the gateway's key.
pub struct Signer {
    key: EcdsaKeyPair,
    certificate: String,
    site: String,
}

impl Signer {
    /// From the gateway's server key (PKCS#8 DER, ECDSA P-256) and certificate (PEM).
    pub fn new(site: &str, key_pkcs8: &[u8], certificate_pem: &str) -> Result<Signer> {
        let rng = ring::rand::SystemRandom::new();
        let key =
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, key_pkcs8, &rng)
                .map_err(|e| {
                Error::Invalid(format!(
                    "the gateway's key cannot sign audit checkpoints: {e}"
                ))
            })?;
        Ok(Signer {
            key,
            certificate: certificate_pem.to_owned(),
            site: site.to_owned(),
        })
    }

    pub fn public_key(&self) -> &[u8] {
        self.key.public_key().as_ref()
    }

    /// Signs the chain's current head, stores the checkpoint and returns it; `None` when the
    /// chain is empty or the head was already checkpointed.
    pub fn checkpoint(&self, store: &Store, now: OffsetDateTime) -> Result<Option<Checkpoint>> {
        let rng = ring::rand::SystemRandom::new();
        store.write(|txn| {
            let Some((seq, hash)) = head_of(&txn.open_table(META)?)? else {
                return Ok(None);
            };
            if hash == GENESIS {
                return Ok(None);
            }
            let mut table = txn.open_table(CHECKPOINTS)?;
            if table.last()?.is_some_and(|(last, _)| last.value() >= seq) {
                return Ok(None);
            }
            let hash = super::hex(&hash);
            let ts = rfc3339(now);
            let signature = self
                .key
                .sign(
                    &rng,
                    Checkpoint::signed_text(&self.site, seq, &hash, &ts).as_bytes(),
                )
                .map_err(|_| Error::Invalid("signing the audit checkpoint failed".to_owned()))?;
            let checkpoint = Checkpoint {
                site: self.site.clone(),
                seq,
                hash,
                ts,
                signature: STANDARD.encode(signature.as_ref()),
                certificate: self.certificate.clone(),
            };
            table.insert(seq, to_json(&checkpoint).as_slice())?;
            Ok(Some(checkpoint))
        })
    }
}

/// Every stored checkpoint, oldest first.
pub fn checkpoints(store: &Store) -> Result<Vec<Checkpoint>> {
    store.read(|txn| {
        let table = match txn.open_table(CHECKPOINTS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (seq, _) = entry?;
            if let Some(c) = store::get_json(&table, "audit_checkpoints", seq.value())? {
                out.push(c);
            }
        }
        Ok(out)
    })
}

/// The newest stored checkpoint.
pub fn last(store: &Store) -> Result<Option<Checkpoint>> {
    store.read(|txn| {
        let table = match txn.open_table(CHECKPOINTS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match table.last()? {
            Some((seq, _)) => store::get_json(&table, "audit_checkpoints", seq.value()),
            None => Ok(None),
        }
    })
}
