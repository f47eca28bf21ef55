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
