//! `rxgate demo`: the first thing a newcomer runs. Everything on loopback, in a temporary folder,
//! with no config: a gateway, two simulated Modbus fridges, a dispensing cabinet that enrolls
//! over EST and publishes over MQTT with its new certificate, and a stand-in cloud broker whose
//! traffic is shown live. After a minute fridge-01's compressor fails: the alert is raised once
//! the alarm delay has passed, e-mailed to a local SMTP sink, sent to the cloud, and then
//! acknowledged by a (simulated) pharmacist.

mod smtp;
mod view;

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use anyhow::Context as _;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use rxgate_sim::cabinet::{self, CabinetOptions, Scenario};
use rxgate_sim::est::{self, EnrollOptions, Trust};
use rxgate_sim::fridge::{FridgeOptions, FridgeSim};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::config::{CloudConfig, Config, DeviceConfig, ModelFile, Transport};
use crate::daemon::Gateway;
use crate::pki::{self, InitOptions};
use crate::registry::Actor;

const SITE: &str = "demo-pharmacy";
/// Short, for the demo: a real refrigerator would use 15 minutes or more.
const ALARM_DELAY: Duration = Duration::from_secs(20);
/// How long after an alert the simulated pharmacist acknowledges it.
const ACK_AFTER: Duration = Duration::from_secs(15);
/// The demo's pharmacist in the console.
const DEMO_ACCOUNT: &str = "demo-pharmacist";
/// The register map of the simulated fridge, built in so the demo needs no files.
const FRIDGE_MODEL: &str = include_str!("../../../config/devices/acme-fr400.toml");

/// Options of `rxgate demo`.
#[derive(Debug, Clone, Default)]
pub struct DemoOptions {
    /// Stop by itself after this long (default: run until Ctrl-C).
    pub duration: Option<Duration>,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A plain-MQTT broker on loopback standing in for the cloud.
fn start_stand_in_cloud() -> anyhow::Result<SocketAddr> {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let server = rumqttd::ServerSettings {
        name: "stand-in-cloud".to_owned(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 0,
        connections: rumqttd::ConnectionSettings {
            connection_timeout_ms: 10_000,
            max_payload_size: 256 * 1024,
            max_inflight_count: 256,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let mut v4 = HashMap::new();
    v4.insert("cloud".to_owned(), server);
    let mut broker = rumqttd::Broker::new(rumqttd::Config {
        router: rumqttd::RouterConfig {
            max_connections: 32,
            max_outgoing_packet_count: 500,
            max_segment_size: 4 * 1024 * 1024,
            max_segment_count: 4,
            ..Default::default()
        },
        v4: Some(v4),
        ..Default::default()
    });
    std::thread::Builder::new()
        .name("stand-in-cloud".to_owned())
        .spawn(move || {
            if let Err(e) = broker.start() {
                eprintln!("stand-in cloud broker stopped: {e}");
            }
        })?;
    Ok(addr)
}

fn fridge_config(address: SocketAddr, model: &ModelFile) -> anyhow::Result<DeviceConfig> {
    let mut device: DeviceConfig = toml::from_str(&format!(
        "kind = \"fridge\"\ntransport = \"tcp\"\naddress = \"{address}\"\npoll_interval = \"2s\"\ntimeout = \"500ms\"\n"
    ))?;
    device.transport = Some(Transport::Tcp);
    device.registers = model.registers.clone();
    Ok(device)
}

/// Runs the demo until Ctrl-C or `options.duration`.
pub async fn run(options: DemoOptions, clock: SharedClock) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("rxgate-demo-").tempdir()?;
    let data_dir = dir.path().join("data");
    println!(
        "rxgate demo: everything runs on loopback, in {}",
        dir.path().display()
    );

    let cloud = start_stand_in_cloud().context("starting the stand-in cloud broker")?;
    let model: ModelFile =
        toml::from_str(FRIDGE_MODEL).context("the built-in fridge register map")?;
    // fridge-01 runs 60 times faster than real time so its failure shows within the demo: the
    // compressor fails after one real minute (an hour of fridge time).
    let fridge_a = FridgeSim::start(FridgeOptions {
        setpoint_c: 5.0,
        speed: 60.0,
        schedule: vec![
            "compressor-failure@60m"
                .parse()
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        ],
        ..FridgeOptions::default()
    })
    .await?;
    let fridge_b = FridgeSim::start(FridgeOptions {
        setpoint_c: 4.0,
        ..FridgeOptions::default()
    })
    .await?;

    let mut config = Config::loopback(SITE, &data_dir);
    config.outbox.batch_delay = Duration::from_millis(5);
    config.cloud = Some(toml::from_str::<CloudConfig>(&format!(
        "url = \"mqtt://{cloud}\"\nreconnect_max = \"2s\""
    ))?);
    let mut devices = BTreeMap::new();
    for (id, sim) in [("fridge-01", &fridge_a), ("fridge-02", &fridge_b)] {
        let address = sim
            .local_addr()
            .context("the simulated fridge has no TCP address")?;
        devices.insert(id.to_owned(), fridge_config(address, &model)?);
    }
    for device in devices.values_mut() {
        device.profile = Some(crate::coldchain::Profile::Refrigerator);
        device.alarm_delay = ALARM_DELAY;
    }
    config.devices = devices;
    let (smtp, mut mails) = smtp::start().await.context("starting the demo mail sink")?;
    config.alerts.email = Some(toml::from_str(&format!(
        "smtp_url = \"smtp://{smtp}\"\nfrom = \"rxgate {SITE} <rxgate@pharmacy.example>\"\nto = [\"duty-pharmacist@pharmacy.example\"]\n"
    ))?);
    // The demo's own account may sign in to its console; `rxgate run` refuses demo accounts.
    config.console.demo_accounts = true;
    config.check()?;
    let report = pki::init(&config.pki(), &InitOptions::default(), clock.as_ref())?;
    println!(
        "  gateway CA created: {} ({})",
        report.ca_subject,
        &report.ca_sha256[..23]
    );

    let gateway = Gateway::build(&config, clock.clone()).await?;
    let addresses: BTreeMap<String, SocketAddr> = gateway.addresses().iter().cloned().collect();
    let registry = gateway.registry().clone();
    let alerts = gateway.alerts().clone();
    let shutdown = CancellationToken::new();
    let gateway_task = tokio::spawn(gateway.run(shutdown.clone()));
    println!(
        "  gateway up: EST https://{}  device MQTT mqtts://{}  metrics http://{}/metrics",
        addresses["enroll"], addresses["mqtt"], addresses["metrics"]
    );
    println!("  stand-in cloud broker: mqtt://{cloud}   mail sink: smtp://{smtp}");
    let demo_account = {
        let people = crate::people::People::new(
            registry.store().clone(),
            registry.clock().clone(),
            SITE,
            &[],
        )
        .allowing_demo_accounts();
        tokio::task::spawn_blocking(move || {
            people.add_demo_account(DEMO_ACCOUNT, &[crate::people::Role::Pharmacist])
        })
        .await??
    };
    println!(
        "  console: https://localhost:{}/  (the demo's own CA signed it: the browser warns; go on)",
        addresses["console"].port()
    );
    println!(
        "    demo account, works only in this demo: {} / {}",
        demo_account.name, demo_account.password
    );
    println!(
        "    second factor: a recovery code ({}), or add the TOTP secret {} to an authenticator app",
        demo_account
            .recovery_codes
            .iter()
            .take(3)
            .cloned()
            .collect::<Vec<_>>()
            .join(", "),
        demo_account.totp_secret
    );
    println!(
        "  fridges polled over Modbus/TCP: fridge-01 at {}, fridge-02 at {}",
        fridge_a
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default(),
        fridge_b
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default()
    );

    // The cloud side: subscribe before anything is sent.
    let mut cloud_options = MqttOptions::new("demo-backend", cloud.ip().to_string(), cloud.port());
    cloud_options.set_keep_alive(Duration::from_secs(30));
    let (backend, mut backend_events) = AsyncClient::new(cloud_options, 64);
    backend.subscribe("rxgate/v1/#", QoS::AtLeastOnce).await?;

    // An installer enrolls the cabinet: one-time token, EST with the token, certificate back.
    let (token_info, secret) = {
        let registry = registry.clone();
        tokio::task::spawn_blocking(move || {
            registry.create_token(
                "cabinet-01",
                "cabinet",
                Duration::from_secs(600),
                &Actor::cli(),
            )
        })
        .await??
    };
    let cabinet_dir = dir.path().join("cabinet-01");
    let enrolled = est::enroll(EnrollOptions {
        est_url: format!("https://{}", addresses["enroll"]),
        device_id: "cabinet-01".to_owned(),
        token: secret,
        out_dir: cabinet_dir.clone(),
        trust: Trust::CaFile(data_dir.join("ca/ca.crt")),
        key_alg: rxgate_certs::KeyAlg::P256,
        timeout: Duration::from_secs(10),
    })
    .await?;
    println!(
        "  cabinet-01 enrolled with one-time token {}: certificate {} valid until {}",
        token_info.id,
        enrolled.serial,
        crate::clock::rfc3339_seconds(enrolled.not_after)
    );
    let (stop_cabinet, stop_rx) = watch::channel(false);
    let cabinet_task = tokio::spawn(cabinet::run(
        CabinetOptions {
            gateway: addresses["mqtt"].to_string(),
            dir: cabinet_dir,
            rate: 0.25,
            count: None,
            seed: 42,
            scenario: Scenario::Normal,
        },
        stop_rx,
    ));
    println!(
        "\nfridge-01's compressor will fail in a minute; the alarm delay is {}s.",
        ALARM_DELAY.as_secs()
    );
    println!("What reaches the cloud (Ctrl-C to stop):");
    view::header();

    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let deadline = options.duration.map(|d| tokio::time::Instant::now() + d);
    let ended = async {
        match deadline {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    tokio::pin!(ended);
    let (ack_tx, mut ack_rx) = tokio::sync::mpsc::channel::<uuid::Uuid>(8);
    loop {
        tokio::select! {
            _ = &mut ended => break,
            Some(mail) = mails.recv() => view::mail(&mail.to, &mail.subject),
            Some(id) = ack_rx.recv() => {
                match alerts.ack(id, "demo pharmacist".to_owned(), "moved the vaccines to the backup fridge; service called".to_owned()).await {
                    Ok(alert) => println!("          pharmacist acknowledges alert {} (`rxgate alerts ack`): {}", alert.id, alert.state.as_str()),
                    Err(e) => eprintln!("acknowledgement failed: {e}"),
                }
            }
            event = backend_events.poll() => match event {
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    let kind = view::line(&publish.topic, &publish.payload);
                    if kind == "alert"
                        && let Some(id) = view::raised_alert(&publish.payload)
                    {
                        let ack_tx = ack_tx.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(ACK_AFTER).await;
                            let _ = ack_tx.send(id).await;
                        });
                    }
                    *counts.entry(kind).or_default() += 1;
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("stand-in cloud connection: {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            },
        }
    }

    let _ = stop_cabinet.send(true);
    let _ = cabinet_task.await;
    shutdown.cancel();
    let _ = gateway_task.await;
    fridge_a.stop().await;
    fridge_b.stop().await;
    println!("\nDemo over. Messages the cloud received, by type:");
    for (kind, n) in &counts {
        println!("  {kind:<12} {n}");
    }
    println!("Everything above was durable in the gateway's outbox before the cloud saw it.");
    println!("Next: README.md walks through installing a gateway and enrolling real devices.");
    Ok(())
}
