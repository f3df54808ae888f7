use super::*;

fn pairs(text: &str) -> Vec<Pair> {
    parse_pairs(text)
}

fn at(seconds: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
}

/// What `get` answers at `now`, boringtun having answered `answer`.
fn get(handshakes: &mut Handshakes, answer: &str, now: SystemTime) -> Vec<Pair> {
    let answer = pairs(answer);
    handshakes.observe(&answer, now);
    translate_get(&answer, None, handshakes)
}

fn handshake_of(out: &[Pair]) -> Option<(String, String)> {
    let value = |key: &str| out.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    Some((
        value("last_handshake_time_sec")?,
        value("last_handshake_time_nsec")?,
    ))
}

#[test]
fn handshake_times_become_absolute_and_the_private_key_is_reported() {
    let now = at(1_800_000_000);
    let answer = pairs("own_public_key=aa\nlisten_port=51820\npublic_key=bb\nlast_handshake_time_sec=5\nlast_handshake_time_nsec=250\nrx_bytes=1\ntx_bytes=2\n");
    let mut handshakes = Handshakes::default();
    handshakes.observe(&answer, now);
    let out = translate_get(&answer, Some("cc"), &handshakes);
    assert_eq!(out[0], ("private_key".into(), "cc".into()));
    assert!(!out.iter().any(|(k, _)| k == "own_public_key"));
    assert_eq!(
        render(&out[1..]),
        "listen_port=51820\npublic_key=bb\nlast_handshake_time_sec=1799999994\nlast_handshake_time_nsec=999999750\nrx_bytes=1\ntx_bytes=2\n",
        "in boringtun's place, before the counters"
    );
    let unknown = translate_get(&answer, None, &handshakes);
    assert!(
        unknown.iter().any(|(k, _)| k == "own_public_key"),
        "kept when the private key is unknown"
    );
}

#[test]
fn a_peer_without_handshake_has_no_handshake_time() {
    let out = get(
        &mut Handshakes::default(),
        "public_key=bb\nrx_bytes=0\ntx_bytes=0\n",
        SystemTime::now(),
    );
    assert!(!out.iter().any(|(k, _)| k.starts_with("last_handshake")));
}

#[test]
fn the_handshake_is_kept_after_boringtun_drops_it() {
    let mut handshakes = Handshakes::default();
    let live = "public_key=bb\nallowed_ip=10.0.1.0/24\nlast_handshake_time_sec=10\nlast_handshake_time_nsec=0\nrx_bytes=92\ntx_bytes=92\npublic_key=cc\nrx_bytes=0\ntx_bytes=0\n";
    let first = get(&mut handshakes, live, at(1_000));
    assert_eq!(handshake_of(&first), Some(("990".into(), "0".into())));
    // The session expired: boringtun no longer reports the handshake.
    let expired = "public_key=bb\nallowed_ip=10.0.1.0/24\nrx_bytes=92\ntx_bytes=92\npublic_key=cc\nrx_bytes=0\ntx_bytes=0\n";
    let later = get(&mut handshakes, expired, at(4_600));
    assert_eq!(
        render(&later),
        "public_key=bb\nallowed_ip=10.0.1.0/24\nlast_handshake_time_sec=990\nlast_handshake_time_nsec=0\nrx_bytes=92\ntx_bytes=92\npublic_key=cc\nrx_bytes=0\ntx_bytes=0\n",
        "bb keeps its handshake, cc never had one"
    );
    // A new handshake replaces it.
    let again = get(
        &mut handshakes,
        "public_key=bb\nlast_handshake_time_sec=1\nlast_handshake_time_nsec=0\nrx_bytes=200\ntx_bytes=200\n",
        at(5_000),
    );
    assert_eq!(handshake_of(&again), Some(("4999".into(), "0".into())));
}

#[test]
fn a_handshake_is_written_even_without_counters() {
    let mut handshakes = Handshakes::default();
    get(
        &mut handshakes,
        "public_key=bb\nlast_handshake_time_sec=1\nlast_handshake_time_nsec=0\n",
        at(100),
    );
    let out = get(&mut handshakes, "public_key=bb\npublic_key=cc\n", at(500));
    assert_eq!(
        render(&out),
        "public_key=bb\nlast_handshake_time_sec=99\nlast_handshake_time_nsec=0\npublic_key=cc\n"
    );
}

/// Handshakes with bb, cc and dd, all expired since.
fn three_idle_peers() -> (Handshakes, &'static str) {
    let mut handshakes = Handshakes::default();
    handshakes.observe(
        &pairs("public_key=bb\nlast_handshake_time_sec=1\nlast_handshake_time_nsec=0\npublic_key=cc\nlast_handshake_time_sec=2\nlast_handshake_time_nsec=0\npublic_key=dd\nlast_handshake_time_sec=3\nlast_handshake_time_nsec=0\n"),
        at(100),
    );
    (handshakes, "public_key=bb\npublic_key=cc\npublic_key=dd\n")
}

#[test]
fn a_removed_peer_forgets_its_handshake() {
    let (mut handshakes, expired) = three_idle_peers();
    // bb is removed for good; cc is removed and added again in the same
    // request (the agent's update): boringtun dropped its session too; dd
    // is only changed (no removal reaches boringtun for it here).
    handshakes.forget_removed(&pairs("listen_port=51820\npublic_key=bb\nremove=true\npublic_key=cc\nremove=true\npublic_key=cc\nendpoint=192.0.2.3:51820\npublic_key=dd\nendpoint=192.0.2.4:51820\n"));
    let out = render(&get(&mut handshakes, expired, at(900)));
    assert_eq!(
        out,
        "public_key=bb\npublic_key=cc\npublic_key=dd\nlast_handshake_time_sec=97\nlast_handshake_time_nsec=0\n"
    );
    // Added again by a later request, bb starts from none.
    handshakes.forget_removed(&pairs("public_key=bb\nallowed_ip=10.0.1.0/24\n"));
    assert_eq!(handshakes.of("bb"), None);
    // A peer added and then removed in one request is gone.
    handshakes.forget_removed(&pairs(
        "public_key=cc\nendpoint=192.0.2.9:51820\npublic_key=cc\nremove=true\n",
    ));
    assert_eq!(handshakes.of("cc"), None);
}

#[test]
fn replacing_the_peers_forgets_every_handshake() {
    let (mut handshakes, _) = three_idle_peers();
    handshakes.forget_removed(&pairs(
        "private_key=kk\nreplace_peers=true\npublic_key=bb\nallowed_ip=10.0.1.0/24\n",
    ));
    assert_eq!(handshakes, Handshakes::default());
}

#[test]
fn a_peer_gone_from_the_device_is_forgotten() {
    let (mut handshakes, _) = three_idle_peers();
    let out = get(&mut handshakes, "public_key=cc\n", at(900));
    assert_eq!(handshake_of(&out), Some(("98".into(), "0".into())));
    assert_eq!(handshakes.of("bb"), None);
    assert_eq!(handshakes.of("dd"), None);
    let back = get(&mut handshakes, "public_key=bb\n", at(901));
    assert_eq!(handshake_of(&back), None, "bb came back a new peer");
}

/// A re-created peer has no session on boringtun: its old handshake must
/// not make it look live (say, at an endpoint nobody answers from).
#[test]
fn a_peer_re_created_for_an_in_place_change_forgets_its_handshake() {
    let (mut handshakes, _) = three_idle_peers();
    let existing = peers_of(&pairs("public_key=bb\nallowed_ip=10.0.1.0/24\n"));
    let request = pairs("public_key=bb\nendpoint=192.0.2.9:51820\n");
    let (units, _) = rewrite_set(&request, &existing);
    assert!(render(&units[0]).starts_with("public_key=bb\nremove=true\n"));
    for unit in &units {
        handshakes.forget_removed(unit);
    }
    assert!(handshakes.of("cc").is_some(), "the other peers keep theirs");
    let out = get(&mut handshakes, "public_key=bb\nrx_bytes=0\n", at(900));
    assert_eq!(handshake_of(&out), None);
}

fn texts(requests: &[Vec<Pair>]) -> Vec<String> {
    requests.iter().map(|r| render(r)).collect()
}

#[test]
fn changing_an_existing_peer_becomes_remove_and_merged_add() {
    let existing = peers_of(&pairs("public_key=bb\nendpoint=192.0.2.1:51820\npersistent_keepalive_interval=25\nallowed_ip=10.0.1.0/24\nallowed_ip=fd00:1::/64\n"));
    let (out, key) = rewrite_set(&pairs("private_key=kk\nlisten_port=51820\npublic_key=bb\nendpoint=192.0.2.9:51820\npublic_key=dd\nallowed_ip=10.0.2.0/24\n"), &existing);
    assert_eq!(key.as_deref(), Some("kk"));
    assert_eq!(
        texts(&out),
        vec![
            "private_key=kk\nlisten_port=51820\n".to_string(),
            "public_key=bb\nremove=true\npublic_key=bb\nremove=false\nendpoint=192.0.2.9:51820\npersistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=10.0.1.0/24\nallowed_ip=fd00:1::/64\n".to_string(),
            "public_key=dd\nremove=false\npersistent_keepalive_interval=0\nreplace_allowed_ips=true\nallowed_ip=10.0.2.0/24\n".to_string(),
        ]
    );
}

#[test]
fn a_re_created_peer_that_had_a_session_is_poked_at_its_first_range() {
    let existing = peers_of(&pairs("public_key=bb\nlast_handshake_time_sec=3\nallowed_ip=10.0.1.0/24\npublic_key=cc\nallowed_ip=10.0.3.0/24\npublic_key=ee\nlast_handshake_time_sec=1\nallowed_ip=fd00:5::/64\n"));
    // bb changes in place (had a session), cc too (never handshook),
    // dd is new, ee is re-added by the agent's remove-then-add.
    let (out, _) = rewrite_set(&pairs("public_key=bb\nendpoint=192.0.2.9:51820\npublic_key=cc\nendpoint=192.0.2.7:51820\npublic_key=dd\nallowed_ip=10.0.2.0/24\npublic_key=ee\nremove=true\npublic_key=ee\nallowed_ip=fd00:6::/64\n"), &existing);
    let pokes: Vec<String> = sessions_to_restart(&out, &existing)
        .iter()
        .map(|a| a.to_string())
        .collect();
    assert_eq!(pokes, ["10.0.1.1", "fd00:6::1"]);
}

#[test]
fn removals_never_leak_into_the_next_peer() {
    let existing = peers_of(&pairs(
        "public_key=bb\nallowed_ip=10.0.1.0/24\npublic_key=ee\nallowed_ip=10.0.5.0/24\n",
    ));
    let (out, _) = rewrite_set(&pairs("public_key=ee\nremove=true\npublic_key=ff\nendpoint=1.2.3.4:5\nallowed_ip=10.0.6.0/24\n"), &existing);
    let t = texts(&out);
    assert_eq!(t[0], "public_key=ee\nremove=true\n");
    assert!(t[1].starts_with("public_key=ff\nremove=false\n"), "{t:?}");
}

#[test]
fn the_agents_remove_then_add_is_one_unit_with_a_fresh_peer() {
    let existing = peers_of(&pairs(
        "public_key=bb\nendpoint=9.9.9.9:9\nallowed_ip=10.0.1.0/24\n",
    ));
    let (out, _) = rewrite_set(&pairs("public_key=bb\nremove=true\npublic_key=bb\nendpoint=1.2.3.4:5\npersistent_keepalive_interval=0\nreplace_allowed_ips=true\nallowed_ip=10.0.9.0/24\n"), &existing);
    let t = texts(&out);
    assert_eq!(t[0], "public_key=bb\nremove=true\n");
    assert_eq!(t[1], "public_key=bb\nremove=false\nendpoint=1.2.3.4:5\npersistent_keepalive_interval=0\nreplace_allowed_ips=true\nallowed_ip=10.0.9.0/24\n", "nothing of the old peer is merged in");
}
