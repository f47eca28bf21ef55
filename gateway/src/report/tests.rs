use std::time::Duration;

use time::macros::{date, datetime};

use super::*;
use crate::coldchain::history::{self, Bucket};
use crate::coldchain::{self, Change, Input};

/// Readings every 10 minutes for three days: 4–6 °C, with an excursion to 11 °C on the
/// afternoon of the second day. Runs them through the engine and stores what the monitor would.
fn store_with_readings() -> (tempfile::TempDir, Store, Vec<(OffsetDateTime, f64)>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::create(&dir.path().join("s.redb")).unwrap();
    let limits = Limits::refrigerator(Duration::from_secs(30 * 60));
    let start = datetime!(2026-05-01 00:00 UTC);
    let readings: Vec<(OffsetDateTime, f64)> = (0..3 * 144)
        .map(|i| {
            let at = start + Duration::from_secs(600 * i);
            let t = if (144 + 90..144 + 100).contains(&i) {
                11.0
            } else {
                5.0 + ((i % 12) as f64 - 6.0) / 6.0
            };
            (at, t)
        })
        .collect();
    let mut state = coldchain::State::default();
    let mut buckets: Vec<Bucket> = Vec::new();
    store
        .write(|txn| {
            for &(at, t) in &readings {
                let (next, changes) = coldchain::step(
                    state.clone(),
                    Input::Reading {
                        temperature: Some(t),
                        door_open: None,
                    },
                    at,
                    &limits,
                );
                state = next;
                for change in changes {
                    match change {
                        Change::DayClosed(day) => history::save_day(txn, "fridge-01", &day)?,
                        Change::Cleared {
                            excursion: Some(record),
                            ..
                        } => history::save_excursion(txn, "fridge-01", &record)?,
                        _ => {}
                    }
                }
                let bucket_start = history::bucket_start(at);
                match buckets.last_mut() {
                    Some(b) if b.start == bucket_start => b.add(t),
                    _ => buckets.push(Bucket::new(bucket_start, t)),
                }
            }
            if let Some(day) = &state.day {
                history::save_day(txn, "fridge-01", day)?;
            }
            for b in &buckets {
                history::save_bucket(txn, "fridge-01", b)?;
            }
            Ok(())
        })
        .unwrap();
    (dir, store, readings)
}

#[test]
fn the_csv_daily_log_matches_the_readings() {
    let (_dir, store, readings) = store_with_readings();
    let limits = Limits::refrigerator(Duration::from_secs(1800));
    let data = ReportData::load(
        &store,
        "fridge-01",
        Some(&limits),
        date!(2026 - 05 - 01),
        date!(2026 - 05 - 04),
    )
    .unwrap();
    let csv = data.csv();
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    assert_eq!(rows.len(), 4, "{csv}");
    for (day, row) in [
        date!(2026 - 05 - 01),
        date!(2026 - 05 - 02),
        date!(2026 - 05 - 03),
    ]
    .iter()
    .zip(&rows)
    {
        let of_day: Vec<f64> = readings
            .iter()
            .filter(|(at, _)| at.date() == *day)
            .map(|(_, t)| *t)
            .collect();
        let min = of_day.iter().copied().fold(f64::INFINITY, f64::min);
        let max = of_day.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mean = of_day.iter().sum::<f64>() / of_day.len() as f64;
        assert_eq!(row[0], day.to_string());
        assert_eq!(row[1], format!("{min:.2}"));
        assert_eq!(row[2], format!("{max:.2}"));
        assert_eq!(row[3], format!("{mean:.2}"));
        assert_eq!(row[4], of_day.len().to_string());
    }
    assert_eq!(rows[1][5], "1", "one alarmed excursion on the second day");
    assert_eq!(rows[1][8], "no");
    assert_eq!(rows[0][8], "yes");
    assert_eq!(rows[3][8], "no readings");
}

#[test]
fn the_svg_parses_and_shows_the_band_and_the_excursion() {
    let (_dir, store, _) = store_with_readings();
    let limits = Limits::refrigerator(Duration::from_secs(1800));
    let data = ReportData::load(
        &store,
        "fridge-01",
        Some(&limits),
        date!(2026 - 05 - 01),
        date!(2026 - 05 - 03),
    )
    .unwrap();
    assert_eq!(data.excursions.len(), 1);
    let svg = data.svg();
    let doc = roxmltree::Document::parse(&svg).expect("well-formed SVG");
    let band = doc
        .descendants()
        .find(|n| n.attribute("id") == Some("band"))
        .expect("the allowed band");
    let plot = doc
        .descendants()
        .find(|n| n.attribute("id") == Some("plot"))
        .unwrap();
    let attr = |n: roxmltree::Node, a: &str| n.attribute(a).unwrap().parse::<f64>().unwrap();
    // The band spans 2–8 °C: it sits inside the plot and is narrower than it.
    assert!(attr(band, "height") > 0.0 && attr(band, "height") < attr(plot, "height"));
    let excursions: Vec<_> = doc
        .descendants()
        .filter(|n| n.attribute("class") == Some("excursion"))
        .collect();
    assert_eq!(excursions.len(), 1);
    let title = excursions[0]
        .children()
        .find(|c| c.has_tag_name("title"))
        .unwrap()
        .text()
        .unwrap();
    assert!(
        title.contains("temperature_high") && title.contains("max 11.0"),
        "{title}"
    );
    // The excursion is drawn on the second day: between a third and two thirds of the width.
    let x = attr(excursions[0], "x");
    let width = attr(plot, "width");
    assert!(
        x > 60.0 + width / 3.0 && x < 60.0 + 2.0 * width / 3.0,
        "{x}"
    );
    assert!(
        doc.descendants()
            .any(|n| n.attribute("id") == Some("temperature"))
    );
}

#[test]
fn a_device_without_records_or_profile_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::create(&dir.path().join("s.redb")).unwrap();
    let err = ReportData::load(
        &store,
        "nope",
        None,
        date!(2026 - 05 - 01),
        date!(2026 - 05 - 02),
    )
    .unwrap_err();
    assert!(err.to_string().contains("profile"), "{err}");
    let limits = Limits::refrigerator(Duration::from_secs(1800));
    let err = ReportData::load(
        &store,
        "x",
        Some(&limits),
        date!(2026 - 05 - 02),
        date!(2026 - 05 - 01),
    )
    .unwrap_err();
    assert!(err.to_string().contains("before"), "{err}");
}

#[test]
fn an_excursion_is_linked_to_its_alerts_signature_and_disposition_but_not_to_a_borrowed_one() {
    let (_dir, store, _) = store_with_readings();
    let limits = Limits::refrigerator(Duration::from_secs(1800));
    let day = date!(2026 - 05 - 02);
    let excursion = ReportData::load(&store, "fridge-01", Some(&limits), day, day)
        .unwrap()
        .excursions
        .remove(0);
    let alert = |id: &str, seq: u64| -> crate::alerts::Alert {
        serde_json::from_value(serde_json::json!({
            "id": id, "site": "s", "device": "fridge-01", "kind": "temperature_high",
            "severity": "warning", "state": "resolved", "active": false,
            "started": crate::clock::rfc3339(excursion.started),
            "raised_at": crate::clock::rfc3339(excursion.started),
            "value": 11.0, "limit": 8.0, "low": 2.0, "high": 8.0,
            "acknowledged_by": "anna", "acknowledged_at": "2026-05-02T20:00:00Z",
            "ack_note": format!("acknowledged: moved stock; products quarantined; signature in audit entry {seq}"),
        }))
        .unwrap()
    };
    let id = "0193a000-0000-7000-8000-0000000000aa";
    let signed = |record_id: &str| {
        crate::audit::Record::new(crate::audit::Kind::RecordSigned, "anna").detail(
            serde_json::json!({
                "signer": "anna", "roles": ["pharmacist"], "signed_at": "2026-05-02T20:00:00Z",
                "meaning": "acknowledged", "record": "alert", "record_id": record_id,
                "record_sha256": "ab".repeat(32),
                "statement": { "note": "moved stock", "disposition": "quarantined" },
            }),
        )
    };
    let at = datetime!(2026-05-02 20:00 UTC);
    store
        .write(|txn| {
            crate::audit::append(txn, at, true, signed(id))?;
            crate::alerts::history::save_alert(txn, &alert(id, 1))?;
            Ok(())
        })
        .unwrap();
    let data = ReportData::load(&store, "fridge-01", Some(&limits), day, day).unwrap();
    let review = data.review_of(excursion.started).expect("a review");
    let signature = review.signature.as_ref().expect("the signature");
    assert_eq!(
        (signature.signer.as_str(), signature.audit_seq),
        ("anna", 1)
    );
    assert_eq!(signature.disposition.as_deref(), Some("quarantined"));
    assert_eq!(signature.corrective_action.as_deref(), Some("moved stock"));

    // A note naming the signature of another alert does not borrow it.
    let other = "0193a000-0000-7000-8000-0000000000bb";
    store
        .write(|txn| {
            txn.open_table(crate::alerts::history::ALERTS)?.remove(id)?;
            crate::alerts::history::save_alert(txn, &alert(other, 1))
        })
        .unwrap();
    let data = ReportData::load(&store, "fridge-01", Some(&limits), day, day).unwrap();
    let review = data.review_of(excursion.started).expect("a review");
    assert_eq!(review.alert.to_string(), other);
    assert_eq!(review.signature, None);
    assert_eq!(
        super::review::signature_seq("x; signature in audit entry 42"),
        Some(42)
    );
    assert_eq!(super::review::signature_seq("no signature"), None);
}
