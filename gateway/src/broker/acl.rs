//! Who may say what: a device publishes and subscribes only under `devices/<its id>/`.
//! Pure functions, used by the session relay.

/// What a device's PUBLISH is, once its topic is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishKind {
    /// `devices/<id>/telemetry`: taken by rxgate, made durable, acknowledged by rxgate.
    Telemetry,
    /// `devices/<id>/events`: likewise.
    Events,
    /// Any other topic under `devices/<id>/`: relayed to the local broker as it is.
    Local,
}

/// Why a topic or filter is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("topic {topic:?} is outside devices/{device}/")]
    OutsideNamespace { device: String, topic: String },
    #[error("topic {0:?} contains a wildcard; a PUBLISH names one topic")]
    WildcardInTopic(String),
    #[error("filter {0:?} is malformed")]
    MalformedFilter(String),
}

fn prefix(device: &str) -> String {
    format!("devices/{device}/")
}

/// Classifies a PUBLISH topic from `device`, or refuses it.
pub fn publish(device: &str, topic: &str) -> Result<PublishKind, Denied> {
    if topic.contains(['+', '#']) {
        return Err(Denied::WildcardInTopic(topic.to_owned()));
    }
    let Some(rest) = topic.strip_prefix(&prefix(device)) else {
        return Err(Denied::OutsideNamespace {
            device: device.to_owned(),
            topic: topic.to_owned(),
        });
    };
    Ok(match rest {
        "telemetry" => PublishKind::Telemetry,
        "events" => PublishKind::Events,
        "" => {
            return Err(Denied::OutsideNamespace {
                device: device.to_owned(),
                topic: topic.to_owned(),
            });
        }
        _ => PublishKind::Local,
    })
}

/// Checks a SUBSCRIBE filter from `device`: it must match only topics under `devices/<id>/`,
/// so a wildcard may appear only after that prefix (`devices/<id>/#`, `devices/<id>/+/cmd`).
pub fn subscribe(device: &str, filter: &str) -> Result<(), Denied> {
    let levels: Vec<&str> = filter.split('/').collect();
    let well_formed = levels.iter().enumerate().all(|(i, level)| match *level {
        "#" => i == levels.len() - 1,
        "+" => true,
        other => !other.contains(['+', '#']),
    });
    if filter.is_empty() || !well_formed {
        return Err(Denied::MalformedFilter(filter.to_owned()));
    }
    let outside = || Denied::OutsideNamespace {
        device: device.to_owned(),
        topic: filter.to_owned(),
    };
    if levels.len() < 3 || levels[0] != "devices" || levels[1] != device {
        return Err(outside());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_publishes_only_under_its_own_prefix() {
        assert_eq!(
            publish("f1", "devices/f1/telemetry"),
            Ok(PublishKind::Telemetry)
        );
        assert_eq!(publish("f1", "devices/f1/events"), Ok(PublishKind::Events));
        assert_eq!(
            publish("f1", "devices/f1/state/door"),
            Ok(PublishKind::Local)
        );
        assert!(matches!(
            publish("f1", "devices/f2/telemetry"),
            Err(Denied::OutsideNamespace { .. })
        ));
        assert!(matches!(
            publish("f1", "devices/f1"),
            Err(Denied::OutsideNamespace { .. })
        ));
        assert!(matches!(
            publish("f1", "devices/f1/"),
            Err(Denied::OutsideNamespace { .. })
        ));
        assert!(matches!(
            publish("f1", "devices/f10/telemetry"),
            Err(Denied::OutsideNamespace { .. })
        ));
        assert!(matches!(
            publish("f1", "rxgate/v1/x"),
            Err(Denied::OutsideNamespace { .. })
        ));
        assert!(matches!(
            publish("f1", "devices/f1/#"),
            Err(Denied::WildcardInTopic(_))
        ));
    }

    #[test]
    fn subscriptions_must_stay_under_the_devices_prefix() {
        assert_eq!(subscribe("f1", "devices/f1/#"), Ok(()));
        assert_eq!(subscribe("f1", "devices/f1/cmd"), Ok(()));
        assert_eq!(subscribe("f1", "devices/f1/+/cmd"), Ok(()));
        for bad in [
            "#",
            "+/#",
            "devices/#",
            "devices/+/cmd",
            "devices/f2/cmd",
            "devices/f1",
            "devices/f1x/#",
            "+/f1/cmd",
        ] {
            assert!(subscribe("f1", bad).is_err(), "{bad} must be refused");
        }
        for malformed in ["", "devices/f1/a#", "devices/f1/#/x", "devices/f1/a+"] {
            assert!(
                matches!(subscribe("f1", malformed), Err(Denied::MalformedFilter(_))),
                "{malformed}"
            );
        }
    }
}
