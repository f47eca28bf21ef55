//! The gateway library's error type. Each variant carries what a user needs to act on it.

use std::fmt;
use std::path::PathBuf;

/// Errors of the rxgate library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Config(#[from] ConfigErrors),

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

    /// A key is sealed and cannot be opened here (no key-encryption key, or another one).
    #[error("{0}")]
    KeysSealed(String),

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

    /// The file system holding the store has no room left. Nothing committed is lost; writes are
    /// refused until there is space again, and then resume by themselves.
    #[error(
        "the disk holding {} is full: new data is refused until space is freed on that file system (nothing already stored is lost; rxgate resumes by itself)",
        path.display()
    )]
    DiskFull { path: PathBuf },

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

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key (`enroll.listen`), or the section (`enroll`) when serde only knew that much,
    /// or empty for a problem with the file as a whole.
    pub key: String,
    /// The offending value as written, when there is one.
    pub value: Option<String>,
    /// What is wrong and what is expected.
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(
        key: impl Into<String>,
        value: impl fmt::Display,
        message: impl Into<String>,
    ) -> Self {
        ConfigError {
            key: key.into(),
            value: Some(value.to_string()),
            message: message.into(),
        }
    }

    pub(crate) fn section(key: &str, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.to_owned(),
            value: None,
            message: message.into(),
        }
    }

    pub(crate) fn file(message: String) -> Self {
        ConfigError {
            key: String::new(),
            value: None,
            message,
        }
    }

    pub(crate) fn syntax(e: &toml::de::Error) -> Self {
        ConfigError::file(format!("invalid TOML: {}", e.to_string().trim_end()))
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&*self.key, &self.value) {
            ("", _) => f.write_str(&self.message),
            (key, Some(value)) => write!(f, "{key} = {value}: {}", self.message),
            (key, None) => write!(f, "{key}: {}", self.message),
        }
    }
}

/// Every problem found in a config file; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub(crate) fn single(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}
