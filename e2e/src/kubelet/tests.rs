use super::*;
use k8s_openapi::api::core::v1::{
    Capabilities, EmptyDirVolumeSource, EnvVar, EnvVarSource, HostPathVolumeSource,
    ObjectFieldSelector, SecretVolumeSource, SecurityContext, VolumeMount,
};

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn expansion_follows_the_kubelet() {
    let e = env(&[("A", "1"), ("B", "two")]);
    assert_eq!(expand("--x=$(A)/$(B)", &e), "--x=1/two");
    assert_eq!(expand("$(MISSING) stays", &e), "$(MISSING) stays");
    assert_eq!(expand("$$(A) is escaped", &e), "$(A) is escaped");
    assert_eq!(expand("lone $ and $(unclosed", &e), "lone $ and $(unclosed");
}

fn field_var(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn value_var(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

#[test]
fn env_takes_fields_expands_and_overrides_the_kubelet_defaults() {
    let container = Container {
        name: "agent".into(),
        env: Some(vec![
            field_var("NODE_NAME", "spec.nodeName"),
            value_var("KUBERNETES_SERVICE_HOST", "192.0.2.10"),
            value_var("GREETING", "on $(NODE_NAME)"),
        ]),
        ..Default::default()
    };
    let fields = PodFields {
        node_name: "n1".into(),
        ..Default::default()
    };
    let got = container_env(&container, &fields, &kubelet_env("n1", "10.96.0.1", 443)).unwrap();
    let get = |k: &str| got.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(get("NODE_NAME"), Some("n1"));
    assert_eq!(get("KUBERNETES_SERVICE_HOST"), Some("192.0.2.10"));
    assert_eq!(get("KUBERNETES_SERVICE_PORT"), Some("443"));
    assert_eq!(get("GREETING"), Some("on n1"));
    assert_eq!(
        got.iter()
            .filter(|(k, _)| k == "KUBERNETES_SERVICE_HOST")
            .count(),
        1
    );
}

#[test]
fn env_from_an_unknown_source_is_refused_by_name() {
    let container = Container {
        name: "agent".into(),
        env: Some(vec![field_var("X", "metadata.labels['a']")]),
        ..Default::default()
    };
    let err = container_env(&container, &PodFields::default(), &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("env X from field metadata.labels['a']"),
        "{err}"
    );
}

fn with_caps(add: &[&str], drop: &[&str]) -> Container {
    Container {
        name: "c".into(),
        security_context: Some(SecurityContext {
            capabilities: Some(Capabilities {
                add: Some(add.iter().map(|s| s.to_string()).collect()),
                drop: Some(drop.iter().map(|s| s.to_string()).collect()),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn capabilities_are_exactly_the_added_ones_after_dropping_all() {
    assert_eq!(
        capabilities(&with_caps(&["NET_ADMIN", "CAP_NET_RAW"], &["ALL"])),
        vec!["net_admin", "net_raw"]
    );
    assert!(capabilities(&with_caps(&[], &["ALL"])).is_empty());
    let defaults = capabilities(&with_caps(&["NET_ADMIN"], &["KILL"]));
    assert!(defaults.contains(&"chown".to_string()) && defaults.contains(&"net_admin".to_string()));
    assert!(!defaults.contains(&"kill".to_string()));
}

#[test]
fn mounts_map_host_paths_to_the_node_and_empty_dirs_to_the_pod() {
    let volumes = vec![
        Volume {
            name: "state".into(),
            host_path: Some(HostPathVolumeSource {
                path: "/var/lib/trellis".into(),
                type_: None,
            }),
            ..Default::default()
        },
        Volume {
            name: "sys".into(),
            host_path: Some(HostPathVolumeSource {
                path: "/proc/sys/net".into(),
                type_: None,
            }),
            ..Default::default()
        },
        Volume {
            name: "scratch".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        },
        Volume {
            name: "kube-api-access-x".into(),
            projected: Some(Default::default()),
            ..Default::default()
        },
        Volume {
            name: "secret".into(),
            secret: Some(SecretVolumeSource::default()),
            ..Default::default()
        },
    ];
    let mount = |name: &str, path: &str| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        ..Default::default()
    };
    let mut container = Container {
        name: "agent".into(),
        volume_mounts: Some(vec![
            mount("state", "/var/lib/trellis"),
            mount("sys", "/host/proc/sys/net"),
            mount("scratch", "/var/run/wireguard"),
            mount("kube-api-access-x", SERVICE_ACCOUNT_DIR),
        ]),
        ..Default::default()
    };
    let got = container_mounts(&container, &volumes, Path::new("/n"), Path::new("/p")).unwrap();
    let pairs: Vec<(&str, &str)> = got
        .iter()
        .map(|m| (m.source.to_str().unwrap(), m.target.to_str().unwrap()))
        .collect();
    assert_eq!(
        pairs,
        vec![
            ("/n/var-lib-trellis", "/var/lib/trellis"),
            ("/proc/sys/net", "/host/proc/sys/net"),
            ("/p/volumes/scratch", "/run/wireguard"),
            (
                "/p/serviceaccount",
                "/run/secrets/kubernetes.io/serviceaccount"
            ),
        ]
    );
    container
        .volume_mounts
        .as_mut()
        .unwrap()
        .push(mount("secret", "/s"));
    let err = container_mounts(&container, &volumes, Path::new("/n"), Path::new("/p"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("volume secret"), "{err}");
}

#[test]
fn a_daemonset_template_becomes_a_pod_bound_to_the_node() {
    let template = PodTemplateSpec {
        metadata: Some(kube::api::ObjectMeta {
            labels: Some([("app.kubernetes.io/name".to_string(), "trellis".to_string())].into()),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            service_account_name: Some("trellis".into()),
            ..Default::default()
        }),
    };
    let pod = pod_for_node(&template, "trellis", "kube-system", "n1");
    assert_eq!(pod.metadata.name.as_deref(), Some("trellis-n1"));
    assert_eq!(pod.metadata.namespace.as_deref(), Some("kube-system"));
    assert_eq!(pod.spec.as_ref().unwrap().node_name.as_deref(), Some("n1"));
    assert_eq!(
        pod.metadata.labels.unwrap()["app.kubernetes.io/name"],
        "trellis"
    );
}

#[test]
fn a_container_runs_under_setpriv_with_its_capabilities_and_mounts() {
    let mut container = with_caps(&["NET_ADMIN"], &["ALL"]);
    container.command = Some(vec!["/usr/local/bin/trellis-agent".into()]);
    container.args = Some(vec!["--node-name=$(NODE_NAME)".into()]);
    container.env = Some(vec![field_var("NODE_NAME", "spec.nodeName")]);
    container
        .security_context
        .as_mut()
        .unwrap()
        .read_only_root_filesystem = Some(true);
    container
        .security_context
        .as_mut()
        .unwrap()
        .allow_privilege_escalation = Some(false);
    let spec = PodSpec::default();
    let fields = PodFields {
        node_name: "n1".into(),
        ..Default::default()
    };
    let node_placement = Placement::netns("ns1");
    let base = kubelet_env("n1", "10.96.0.1", 443);
    let pod = PodContext {
        spec: &spec,
        fields: &fields,
        node_placement: &node_placement,
        node_dir: Path::new("/n"),
        pod_dir: Path::new("/p"),
        image_bin: Path::new("/image/bin"),
        base_env: &base,
    };
    let run = container_run(&container, &pod).unwrap();
    let args: Vec<String> = run
        .command
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    assert_eq!(run.command.get_program(), "setpriv");
    assert_eq!(
        args,
        vec![
            "--bounding-set",
            "-all,+net_admin",
            "--inh-caps",
            "-all,+net_admin",
            "--no-new-privs",
            "--",
            "/usr/local/bin/trellis-agent",
            "--node-name=n1"
        ]
    );
    assert!(run
        .placement
        .binds
        .contains(&(PathBuf::from("/image/bin"), PathBuf::from("/usr/local/bin"))));
    assert_eq!(
        run.placement.read_only,
        vec![PathBuf::from("/proc/sys"), PathBuf::from("/")]
    );

    container.security_context.as_mut().unwrap().privileged = Some(true);
    let err = container_run(&container, &pod).unwrap_err().to_string();
    assert!(err.contains("privileged"), "{err}");
}
