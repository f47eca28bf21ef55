//! `rxgate report temperatures`: the daily minimum/maximum log inspectors ask for (CSV), and a
//! chart with the allowed band shaded and excursions marked (SVG). Days are UTC days.

pub mod review;
mod svg;

use serde::{Deserialize, Serialize};
use time::{Date, OffsetDateTime, Time};

use crate::coldchain::history::{self, CheckRecord};
use crate::coldchain::{Calibration, DailyStats, ExcursionRecord, Limits};
use crate::error::{Error, Result};
use crate::store::Store;
pub use review::{ExcursionReview, SignatureSeen};

/// Longest span one report covers.
pub const MAX_DAYS: i64 = 400;

/// One history bucket, for the chart.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Unix seconds, start of the bucket.
    pub at: i64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
}

/// Everything a report shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportData {
    pub device: String,
    pub from: Date,
    /// Inclusive.
    pub to: Date,
    pub profile: Option<String>,
    pub low: Option<f64>,
    pub high: Option<f64>,
    pub days: Vec<DailyStats>,
    pub excursions: Vec<ExcursionRecord>,
    pub samples: Vec<Sample>,
    /// Min/max checks recorded in the span.
    #[serde(default)]
    pub checks: Vec<CheckRecord>,
    /// What was done about the excursions that raised an alert (acknowledgement, signature,
    /// disposition).
    #[serde(default)]
    pub reviews: Vec<ExcursionReview>,
    /// The probe's calibration certificate, as configured now.
    #[serde(default)]
    pub calibration: Option<Calibration>,
}

fn start_of(date: Date) -> OffsetDateTime {
    date.with_time(Time::MIDNIGHT).assume_utc()
}

impl ReportData {
    /// Reads the days `from..=to` of `device` from the store.
    pub fn load(
        store: &Store,
        device: &str,
        limits: Option<&Limits>,
        from: Date,
        to: Date,
    ) -> Result<ReportData> {
        if to < from {
            return Err(Error::Invalid(format!("--to {to} is before --from {from}")));
        }
        if (to - from).whole_days() >= MAX_DAYS {
            return Err(Error::Invalid(format!(
                "a report covers at most {MAX_DAYS} days; split {from} to {to} into several"
            )));
        }
        let (start, end) = (start_of(from), start_of(to) + time::Duration::DAY);
        let days = history::days(store, device, from, to)?;
        let excursions: Vec<ExcursionRecord> =
            history::excursions(store, device, start - time::Duration::days(30), end)?
                .into_iter()
                .filter(|e| e.ended > start && e.started < end)
                .collect();
        let checks = history::checks(store, device, start, end)?;
        let reviews = review::reviews(store, device, &excursions)?;
        let samples = history::readings(store, device, start, end)?
            .into_iter()
            .map(|b| Sample {
                at: b.start,
                min: b.min,
                max: b.max,
                mean: b.mean(),
            })
            .collect();
        if limits.is_none() && days.is_empty() {
            return Err(Error::NotFound(format!(
                "no temperature records for {device:?}: is it configured with a `profile` under [devices.{device}]?"
            )));
        }
        Ok(ReportData {
            device: device.to_owned(),
            from,
            to,
            profile: limits.map(|l| l.profile.as_str().to_owned()),
            low: limits.map(|l| l.low),
            high: limits.map(|l| l.high),
            days,
            excursions,
            samples,
            checks,
            reviews,
            calibration: limits.and_then(|l| l.calibration.clone()),
        })
    }

    /// The daily log, one row per day of the span (days without readings say so).
    pub fn csv(&self) -> String {
        let mut out =
            String::from("date,min_c,max_c,mean_c,readings,excursions,low_c,high_c,within_range\n");
        let bound = |v: Option<f64>| v.map(|v| format!("{v}")).unwrap_or_default();
        let mut date = self.from;
        loop {
            match self.days.iter().find(|d| d.date == date) {
                Some(day) => {
                    let within = match (self.low, self.high) {
                        (Some(low), Some(high)) => {
                            if day.min >= low && day.max <= high {
                                "yes"
                            } else {
                                "no"
                            }
                        }
                        _ => "",
                    };
                    out.push_str(&format!(
                        "{date},{:.2},{:.2},{:.2},{},{},{},{},{within}\n",
                        day.min,
                        day.max,
                        day.mean().unwrap_or(f64::NAN),
                        day.count,
                        day.excursions,
                        bound(self.low),
                        bound(self.high),
                    ));
                }
                None => out.push_str(&format!(
                    "{date},,,,0,0,{},{},no readings\n",
                    bound(self.low),
                    bound(self.high)
                )),
            }
            if date >= self.to {
                break;
            }
            match date.next_day() {
                Some(next) => date = next,
                None => break,
            }
        }
        out
    }

    /// The review of the excursion that started at `started`, if it raised an alert.
    pub fn review_of(&self, started: OffsetDateTime) -> Option<&ExcursionReview> {
        self.reviews.iter().find(|r| r.started == started)
    }

    /// The chart.
    pub fn svg(&self) -> String {
        svg::render(self)
    }
}

#[cfg(test)]
mod tests;
