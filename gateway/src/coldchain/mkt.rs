//! Mean kinetic temperature (USP <1079.2>): the single temperature that would cause the same
//! degradation as the fluctuating temperatures observed,
//!
//! ```text
//!            ΔH/R
//! MKT = ─────────────────────────────── − 273.15
//!        −ln( Σ wᵢ·e^(−ΔH/(R·Tᵢ)) / Σ wᵢ )
//! ```
//!
//! with Tᵢ in kelvin, wᵢ the time each temperature was held, and ΔH/R = 83.144 kJ/mol ÷
//! 8.3144 J/(mol·K) = 10 000 K.

use serde::{Deserialize, Serialize};

/// ΔH/R in kelvin.
pub const DELTA_H_OVER_R: f64 = 10_000.0;
const KELVIN: f64 = 273.15;

/// A running time-weighted MKT.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Mkt {
    /// Σ wᵢ·e^(−ΔH/(R·Tᵢ)), scaled by e^(ΔH/(R·T_ref)) to stay far from underflow.
    sum: f64,
    /// Σ wᵢ in seconds.
    weight: f64,
}

/// Reference temperature for scaling the exponentials (0 °C): keeps every term near 1.
const T_REF: f64 = KELVIN;

impl Mkt {
    /// Adds `celsius` held for `seconds`.
    pub fn add(&mut self, celsius: f64, seconds: f64) {
        if seconds <= 0.0 || !celsius.is_finite() {
            return;
        }
        let kelvin = celsius + KELVIN;
        self.sum += seconds * (DELTA_H_OVER_R / T_REF - DELTA_H_OVER_R / kelvin).exp();
        self.weight += seconds;
    }

    /// The MKT in °C, once some time has been added.
    pub fn celsius(&self) -> Option<f64> {
        if self.weight <= 0.0 || self.sum <= 0.0 {
            return None;
        }
        let mean = self.sum / self.weight;
        // ln(mean) = ΔH/R/T_ref − ΔH/R/MKT  ⇒  MKT = ΔH/R / (ΔH/R/T_ref − ln(mean))
        let kelvin = DELTA_H_OVER_R / (DELTA_H_OVER_R / T_REF - mean.ln());
        Some(kelvin - KELVIN)
    }
}

/// MKT of equally weighted readings (the textbook form).
pub fn of_readings(celsius: &[f64]) -> Option<f64> {
    let mut mkt = Mkt::default();
    for &c in celsius {
        mkt.add(c, 1.0);
    }
    mkt.celsius()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Worked independently, straight from the formula with no scaling:
    /// readings 2, 8, 12 and 25 °C (275.15, 281.15, 285.15, 298.15 K):
    /// e^(−10000/T): 1.6447e-16, 3.5721e-16, 5.8832e-16, 2.7145e-15;
    /// mean 9.5613e-16; −ln(mean) = 34.58364; MKT = 10000/34.58364 = 289.154 K = 16.00 °C.
    #[test]
    fn matches_a_worked_example_computed_from_the_formula() {
        let expected = {
            let temps = [2.0f64, 8.0, 12.0, 25.0];
            let mean: f64 = temps
                .iter()
                .map(|t| (-10_000.0 / (t + 273.15)).exp())
                .sum::<f64>()
                / 4.0;
            10_000.0 / -mean.ln() - 273.15
        };
        let mkt = of_readings(&[2.0, 8.0, 12.0, 25.0]).unwrap();
        assert!((mkt - expected).abs() < 1e-9, "{mkt} vs {expected}");
        assert!((mkt - 16.004).abs() < 0.001, "{mkt}");
    }

    #[test]
    fn a_constant_temperature_is_its_own_mkt_and_mkt_exceeds_the_arithmetic_mean() {
        assert!((of_readings(&[5.0; 10]).unwrap() - 5.0).abs() < 1e-9);
        let mkt = of_readings(&[2.0, 14.0]).unwrap();
        assert!(mkt > 8.0, "warm periods weigh more: {mkt}");
    }

    #[test]
    fn time_weighting_counts_how_long_each_temperature_was_held() {
        let mut mkt = Mkt::default();
        mkt.add(4.0, 3600.0);
        mkt.add(20.0, 0.0);
        assert!(
            (mkt.celsius().unwrap() - 4.0).abs() < 1e-9,
            "zero time adds nothing"
        );
        mkt.add(20.0, 3600.0);
        assert!((mkt.celsius().unwrap() - of_readings(&[4.0, 20.0]).unwrap()).abs() < 1e-9);
        assert_eq!(Mkt::default().celsius(), None);
    }

    #[test]
    fn ultra_cold_temperatures_do_not_underflow() {
        let mkt = of_readings(&[-80.0, -70.0]).unwrap();
        assert!((-80.0..-70.0).contains(&mkt), "{mkt}");
    }
}
