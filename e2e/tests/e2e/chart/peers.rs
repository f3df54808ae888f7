//! The Peer resource in the lab's apiserver: the Rust type and the chart's
//! CRD agree field for field (strict field validation refuses any name the
//! schema lacks), and an agent's pod-bound token sets only its own node's
//! conditions and reads only single Secrets of its namespace.

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use trellis_api::{NodeCondition, Peer, PeerSpec, PeerStatus, SecretKeyRef};
use trellis_e2e::Lab;

const KEY: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";

fn condition(node: &str) -> NodeCondition {
    NodeCondition {
        type_: "Configured".into(),
        node: node.into(),
        status: "True".into(),
        reason: Some("Configured".into()),
        message: Some(format!("configured on node {node}")),
        last_transition_time: Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(1_767_323_045).unwrap(),
        )),
        observed_generation: Some(1),
    }
}

fn apply_body(name: &str, status: Option<PeerStatus>) -> serde_json::Value {
    let mut body = serde_json::json!({
        "apiVersion": "trellis.dev/v1alpha1",
        "kind": "Peer",
        "metadata": {"name": name},
    });
    if let Some(s) = status {
        body["status"] = serde_json::to_value(s).unwrap();
    }
    body
}

pub(crate) async fn the_rust_type_and_the_crd_agree(lab: &Lab, cluster: &str) {
    let peers: Api<Peer> = Api::all(lab.client(cluster).await.unwrap());
    let spec = PeerSpec {
        public_key: KEY.into(),
        endpoint: Some("[2001:db8::7]:51820".into()),
        allowed_ips: vec!["10.99.0.2/32".into(), "fd99::/64".into()],
        persistent_keepalive: Some(25),
        preshared_key_secret_ref: Some(SecretKeyRef {
            name: "laptop-psk".into(),
            namespace: "kube-system".into(),
            key: Some("psk".into()),
        }),
    };
    let strict = PatchParams::apply("trellis-test").validation_strict();
    let peer = Peer::new("typed", spec.clone());
    let created = peers
        .patch("typed", &strict, &Patch::Apply(&peer))
        .await
        .expect("every field of PeerSpec is in the CRD's schema");
    assert_eq!(created.spec, spec);
    let status = PeerStatus {
        conditions: vec![condition("n1"), condition("n2")],
    };
    let written = peers
        .patch_status(
            "typed",
            &strict,
            &Patch::Apply(apply_body("typed", Some(status.clone()))),
        )
        .await
        .expect("every field of NodeCondition is in the CRD's schema");
    assert_eq!(written.status, Some(status));
    // A name the schema lacks is refused, so the check above can fail.
    let mut wrong = serde_json::to_value(&peer).unwrap();
    wrong["spec"]["publicKeys"] = serde_json::json!("x");
    let err = peers
        .patch("typed", &strict, &Patch::Apply(&wrong))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("publicKeys"), "{err}");
    peers.delete("typed", &Default::default()).await.unwrap();
}

pub(crate) async fn agents_set_only_their_own_conditions(
    lab: &Lab,
    cluster: &str,
    agent: &kube::Client,
    own: &str,
    other: &str,
) {
    let admin: Api<Peer> = Api::all(lab.client(cluster).await.unwrap());
    let spec = PeerSpec {
        public_key: KEY.into(),
        allowed_ips: vec!["10.99.0.2/32".into()],
        ..Default::default()
    };
    admin
        .patch(
            "conditions",
            &PatchParams::apply("trellis-test"),
            &Patch::Apply(Peer::new("conditions", spec)),
        )
        .await
        .unwrap();
    let peers: Api<Peer> = Api::all(agent.clone());
    let status = |node: &str| {
        apply_body(
            "conditions",
            Some(PeerStatus {
                conditions: vec![condition(node)],
            }),
        )
    };
    let params = PatchParams::apply(&format!("trellis-agent-{own}")).force();
    peers
        .patch_status("conditions", &params, &Patch::Apply(status(own)))
        .await
        .expect("an agent sets its own node's condition");
    // The policy is compiled asynchronously after it is created.
    let mut result = Ok(());
    for _ in 0..50 {
        result = peers
            .patch_status(
                "conditions",
                &PatchParams::apply("trellis-agent-x").force(),
                &Patch::Apply(status(other)),
            )
            .await
            .map(drop);
        if result.is_err() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let err = result
        .expect_err("an agent set another node's condition")
        .to_string();
    assert!(
        err.contains(&format!("may change only node {own}'s conditions")),
        "{err}"
    );
    let after = admin.get("conditions").await.unwrap();
    assert!(after.condition("Configured", own).is_some());
    assert!(after.condition("Configured", other).is_none());
    admin
        .delete("conditions", &Default::default())
        .await
        .unwrap();
    // Secrets: a single get in the release namespace (NotFound, not
    // Forbidden), nothing in any other namespace.
    let own_ns: Api<Secret> = Api::namespaced(agent.clone(), trellis_e2e::chart::NAMESPACE);
    assert!(own_ns
        .get_opt("no-such-secret")
        .await
        .expect("get is allowed")
        .is_none());
    let elsewhere: Api<Secret> = Api::namespaced(agent.clone(), "default");
    let err = elsewhere
        .get("no-such-secret")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("forbidden"), "{err}");
}
