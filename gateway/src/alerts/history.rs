//! Stored alerts: table `alerts`, alert id (UUID text) → [`Alert`] (JSON).

use redb::{TableDefinition, WriteTransaction};
use uuid::Uuid;

use super::record::{Alert, AlertState};
use crate::error::Result;
use crate::store::{self, Store, to_json};

pub(crate) const ALERTS: TableDefinition<&str, &[u8]> = TableDefinition::new("alerts");

pub(crate) fn save_alert(txn: &WriteTransaction, alert: &Alert) -> Result<()> {
    txn.open_table(ALERTS)?
        .insert(alert.id.to_string().as_str(), to_json(alert).as_slice())?;
    Ok(())
}

/// Every stored alert, oldest first.
pub fn alerts(store: &Store) -> Result<Vec<Alert>> {
    let mut all: Vec<Alert> = store.read(|txn| store::all_json(txn, ALERTS))?;
    all.sort_by_key(|a| (a.raised_at, a.id));
    Ok(all)
}

/// Alerts not yet resolved.
pub fn open_alerts(store: &Store) -> Result<Vec<Alert>> {
    Ok(alerts(store)?
        .into_iter()
        .filter(|a| a.state != AlertState::Resolved)
        .collect())
}

pub fn alert(store: &Store, id: Uuid) -> Result<Option<Alert>> {
    store.read(|txn| match txn.open_table(ALERTS) {
        Ok(t) => store::get_json(&t, "alerts", id.to_string().as_str()),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    })
}
