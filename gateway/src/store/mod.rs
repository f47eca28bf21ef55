//! The durable store: one redb file, `data_dir/rxgate.redb`, opened by one process at a time.
//!
//! Components own their tables (the registry its devices, certificates and tokens; the audit
//! trail its chain; the outbox its records) and define them next to their code. This module only
//! opens the file and runs transactions. Records that are read by people or other tools are JSON;
//! hot-path records choose their own layout and document it where they are defined.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadTransaction, ReadableDatabase, TableDefinition, WriteTransaction};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Page cache for the store. redb's default is 1 GiB; a Pi has 1–8 GiB for everything.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// A handle on the store, cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Creates the store file, or opens it if it exists.
    pub fn create(path: &Path) -> Result<Store> {
        Self::open_with(path, true)
    }

    /// Opens an existing store; a missing file means `rxgate init` has not run.
    pub fn open(path: &Path) -> Result<Store> {
        if !path.exists() {
            return Err(Error::NotInitialised {
                missing: path.to_owned(),
            });
        }
        Self::open_with(path, false)
    }

    fn open_with(path: &Path, create: bool) -> Result<Store> {
        let mut builder = Database::builder();
        builder.set_cache_size(CACHE_BYTES);
        let db = if create {
            builder.create(path)
        } else {
            builder.open(path)
        };
        if create {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        let db = db.map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => Error::StoreLocked {
                store: path.to_owned(),
                socket: path.with_file_name("rxgate.sock"),
            },
            other => Error::Store(other.into()),
        })?;
        Ok(Store {
            db: Arc::new(db),
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in a write transaction and commits it (durably) if `f` succeeds. A refusal that
    /// must still be recorded (a failed-attempt counter, an audit entry) is returned as
    /// `Ok(Err(refusal))`, which commits.
    pub fn write<R>(&self, f: impl FnOnce(&WriteTransaction) -> Result<R>) -> Result<R> {
        let txn = self.db.begin_write()?;
        let result = f(&txn)?;
        txn.commit()?;
        Ok(result)
    }

    /// Like [`Store::write`] but the commit is not fsynced: it becomes durable with the next
    /// durable commit, and may be lost in a power cut before that. For changes that are safe to
    /// lose (deleting records the cloud already acknowledged: they are merely sent again).
    pub fn write_lazy<R>(&self, f: impl FnOnce(&WriteTransaction) -> Result<R>) -> Result<R> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(redb::Durability::None)
            .map_err(|e| Error::Invalid(format!("store: {e}")))?;
        let result = f(&txn)?;
        txn.commit()?;
        Ok(result)
    }

    /// Runs `f` on a consistent snapshot.
    pub fn read<R>(&self, f: impl FnOnce(&ReadTransaction) -> Result<R>) -> Result<R> {
        let txn = self.db.begin_read()?;
        f(&txn)
    }
}

/// Runs `f`, which may wait on the disk (an fsync on an SD card takes tens of milliseconds, a
/// write transaction waits for the one before it), without holding up the async tasks that
/// share this worker thread: on a multi-threaded runtime the worker first hands them to another
/// thread (`block_in_place`). For synchronous components driven by an async loop (the alert
/// monitor); async code that can move its work should use `spawn_blocking` instead. On a
/// current-thread runtime, or outside one, `f` simply runs.
pub fn off_executor<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Reads a JSON record.
pub(crate) fn get_json<K, T>(
    table: &impl redb::ReadableTable<K, &'static [u8]>,
    name: &str,
    key: K::SelfType<'_>,
) -> Result<Option<T>>
where
    K: redb::Key + 'static,
    for<'a> K::SelfType<'a>: std::fmt::Debug,
    T: DeserializeOwned,
{
    let debug_key = format!("{key:?}");
    match table.get(key)? {
        None => Ok(None),
        Some(guard) => serde_json::from_slice(guard.value())
            .map(Some)
            .map_err(|e| Error::Corrupt {
                table: name.to_owned(),
                key: debug_key,
                reason: e.to_string(),
            }),
    }
}

/// Encodes a JSON record.
pub(crate) fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising plain structs of strings and numbers cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

/// Decodes every value of a JSON table, in key order.
pub(crate) fn all_json<T: DeserializeOwned>(
    txn: &ReadTransaction,
    def: TableDefinition<&'static str, &'static [u8]>,
) -> Result<Vec<T>> {
    let table = match txn.open_table(def) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for entry in table.range::<&str>(..)? {
        let (key, value) = entry?;
        out.push(
            serde_json::from_slice(value.value()).map_err(|e| Error::Corrupt {
                table: redb::TableHandle::name(&def).to_owned(),
                key: key.value().to_owned(),
                reason: e.to_string(),
            })?,
        );
    }
    Ok(out)
}
