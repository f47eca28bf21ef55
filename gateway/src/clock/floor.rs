//! The time floor of a running gateway: where it comes from, where it is kept, when it is written.
//!
//! # The floor at start-up
//! The latest of:
//! - the build time, embedded by `build.rs` (`SOURCE_DATE_EPOCH`, or when the build ran);
//! - `clock_floor["floor"]` (below), the floor the gateway last persisted;
//! - the timestamp of the newest audit entry stamped with a synchronised clock (among the last
//!   `audit::AUDIT_LOOKBACK` entries), so a store written before this table existed has a floor too.
//!
//! Only times taken from a synchronised clock enter the floor: an unsynchronised clock may run
//! ahead (a wrong RTC, a bad manual setting), and a floor pushed into the future would expire
//! every device and freeze every timestamp.
//!
//! # Table
//! `clock_floor`: one key, `"floor"` → i64, Unix time in milliseconds (rounded down). Written by
//! [`FloorKeeper`]: at start, then at most once per [`PERSIST_EVERY`] and only when the floor has
//! moved (it moves with synchronised clock readings), without fsync: the next durable commit of any
//! component (outbox, audit, registry) makes it durable, and losing it in a power cut only leaves
//! the floor up to that much lower. At shutdown it is written durably.

use std::sync::Arc;
use std::time::Duration;

use redb::{ReadableTable, TableDefinition};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::{SharedClock, TimeFloor, rfc3339};
use crate::error::Result;
use crate::store::Store;

pub(crate) const FLOOR_TABLE: TableDefinition<&str, i64> = TableDefinition::new("clock_floor");
const FLOOR_KEY: &str = "floor";

/// How often, at most, the floor is written while the clock is synchronised.
pub const PERSIST_EVERY: Duration = Duration::from_secs(60);

/// The build time embedded by `build.rs`.
pub fn build_time() -> OffsetDateTime {
    env!("RXGATE_BUILD_EPOCH")
        .parse::<i64>()
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn from_ms(ms: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
}

fn to_ms(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos().div_euclid(1_000_000)).unwrap_or(i64::MAX)
}

/// The floor persisted in `clock_floor`, if any.
pub fn persisted(store: &Store) -> Result<Option<OffsetDateTime>> {
    store.read(|txn| match txn.open_table(FLOOR_TABLE) {
        Ok(table) => Ok(table.get(FLOOR_KEY)?.and_then(|v| from_ms(v.value()))),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    })
}

/// The floor a gateway starts with: the latest of the times it knows have passed.
pub fn start_floor(
    build: OffsetDateTime,
    persisted: Option<OffsetDateTime>,
    newest_synced_entry: Option<OffsetDateTime>,
) -> OffsetDateTime {
    [persisted, newest_synced_entry]
        .into_iter()
        .flatten()
        .fold(build, OffsetDateTime::max)
}

/// Wraps `clock` in the floor this store and this build know of; `newest_synced_entry` is the
/// newest audit entry's synchronised time (`audit::newest_synced_entry`).
pub fn open(
    store: &Store,
    clock: SharedClock,
    newest_synced_entry: Option<OffsetDateTime>,
) -> Result<Arc<TimeFloor>> {
    let floor = start_floor(build_time(), persisted(store)?, newest_synced_entry);
    Ok(TimeFloor::new(clock, floor))
}

fn persist(store: &Store, floor: OffsetDateTime, durable: bool) -> Result<()> {
    let write = |txn: &redb::WriteTransaction| {
        let mut table = txn.open_table(FLOOR_TABLE)?;
        let kept = table.get(FLOOR_KEY)?.map(|v| v.value());
        let ms = to_ms(floor);
        if kept.is_none_or(|kept| kept < ms) {
            table.insert(FLOOR_KEY, ms)?;
        }
        Ok(())
    };
    if durable {
        store.write(write)
    } else {
        store.write_lazy(write)
    }
}

/// The task that moves the floor with the synchronised clock and persists it (see the module
/// docs for when), and says when the clock reads earlier than the floor.
pub struct FloorKeeper {
    store: Store,
    floor: Arc<TimeFloor>,
    every: Duration,
    written: Option<OffsetDateTime>,
    behind: bool,
}

impl FloorKeeper {
    pub fn new(store: Store, floor: Arc<TimeFloor>) -> Self {
        FloorKeeper {
            store,
            floor,
            every: PERSIST_EVERY,
            written: None,
            behind: false,
        }
    }

    fn step(&mut self, durable: bool) {
        let reading = self.floor.observe();
        if reading.raised() != self.behind {
            self.behind = reading.raised();
            let clock = rfc3339(reading.clock);
            let floor = reading.floor.map(rfc3339).unwrap_or_default();
            match (self.behind, reading.synced) {
                (true, true) => tracing::warn!(
                    %clock, %floor,
                    "The clock is synchronised but reads earlier than a time the gateway has already seen; \
                     timestamps stay at that time floor until the clock passes it. Check the time source (NTP)."
                ),
                (true, false) => tracing::warn!(
                    %clock, %floor,
                    "The clock is not synchronised and reads earlier than a time the gateway has already seen; \
                     timestamps are raised to that time floor and certificates that expired before it are refused."
                ),
                (false, _) => {
                    tracing::info!(%clock, %floor, "The clock has passed the time floor.")
                }
            }
        }
        let floor = self.floor.floor();
        if !durable && self.written.is_some_and(|w| w >= floor) {
            return;
        }
        match persist(&self.store, floor, durable) {
            Ok(()) => self.written = Some(floor),
            Err(e) => tracing::error!(error = %e, "Cannot store the time floor."),
        }
    }

    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut every = tokio::time::interval(self.every);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = every.tick() => self.step(false),
            }
        }
        self.step(true);
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;
    use crate::audit::{Kind, Record, append};
    use crate::clock::{Clock, ManualClock};

    const T0: OffsetDateTime = datetime!(2026-05-01 08:00 UTC);

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(&dir.path().join("s.redb")).unwrap();
        (dir, store)
    }

    fn audit_at(store: &Store, at: OffsetDateTime, synced: bool) {
        store
            .write(|txn| {
                append(
                    txn,
                    at,
                    synced,
                    Record::new(Kind::PolicyReloaded, "gateway"),
                )
            })
            .unwrap();
    }

    #[test]
    fn the_start_floor_is_the_latest_of_build_time_persisted_floor_and_newest_synchronised_entry() {
        assert_eq!(start_floor(T0, None, None), T0);
        let later = T0 + time::Duration::days(3);
        assert_eq!(start_floor(T0, Some(later), None), later);
        assert_eq!(start_floor(T0, Some(later), Some(T0)), later);
        assert_eq!(start_floor(later, Some(T0), Some(T0)), later);
    }

    #[test]
    fn only_audit_entries_stamped_by_a_synchronised_clock_count() {
        let (_dir, store) = store();
        assert_eq!(crate::audit::newest_synced_entry(&store).unwrap(), None);
        audit_at(&store, T0, true);
        audit_at(&store, T0 + time::Duration::days(400), false);
        assert_eq!(crate::audit::newest_synced_entry(&store).unwrap(), Some(T0));
    }

    #[tokio::test(start_paused = true)]
    async fn the_keeper_persists_synchronised_readings_and_a_restart_starts_from_them() {
        let (_dir, store) = store();
        let later = build_time() + time::Duration::days(10);
        let clock = ManualClock::new(later, true);
        let floor = open(&store, clock.clone(), None).unwrap();
        assert_eq!(floor.floor(), build_time());
        let shutdown = CancellationToken::new();
        let task =
            tokio::spawn(FloorKeeper::new(store.clone(), floor.clone()).run(shutdown.clone()));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(persisted(&store).unwrap(), Some(later));
        clock.advance(Duration::from_secs(30));
        shutdown.cancel();
        task.await.unwrap();
        let at_shutdown = later + time::Duration::seconds(30);
        assert_eq!(persisted(&store).unwrap(), Some(at_shutdown));

        // After a power cut the clock is a month behind and unsynchronised.
        let stale = ManualClock::new(later - time::Duration::days(30), false);
        let floor = open(&store, stale, None).unwrap();
        assert_eq!(floor.floor(), at_shutdown);
        assert_eq!(floor.now(), at_shutdown);
        assert!(floor.raised());
    }
}
