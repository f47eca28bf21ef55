//! The config file: `rxgate::config::Config::parse(text, base)`, then `check()`, as
//! `rxgate config check` and `rxgate run` do. Either may refuse, naming at least one problem;
//! neither may panic. A config `check` accepts is one the daemon can build from: its Modbus
//! devices have an address or a serial port and a register map the poller can plan.
//!
//! `check` reads the files the config names (model files, secrets, CA files, backup recipients). So that the
//! fuzzer cannot make it read `/dev/zero` or a FIFO, every such path is pointed into this
//! crate's `fixtures/` (or at the example model files) before `check` runs.
#![no_main]

use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use rxgate::config::{Config, Transport};
use rxgate::modbus::{PointSpec, plan};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

/// A model file the config names, by its file name: one of the shipped examples, or none.
fn model(path: &Path) -> PathBuf {
    match path.file_name().and_then(|n| n.to_str()) {
        Some(name @ ("acme-fr400.toml" | "thermolog-tl2.toml")) => {
            fixture("../config/devices").join(name)
        }
        _ => fixture("fixtures/missing.toml"),
    }
}

fn sandbox(config: &mut Config) {
    for device in config.devices.values_mut() {
        if let Some(path) = device.model.as_mut() {
            *path = model(path);
        }
    }
    if let Some(email) = config.alerts.email.as_mut() {
        if let Some(path) = email.password_file.as_mut() {
            *path = fixture("fixtures/secret");
        }
        if let Some(path) = email.ca_file.as_mut() {
            *path = fixture("../certs/testdata/rsa-ca.pem");
        }
    }
    if let Some(path) = config.backup.recipients_file.as_mut() {
        *path = fixture("fixtures/secret");
    }
    if let Some(webhook) = config.alerts.webhook.as_mut() {
        webhook.secret_file = fixture("fixtures/secret");
        if let Some(path) = webhook.ca_file.as_mut() {
            *path = fixture("../certs/testdata/rsa-ca.pem");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut config = match Config::parse(text, Path::new("/etc/rxgate")) {
        Ok(config) => config,
        Err(errors) => {
            assert!(!errors.0.is_empty(), "refused without a reason");
            return drop(errors.to_string());
        }
    };
    sandbox(&mut config);
    if let Err(errors) = config.check() {
        assert!(!errors.0.is_empty(), "refused without a reason");
        return drop(errors.to_string());
    }
    for (id, device) in &config.devices {
        let Some(transport) = device.transport else {
            continue;
        };
        match transport {
            Transport::Tcp | Transport::Tls => {
                let host_port = device.host_port().expect("an address");
                assert!(
                    host_port.is_ok(),
                    "devices.{id}.address accepted: {host_port:?}"
                );
            }
            Transport::Rtu => assert!(device.serial.is_some()),
        }
        let map = device.register_map().expect("the model file was checked");
        assert!(!map.is_empty(), "devices.{id} is polled with no registers");
        let points: Vec<PointSpec> = map.iter().map(PointSpec::from_config).collect();
        let planned: usize = plan(&points).iter().map(|r| r.points.len()).sum();
        assert_eq!(planned, points.len());
    }
    if let Some(cloud) = &config.cloud {
        assert!(rxgate::config::cloud_endpoint(&cloud.url).is_ok());
    }
});
