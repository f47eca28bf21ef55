//! A consistent copy of the live store, taken while the gateway runs: every table is copied
//! inside ONE read transaction (redb's snapshot isolation: writers go on committing, the copy
//! sees exactly the state of one commit) into a fresh redb file. The live file itself is never
//! copied byte by byte: redb does not promise a consistent file while writes are in progress.
//!
//! Tables are copied without knowing their record layouts: [`Raw`] reads and writes a table's
//! keys and values as the bytes they are stored as, under the type names the table was created
//! with. A table of a type pair not in [`copy_table`]'s list fails the backup, naming the table:
//! a backup never leaves a table out silently.

use std::cmp::Ordering;
use std::marker::PhantomData;
use std::path::Path;

use redb::{
    Key, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, TableError,
    TableHandle, TypeName, Value, WriteTransaction,
};

use crate::error::{Error, Result};

/// The stored bytes of a `T`, under `T`'s type name, so a table declared with `T` opens as a
/// table of `Raw<T>`, and a copy written through `Raw<T>` reads back as `T`.
struct Raw<T>(PhantomData<T>);

impl<T> std::fmt::Debug for Raw<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Raw")
    }
}

impl<T: Value + 'static> Value for Raw<T> {
    type SelfType<'a>
        = &'a [u8]
    where
        Self: 'a;
    type AsBytes<'a>
        = &'a [u8]
    where
        Self: 'a;

    fn fixed_width() -> Option<usize> {
        T::fixed_width()
    }

    fn from_bytes<'a>(data: &'a [u8]) -> &'a [u8]
    where
        Self: 'a,
    {
        data
    }

    fn as_bytes<'a, 'b: 'a>(value: &'a &'b [u8]) -> &'a [u8]
    where
        Self: 'b,
    {
        value
    }

    fn type_name() -> TypeName {
        T::type_name()
    }
}

impl<T: Key + 'static> Key for Raw<T> {
    fn compare(data1: &[u8], data2: &[u8]) -> Ordering {
        T::compare(data1, data2)
    }
}

/// What [`copy`] copied: entries per table.
pub type Tables = std::collections::BTreeMap<String, u64>;

/// Copies every table visible in `txn` into a new redb file at `into` (created 0600; it must not
/// exist). Returns the number of entries of each table.
pub fn copy(txn: &ReadTransaction, into: &Path) -> Result<Tables> {
    use std::os::unix::fs::OpenOptionsExt;
    if txn.list_multimap_tables()?.next().is_some() {
        return Err(Error::Invalid(
            "the store has a multimap table, which the backup does not know how to copy".to_owned(),
        ));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(into)
        .map_err(Error::io("cannot create the store snapshot", into))?;
    let backend = redb::backends::FileBackend::new(file)?;
    let db = redb::Builder::new().create_with_backend(backend)?;
    let write = db.begin_write()?;
    let mut tables = Tables::new();
    for handle in txn.list_tables()? {
        let name = handle.name().to_owned();
        let n = copy_table(txn, &write, &name)?;
        tables.insert(name, n);
    }
    write.commit()?;
    Ok(tables)
}

/// Counts the entries of every table of the store snapshot at `path`, opened read-only.
pub fn count(path: &Path) -> Result<Tables> {
    let db = redb::Builder::new().open_read_only(path)?;
    let txn = db.begin_read()?;
    let mut tables = Tables::new();
    for handle in txn.list_tables()? {
        let name = handle.name().to_owned();
        let table = txn.open_untyped_table(handle)?;
        tables.insert(name, redb::ReadableTableMetadata::len(&table)?);
    }
    Ok(tables)
}

/// Copies table `name` as the first key and value types of the list that it was created with.
fn copy_table(txn: &ReadTransaction, write: &WriteTransaction, name: &str) -> Result<u64> {
    let mut stored = None;
    macro_rules! try_types {
        ($(($k:ty, $v:ty)),* $(,)?) => {$(
            match copy_typed::<$k, $v>(txn, write, name)? {
                Copied::Entries(n) => return Ok(n),
                Copied::Mismatch(key, value) => {
                    stored.get_or_insert((key, value));
                }
            }
        )*};
    }
    try_types!(
        (&str, &[u8]),
        (&str, u64),
        (&str, i64),
        (u64, &[u8]),
        (u64, u64),
        ((u8, u64), &[u8]),
        ((&str, i64), &[u8]),
        ((&str, i32), &[u8]),
    );
    let (key, value) = stored.unwrap_or_default();
    Err(Error::Invalid(format!(
        "the store's table {name:?} has keys of type {key} and values of type {value}, which the \
         backup does not know how to copy (add the pair to backup::snapshot::copy_table)"
    )))
}

enum Copied {
    Entries(u64),
    /// The table's stored key and value type names.
    Mismatch(String, String),
}

fn copy_typed<K: Key + 'static, V: Value + 'static>(
    txn: &ReadTransaction,
    write: &WriteTransaction,
    name: &str,
) -> Result<Copied> {
    let def: TableDefinition<Raw<K>, Raw<V>> = TableDefinition::new(name);
    let source = match txn.open_table(def) {
        Ok(table) => table,
        Err(TableError::TableTypeMismatch { key, value, .. }) => {
            return Ok(Copied::Mismatch(
                key.name().to_owned(),
                value.name().to_owned(),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let mut target = write.open_table(def)?;
    let mut n = 0;
    for entry in source.iter()? {
        let (key, value) = entry?;
        target.insert(key.value(), value.value())?;
        n += 1;
    }
    Ok(Copied::Entries(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: TableDefinition<&str, &[u8]> = TableDefinition::new("text");
    const PAIRS: TableDefinition<(&str, i64), &[u8]> = TableDefinition::new("pairs");
    const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");

    #[test]
    fn the_copy_holds_every_table_with_its_types_as_of_the_read_transaction_and_not_later_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::create(&dir.path().join("live.redb")).unwrap();
        store
            .write(|txn| {
                txn.open_table(TEXT)?.insert("a", b"one".as_slice())?;
                txn.open_table(PAIRS)?
                    .insert(("dev", -5), b"two".as_slice())?;
                txn.open_table(COUNTERS)?.insert("n", 7)?;
                Ok(())
            })
            .unwrap();
        let copy_path = dir.path().join("copy.redb");
        let tables = store
            .read(|txn| {
                // A commit after the read transaction began is not in the copy.
                store.write(|w| {
                    w.open_table(TEXT)?.insert("late", b"x".as_slice())?;
                    Ok(())
                })?;
                copy(txn, &copy_path)
            })
            .unwrap();
        assert_eq!(
            tables,
            Tables::from([
                ("counters".to_owned(), 1),
                ("pairs".to_owned(), 1),
                ("text".to_owned(), 1)
            ])
        );
        let copied = crate::store::Store::open(&copy_path).unwrap();
        copied
            .read(|txn| {
                assert_eq!(
                    txn.open_table(TEXT)?.get("a")?.unwrap().value(),
                    b"one".as_slice()
                );
                assert!(txn.open_table(TEXT)?.get("late")?.is_none());
                assert_eq!(
                    txn.open_table(PAIRS)?.get(("dev", -5))?.unwrap().value(),
                    b"two".as_slice()
                );
                assert_eq!(txn.open_table(COUNTERS)?.get("n")?.unwrap().value(), 7);
                Ok(())
            })
            .unwrap();
        drop(copied);
        assert_eq!(count(&copy_path).unwrap(), tables);
    }
}
