//! Unit tests of preshared-key reading and Peer conditions (no cluster).

use k8s_openapi::ByteString;
use trellis_api::PeerSpec;
use trellis_mesh::RejectReason;
use trellis_mesh::{DesiredPeer, PublicKey, Rejection};

use super::*;

const PSK: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";

fn secret(pairs: &[(&str, &str)]) -> Secret {
    Secret {
        data: Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Default::default()
    }
}

fn reference(key: Option<&str>) -> SecretKeyRef {
    SecretKeyRef {
        name: "laptop-psk".into(),
        namespace: "kube-system".into(),
        key: key.map(String::from),
    }
}

#[test]
fn a_preshared_key_is_read_or_the_reason_says_what_to_fix() {
    assert!(matches!(
        preshared_key_in(Some(&secret(&[("presharedKey", PSK)])), &reference(None)),
        PresharedKeySource::Key(k) if k.to_base64() == PSK
    ));
    assert!(matches!(
        preshared_key_in(Some(&secret(&[("psk", PSK)])), &reference(Some("psk"))),
        PresharedKeySource::Key(_)
    ));
    let cases = [
        (
            None,
            reference(None),
            "kube-system/laptop-psk does not exist",
        ),
        (
            Some(secret(&[("other", PSK)])),
            reference(None),
            "has no key \"presharedKey\"",
        ),
        (
            Some(secret(&[("presharedKey", "nope")])),
            reference(None),
            "wg genpsk",
        ),
    ];
    for (s, r, words) in cases {
        match preshared_key_in(s.as_ref(), &r) {
            PresharedKeySource::Unavailable(why) => assert!(why.contains(words), "{why}"),
            other => panic!("{words}: {other:?}"),
        }
    }
}

fn peer(name: &str) -> Peer {
    let mut p = Peer::new(name, PeerSpec::default());
    p.metadata.generation = Some(3);
    p
}

fn desired_with(configured: &[&str], rejected: &[(&str, RejectReason, &str)]) -> Desired {
    let mut d = Desired::default();
    for (i, name) in configured.iter().enumerate() {
        let key = PublicKey([i as u8; 32]);
        d.peers.insert(
            key,
            DesiredPeer {
                name: PeerName::External(name.to_string()),
                public_key: key,
                endpoint: None,
                allowed_ips: vec![],
                persistent_keepalive: None,
                preshared_key: None,
            },
        );
    }
    for (name, reason, message) in rejected {
        d.rejected.push(Rejection {
            object: PeerName::External(name.to_string()),
            reason: *reason,
            message: message.to_string(),
            undeclared: None,
        });
    }
    d
}

fn at(seconds: i64) -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(seconds).unwrap())
}

#[test]
fn conditions_say_configured_refused_or_not_seen() {
    let d = desired_with(
        &["ok"],
        &[(
            "bad",
            RejectReason::OverlappingAllowedIps,
            "allowed IP 10.0.0.0/8 overlaps ...",
        )],
    );
    let ok = configured_condition("n1", &peer("ok"), &d, at(10));
    assert_eq!(
        (ok.status.as_str(), ok.reason.as_deref()),
        ("True", Some("Configured"))
    );
    assert_eq!((ok.node.as_str(), ok.type_.as_str()), ("n1", "Configured"));
    assert_eq!(ok.observed_generation, Some(3));
    let bad = configured_condition("n1", &peer("bad"), &d, at(10));
    assert_eq!(bad.status, "False");
    assert_eq!(bad.reason.as_deref(), Some("PeerOverlappingAllowedIPs"));
    assert!(bad.message.as_deref().unwrap().contains("overlaps"));
    let unseen = configured_condition("n1", &peer("new"), &d, at(10));
    assert_eq!(unseen.status, "Unknown");
}

#[test]
fn the_transition_time_moves_only_with_the_status() {
    let d = desired_with(&["ok"], &[]);
    let mut p = peer("ok");
    let first = configured_condition("n1", &p, &d, at(10));
    p.status = Some(trellis_api::PeerStatus {
        conditions: vec![first.clone()],
    });
    let again = configured_condition("n1", &p, &d, at(20));
    assert_eq!(again.last_transition_time, Some(at(10)));
    assert!(
        !differs(p.condition(CONDITION_CONFIGURED, "n1"), &again),
        "nothing to write"
    );
    let refused = desired_with(
        &[],
        &[("ok", RejectReason::InvalidPeerSpec, "spec.publicKey: ...")],
    );
    let flipped = configured_condition("n1", &p, &refused, at(30));
    assert_eq!(flipped.last_transition_time, Some(at(30)));
    assert!(differs(p.condition(CONDITION_CONFIGURED, "n1"), &flipped));
    // Another node's condition is not this node's.
    assert!(differs(p.condition(CONDITION_CONFIGURED, "n2"), &again));
}
