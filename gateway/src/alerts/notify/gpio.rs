//! The buzzer, relay and LED, through [`Signals`]: the Raspberry Pi's pins with rppal (feature
//! `pi`), or [`RecordingSignals`], which logs and records what the outputs would do.
//!
//! The monitor decides the logical outputs ([`Outputs`]); this module only turns them into pin
//! levels (`active_low`) and the buzzer's pattern. Output pins are opened once and held for the
//! life of the process: rppal resets a pin when its `OutputPin` is dropped, which would silence
//! an alarm relay. They are also set not to reset on drop, so a crash or a restart of the daemon
//! leaves an alarm sounding until the restarted monitor sets the outputs again.

use std::sync::{Arc, Mutex};

use crate::alerts::config::{GpioBackend, GpioConfig};
use crate::error::{ConfigError, ConfigErrors};
use crate::error::{Error, Result};

/// The logical state of the outputs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outputs {
    /// An active alarm nobody acknowledged.
    pub buzzer: bool,
    /// A critical alarm is active.
    pub relay: bool,
    /// Some alert is unresolved.
    pub led: bool,
}

impl Outputs {
    /// Each output with its name.
    pub fn each(self) -> [(&'static str, bool); 3] {
        [
            ("buzzer", self.buzzer),
            ("relay", self.relay),
            ("led", self.led),
        ]
    }
}

/// Something that drives the outputs.
pub trait Signals: Send + Sync + 'static {
    /// Sets every output. Setting what is already set changes nothing.
    fn set(&self, outputs: Outputs) -> std::result::Result<(), String>;
    /// What was last set.
    fn current(&self) -> Outputs;
}

fn log_changes(from: Outputs, to: Outputs) {
    for ((name, was), (_, is)) in from.each().into_iter().zip(to.each()) {
        if was != is {
            let state = if is { "on" } else { "off" };
            tracing::info!(output = name, state, "GPIO {name} {state}.");
        }
    }
}

/// The fake: logs each change ("GPIO buzzer on.") and keeps every change in a history.
#[derive(Debug, Default)]
pub struct RecordingSignals {
    state: Mutex<(Outputs, Vec<Outputs>)>,
}

impl RecordingSignals {
    pub fn new() -> RecordingSignals {
        crate::metrics::gpio_outputs(Outputs::default().each());
        RecordingSignals::default()
    }

    /// Every change, oldest first (not the all-off state it starts in).
    pub fn history(&self) -> Vec<Outputs> {
        self.lock().1.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Outputs, Vec<Outputs>)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Signals for RecordingSignals {
    fn set(&self, outputs: Outputs) -> std::result::Result<(), String> {
        let mut state = self.lock();
        if state.0 != outputs {
            log_changes(state.0, outputs);
            state.0 = outputs;
            state.1.push(outputs);
            crate::metrics::gpio_outputs(outputs.each());
        }
        Ok(())
    }

    fn current(&self) -> Outputs {
        self.lock().0
    }
}

/// The outputs `config` asks for: the Pi's pins, or a [`RecordingSignals`] (also when there is
/// no `[alerts.gpio]`).
pub fn build(config: Option<&GpioConfig>) -> Result<Arc<dyn Signals>> {
    let Some(config) = config else {
        return Ok(Arc::new(RecordingSignals::new()));
    };
    let mut errors = Vec::new();
    config.check(&mut errors);
    if !errors.is_empty() {
        return Err(Error::Config(ConfigErrors(errors)));
    }
    match config.backend {
        GpioBackend::Fake => {
            for (output, pin, active_low) in config.wired() {
                tracing::info!(
                    output,
                    pin,
                    active_low,
                    "GPIO backend is fake: {output} only logged."
                );
            }
            Ok(Arc::new(RecordingSignals::new()))
        }
        GpioBackend::Pi => open_pi(config),
    }
}

#[cfg(not(feature = "pi"))]
fn open_pi(_config: &GpioConfig) -> Result<Arc<dyn Signals>> {
    Err(Error::Config(ConfigErrors(vec![ConfigError::new(
        "alerts.gpio.backend",
        "\"pi\"",
        "this rxgate was built without GPIO support; build it with `--features pi`",
    )])))
}

#[cfg(feature = "pi")]
fn open_pi(config: &GpioConfig) -> Result<Arc<dyn Signals>> {
    let signals = pi::PiSignals::open(config).map_err(|message| {
        Error::Config(ConfigErrors(vec![ConfigError {
            key: "alerts.gpio".to_owned(),
            value: None,
            message,
        }]))
    })?;
    Ok(Arc::new(signals))
}

#[cfg(feature = "pi")]
mod pi {
    use std::sync::{Arc, Condvar, Mutex, MutexGuard};
    use std::time::Duration;

    use rppal::gpio::{Gpio, OutputPin};

    use super::{Outputs, Signals, log_changes};
    use crate::alerts::config::{BuzzerPattern, GpioConfig};

    /// One output pin, opened at start-up and never dropped.
    struct Output {
        pin: OutputPin,
        active_low: bool,
    }

    impl Output {
        fn open(gpio: &Gpio, bcm: u8, active_low: bool) -> Result<Output, String> {
            let pin = gpio.get(bcm).map_err(|e| {
                format!("cannot open GPIO {bcm} (BCM): {e}; is it used by another program or an overlay?")
            })?;
            // Start at the inactive level, without a glitch to the active one.
            let mut pin = if active_low {
                pin.into_output_high()
            } else {
                pin.into_output_low()
            };
            pin.set_reset_on_drop(false);
            Ok(Output { pin, active_low })
        }

        fn drive(&mut self, on: bool) {
            if on != self.active_low {
                self.pin.set_high();
            } else {
                self.pin.set_low();
            }
        }
    }

    fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The intermittent buzzer: a thread that lives as long as the process and toggles the pin
    /// while `wanted`.
    struct Beeper {
        wanted: Mutex<bool>,
        changed: Condvar,
        output: Mutex<Output>,
        interval: Duration,
    }

    impl Beeper {
        fn run(&self) {
            let mut wanted = lock(&self.wanted);
            loop {
                while !*wanted {
                    wanted = self.changed.wait(wanted).unwrap_or_else(|e| e.into_inner());
                }
                let mut level = true;
                while *wanted {
                    lock(&self.output).drive(level);
                    level = !level;
                    wanted = self
                        .changed
                        .wait_timeout(wanted, self.interval)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                lock(&self.output).drive(false);
            }
        }
    }

    enum Buzzer {
        Steady(Output),
        Intermittent(Arc<Beeper>),
    }

    pub(super) struct PiSignals {
        state: Mutex<State>,
    }

    struct State {
        current: Outputs,
        buzzer: Option<Buzzer>,
        relay: Option<Output>,
        led: Option<Output>,
    }

    impl PiSignals {
        pub(super) fn open(config: &GpioConfig) -> Result<PiSignals, String> {
            let gpio = Gpio::new().map_err(|e| {
                format!("cannot open the GPIO ({e}); is this a Raspberry Pi, and is the gateway's user in the `gpio` group?")
            })?;
            let relay = config
                .relay_pin
                .map(|p| Output::open(&gpio, p, config.relay_active_low))
                .transpose()?;
            let led = config
                .led_pin
                .map(|p| Output::open(&gpio, p, config.led_active_low))
                .transpose()?;
            let buzzer = match config.buzzer_pin {
                None => None,
                Some(p) => {
                    let output = Output::open(&gpio, p, config.buzzer_active_low)?;
                    Some(match config.buzzer_pattern {
                        BuzzerPattern::Steady => Buzzer::Steady(output),
                        BuzzerPattern::Intermittent => {
                            let beeper = Arc::new(Beeper {
                                wanted: Mutex::new(false),
                                changed: Condvar::new(),
                                output: Mutex::new(output),
                                interval: config.buzzer_interval,
                            });
                            let thread = beeper.clone();
                            std::thread::Builder::new()
                                .name("gpio-buzzer".to_owned())
                                .spawn(move || thread.run())
                                .map_err(|e| format!("cannot start the buzzer thread: {e}"))?;
                            Buzzer::Intermittent(beeper)
                        }
                    })
                }
            };
            for (output, pin, active_low) in config.wired() {
                tracing::info!(output, pin, active_low, "GPIO output ready.");
            }
            crate::metrics::gpio_outputs(Outputs::default().each());
            Ok(PiSignals {
                state: Mutex::new(State {
                    current: Outputs::default(),
                    buzzer,
                    relay,
                    led,
                }),
            })
        }
    }

    impl Signals for PiSignals {
        fn set(&self, outputs: Outputs) -> Result<(), String> {
            let mut state = lock(&self.state);
            if state.current == outputs {
                return Ok(());
            }
            log_changes(state.current, outputs);
            let buzzer_changed = state.current.buzzer != outputs.buzzer;
            match &mut state.buzzer {
                Some(Buzzer::Steady(output)) => output.drive(outputs.buzzer),
                // Woken only when the buzzer changes, so its rhythm stays even.
                Some(Buzzer::Intermittent(beeper)) if buzzer_changed => {
                    *lock(&beeper.wanted) = outputs.buzzer;
                    beeper.changed.notify_all();
                }
                Some(Buzzer::Intermittent(_)) | None => {}
            }
            if let Some(relay) = &mut state.relay {
                relay.drive(outputs.relay);
            }
            if let Some(led) = &mut state.led {
                led.drive(outputs.led);
            }
            state.current = outputs;
            crate::metrics::gpio_outputs(outputs.each());
            Ok(())
        }

        fn current(&self) -> Outputs {
            lock(&self.state).current
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recording_signals_keep_every_change_and_ignore_repeats() {
        let signals = RecordingSignals::new();
        let alarm = Outputs {
            buzzer: true,
            relay: true,
            led: true,
        };
        let acknowledged = Outputs {
            buzzer: false,
            ..alarm
        };
        for outputs in [alarm, alarm, acknowledged, Outputs::default()] {
            signals.set(outputs).unwrap();
        }
        assert_eq!(
            signals.history(),
            vec![alarm, acknowledged, Outputs::default()]
        );
        assert_eq!(signals.current(), Outputs::default());
    }

    #[test]
    fn no_gpio_section_gives_the_recording_fake() {
        let signals = build(None).unwrap();
        signals
            .set(Outputs {
                led: true,
                ..Outputs::default()
            })
            .unwrap();
        assert!(signals.current().led);
    }

    #[test]
    fn fake_backend_builds_with_pins_configured() {
        let config: GpioConfig =
            toml::from_str("backend = \"fake\"\nbuzzer_pin = 17\nrelay_pin = 27\n").unwrap();
        assert_eq!(build(Some(&config)).unwrap().current(), Outputs::default());
    }

    #[test]
    fn build_refuses_duplicate_pins_naming_the_key() {
        let config: GpioConfig =
            toml::from_str("backend = \"fake\"\nbuzzer_pin = 17\nled_pin = 17\n").unwrap();
        let Err(Error::Config(errors)) = build(Some(&config)) else {
            panic!("duplicate pins accepted");
        };
        assert_eq!(errors.0[0].key, "alerts.gpio.led_pin");
    }

    #[cfg(not(feature = "pi"))]
    #[test]
    fn pi_backend_without_the_feature_says_to_build_with_it() {
        let config: GpioConfig = toml::from_str("backend = \"pi\"\nbuzzer_pin = 17\n").unwrap();
        let Err(e) = build(Some(&config)) else {
            panic!("pi backend accepted without the feature");
        };
        assert!(e.to_string().contains("--features pi"), "{e}");
        assert!(e.to_string().starts_with("alerts.gpio.backend"), "{e}");
    }
}
