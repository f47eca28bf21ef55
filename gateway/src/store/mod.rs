//! The durable store: one redb file, `data_dir/rxgate.redb`, opened by one process at a time.
//!
//! Components own their tables (the registry its devices, certificates and tokens; the audit
//! trail its chain; the outbox its records) and define them next to their code. This module only
//! opens the file and runs transactions. Records that are read by people or other tools are JSON;
//! hot-path records choose their own layout and document it where they are defined.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use redb::{Database, ReadTransaction, ReadableDatabase, TableDefinition, WriteTransaction};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Page cache for the store. redb's default is 1 GiB; a Pi has 1–8 GiB for everything.
const CACHE_BYTES: usize = 16 * 1024 * 1024;
/// Longest wait between two attempts to reopen a store that failed, however often it failed.
const REOPEN_MAX_BACKOFF: Duration = Duration::from_secs(10);
const REOPEN_FIRST_BACKOFF: Duration = Duration::from_millis(250);

/// A handle on the store, cheap to clone.
///
/// # Write failures
/// redb latches the first failed write, sync or resize of its file (a full disk: `ENOSPC`): every
/// later operation on that `Database`, reads included, fails with "previous I/O error" until it
/// is closed and opened again, and the next open repairs the file from its last committed
/// transaction. A failed commit never damages what was committed before it. So a failure marks the
/// handle failed, and the first operation (from any clone) after a delay drops the `Database` and
/// opens the file again. The delay starts at 250 ms and doubles, up to 10 s, with every failure
/// until a durable commit succeeds (a repair reads the whole file: a full disk must not make the
/// gateway repair it for every refused batch); until then operations fail fast with the same
/// error. Each reopen bumps
/// [`Store::generation`]: whoever keeps figures about the store in memory (the outbox's counts)
/// recounts them, since a commit that reported an error may still have reached the file.
///
/// A failure whose cause is a full file system is reported as [`Error::DiskFull`], and
/// [`Store::disk_full`] stays true until a durable commit succeeds again.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    db: RwLock<Option<Arc<Database>>>,
    /// Set when an operation failed with an I/O error; cleared by a successful reopen.
    failed: AtomicBool,
    disk_full: AtomicBool,
    generation: AtomicU64,
    reopen: Mutex<Reopen>,
}

struct Reopen {
    not_before: Option<Instant>,
    backoff: Duration,
    last_error: Option<String>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .finish()
    }
}

/// Whether `e` is the file system saying it has no room (or the user's quota is used up).
pub(crate) fn is_disk_full(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull
        || matches!(e.raw_os_error(), Some(code) if code == libc::ENOSPC || code == libc::EDQUOT)
}

/// What a redb error says about the file underneath.
enum Failure {
    /// Not an I/O failure (a missing table, a value too large): the database is fine.
    None,
    /// An I/O failure: the database needs reopening.
    Io { disk_full: bool },
}

fn failure(e: &Error) -> Failure {
    match e {
        Error::DiskFull { .. } => Failure::Io { disk_full: true },
        Error::Store(redb::Error::Io(io)) => Failure::Io {
            disk_full: is_disk_full(io),
        },
        Error::Store(redb::Error::PreviousIo | redb::Error::DatabaseClosed) => {
            Failure::Io { disk_full: false }
        }
        _ => Failure::None,
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
        let db = open_db(path, create)?;
        Ok(Store {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                db: RwLock::new(Some(Arc::new(db))),
                failed: AtomicBool::new(false),
                disk_full: AtomicBool::new(false),
                generation: AtomicU64::new(0),
                reopen: Mutex::new(Reopen {
                    not_before: None,
                    backoff: REOPEN_FIRST_BACKOFF,
                    last_error: None,
                }),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// True from a write that failed because the file system is full until a durable commit
    /// succeeds again.
    pub fn disk_full(&self) -> bool {
        self.inner.disk_full.load(Ordering::Acquire)
    }

    /// How many times the database was reopened after a failure (see the type's docs).
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    /// The database to run the next transaction on, reopening it first if it failed.
    fn db(&self) -> Result<Arc<Database>> {
        if self.inner.failed.load(Ordering::Acquire) {
            self.reopen()?;
        }
        let db = self.inner.db.read().unwrap_or_else(PoisonError::into_inner);
        match db.as_ref() {
            Some(db) => Ok(db.clone()),
            None => Err(self.unusable(None)),
        }
    }

    /// The error for an operation refused while the store waits to be reopened.
    fn unusable(&self, last: Option<String>) -> Error {
        if self.disk_full() {
            return Error::DiskFull {
                path: self.inner.path.clone(),
            };
        }
        let reason = last.unwrap_or_else(|| "a previous write failed".to_owned());
        Error::Store(redb::Error::Io(std::io::Error::other(format!(
            "the store is being reopened after a failed write ({reason})"
        ))))
    }

    fn reopen(&self) -> Result<()> {
        let mut reopen = self
            .inner
            .reopen
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !self.inner.failed.load(Ordering::Acquire) {
            return Ok(()); // another caller reopened it meanwhile
        }
        let now = Instant::now();
        if reopen.not_before.is_some_and(|t| now < t) {
            return Err(self.unusable(reopen.last_error.clone()));
        }
        let mut slot = self
            .inner
            .db
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        // Dropping the last handle closes the file; a transaction still running elsewhere keeps
        // it open, and then the open below fails as already open and is tried again later.
        drop(slot.take());
        match open_db(&self.inner.path, false) {
            Ok(db) => {
                *slot = Some(Arc::new(db));
                self.inner.generation.fetch_add(1, Ordering::AcqRel);
                self.inner.failed.store(false, Ordering::Release);
                reopen.not_before = None;
                reopen.last_error = None;
                tracing::debug!(store = %self.inner.path.display(), "Store reopened after a failed write.");
                Ok(())
            }
            Err(e) => {
                if let Error::Store(redb::Error::Io(io)) = &e
                    && is_disk_full(io)
                {
                    self.inner.disk_full.store(true, Ordering::Release);
                }
                reopen.not_before = Some(now + reopen.backoff);
                reopen.backoff = (reopen.backoff * 2).min(REOPEN_MAX_BACKOFF);
                reopen.last_error = Some(e.to_string());
                tracing::debug!(store = %self.inner.path.display(), error = %e, "Store not reopened yet.");
                Err(self.unusable(Some(e.to_string())))
            }
        }
    }

    /// Notes what an operation's error says about the file, and names a full disk as such.
    fn check<R>(&self, result: Result<R>) -> Result<R> {
        let e = match result {
            Ok(r) => return Ok(r),
            Err(e) => e,
        };
        match failure(&e) {
            Failure::None => Err(e),
            Failure::Io { disk_full } => {
                let episode = self.disk_full() && disk_full;
                if disk_full {
                    self.inner.disk_full.store(true, Ordering::Release);
                }
                let mut reopen = self
                    .inner
                    .reopen
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                reopen.not_before = Some(Instant::now() + reopen.backoff);
                let delay = reopen.backoff;
                reopen.backoff = (reopen.backoff * 2).min(REOPEN_MAX_BACKOFF);
                drop(reopen);
                if !self.inner.failed.swap(true, Ordering::AcqRel) && !episode {
                    tracing::warn!(store = %self.inner.path.display(), error = %e, disk_full, retry_in = ?delay, "Store write failed; the store is reopened after a delay.");
                } else {
                    tracing::debug!(store = %self.inner.path.display(), error = %e, retry_in = ?delay, "Store write failed again.");
                }
                if disk_full || self.disk_full() {
                    Err(Error::DiskFull {
                        path: self.inner.path.clone(),
                    })
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Runs `f` in a write transaction and commits it (durably) if `f` succeeds. A refusal that
    /// must still be recorded (a failed-attempt counter, an audit entry) is returned as
    /// `Ok(Err(refusal))`, which commits.
    pub fn write<R>(&self, f: impl FnOnce(&WriteTransaction) -> Result<R>) -> Result<R> {
        let db = self.db()?;
        let result = self.check((|| {
            let txn = db.begin_write()?;
            let result = f(&txn)?;
            txn.commit()?;
            Ok(result)
        })());
        if result.is_ok() {
            if self.inner.disk_full.swap(false, Ordering::AcqRel) {
                tracing::info!(store = %self.inner.path.display(), "Store writes succeed again: there is room on the disk.");
            }
            let mut reopen = self
                .inner
                .reopen
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            reopen.backoff = REOPEN_FIRST_BACKOFF;
        }
        result
    }

    /// Like [`Store::write`] but the commit is not fsynced: it becomes durable with the next
    /// durable commit, and may be lost in a power cut before that. For changes that are safe to
    /// lose (deleting records the cloud already acknowledged: they are merely sent again).
    pub fn write_lazy<R>(&self, f: impl FnOnce(&WriteTransaction) -> Result<R>) -> Result<R> {
        let db = self.db()?;
        self.check((|| {
            let mut txn = db.begin_write()?;
            txn.set_durability(redb::Durability::None)
                .map_err(|e| Error::Invalid(format!("store: {e}")))?;
            let result = f(&txn)?;
            txn.commit()?;
            Ok(result)
        })())
    }

    /// Runs `f` on a consistent snapshot.
    pub fn read<R>(&self, f: impl FnOnce(&ReadTransaction) -> Result<R>) -> Result<R> {
        let db = self.db()?;
        self.check((|| {
            let txn = db.begin_read()?;
            f(&txn)
        })())
    }
}

fn open_db(path: &Path, create: bool) -> Result<Database> {
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
    db.map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => Error::StoreLocked {
            store: path.to_owned(),
            socket: path.with_file_name("rxgate.sock"),
        },
        other => Error::Store(other.into()),
    })
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
