//! What the cold chain keeps in the store: engine state, excursion records, daily statistics
//! and a coarse temperature history for reports. The alert task writes them (`alerts::monitor`),
//! in the same transaction as the alerts they go with.
//!
//! Tables (JSON values unless stated):
//! - `coldchain_state`: device id → engine [`State`].
//! - `excursions`: `(device, started: unix seconds)` → [`ExcursionRecord`]; kept 3 years.
//! - `daily`: `(device, day: days since 1970-01-01)` → [`DailyStats`]; kept 3 years.
//! - `readings`: `(device, bucket start: unix seconds)` → 28 bytes `[min f64][max f64][sum f64]
//!   [count u32]` (little-endian), one bucket per [`BUCKET_SECONDS`]; kept [`READINGS_DAYS`].
//! - `minmax_checks`: `(device, at: unix seconds)` → [`CheckRecord`]; kept 3 years. Written in
//!   the transaction that stores the engine state the check reset.

use redb::{ReadableTable, TableDefinition, WriteTransaction};
use time::{Date, OffsetDateTime};

use serde::{Deserialize, Serialize};

use super::{CheckValues, DailyStats, ExcursionRecord, State};
use crate::error::{Error, Result};
use crate::store::{Store, to_json};

const STATES: TableDefinition<&str, &[u8]> = TableDefinition::new("coldchain_state");
const EXCURSIONS: TableDefinition<(&str, i64), &[u8]> = TableDefinition::new("excursions");
const DAILY: TableDefinition<(&str, i32), &[u8]> = TableDefinition::new("daily");
const READINGS: TableDefinition<(&str, i64), &[u8]> = TableDefinition::new("readings");
const CHECKS: TableDefinition<(&str, i64), &[u8]> = TableDefinition::new("minmax_checks");

/// A daily min/max check as recorded: who, when, what the gateway held (and reset), the
/// person's note, and the audit entry of their electronic signature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckRecord {
    pub device: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub by: String,
    pub values: CheckValues,
    #[serde(default)]
    pub note: String,
    /// The `record.signed` audit entry holding the signature.
    #[serde(default)]
    pub audit_seq: Option<u64>,
}

/// Width of a history bucket.
pub const BUCKET_SECONDS: i64 = 300;
/// How long the history of readings is kept.
pub const READINGS_DAYS: i64 = 400;
/// How long excursion records and daily statistics are kept.
pub const RECORDS_DAYS: i64 = 3 * 366;

/// Minimum, maximum and mean of the readings in one bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub start: i64,
    pub min: f64,
    pub max: f64,
    pub sum: f64,
    pub count: u32,
}

impl Bucket {
    pub fn new(start: i64, t: f64) -> Bucket {
        Bucket {
            start,
            min: t,
            max: t,
            sum: t,
            count: 1,
        }
    }

    pub fn add(&mut self, t: f64) {
        self.min = self.min.min(t);
        self.max = self.max.max(t);
        self.sum += t;
        self.count += 1;
    }

    pub fn mean(&self) -> f64 {
        self.sum / f64::from(self.count.max(1))
    }

    fn encode(&self) -> [u8; 28] {
        let mut out = [0u8; 28];
        out[0..8].copy_from_slice(&self.min.to_le_bytes());
        out[8..16].copy_from_slice(&self.max.to_le_bytes());
        out[16..24].copy_from_slice(&self.sum.to_le_bytes());
        out[24..28].copy_from_slice(&self.count.to_le_bytes());
        out
    }

    fn decode(start: i64, bytes: &[u8]) -> Option<Bucket> {
        let f = |r: std::ops::Range<usize>| {
            bytes
                .get(r)
                .and_then(|b| b.try_into().ok())
                .map(f64::from_le_bytes)
        };
        Some(Bucket {
            start,
            min: f(0..8)?,
            max: f(8..16)?,
            sum: f(16..24)?,
            count: u32::from_le_bytes(bytes.get(24..28)?.try_into().ok()?),
        })
    }
}

/// The bucket a time falls in.
pub fn bucket_start(at: OffsetDateTime) -> i64 {
    at.unix_timestamp().div_euclid(BUCKET_SECONDS) * BUCKET_SECONDS
}

fn day_number(date: Date) -> i32 {
    date.to_julian_day()
        - Date::from_calendar_date(1970, time::Month::January, 1).map_or(0, |d| d.to_julian_day())
}

pub fn save_state(txn: &WriteTransaction, device: &str, state: &State) -> Result<()> {
    txn.open_table(STATES)?
        .insert(device, to_json(state).as_slice())?;
    Ok(())
}

pub fn save_excursion(
    txn: &WriteTransaction,
    device: &str,
    record: &ExcursionRecord,
) -> Result<()> {
    txn.open_table(EXCURSIONS)?.insert(
        (device, record.started.unix_timestamp()),
        to_json(record).as_slice(),
    )?;
    Ok(())
}

pub fn save_day(txn: &WriteTransaction, device: &str, day: &DailyStats) -> Result<()> {
    txn.open_table(DAILY)?
        .insert((device, day_number(day.date)), to_json(day).as_slice())?;
    Ok(())
}

pub fn save_bucket(txn: &WriteTransaction, device: &str, bucket: &Bucket) -> Result<()> {
    txn.open_table(READINGS)?
        .insert((device, bucket.start), bucket.encode().as_slice())?;
    Ok(())
}

pub fn save_check(txn: &WriteTransaction, record: &CheckRecord) -> Result<()> {
    txn.open_table(CHECKS)?.insert(
        (record.device.as_str(), record.at.unix_timestamp()),
        to_json(record).as_slice(),
    )?;
    Ok(())
}

/// Min/max checks of `device` recorded in `[from, to)`.
pub fn checks(
    store: &Store,
    device: &str,
    from: OffsetDateTime,
    to: OffsetDateTime,
) -> Result<Vec<CheckRecord>> {
    store.read(|txn| {
        let table = match txn.open_table(CHECKS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for entry in table.range((device, from.unix_timestamp())..(device, to.unix_timestamp()))? {
            let (_, value) = entry?;
            if let Ok(record) = serde_json::from_slice(value.value()) {
                out.push(record);
            }
        }
        Ok(out)
    })
}

/// Drops history older than its retention, relative to `now`.
pub fn prune(txn: &WriteTransaction, now: OffsetDateTime) -> Result<()> {
    let readings_cutoff = now.unix_timestamp() - READINGS_DAYS * 86_400;
    let records_cutoff = now.unix_timestamp() - RECORDS_DAYS * 86_400;
    let day_cutoff = day_number((now - time::Duration::days(RECORDS_DAYS)).date());
    txn.open_table(READINGS)?
        .retain(|(_, start), _| start >= readings_cutoff)?;
    txn.open_table(EXCURSIONS)?
        .retain(|(_, started), _| started >= records_cutoff)?;
    txn.open_table(DAILY)?
        .retain(|(_, day), _| day >= day_cutoff)?;
    txn.open_table(CHECKS)?
        .retain(|(_, at), _| at >= records_cutoff)?;
    Ok(())
}

/// Engine states of every device, as last saved.
pub fn states(store: &Store) -> Result<Vec<(String, State)>> {
    store.read(|txn| {
        let table = match txn.open_table(STATES) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (device, value) = entry?;
            let state = serde_json::from_slice(value.value()).map_err(|e| Error::Corrupt {
                table: "coldchain_state".to_owned(),
                key: device.value().to_owned(),
                reason: e.to_string(),
            })?;
            out.push((device.value().to_owned(), state));
        }
        Ok(out)
    })
}

/// Daily statistics of `device` for the days `from..=to`.
pub fn days(store: &Store, device: &str, from: Date, to: Date) -> Result<Vec<DailyStats>> {
    store.read(|txn| {
        let table = match txn.open_table(DAILY) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for entry in table.range((device, day_number(from))..=(device, day_number(to)))? {
            let (_, value) = entry?;
            if let Ok(day) = serde_json::from_slice(value.value()) {
                out.push(day);
            }
        }
        Ok(out)
    })
}

/// Excursion records of `device` that started in `[from, to)`.
pub fn excursions(
    store: &Store,
    device: &str,
    from: OffsetDateTime,
    to: OffsetDateTime,
) -> Result<Vec<ExcursionRecord>> {
    store.read(|txn| {
        let table = match txn.open_table(EXCURSIONS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for entry in table.range((device, from.unix_timestamp())..(device, to.unix_timestamp()))? {
            let (_, value) = entry?;
            if let Ok(record) = serde_json::from_slice(value.value()) {
                out.push(record);
            }
        }
        Ok(out)
    })
}

/// History buckets of `device` starting in `[from, to)`.
pub fn readings(
    store: &Store,
    device: &str,
    from: OffsetDateTime,
    to: OffsetDateTime,
) -> Result<Vec<Bucket>> {
    store.read(|txn| {
        let table = match txn.open_table(READINGS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for entry in table.range((device, bucket_start(from))..(device, to.unix_timestamp()))? {
            let (key, value) = entry?;
            if let Some(bucket) = Bucket::decode(key.value().1, value.value()) {
                out.push(bucket);
            }
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_round_trip_through_their_encoding() {
        let mut b = Bucket::new(600, 4.5);
        b.add(5.5);
        b.add(-1.25);
        assert_eq!(Bucket::decode(600, &b.encode()), Some(b));
        assert_eq!(b.mean(), (4.5 + 5.5 - 1.25) / 3.0);
    }

    #[test]
    fn a_time_falls_in_the_bucket_that_starts_at_or_before_it() {
        let at = OffsetDateTime::from_unix_timestamp(1_000_299).unwrap();
        assert_eq!(bucket_start(at), 1_000_200);
    }
}
