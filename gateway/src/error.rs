//! The gateway library's error type. Each variant carries what a user needs to act on it.

use std::path::PathBuf;

/// Errors of the rxgate library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigErrors),

    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "gateway not initialised: {} is missing; run `rxgate init` first",
        missing.display()
    )]
    NotInitialised { missing: PathBuf },

    #[error(
        "a CA already exists in {}; pass --force to replace it (every enrolled device will then need to enroll again)",
        data_dir.display()
    )]
    AlreadyInitialised { data_dir: PathBuf },

    #[error(
        "the store {} is in use by another process (a running `rxgate run`?) and its admin socket {} does not answer",
        store.display(),
        socket.display()
    )]
    StoreLocked { store: PathBuf, socket: PathBuf },

    #[error("store error: {0}")]
    Store(#[from] redb::Error),

    #[error("store record {table}/{key} is unreadable: {reason}")]
    Corrupt {
        table: String,
        key: String,
        reason: String,
    },

    #[error(transparent)]
    Certs(#[from] rxgate_certs::Error),

    #[error("{0}")]
    NotFound(String),

    #[error("{0}")]
    Invalid(String),

    #[error("admin socket {}: {reason}", socket.display())]
    Admin { socket: PathBuf, reason: String },

    #[error(
        "outbox key ({lane}, {n}) already holds a stored record; the batch was not written and the record kept (the key counter has moved past every stored key, so sending again will succeed)"
    )]
    OutboxKeyTaken { lane: u8, n: u64 },
}

impl Error {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io {
            action,
            path,
            source,
        }
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Store(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

pub type Result<T, E = Error> = std::result::Result<T, E>;
