//! `[devices.<id>]`: what the pharmacy says about each device, shared by the Modbus poller
//! (transport and register map) and the cold-chain monitor (profile and limits). Below both:
//! it imports neither.
//!
//! Per-device settings. A device with a `transport` is polled over Modbus; a
//! device without one speaks MQTT and needs no keys here unless it has cold-chain settings.
//!
//! A Modbus device's register map is its model file (`model`, see `config/devices/`) followed by
//! its inline `registers`. [`check_device`] checks one device, reading its model file; the
//! Modbus poller runs the same check in its `build`, so it never polls a map that
//! `rxgate config check` would refuse.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::ConfigError;

/// One device's section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Device kind (`fridge`, `cabinet`, `sensor`); for Modbus devices, which have no
    /// enrollment token to carry it. Default `fridge`.
    #[serde(default = "defaults::kind")]
    pub kind: String,

    // --- Modbus polling -----------------------------------------------------------------------
    /// `tcp` (Modbus/TCP), `rtu` (serial RS-485) or `tls` (Modbus/TCP Security, port 802).
    /// Absent: the device is not polled.
    pub transport: Option<Transport>,
    /// `host:port` for `tcp` (default port 502) and `tls` (default port 802); an IPv6 address
    /// goes in brackets, `[fd00::5]:502`.
    pub address: Option<String>,
    /// For `tls` devices verified with `ca_file`: the name their certificate must carry
    /// (default: the host part of `address`). A device holding a certificate from this
    /// gateway's CA is identified by the device id in its certificate instead.
    pub server_name: Option<String>,
    /// CA (PEM) that verifies a `tls` device's certificate (default: the gateway's own CA,
    /// for devices enrolled with rxgate).
    pub ca_file: Option<PathBuf>,
    /// Serial port for `rtu`, like `/dev/ttyUSB0`. Devices on the same port share the bus:
    /// their requests take turns, and their serial settings must agree.
    pub serial: Option<PathBuf>,
    /// Baud rate for `rtu`.
    #[serde(default = "defaults::baud")]
    pub baud: u32,
    /// Parity for `rtu`: `none`, `even` or `odd`.
    #[serde(default)]
    pub parity: Parity,
    /// Data bits for `rtu`: 7 or 8.
    #[serde(default = "defaults::data_bits")]
    pub data_bits: u8,
    /// Stop bits for `rtu`: 1 or 2.
    #[serde(default = "defaults::stop_bits")]
    pub stop_bits: u8,
    /// Modbus unit (slave) id: 1 to 247 on a serial bus; on TCP usually 1 (or 255), or the id
    /// of the serial device behind a TCP-to-RTU gateway.
    #[serde(default = "defaults::unit")]
    pub unit: u8,
    /// Register map: a model file (TOML with `[[registers]]`, see `config/devices/`), relative
    /// to the config file.
    pub model: Option<PathBuf>,
    /// Register map given inline instead of (or on top of) `model`. A point name may appear
    /// only once across both.
    #[serde(default)]
    pub registers: Vec<RegisterConfig>,
    /// Time between polls (100ms to 1h).
    #[serde(default = "defaults::poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Time allowed for each Modbus request, and for connecting (10ms to 60s, less than
    /// `poll_interval`); after a timeout the connection is reopened. Unset: 1 s, or half of
    /// `poll_interval` when that is shorter ([`DeviceConfig::timeout`]).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Longest wait between reconnection attempts while the device is offline (at least
    /// `poll_interval`, at most 1h). The wait doubles from `poll_interval` up to this.
    #[serde(default = "defaults::max_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Failed polls in a row after which the device is reported offline (1 to 1000).
    #[serde(default = "defaults::offline_after")]
    pub offline_after: u32,

    // --- Cold chain ---------------------------------------------------------------------------
    /// Temperature profile: `refrigerator` (2–8 °C), `freezer` (−50 to −15 °C), `ultra-cold`
    /// (−90 to −60 °C) or `room` (20–25 °C). Absent: the device is not monitored.
    pub profile: Option<Profile>,
    /// Lowest allowed temperature, °C (default: the profile's).
    pub low: Option<f64>,
    /// Highest allowed temperature, °C (default: the profile's).
    pub high: Option<f64>,
    /// At or below this an alarm is raised at once, without the delay (default: 0 °C for a
    /// refrigerator, as freezing destroys vaccines; none otherwise).
    pub critical_low: Option<f64>,
    /// At or above this an alarm is raised at once (default: −5 °C for a freezer, −40 °C for
    /// ultra-cold; none otherwise).
    pub critical_high: Option<f64>,
    /// How long a temperature may stay out of range before it is an alarm: a door opened to take
    /// stock is not an excursion worth waking anyone for.
    #[serde(default = "defaults::alarm_delay", with = "humantime_serde")]
    pub alarm_delay: Duration,
    /// An excursion ends only once the temperature is back inside the range by this much, °C,
    /// so a reading hovering at a limit raises one alarm, not many.
    #[serde(default = "defaults::hysteresis")]
    pub hysteresis: f64,
    /// The point holding the temperature.
    #[serde(default = "defaults::point")]
    pub point: String,
    /// The point saying the door is open (a boolean), when the device reports one.
    #[serde(default = "defaults::door_point")]
    pub door_point: String,
    /// A door open longer than this raises an alarm.
    #[serde(default = "defaults::door_open_limit", with = "humantime_serde")]
    pub door_open_limit: Duration,
    /// How often readings are expected (default: `poll_interval` for Modbus devices, 1 minute
    /// for devices that publish over MQTT).
    #[serde(default, with = "humantime_serde")]
    pub expected_interval: Option<Duration>,
    /// The sensor is reported offline after this many expected readings are missed.
    #[serde(default = "defaults::missed_readings")]
    pub missed_readings: u32,
    /// Readings outside these bounds, °C, are a probe fault rather than a temperature (default
    /// depends on the profile, e.g. −40 to 60 °C for a refrigerator).
    pub probe_min: Option<f64>,
    pub probe_max: Option<f64>,
    /// Time of day (UTC, `HH:MM`) by which the daily minimum/maximum check must be recorded:
    /// a fridge not checked since the start of the day (00:00 UTC) at this time raises a
    /// `check_missed` alert, cleared by the check. `"off"`: no check is expected.
    #[serde(default = "defaults::check_by")]
    pub check_by: String,
    /// The temperature probe's calibration certificate. Due within 30 days: a notice (in
    /// `rxgate config check`, the status and the console); past its due date: one
    /// `calibration_overdue` alert. Excursion records say whether the probe was in calibration.
    pub calibration: Option<CalibrationConfig>,
}

/// `[devices.<id>.calibration]`: the probe's calibration certificate. Dates are
/// `"YYYY-MM-DD"` strings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalibrationConfig {
    /// The certificate's number.
    pub certificate: String,
    /// The laboratory that calibrated the probe.
    pub laboratory: String,
    /// The day it was calibrated.
    pub calibrated_on: String,
    /// The day the next calibration is due; after it the probe is out of calibration.
    pub due_on: String,
}

/// A calibration certificate with its dates parsed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Calibration {
    pub certificate: String,
    pub laboratory: String,
    pub calibrated_on: time::Date,
    pub due_on: time::Date,
}

/// Days before its due date that a calibration raises a notice.
pub const CALIBRATION_NOTICE_DAYS: i64 = 30;

/// Where a probe's calibration stands on a day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CalibrationStatus {
    /// Valid for more than [`CALIBRATION_NOTICE_DAYS`].
    Valid,
    /// Due within [`CALIBRATION_NOTICE_DAYS`] (a notice).
    DueSoon,
    /// Past its due date (an alert).
    Overdue,
}

impl CalibrationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CalibrationStatus::Valid => "valid",
            CalibrationStatus::DueSoon => "due_soon",
            CalibrationStatus::Overdue => "overdue",
        }
    }
}

impl Calibration {
    /// Its status on `today`: overdue the day after `due_on`.
    pub fn status(&self, today: time::Date) -> CalibrationStatus {
        if today > self.due_on {
            CalibrationStatus::Overdue
        } else if (self.due_on - today).whole_days() <= CALIBRATION_NOTICE_DAYS {
            CalibrationStatus::DueSoon
        } else {
            CalibrationStatus::Valid
        }
    }

    /// Whether the probe was in calibration during all of `[from, to]`.
    pub fn covers(&self, from: time::OffsetDateTime, to: time::OffsetDateTime) -> bool {
        from.date() >= self.calibrated_on && to.date() <= self.due_on
    }
}

/// A calendar day, `YYYY-MM-DD`.
pub fn parse_date(text: &str) -> Result<time::Date, String> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(text.trim(), &format)
        .map_err(|_| "expected a date like \"2027-03-31\"".to_owned())
}

/// A time of day, `HH:MM`.
pub fn parse_time_of_day(text: &str) -> Result<time::Time, String> {
    let format = time::macros::format_description!("[hour]:[minute]");
    time::Time::parse(text.trim(), &format)
        .map_err(|_| "expected a time of day like \"10:00\" (UTC), or \"off\"".to_owned())
}

/// Storage classes with their allowed ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// Refrigerated vaccines and most fridge medicines: 2–8 °C. At or below 0 °C is an alarm at
    /// once: freezing destroys vaccines.
    Refrigerator,
    /// Frozen: −50 to −15 °C.
    Freezer,
    /// Ultra-cold: −90 to −60 °C.
    UltraCold,
    /// Controlled room temperature: 20–25 °C.
    Room,
}

impl Profile {
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Refrigerator => "refrigerator",
            Profile::Freezer => "freezer",
            Profile::UltraCold => "ultra-cold",
            Profile::Room => "room",
        }
    }
}

/// How a Modbus device is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Modbus/TCP, port 502 by default.
    Tcp,
    /// Modbus RTU on a serial line (RS-485).
    Rtu,
    /// Modbus/TCP Security: Modbus/TCP inside mutual TLS, port 802 by default.
    Tls,
}

impl Transport {
    /// The port used when `address` names none.
    pub fn default_port(self) -> Option<u16> {
        match self {
            Transport::Tcp => Some(502),
            Transport::Tls => Some(802),
            Transport::Rtu => None,
        }
    }
}

/// Serial parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    /// No parity bit (Modbus RTU then asks for 2 stop bits, but most devices use 1).
    #[default]
    None,
    /// Even parity, the Modbus RTU default.
    Even,
    /// Odd parity.
    Odd,
}

/// One entry of a register map.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterConfig {
    /// Point name, e.g. `temperature_c`: 1 to 64 letters, digits, `_`, `-` or `.`.
    pub name: String,
    /// `coil`, `discrete`, `holding` or `input`.
    pub function: Function,
    /// Register (or coil) address, 0-based as on the wire (the "40001" of a vendor manual is
    /// holding address 0).
    pub address: u16,
    /// `bool`, `u16`, `i16`, `u32`, `i32` or `f32` (default `u16`; `bool` for coils and
    /// discrete inputs, which can only be `bool`).
    #[serde(rename = "type")]
    pub kind: Option<DataType>,
    /// For 32-bit types: `big` (high word first, the Modbus convention) or `little` (low word
    /// first, "CDAB"). Bytes within a word are always big-endian.
    #[serde(default)]
    pub word_order: WordOrder,
    /// Multiplier: value = raw × scale + offset. Not for `bool`.
    #[serde(default = "defaults::scale")]
    pub scale: f64,
    /// Added after scaling: value = raw × scale + offset. Not for `bool`.
    #[serde(default)]
    pub offset: f64,
    /// Unit reported with the value, e.g. `°C`.
    pub unit: Option<String>,
    /// A range in one entry: this many consecutive points of the same type and scaling from
    /// `address`, each `width` registers after the last (1 to 1000). `name` must then hold
    /// `{n}`, replaced by 1, 2, …: `name = "probe_{n}"`, `count = 8`.
    pub count: Option<u16>,
}

/// The most points one range entry may stand for.
pub const RANGE_MAX: u16 = 1000;

impl RegisterConfig {
    /// The points this entry stands for: itself, or each point of its range.
    pub fn expand(&self) -> Vec<RegisterConfig> {
        let Some(count) = self.count else {
            return vec![self.clone()];
        };
        (0..count)
            .map(|k| RegisterConfig {
                name: self.name.replace("{n}", &(u32::from(k) + 1).to_string()),
                address: self.address.saturating_add(k.saturating_mul(self.width())),
                count: None,
                ..self.clone()
            })
            .collect()
    }

    /// The data type, with the default for the function filled in.
    pub fn data_type(&self) -> DataType {
        self.kind.unwrap_or(match self.function {
            Function::Coil | Function::Discrete => DataType::Bool,
            Function::Holding | Function::Input => DataType::U16,
        })
    }

    /// Registers (or coils) the point occupies.
    pub fn width(&self) -> u16 {
        self.data_type().words()
    }
}

/// The four Modbus data tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Function {
    /// Coils (read/write bits, function 1).
    Coil,
    /// Discrete inputs (read-only bits, function 2).
    Discrete,
    /// Holding registers (read/write words, function 3).
    Holding,
    /// Input registers (read-only words, function 4).
    Input,
}

impl Function {
    /// Whether the table holds bits rather than 16-bit registers.
    pub fn is_bits(self) -> bool {
        matches!(self, Function::Coil | Function::Discrete)
    }

    /// The name used in config files.
    pub fn as_str(self) -> &'static str {
        match self {
            Function::Coil => "coil",
            Function::Discrete => "discrete",
            Function::Holding => "holding",
            Function::Input => "input",
        }
    }
}

/// How a point's registers are interpreted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    /// One coil or discrete input.
    Bool,
    /// One register, unsigned.
    U16,
    /// One register, two's complement.
    I16,
    /// Two registers, unsigned.
    U32,
    /// Two registers, two's complement.
    I32,
    /// Two registers, IEEE 754 single precision.
    F32,
}

impl DataType {
    /// Registers (or coils) a value of this type occupies.
    pub fn words(self) -> u16 {
        match self {
            DataType::Bool | DataType::U16 | DataType::I16 => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
        }
    }

    /// The name used in config files.
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "bool",
            DataType::U16 => "u16",
            DataType::I16 => "i16",
            DataType::U32 => "u32",
            DataType::I32 => "i32",
            DataType::F32 => "f32",
        }
    }
}

/// Order of the two registers of a 32-bit value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WordOrder {
    /// High word first ("ABCD"), the Modbus convention.
    #[default]
    Big,
    /// Low word first ("CDAB").
    Little,
}

/// A model file: a reusable register map for one make of device.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    /// What device this map is for.
    pub description: Option<String>,
    /// The points, as in a device's inline `registers`.
    pub registers: Vec<RegisterConfig>,
}

impl ModelFile {
    /// Reads and parses a model file. The error says which file and what is wrong with it.
    pub fn load(path: &Path) -> Result<ModelFile, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the model file {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| {
            format!(
                "the model file {} is not a valid register map: {}",
                path.display(),
                e.to_string().trim_end()
            )
        })
    }
}

impl DeviceConfig {
    /// The request timeout: as configured, else 1 s or half of `poll_interval` when that is
    /// shorter (never below the 10 ms minimum), so a fast poll needs no timeout of its own.
    pub fn timeout(&self) -> Duration {
        self.timeout.unwrap_or_else(|| {
            defaults::timeout()
                .min(self.poll_interval / 2)
                .max(TIMEOUT_MIN)
        })
    }

    /// Whether the device is polled over Modbus.
    pub fn is_modbus(&self) -> bool {
        self.transport.is_some()
    }

    /// `host` and `port` of a `tcp` or `tls` device's `address`, with the transport's default
    /// port; `None` for other devices.
    pub fn host_port(&self) -> Option<Result<(String, u16), String>> {
        let port = self.transport?.default_port()?;
        let address = self.address.as_deref()?;
        Some(split_host_port(address, port))
    }

    /// `check_by` parsed: `None` when it is `"off"` or not a time (see [`check_device`]).
    pub fn check_time(&self) -> Option<time::Time> {
        if self.check_by.trim() == "off" {
            return None;
        }
        parse_time_of_day(&self.check_by).ok()
    }

    /// The calibration certificate, if one is configured and its dates parse.
    pub fn calibration(&self) -> Option<Calibration> {
        let c = self.calibration.as_ref()?;
        Some(Calibration {
            certificate: c.certificate.clone(),
            laboratory: c.laboratory.clone(),
            calibrated_on: parse_date(&c.calibrated_on).ok()?,
            due_on: parse_date(&c.due_on).ok()?,
        })
    }

    /// [`check_device`] as a method, for modules outside `config`.
    pub(crate) fn check(&self, id: &str, errors: &mut Vec<ConfigError>) {
        check_device(id, self, errors);
    }

    /// [`check_serial_buses`] for modules outside `config`.
    pub(crate) fn check_buses(
        devices: &BTreeMap<String, DeviceConfig>,
        errors: &mut Vec<ConfigError>,
    ) {
        check_serial_buses(devices, errors);
    }

    /// The full register map: the model file's registers, then the inline ones. Reads the model
    /// file; does not check the entries (see [`check_device`]).
    pub fn register_map(&self) -> Result<Vec<RegisterConfig>, String> {
        Ok(self
            .register_entries()?
            .iter()
            .flat_map(RegisterConfig::expand)
            .collect())
    }

    /// The register map's entries as written, ranges unexpanded: the model file's, then the
    /// inline ones.
    pub fn register_entries(&self) -> Result<Vec<RegisterConfig>, String> {
        let mut map = match &self.model {
            Some(path) => ModelFile::load(path)?.registers,
            None => Vec::new(),
        };
        map.extend(self.registers.iter().cloned());
        Ok(map)
    }
}

/// Splits `host[:port]` (IPv6 in brackets) into host and port, using `default_port` when none
/// is given.
pub fn split_host_port(address: &str, default_port: u16) -> Result<(String, u16), String> {
    let address = address.trim();
    let (host, port) = if let Some(rest) = address.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err("an IPv6 address must be closed with `]`".to_owned());
        };
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err("expected `:port` after `]`".to_owned()),
            },
        }
    } else {
        match address.rsplit_once(':') {
            Some((host, _)) if host.contains(':') => {
                return Err("an IPv6 address must be in brackets, like [fd00::5]:502".to_owned());
            }
            Some((host, port)) => (host, Some(port)),
            None => (address, None),
        }
    };
    if host.is_empty() {
        return Err("must name a host, like 192.168.1.50:502 or fridge-01.local".to_owned());
    }
    if host.contains(['/', '@', ' ']) {
        return Err("must be host[:port], without scheme, path or credentials".to_owned());
    }
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p != 0 => p,
            _ => return Err(format!("port {p:?} is not a number between 1 and 65535")),
        },
    };
    Ok((host.to_owned(), port))
}

const POLL_MIN: Duration = Duration::from_millis(100);
const POLL_MAX: Duration = Duration::from_secs(3600);
const TIMEOUT_MIN: Duration = Duration::from_millis(10);
const TIMEOUT_MAX: Duration = Duration::from_secs(60);
const BACKOFF_MAX: Duration = Duration::from_secs(3600);

fn human(d: Duration) -> String {
    format!("{:?}", humantime::format_duration(d).to_string())
}

/// Checks one `[devices.<id>]` section, reading its model file, and appends every problem to
/// `errors`, each naming its key (`devices.fridge-01.address`) and value.
pub(crate) fn check_device(id: &str, device: &DeviceConfig, errors: &mut Vec<ConfigError>) {
    let key = |field: &str| format!("devices.{id}.{field}");
    if let Err(e) = rxgate_certs::validate_device_id(id) {
        errors.push(ConfigError {
            key: format!("devices.{id}"),
            value: None,
            message: format!("not a valid device id: {e}"),
        });
    }
    if let Err(e) = rxgate_certs::validate_kind(&device.kind) {
        errors.push(ConfigError::new(
            key("kind"),
            format!("{:?}", device.kind),
            e.to_string(),
        ));
    }

    check_coldchain_checks(id, device, errors);

    let Some(transport) = device.transport else {
        let polling_keys = [
            ("address", device.address.is_some()),
            ("serial", device.serial.is_some()),
            ("model", device.model.is_some()),
            ("registers", !device.registers.is_empty()),
            ("server_name", device.server_name.is_some()),
            ("ca_file", device.ca_file.is_some()),
        ];
        for (field, set) in polling_keys {
            if set {
                errors.push(ConfigError {
                    key: key(field),
                    value: None,
                    message: "is a Modbus setting, but `transport` is not set; add \
                              transport = \"tcp\", \"rtu\" or \"tls\""
                        .to_owned(),
                });
            }
        }
        return;
    };

    check_transport(id, transport, device, errors);
    check_timing(id, device, errors);

    match device.register_entries() {
        Err(message) => errors.push(ConfigError::new(
            key("model"),
            format!(
                "{:?}",
                device.model.as_deref().unwrap_or(Path::new("")).display()
            ),
            message,
        )),
        Ok(map) if map.is_empty() => errors.push(ConfigError {
            key: key("registers"),
            value: None,
            message: "a polled device needs a register map: set `model` or `registers`".to_owned(),
        }),
        Ok(map) => {
            let from_model = map.len() - device.registers.len();
            let mut names = HashSet::new();
            for (i, register) in map.iter().enumerate() {
                // Model entries are reported against the model file, inline ones by index.
                let (entry_key, prefix) = if i < from_model {
                    (
                        key("model"),
                        format!("registers[{i}] ({:?}): ", register.name),
                    )
                } else {
                    (
                        format!("{}[{}]", key("registers"), i - from_model),
                        String::new(),
                    )
                };
                for (field, value, message) in register_problems(register) {
                    if i < from_model {
                        let model = device.model.as_deref().unwrap_or(Path::new(""));
                        errors.push(ConfigError::new(
                            &entry_key,
                            format!("{:?}", model.display()),
                            format!("{prefix}{field} = {value}: {message}"),
                        ));
                    } else {
                        errors.push(ConfigError::new(
                            format!("{entry_key}.{field}"),
                            value,
                            message,
                        ));
                    }
                }
                // A range without `{n}` repeats its name: that is reported above, once.
                let mut own = HashSet::new();
                let own: Vec<String> = register
                    .expand()
                    .into_iter()
                    .map(|p| p.name)
                    .filter(|name| own.insert(name.clone()))
                    .collect();
                for name in own {
                    if !names.insert(name.clone()) {
                        errors.push(ConfigError::new(
                            format!("{entry_key}.name"),
                            format!("{name:?}"),
                            "is already used by another point of this device (model file and \
                             inline registers share one name space)",
                        ));
                    }
                }
            }
        }
    }
}

/// `check_by` and `[devices.<id>.calibration]`.
fn check_coldchain_checks(id: &str, device: &DeviceConfig, errors: &mut Vec<ConfigError>) {
    let key = |field: &str| format!("devices.{id}.{field}");
    if device.check_by.trim() != "off"
        && let Err(message) = parse_time_of_day(&device.check_by)
    {
        errors.push(ConfigError::new(
            key("check_by"),
            format!("{:?}", device.check_by),
            message,
        ));
    }
    let Some(c) = &device.calibration else {
        return;
    };
    for (field, value) in [
        ("certificate", &c.certificate),
        ("laboratory", &c.laboratory),
    ] {
        if value.trim().is_empty() {
            errors.push(ConfigError::new(
                key(&format!("calibration.{field}")),
                "\"\"",
                "must name the calibration certificate's number and the laboratory",
            ));
        }
    }
    let mut dates = Vec::new();
    for (field, value) in [("calibrated_on", &c.calibrated_on), ("due_on", &c.due_on)] {
        match parse_date(value) {
            Ok(date) => dates.push(date),
            Err(message) => errors.push(ConfigError::new(
                key(&format!("calibration.{field}")),
                format!("{value:?}"),
                message,
            )),
        }
    }
    if let [calibrated_on, due_on] = dates[..]
        && due_on <= calibrated_on
    {
        errors.push(ConfigError::new(
            key("calibration.due_on"),
            format!("{:?}", c.due_on),
            format!("must be after calibrated_on ({})", c.calibrated_on),
        ));
    }
    if device.profile.is_none() {
        errors.push(ConfigError::section(
            &key("calibration"),
            "has no effect without a `profile`: only monitored fridges have a probe to calibrate",
        ));
    }
}

fn check_transport(
    id: &str,
    transport: Transport,
    device: &DeviceConfig,
    errors: &mut Vec<ConfigError>,
) {
    let key = |field: &str| format!("devices.{id}.{field}");
    let not_for = |field: &str, errors: &mut Vec<ConfigError>| {
        errors.push(ConfigError {
            key: key(field),
            value: None,
            message: format!(
                "does not apply to transport = {:?}",
                transport_name(transport)
            ),
        })
    };
    match transport {
        Transport::Tcp | Transport::Tls => {
            match &device.address {
                None => errors.push(ConfigError {
                    key: key("address"),
                    value: None,
                    message: format!(
                        "is required with transport = {:?}: host[:port], like 192.168.1.50",
                        transport_name(transport)
                    ),
                }),
                Some(address) => {
                    let port = transport.default_port().unwrap_or(502);
                    if let Err(message) = split_host_port(address, port) {
                        errors.push(ConfigError::new(
                            key("address"),
                            format!("{address:?}"),
                            message,
                        ));
                    }
                }
            }
            if device.serial.is_some() {
                not_for("serial", errors);
            }
            if transport == Transport::Tcp {
                if device.ca_file.is_some() {
                    not_for("ca_file", errors);
                }
                if device.server_name.is_some() {
                    not_for("server_name", errors);
                }
            }
            if let Some(name) = &device.server_name
                && rustls_pki_types::ServerName::try_from(name.as_str()).is_err()
            {
                errors.push(ConfigError::new(
                    key("server_name"),
                    format!("{name:?}"),
                    "is neither a DNS name nor an IP address",
                ));
            }
        }
        Transport::Rtu => {
            if device.serial.is_none() {
                errors.push(ConfigError {
                    key: key("serial"),
                    value: None,
                    message:
                        "is required with transport = \"rtu\": the serial port, like /dev/ttyUSB0"
                            .to_owned(),
                });
            }
            for (field, set) in [
                ("address", device.address.is_some()),
                ("server_name", device.server_name.is_some()),
                ("ca_file", device.ca_file.is_some()),
            ] {
                if set {
                    not_for(field, errors);
                }
            }
            if !(1..=247).contains(&device.unit) {
                errors.push(ConfigError::new(
                    key("unit"),
                    device.unit,
                    "must be between 1 and 247 on a serial bus (0 is broadcast, 248-255 reserved)",
                ));
            }
            if !(300..=921_600).contains(&device.baud) {
                errors.push(ConfigError::new(
                    key("baud"),
                    device.baud,
                    "must be between 300 and 921600",
                ));
            }
            if !matches!(device.data_bits, 7 | 8) {
                errors.push(ConfigError::new(
                    key("data_bits"),
                    device.data_bits,
                    "must be 7 or 8",
                ));
            }
            if !matches!(device.stop_bits, 1 | 2) {
                errors.push(ConfigError::new(
                    key("stop_bits"),
                    device.stop_bits,
                    "must be 1 or 2",
                ));
            }
        }
    }
}

fn check_timing(id: &str, device: &DeviceConfig, errors: &mut Vec<ConfigError>) {
    let key = |field: &str| format!("devices.{id}.{field}");
    let within = |field: &str,
                  value: Duration,
                  min: Duration,
                  max: Duration,
                  errors: &mut Vec<ConfigError>| {
        if value < min || value > max {
            errors.push(ConfigError::new(
                key(field),
                human(value),
                format!(
                    "must be between {} and {}",
                    humantime::format_duration(min),
                    humantime::format_duration(max)
                ),
            ));
            false
        } else {
            true
        }
    };
    let poll_ok = within(
        "poll_interval",
        device.poll_interval,
        POLL_MIN,
        POLL_MAX,
        errors,
    );
    let timeout = device.timeout();
    let timeout_ok = within("timeout", timeout, TIMEOUT_MIN, TIMEOUT_MAX, errors);
    if poll_ok && timeout_ok && timeout >= device.poll_interval {
        errors.push(ConfigError::new(
            key("timeout"),
            human(timeout),
            format!(
                "must be shorter than poll_interval ({})",
                humantime::format_duration(device.poll_interval)
            ),
        ));
    }
    if poll_ok && (device.max_backoff < device.poll_interval || device.max_backoff > BACKOFF_MAX) {
        errors.push(ConfigError::new(
            key("max_backoff"),
            human(device.max_backoff),
            format!(
                "must be between poll_interval ({}) and {}",
                humantime::format_duration(device.poll_interval),
                humantime::format_duration(BACKOFF_MAX)
            ),
        ));
    }
    if !(1..=1000).contains(&device.offline_after) {
        errors.push(ConfigError::new(
            key("offline_after"),
            device.offline_after,
            "must be between 1 and 1000",
        ));
    }
}

fn transport_name(t: Transport) -> &'static str {
    match t {
        Transport::Tcp => "tcp",
        Transport::Rtu => "rtu",
        Transport::Tls => "tls",
    }
}

/// The problems of one register entry: (field, value as written, message).
pub(crate) fn register_problems(r: &RegisterConfig) -> Vec<(&'static str, String, String)> {
    let mut problems = Vec::new();
    let count = r.count.unwrap_or(1);
    if r.count.is_some() && !(1..=RANGE_MAX).contains(&count) {
        problems.push((
            "count",
            count.to_string(),
            format!("must be 1 to {RANGE_MAX}"),
        ));
    }
    if r.count.is_some() && !r.name.contains("{n}") {
        problems.push((
            "name",
            format!("{:?}", r.name),
            "a range needs `{n}` in its name (replaced by 1, 2, …), like \"probe_{n}\"".to_owned(),
        ));
    }
    // The longest name the range makes.
    let name = r.name.replace("{n}", &count.to_string());
    let valid_name = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if !valid_name {
        problems.push((
            "name",
            format!("{:?}", r.name),
            "must be 1 to 64 letters, digits, '_', '-' or '.'".to_owned(),
        ));
    }
    let data_type = r.data_type();
    if r.function.is_bits() != (data_type == DataType::Bool) {
        let message = if r.function.is_bits() {
            format!(
                "a {} holds one bit: the type must be bool",
                r.function.as_str()
            )
        } else {
            format!(
                "bool is only for coil and discrete; a {} register is u16, i16, u32, i32 or f32",
                r.function.as_str()
            )
        };
        problems.push(("type", format!("{:?}", data_type.as_str()), message));
    }
    let last = u32::from(r.address) + u32::from(r.width()) * u32::from(count.max(1)) - 1;
    if last > u32::from(u16::MAX) {
        problems.push((
            "address",
            r.address.to_string(),
            format!(
                "{} {}(s) need {} registers from here, past the last address 65535",
                count.max(1),
                data_type.as_str(),
                u32::from(r.width()) * u32::from(count.max(1))
            ),
        ));
    }
    if data_type == DataType::Bool {
        if r.scale != 1.0 {
            problems.push((
                "scale",
                r.scale.to_string(),
                "does not apply to bool".to_owned(),
            ));
        }
        if r.offset != 0.0 {
            problems.push((
                "offset",
                r.offset.to_string(),
                "does not apply to bool".to_owned(),
            ));
        }
    } else {
        if !r.scale.is_finite() || r.scale == 0.0 {
            problems.push((
                "scale",
                r.scale.to_string(),
                "must be a finite number other than 0".to_owned(),
            ));
        }
        if !r.offset.is_finite() {
            problems.push((
                "offset",
                r.offset.to_string(),
                "must be a finite number".to_owned(),
            ));
        }
    }
    if let Some(unit) = &r.unit
        && (unit.is_empty() || unit.len() > 32 || unit.chars().any(char::is_control))
    {
        problems.push((
            "unit",
            format!("{unit:?}"),
            "must be 1 to 32 bytes without control characters".to_owned(),
        ));
    }
    problems
}

/// Checks what devices on one serial port must agree on: the line settings, and distinct unit
/// ids. Errors name the later device's key.
pub(crate) fn check_serial_buses(
    devices: &BTreeMap<String, DeviceConfig>,
    errors: &mut Vec<ConfigError>,
) {
    let mut first_on_bus: BTreeMap<&Path, (&str, &DeviceConfig)> = BTreeMap::new();
    let mut units: HashSet<(&Path, u8)> = HashSet::new();
    for (id, device) in devices {
        let (Some(Transport::Rtu), Some(serial)) = (device.transport, device.serial.as_deref())
        else {
            continue;
        };
        if !units.insert((serial, device.unit)) {
            errors.push(ConfigError::new(
                format!("devices.{id}.unit"),
                device.unit,
                format!(
                    "another device on {} already has this unit id",
                    serial.display()
                ),
            ));
        }
        match first_on_bus.get(serial) {
            None => {
                first_on_bus.insert(serial, (id, device));
            }
            Some((first_id, first)) => {
                let line = |d: &DeviceConfig| (d.baud, d.parity, d.data_bits, d.stop_bits);
                if line(first) != line(device) {
                    errors.push(ConfigError::new(
                        format!("devices.{id}.serial"),
                        format!("{:?}", serial.display()),
                        format!(
                            "is shared with devices.{first_id}, whose baud, parity, data_bits and \
                             stop_bits differ; devices on one bus must use the same line settings"
                        ),
                    ));
                }
            }
        }
    }
}

mod defaults {
    pub fn alarm_delay() -> std::time::Duration {
        std::time::Duration::from_secs(15 * 60)
    }
    pub fn hysteresis() -> f64 {
        0.5
    }
    pub fn point() -> String {
        "temperature_c".to_owned()
    }
    pub fn door_point() -> String {
        "door_open".to_owned()
    }
    pub fn door_open_limit() -> std::time::Duration {
        std::time::Duration::from_secs(5 * 60)
    }
    pub fn missed_readings() -> u32 {
        3
    }
    pub fn check_by() -> String {
        "10:00".to_owned()
    }

    use std::time::Duration;

    pub fn kind() -> String {
        "fridge".to_owned()
    }
    pub fn baud() -> u32 {
        9600
    }
    pub fn data_bits() -> u8 {
        8
    }
    pub fn stop_bits() -> u8 {
        1
    }
    pub fn unit() -> u8 {
        1
    }
    pub fn poll_interval() -> Duration {
        Duration::from_secs(10)
    }
    /// The timeout when `poll_interval` leaves room for it.
    pub fn timeout() -> Duration {
        Duration::from_secs(1)
    }
    pub fn max_backoff() -> Duration {
        Duration::from_secs(60)
    }
    pub fn offline_after() -> u32 {
        3
    }
    pub fn scale() -> f64 {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(toml_text: &str) -> DeviceConfig {
        toml::from_str(toml_text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn check(id: &str, d: &DeviceConfig) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        check_device(id, d, &mut errors);
        errors
    }

    fn keys(errors: &[ConfigError]) -> Vec<&str> {
        errors.iter().map(|e| e.key.as_str()).collect()
    }

    fn examples_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/devices")
    }

    const TEMP: &str = r#"
        [[registers]]
        name = "temperature_c"
        function = "input"
        address = 0
        type = "i16"
        scale = 0.1
    "#;

    #[test]
    fn every_model_file_in_config_devices_loads_and_passes_the_device_check() {
        let mut seen = 0;
        for entry in std::fs::read_dir(examples_dir()).expect("config/devices exists") {
            let path = entry.expect("directory entry").path();
            if path.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            seen += 1;
            let model = ModelFile::load(&path).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                model.description.is_some(),
                "{} has no description",
                path.display()
            );
            let d = DeviceConfig {
                model: Some(path.clone()),
                ..device("transport = \"tcp\"\naddress = \"127.0.0.1\"")
            };
            let errors = check("fridge-01", &d);
            assert!(errors.is_empty(), "{}: {errors:?}", path.display());
        }
        assert!(seen >= 2, "expected at least two model files, found {seen}");
    }

    #[test]
    fn a_valid_tcp_device_passes() {
        let d = device(&format!(
            "transport = \"tcp\"\naddress = \"192.168.1.50\"\n{TEMP}"
        ));
        assert_eq!(check("fridge-01", &d), vec![]);
    }

    #[test]
    fn tcp_and_tls_need_an_address_and_rtu_needs_a_serial_port() {
        let tcp = device(&format!("transport = \"tcp\"\n{TEMP}"));
        assert_eq!(keys(&check("f1", &tcp)), ["devices.f1.address"]);
        let tls = device(&format!("transport = \"tls\"\n{TEMP}"));
        assert_eq!(keys(&check("f1", &tls)), ["devices.f1.address"]);
        let rtu = device(&format!("transport = \"rtu\"\n{TEMP}"));
        assert_eq!(keys(&check("f1", &rtu)), ["devices.f1.serial"]);
    }

    #[test]
    fn check_by_and_the_calibration_certificate_are_checked_naming_their_keys() {
        let d = device(
            "profile = \"refrigerator\"\ncheck_by = \"25:00\"\n[calibration]\ncertificate = \"\"\n\
             laboratory = \"Thermo Lab\"\ncalibrated_on = \"2026-13-01\"\ndue_on = \"2026-01-10\"\n",
        );
        let errors = check("fridge-01", &d);
        assert_eq!(
            keys(&errors),
            [
                "devices.fridge-01.check_by",
                "devices.fridge-01.calibration.certificate",
                "devices.fridge-01.calibration.calibrated_on",
            ],
            "{errors:?}"
        );
        assert_eq!(errors[0].value.as_deref(), Some("\"25:00\""));
        let backwards = device(
            "profile = \"refrigerator\"\n[calibration]\ncertificate = \"C-1\"\nlaboratory = \"L\"\n\
             calibrated_on = \"2026-02-01\"\ndue_on = \"2026-01-10\"\n",
        );
        assert_eq!(
            keys(&check("fridge-01", &backwards)),
            ["devices.fridge-01.calibration.due_on"]
        );
        let ok = device(
            "profile = \"refrigerator\"\ncheck_by = \"off\"\n[calibration]\ncertificate = \"C-1\"\n\
             laboratory = \"L\"\ncalibrated_on = \"2026-02-01\"\ndue_on = \"2027-02-01\"\n",
        );
        assert!(check("fridge-01", &ok).is_empty());
        assert_eq!(ok.check_time(), None);
        assert_eq!(
            ok.calibration().map(|c| c.due_on),
            Some(time::macros::date!(2027 - 02 - 01))
        );
        let unknown: Result<DeviceConfig, _> =
            toml::from_str("[calibration]\ncertificate = \"C\"\nlab = \"L\"\n");
        assert!(unknown.is_err(), "unknown calibration keys are refused");
    }

    #[test]
    fn keys_of_another_transport_are_refused() {
        let d = device(&format!(
            "transport = \"rtu\"\nserial = \"/dev/ttyUSB0\"\naddress = \"10.0.0.1\"\n{TEMP}"
        ));
        let errors = check("f1", &d);
        assert_eq!(keys(&errors), ["devices.f1.address"]);
        assert!(
            errors[0].message.contains("does not apply"),
            "{}",
            errors[0]
        );
        let d = device("registers = [{ name = \"t\", function = \"input\", address = 0 }]");
        let errors = check("f1", &d);
        assert_eq!(keys(&errors), ["devices.f1.registers"]);
        assert!(errors[0].message.contains("transport"), "{}", errors[0]);
    }

    #[test]
    fn a_polled_device_needs_registers() {
        let d = device("transport = \"tcp\"\naddress = \"10.0.0.1\"");
        assert_eq!(keys(&check("f1", &d)), ["devices.f1.registers"]);
    }

    #[test]
    fn bad_addresses_are_named_with_their_value() {
        for bad in [
            "",
            ":502",
            "10.0.0.1:0",
            "10.0.0.1:99999",
            "fd00::1",
            "http://x/",
            "[fd00::1",
        ] {
            let d = device(&format!("transport = \"tcp\"\naddress = {bad:?}\n{TEMP}"));
            let errors = check("f1", &d);
            assert_eq!(keys(&errors), ["devices.f1.address"], "{bad:?}");
            assert_eq!(
                errors[0].value.as_deref(),
                Some(format!("{bad:?}").as_str())
            );
        }
    }

    #[test]
    fn host_and_port_split_with_defaults_and_ipv6_brackets() {
        assert_eq!(
            split_host_port("10.0.0.1", 502),
            Ok(("10.0.0.1".into(), 502))
        );
        assert_eq!(
            split_host_port("fridge.local:1502", 502),
            Ok(("fridge.local".into(), 1502))
        );
        assert_eq!(
            split_host_port("[fd00::5]:802", 502),
            Ok(("fd00::5".into(), 802))
        );
        assert_eq!(
            split_host_port("[fd00::5]", 802),
            Ok(("fd00::5".into(), 802))
        );
    }

    #[test]
    fn serial_line_settings_and_unit_are_range_checked() {
        let d = device(&format!(
            "transport = \"rtu\"\nserial = \"/dev/ttyUSB0\"\nunit = 0\nbaud = 10\ndata_bits = 9\nstop_bits = 3\n{TEMP}"
        ));
        assert_eq!(
            keys(&check("f1", &d)),
            [
                "devices.f1.unit",
                "devices.f1.baud",
                "devices.f1.data_bits",
                "devices.f1.stop_bits"
            ]
        );
    }

    #[test]
    fn timing_is_range_checked_and_timeout_must_be_shorter_than_the_interval() {
        let d = device(&format!(
            "transport = \"tcp\"\naddress = \"h\"\npoll_interval = \"1s\"\ntimeout = \"1s\"\n{TEMP}"
        ));
        let errors = check("f1", &d);
        assert_eq!(keys(&errors), ["devices.f1.timeout"]);
        assert_eq!(errors[0].value.as_deref(), Some("\"1s\""));
        let d = device(&format!(
            "transport = \"tcp\"\naddress = \"h\"\npoll_interval = \"1ms\"\ntimeout = \"2h\"\nmax_backoff = \"2h\"\noffline_after = 0\n{TEMP}"
        ));
        assert_eq!(
            keys(&check("f1", &d)),
            [
                "devices.f1.poll_interval",
                "devices.f1.timeout",
                "devices.f1.offline_after"
            ]
        );
        let d = device(&format!(
            "transport = \"tcp\"\naddress = \"h\"\npoll_interval = \"10s\"\nmax_backoff = \"5s\"\n{TEMP}"
        ));
        assert_eq!(keys(&check("f1", &d)), ["devices.f1.max_backoff"]);
    }

    #[test]
    fn without_a_timeout_of_its_own_a_fast_poll_gets_half_its_interval_and_a_slow_one_1s() {
        for (interval, timeout) in [("1s", 500), ("500ms", 250), ("10s", 1000), ("100ms", 50)] {
            let d = device(&format!(
                "transport = \"tcp\"\naddress = \"h\"\npoll_interval = \"{interval}\"\n{TEMP}"
            ));
            assert!(
                check("f1", &d).is_empty(),
                "{interval}: {:?}",
                check("f1", &d)
            );
            assert_eq!(d.timeout(), Duration::from_millis(timeout), "{interval}");
        }
        let d = device(&format!(
            "transport = \"tcp\"\naddress = \"h\"\npoll_interval = \"1s\"\ntimeout = \"300ms\"\n{TEMP}"
        ));
        assert_eq!(d.timeout(), Duration::from_millis(300), "as configured");
    }

    #[test]
    fn a_range_entry_stands_for_count_points_named_by_n_each_its_width_after_the_last() {
        let d = device(
            "transport = \"tcp\"\naddress = \"h\"\n\
             [[registers]]\nname = \"probe_{n}\"\nfunction = \"input\"\naddress = 10\ntype = \"i32\"\nscale = 0.1\ncount = 3\n\
             [[registers]]\nname = \"door\"\nfunction = \"coil\"\naddress = 0\n",
        );
        assert!(check("f1", &d).is_empty(), "{:?}", check("f1", &d));
        let map = d.register_map().unwrap();
        let points: Vec<(&str, u16, f64)> = map
            .iter()
            .map(|r| (r.name.as_str(), r.address, r.scale))
            .collect();
        assert_eq!(
            points,
            [
                ("probe_1", 10, 0.1),
                ("probe_2", 12, 0.1),
                ("probe_3", 14, 0.1),
                ("door", 0, 1.0)
            ]
        );
    }

    #[test]
    fn a_range_without_n_with_count_0_past_65535_or_overlapping_a_name_is_refused_by_key() {
        let entry = |name: &str, address: u32, count: u32| {
            format!(
                "[[registers]]\nname = \"{name}\"\nfunction = \"holding\"\naddress = {address}\ncount = {count}\n"
            )
        };
        let d = device(&format!(
            "transport = \"tcp\"\naddress = \"h\"\n{}{}{}{}{}",
            entry("t", 0, 2),
            entry("z_{n}", 100, 0),
            entry("y_{n}", 65_530, 10),
            entry("p_{n}", 200, 3),
            "[[registers]]\nname = \"p_2\"\nfunction = \"holding\"\naddress = 300\n",
        ));
        assert_eq!(
            keys(&check("f1", &d)),
            [
                "devices.f1.registers[0].name",
                "devices.f1.registers[1].count",
                "devices.f1.registers[2].address",
                "devices.f1.registers[4].name",
            ]
        );
        let errors = check("f1", &d);
        assert!(errors[0].message.contains("{n}"), "{}", errors[0].message);
        assert!(
            errors[2].message.contains("past the last address"),
            "{}",
            errors[2].message
        );
    }

    #[test]
    fn register_entries_are_checked_by_index_and_field() {
        let d = device(
            r#"
            transport = "tcp"
            address = "h"
            [[registers]]
            name = "door"
            function = "holding"
            address = 1
            type = "bool"
            [[registers]]
            name = "big"
            function = "input"
            address = 65535
            type = "f32"
            [[registers]]
            name = "door"
            function = "coil"
            address = 0
            [[registers]]
            name = "bad name!"
            function = "coil"
            address = 0
            type = "u16"
            [[registers]]
            name = "zero"
            function = "input"
            address = 3
            scale = 0.0
            [[registers]]
            name = "relay"
            function = "coil"
            address = 1
            scale = 2.0
            "#,
        );
        let errors = check("f1", &d);
        assert_eq!(
            keys(&errors),
            [
                "devices.f1.registers[0].type",
                "devices.f1.registers[1].address",
                "devices.f1.registers[2].name",
                "devices.f1.registers[3].name",
                "devices.f1.registers[3].type",
                "devices.f1.registers[4].scale",
                "devices.f1.registers[5].scale",
            ]
        );
        assert_eq!(errors[1].value.as_deref(), Some("65535"));
    }

    #[test]
    fn model_file_errors_name_the_model_key_and_path() {
        let d = device("transport = \"tcp\"\naddress = \"h\"\nmodel = \"/nonexistent/x.toml\"");
        let errors = check("f1", &d);
        assert_eq!(keys(&errors), ["devices.f1.model"]);
        assert!(
            errors[0].message.contains("cannot read the model file"),
            "{}",
            errors[0]
        );

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.toml");
        std::fs::write(
            &path,
            "description = \"x\"\n[[registers]]\nname = \"t\"\nfunction = \"input\"\naddress = 0\ntype = \"bool\"\n",
        )
        .unwrap();
        let d = DeviceConfig {
            model: Some(path),
            ..device("transport = \"tcp\"\naddress = \"h\"")
        };
        let errors = check("f1", &d);
        assert_eq!(keys(&errors), ["devices.f1.model"]);
        assert!(
            errors[0].message.contains("registers[0] (\"t\"): type"),
            "{}",
            errors[0]
        );

        // A name used in the model and again inline is a duplicate.
        let d = DeviceConfig {
            model: Some(examples_dir().join("acme-fr400.toml")),
            ..device(&format!("transport = \"tcp\"\naddress = \"h\"\n{TEMP}"))
        };
        let errors = check("f1", &d);
        assert_eq!(keys(&errors), ["devices.f1.registers[0].name"]);
    }

    #[test]
    fn the_device_id_itself_must_be_valid() {
        let d = device(&format!("transport = \"tcp\"\naddress = \"h\"\n{TEMP}"));
        assert_eq!(keys(&check("bad/id", &d)), ["devices.bad/id"]);
    }

    #[test]
    fn devices_sharing_a_serial_port_must_agree_on_line_settings_and_differ_in_unit() {
        let mut devices = BTreeMap::new();
        devices.insert(
            "a".to_owned(),
            device(&format!(
                "transport = \"rtu\"\nserial = \"/dev/ttyUSB0\"\nunit = 1\n{TEMP}"
            )),
        );
        devices.insert(
            "b".to_owned(),
            device(&format!(
                "transport = \"rtu\"\nserial = \"/dev/ttyUSB0\"\nunit = 1\nbaud = 19200\n{TEMP}"
            )),
        );
        let mut errors = Vec::new();
        check_serial_buses(&devices, &mut errors);
        assert_eq!(keys(&errors), ["devices.b.unit", "devices.b.serial"]);
    }
}
