//! The fridge itself: a thermal model, its thermostat and alarms, and the faults that can hit
//! it. Pure: time only moves when [`Fridge::step`] is called with a number of seconds.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Fraction of the inside–ambient difference that leaks in per second through closed doors
/// and walls: a fridge at 5 °C in a 22 °C room without cooling passes 8 °C after ~45 minutes,
/// in line with the hold-over times of pharmacy refrigerators.
pub const LEAK_PER_S: f64 = 1.0 / 14_400.0;
/// The same with the door open: a minute open warms a 5 °C fridge by ~1.7 °C.
pub const DOOR_LEAK_PER_S: f64 = 1.0 / 600.0;
/// Cooling by a running compressor, °C per second (about 0.5 °C per minute net at 5 °C).
pub const COOLING_C_PER_S: f64 = 0.01;
/// The longest integration step; longer steps are split.
const MAX_STEP_S: f64 = 1.0;

/// Something that can go wrong with (or happen to) the fridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// The compressor runs (its relay is on) but does not cool: the temperature drifts to
    /// ambient.
    CompressorFailure,
    /// No mains power: no cooling, and the controller does not answer at all. When power
    /// returns, the controller latches a power-failure alarm.
    PowerCut,
    /// The probe fails: the temperature register reads 0x8000 (-3276.8 °C). The controller
    /// keeps cooling on its own.
    SensorFault,
    /// The controller works but its network or serial link does not: connections are accepted
    /// and requests are never answered.
    CommsLoss,
    /// Not a fault: somebody opens the door (to take stock). Scheduled the same way.
    DoorOpen,
}

impl Fault {
    /// Every fault, in the order of their bits in holding register 100 (door excluded).
    pub const MASKABLE: [Fault; 4] = [
        Fault::CompressorFailure,
        Fault::PowerCut,
        Fault::SensorFault,
        Fault::CommsLoss,
    ];

    /// The bit of this fault in holding register 100 (none for the door).
    pub fn bit(self) -> Option<u16> {
        Fault::MASKABLE
            .iter()
            .position(|f| *f == self)
            .map(|i| 1 << i)
    }

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Fault::CompressorFailure => "compressor-failure",
            Fault::PowerCut => "power-cut",
            Fault::SensorFault => "sensor-fault",
            Fault::CommsLoss => "comms-loss",
            Fault::DoorOpen => "door-open",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Fault {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            Fault::CompressorFailure,
            Fault::PowerCut,
            Fault::SensorFault,
            Fault::CommsLoss,
            Fault::DoorOpen,
        ]
        .into_iter()
        .find(|f| f.name() == s)
        .ok_or_else(|| {
            format!(
                "unknown fault {s:?}; expected compressor-failure, power-cut, sensor-fault, \
                 comms-loss or door-open"
            )
        })
    }
}

/// A fault that starts at a point in simulated time, for a while or for good.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScheduledFault {
    /// What happens.
    pub fault: Fault,
    /// When, in simulated time since start.
    pub at: Duration,
    /// For how long, in simulated time; `None`: until cleared (the door: 30 s).
    pub duration: Option<Duration>,
}

impl FromStr for ScheduledFault {
    type Err = String;

    /// `NAME@START[+DURATION]`, like `compressor-failure@60s` or `comms-loss@30s+20s`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, when) = s.split_once('@').ok_or_else(|| {
            format!("{s:?}: expected NAME@START[+DURATION], like comms-loss@30s+20s")
        })?;
        let fault: Fault = name.parse()?;
        let (at, duration) = match when.split_once('+') {
            Some((at, duration)) => (at, Some(duration)),
            None => (when, None),
        };
        let parse = |t: &str| {
            humantime::parse_duration(t.trim())
                .map_err(|e| format!("{s:?}: {t:?} is not a duration like 90s or 2m ({e})"))
        };
        Ok(ScheduledFault {
            fault,
            at: parse(at)?,
            duration: duration.map(parse).transpose()?,
        })
    }
}

/// How long a scheduled door opening lasts when no duration is given.
pub const DEFAULT_DOOR_OPEN: Duration = Duration::from_secs(30);

/// The simulated fridge: physics, controller state and active faults.
#[derive(Debug, Clone, PartialEq)]
pub struct Fridge {
    /// Simulated seconds since start.
    pub sim_time_s: f64,
    /// True cabinet temperature.
    pub temperature_c: f64,
    /// Room temperature.
    pub ambient_c: f64,
    /// Thermostat setpoint.
    pub setpoint_c: f64,
    /// Thermostat differential: cooling starts above setpoint + differential/2 and stops below
    /// setpoint - differential/2.
    pub differential_k: f64,
    /// High alarm limit.
    pub high_alarm_c: f64,
    /// Low alarm limit.
    pub low_alarm_c: f64,
    /// The compressor relay (the thermostat calls for cooling).
    pub compressor_relay: bool,
    /// Compressor starts since start (the device would count since manufacture).
    pub compressor_starts: u32,
    /// Door openings since start.
    pub door_openings: u16,
    /// Seconds until the open door closes again; 0 when closed.
    pub door_open_s: f64,
    /// An alarm occurred and was not acknowledged.
    pub alarm_latched: bool,
    /// Power returned after a cut and it was not acknowledged.
    pub power_failure_latched: bool,
    /// For each of [`Fault::MASKABLE`]: active until this simulated time (infinite: until
    /// cleared).
    active_until: [Option<f64>; 4],
    schedule: Vec<ScheduledFault>,
    door_every_s: Option<f64>,
    next_door_s: f64,
}

impl Fridge {
    /// A fridge at `temperature_c` in a room at `ambient_c`, regulating to `setpoint_c` with a
    /// 1 K differential and alarm limits 2 and 8 °C.
    pub fn new(setpoint_c: f64, ambient_c: f64, temperature_c: f64) -> Fridge {
        Fridge {
            sim_time_s: 0.0,
            temperature_c,
            ambient_c,
            setpoint_c,
            differential_k: 1.0,
            high_alarm_c: 8.0,
            low_alarm_c: 2.0,
            compressor_relay: false,
            compressor_starts: 0,
            door_openings: 0,
            door_open_s: 0.0,
            alarm_latched: false,
            power_failure_latched: false,
            active_until: [None; 4],
            schedule: Vec::new(),
            door_every_s: None,
            next_door_s: 0.0,
        }
    }

    /// Adds faults to happen later (times in simulated time since start).
    pub fn schedule(&mut self, faults: &[ScheduledFault]) {
        self.schedule.extend_from_slice(faults);
        self.schedule.sort_by_key(|s| s.at);
    }

    /// Opens the door for 30 s every `every` of simulated time, starting after one `every`.
    pub fn open_door_every(&mut self, every: Option<Duration>) {
        self.door_every_s = every.map(|d| d.as_secs_f64().max(60.0));
        self.next_door_s = self.sim_time_s + self.door_every_s.unwrap_or(0.0);
    }

    /// Starts `fault` now, for `duration` (simulated) or until cleared.
    pub fn set_fault(&mut self, fault: Fault, duration: Option<Duration>) {
        let until = duration.map_or(f64::INFINITY, |d| self.sim_time_s + d.as_secs_f64());
        match fault {
            Fault::DoorOpen => self.open_door(duration.unwrap_or(DEFAULT_DOOR_OPEN)),
            _ => {
                if let Some(i) = Fault::MASKABLE.iter().position(|f| *f == fault) {
                    self.active_until[i] = Some(until);
                }
            }
        }
    }

    /// Ends `fault` now.
    pub fn clear_fault(&mut self, fault: Fault) {
        match fault {
            Fault::DoorOpen => self.door_open_s = 0.0,
            _ => {
                if let Some(i) = Fault::MASKABLE.iter().position(|f| *f == fault) {
                    self.end_fault(i);
                }
            }
        }
    }

    fn end_fault(&mut self, i: usize) {
        if self.active_until[i].take().is_some() && Fault::MASKABLE[i] == Fault::PowerCut {
            self.power_failure_latched = true;
            self.alarm_latched = true;
        }
    }

    /// Whether `fault` is active now.
    pub fn has_fault(&self, fault: Fault) -> bool {
        match fault {
            Fault::DoorOpen => self.door_open(),
            _ => Fault::MASKABLE
                .iter()
                .position(|f| *f == fault)
                .is_some_and(|i| self.active_until[i].is_some()),
        }
    }

    /// Active faults as the bit mask of holding register 100.
    pub fn fault_mask(&self) -> u16 {
        Fault::MASKABLE
            .iter()
            .filter(|f| self.has_fault(**f))
            .filter_map(|f| f.bit())
            .fold(0, |mask, bit| mask | bit)
    }

    /// Opens the door for `duration` of simulated time (counted as one opening if it was
    /// closed).
    pub fn open_door(&mut self, duration: Duration) {
        if !self.door_open() && !duration.is_zero() {
            self.door_openings = self.door_openings.wrapping_add(1);
        }
        self.door_open_s = duration.as_secs_f64();
    }

    /// Whether the door is open.
    pub fn door_open(&self) -> bool {
        self.door_open_s > 0.0
    }

    /// Whether the controller has power.
    pub fn powered(&self) -> bool {
        !self.has_fault(Fault::PowerCut)
    }

    /// Whether the controller answers no request at all (power cut or comms loss).
    pub fn silent(&self) -> bool {
        self.has_fault(Fault::PowerCut) || self.has_fault(Fault::CommsLoss)
    }

    /// What the probe reports: `None` when it has failed.
    pub fn measured_c(&self) -> Option<f64> {
        (!self.has_fault(Fault::SensorFault)).then_some(self.temperature_c)
    }

    /// The high-temperature alarm condition.
    pub fn high_alarm(&self) -> bool {
        self.measured_c().is_some_and(|t| t > self.high_alarm_c)
    }

    /// The low-temperature alarm condition.
    pub fn low_alarm(&self) -> bool {
        self.measured_c().is_some_and(|t| t < self.low_alarm_c)
    }

    /// Advances simulated time by `dt` seconds.
    pub fn step(&mut self, dt: f64) {
        let mut left = dt.max(0.0);
        while left > 0.0 {
            let h = left.min(MAX_STEP_S);
            self.substep(h);
            left -= h;
        }
    }

    fn substep(&mut self, h: f64) {
        self.apply_schedule();
        if let Some(every) = self.door_every_s
            && self.sim_time_s >= self.next_door_s
        {
            self.open_door(DEFAULT_DOOR_OPEN);
            self.next_door_s = self.sim_time_s + every;
        }

        // Thermostat. It regulates on the true temperature even with a failed probe: the
        // simulated sensor fault corrupts what is reported, not the control loop.
        if self.powered() {
            let half = self.differential_k / 2.0;
            if !self.compressor_relay && self.temperature_c > self.setpoint_c + half {
                self.compressor_relay = true;
                self.compressor_starts = self.compressor_starts.wrapping_add(1);
            } else if self.compressor_relay && self.temperature_c < self.setpoint_c - half {
                self.compressor_relay = false;
            }
        } else {
            self.compressor_relay = false;
        }

        let leak = if self.door_open() {
            DOOR_LEAK_PER_S
        } else {
            LEAK_PER_S
        };
        let cooling =
            self.compressor_relay && self.powered() && !self.has_fault(Fault::CompressorFailure);
        self.temperature_c += (self.ambient_c - self.temperature_c) * leak * h;
        if cooling {
            self.temperature_c -= COOLING_C_PER_S * h;
        }
        self.door_open_s = (self.door_open_s - h).max(0.0);
        if self.powered()
            && (self.high_alarm() || self.low_alarm() || self.has_fault(Fault::SensorFault))
        {
            self.alarm_latched = true;
        }
        self.sim_time_s += h;
        for i in 0..self.active_until.len() {
            if self.active_until[i].is_some_and(|until| until <= self.sim_time_s) {
                self.end_fault(i);
            }
        }
    }

    fn apply_schedule(&mut self) {
        while let Some(next) = self.schedule.first().copied() {
            if next.at.as_secs_f64() > self.sim_time_s {
                break;
            }
            self.schedule.remove(0);
            self.set_fault(next.fault, next.duration);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: f64 = 3600.0;

    #[test]
    fn the_thermostat_keeps_the_fridge_within_its_differential() {
        let mut f = Fridge::new(5.0, 22.0, 5.0);
        let (mut min, mut max) = (f64::MAX, f64::MIN);
        for _ in 0..(24 * 3600) {
            f.step(1.0);
            if f.sim_time_s > HOUR {
                min = min.min(f.temperature_c);
                max = max.max(f.temperature_c);
            }
        }
        assert!(
            min > 4.4 && max < 5.6,
            "cycled between {min:.2} and {max:.2}"
        );
        assert!(
            f.compressor_starts > 24,
            "the compressor cycles: {} starts",
            f.compressor_starts
        );
        assert!(!f.alarm_latched);
    }

    #[test]
    fn a_warm_fridge_pulls_down_to_its_setpoint_within_an_hour() {
        let mut f = Fridge::new(5.0, 22.0, 22.0);
        f.step(HOUR);
        assert!(f.temperature_c < 5.6, "{:.2}", f.temperature_c);
        assert!(f.alarm_latched, "it started above the high alarm limit");
    }

    #[test]
    fn a_failed_compressor_lets_the_temperature_drift_to_ambient() {
        let mut f = Fridge::new(5.0, 22.0, 5.0);
        f.schedule(&["compressor-failure@10m".parse().unwrap()]);
        f.step(600.0);
        let at_failure = f.temperature_c;
        f.step(HOUR);
        assert!(
            f.temperature_c > 8.0 && f.high_alarm(),
            "{:.2} after an hour",
            f.temperature_c
        );
        assert!(
            f.compressor_relay,
            "the relay stays on, calling for cooling"
        );
        f.step(24.0 * HOUR);
        assert!(
            f.temperature_c > 21.0 && f.temperature_c <= 22.0,
            "{:.2}",
            f.temperature_c
        );
        assert!(at_failure < 6.0);
    }

    #[test]
    fn a_power_cut_silences_the_controller_and_latches_an_alarm_when_power_returns() {
        let mut f = Fridge::new(5.0, 22.0, 5.0);
        f.schedule(&["power-cut@1m+2h".parse().unwrap()]);
        f.step(30.0);
        assert!(!f.silent());
        f.step(60.0);
        assert!(f.silent() && !f.powered() && !f.compressor_relay);
        f.step(HOUR);
        assert!(f.temperature_c > 7.0, "{:.2}", f.temperature_c);
        f.step(HOUR);
        assert!(!f.silent(), "power is back after two hours");
        assert!(f.power_failure_latched && f.alarm_latched);
    }

    #[test]
    fn comms_loss_silences_the_controller_but_not_the_cooling() {
        let mut f = Fridge::new(5.0, 22.0, 5.0);
        f.set_fault(Fault::CommsLoss, Some(Duration::from_secs(20)));
        assert!(f.silent() && f.powered());
        f.step(HOUR / 2.0);
        assert!(!f.silent());
        assert!((4.4..5.6).contains(&f.temperature_c));
    }

    #[test]
    fn a_sensor_fault_hides_the_temperature_and_raises_the_alarm() {
        let mut f = Fridge::new(5.0, 22.0, 5.0);
        f.set_fault(Fault::SensorFault, None);
        f.step(1.0);
        assert_eq!(f.measured_c(), None);
        assert!(f.alarm_latched);
        f.clear_fault(Fault::SensorFault);
        assert!(f.measured_c().is_some());
    }

    #[test]
    fn an_open_door_warms_the_fridge_faster_than_a_closed_one() {
        let mut closed = Fridge::new(5.0, 22.0, 5.0);
        closed.set_fault(Fault::CompressorFailure, None);
        let mut open = closed.clone();
        open.open_door(Duration::from_secs(60));
        closed.step(60.0);
        open.step(60.0);
        assert!(open.temperature_c - closed.temperature_c > 1.0);
        assert_eq!((open.door_openings, open.door_open()), (1, false));
    }

    #[test]
    fn doors_open_on_a_schedule() {
        let mut f = Fridge::new(5.0, 22.0, 5.0);
        f.open_door_every(Some(Duration::from_secs(600)));
        f.step(3.0 * HOUR);
        assert_eq!(f.door_openings, 17, "at 10, 20, ... 170 minutes");
    }

    #[test]
    fn faults_end_after_their_duration_and_masks_reflect_them() {
        let mut f = Fridge::new(5.0, 22.0, 5.0);
        f.set_fault(Fault::CompressorFailure, Some(Duration::from_secs(10)));
        f.set_fault(Fault::SensorFault, None);
        assert_eq!(f.fault_mask(), 0b0101);
        f.step(10.0);
        assert_eq!(f.fault_mask(), 0b0100);
    }

    #[test]
    fn schedules_parse_start_and_duration() {
        let s: ScheduledFault = "comms-loss@30s+20s".parse().unwrap();
        assert_eq!(
            s,
            ScheduledFault {
                fault: Fault::CommsLoss,
                at: Duration::from_secs(30),
                duration: Some(Duration::from_secs(20)),
            }
        );
        let s: ScheduledFault = "compressor-failure@1m".parse().unwrap();
        assert_eq!((s.at, s.duration), (Duration::from_secs(60), None));
        assert!("meltdown@1s".parse::<ScheduledFault>().is_err());
        assert!("comms-loss".parse::<ScheduledFault>().is_err());
        assert!("comms-loss@soon".parse::<ScheduledFault>().is_err());
    }
}
