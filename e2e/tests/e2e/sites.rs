//! End-to-end: a site — two nodes (n2, n3) on one private network behind
//! one NAT router that does not hairpin, as most gateways — beside a public
//! node (n1) and a node behind a symmetric NAT of its own (n4). No
//! configuration says which nodes share a site: the agents find out from
//! where the others see them (one public address). n3 drops n2 at first,
//! so the pair tries the LAN, then the public mapping (which the router
//! refuses to hairpin: its counter shows the attempts), then goes through
//! n1; once the rule goes, it is back on the LAN, and from then on no
//! packet of the pair reaches the router. Every pod pair answers.
//!
//! Then a site behind a router that does hairpin: the pair, kept apart on
//! its LAN at first, works at its public mappings through the router; once
//! the rule goes it moves up to the LAN while its pods keep talking, and the
//! router loops none of its packets any more. Root only.

use std::time::{Duration, Instant};

use trellis_e2e::mesh::Device;
use trellis_e2e::plugin::{self, wait_until};
use trellis_e2e::pod::ping_flow;
use trellis_e2e::{nat, ping, Lab, LabOptions, NatMode};

const S: &str = "site";
const H: &str = "hairpin";

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root"]
async fn nodes_of_one_site_talk_over_its_lan_without_configuration_or_hairpinning() {
    trellis_e2e::assert_root();
    let _turn = crate::module_turn(module_path!());
    trellis_e2e::down(S);
    let mut lab = Lab::up(LabOptions::new(S, 4)).await.expect("lab up");
    let [n1, n2, n3, n4] = [1, 2, 3, 4].map(|i| format!("{S}-n{i}"));
    let site = lab
        .put_site_behind_nat(&[&n2, &n3], NatMode::EndpointIndependent)
        .await
        .expect("a site of two nodes");
    lab.put_behind_nat(&n4, NatMode::Symmetric)
        .await
        .expect("n4 behind a NAT of its own");
    let (router, public) = (site[0].netns.clone(), site[0].public_v4);
    let (n2_lan, n3_lan) = (site[0].private_v4, site[1].private_v4);
    let n3_netns = lab.node(&n3).unwrap().netns.clone();
    nat::block(&n3_netns, n2_lan).expect("n3 drops n2");
    lab.start_mesh(Device::TrellisWg).await.expect("mesh");
    lab.wait_mesh(3, Duration::from_secs(90)).expect("mesh up");
    let pods = lab.one_pod_per_node().expect("a pod on every node");
    let took = ping::wait_all_pairs(&pods, Duration::from_secs(120));
    eprintln!("every pod pair of 4 nodes (a site of 2, 1 behind symmetric NAT) answered {took:?} after the mesh was up");

    // The site-mates, kept apart on their LAN, try each other's public
    // mapping, which the router does not hairpin, and go through n1.
    let relayed = wait_until(
        "n2 and n3 relayed, their public mappings tried",
        Duration::from_secs(90),
        || {
            let t = plugin::lab_status(&lab, S);
            plugin::status_row(&t, &n2, &n3).contains("relayed via ")
                && plugin::status_row(&t, &n3, &n2).contains("relayed via ")
                && nat::hairpin_packets(&router).unwrap_or(0) > 0
        },
    );
    let t = plugin::lab_status(&lab, S);
    eprintln!("{t}");
    let r = plugin::status_row(&t, &n2, &n3);
    assert!(
        r.contains(&format!("lan {n3_lan}:51820")) && r.contains(&format!("public {public}:")),
        "the candidates tried: {r}"
    );
    eprintln!(
        "site pair relayed {relayed:?} later; the router refused {} hairpin packets",
        nat::hairpin_packets(&router).unwrap()
    );
    // n1 sees the site at one public address; n4 reaches it through it.
    for mate in [&n2, &n3] {
        let r = plugin::status_row(&t, &n1, mate);
        assert!(r.contains(&format!("{public}:")), "{r}");
    }

    // The rule goes: the pair finds its LAN again, both ends.
    let unblocked = Instant::now();
    nat::unblock(&n3_netns).expect("unblock");
    wait_until("n2 and n3 on their LAN", Duration::from_secs(90), || {
        let t = plugin::lab_status(&lab, S);
        plugin::path_cell(&plugin::status_row(&t, &n2, &n3)) == "lan"
            && plugin::path_cell(&plugin::status_row(&t, &n3, &n2)) == "lan"
    });
    eprintln!(
        "relayed -> lan {:?} after the rule went",
        unblocked.elapsed()
    );
    let n3_key = lab.wg_public_key(&n3).unwrap();
    let seen = lab
        .wg_dump(&n2)
        .unwrap()
        .into_iter()
        .find(|p| p.public_key == n3_key)
        .unwrap();
    assert_eq!(seen.endpoint, format!("{n3_lan}:51820"), "{seen:?}");

    // From now on nothing between them leaves the site: the router sees
    // none of their packets (a flow between their pods, and keepalives).
    let before = nat::hairpin_packets(&router).unwrap();
    let pod_n2 = pods.iter().find(|p| p.node == n2).unwrap();
    let pod_n3 = pods.iter().find(|p| p.node == n3).unwrap();
    let (sent, received) = ping_flow(&pod_n2.netns, &pod_n3.v4, 10).join().unwrap();
    let after = nat::hairpin_packets(&router).unwrap();
    eprintln!(
        "over the LAN: {received} of {sent} pings answered; hairpin packets {before} -> {after}"
    );
    assert!(sent > 100 && received == sent, "{received} of {sent}");
    assert_eq!(before, after, "no packet of the pair reached the router");
    let failures = ping::all_pairs(&pods);
    assert!(failures.is_empty(), "{failures:?}");
    trellis_e2e::down(S);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root"]
async fn a_working_site_pair_moves_up_from_its_public_mappings_to_the_lan() {
    trellis_e2e::assert_root();
    let _turn = crate::module_turn(module_path!());
    trellis_e2e::down(H);
    let mut lab = Lab::up(LabOptions::new(H, 3)).await.expect("lab up");
    let [n2, n3] = [2, 3].map(|i| format!("{H}-n{i}"));
    let site = lab
        .put_site_behind_nat(&[&n2, &n3], NatMode::Hairpin)
        .await
        .expect("a site of two nodes behind a hairpinning router");
    let (router, public) = (site[0].netns.clone(), site[0].public_v4);
    let (n2_lan, n3_lan) = (site[0].private_v4, site[1].private_v4);
    let n3_netns = lab.node(&n3).unwrap().netns.clone();
    nat::block(&n3_netns, n2_lan).expect("n3 drops n2");
    lab.start_mesh(Device::TrellisWg).await.expect("mesh");
    lab.wait_mesh(2, Duration::from_secs(90)).expect("mesh up");
    let pods = lab.one_pod_per_node().expect("a pod on every node");
    ping::wait_all_pairs(&pods, Duration::from_secs(120));

    // Apart on the LAN, the pair works at its public mappings: the router
    // loops its packets back into the site.
    let direct = wait_until(
        "n2 and n3 direct at their public mappings",
        Duration::from_secs(90),
        || {
            let t = plugin::lab_status(&lab, H);
            plugin::path_cell(&plugin::status_row(&t, &n2, &n3)) == "direct"
                && plugin::path_cell(&plugin::status_row(&t, &n3, &n2)) == "direct"
                && nat::looped_packets(&router).unwrap_or(0) > 0
        },
    );
    let t = plugin::lab_status(&lab, H);
    eprintln!("{t}");
    let r = plugin::status_row(&t, &n2, &n3);
    assert!(
        r.contains(&format!("{public}:{}", nat::hairpin_port(1))),
        "n2 reaches n3 at its public mapping: {r}"
    );
    eprintln!(
        "site pair direct through the router {direct:?} later ({} packets looped)",
        nat::looped_packets(&router).unwrap()
    );

    // The rule goes during a flow between their pods: both ends move up
    // to the LAN, over the same sessions.
    let pod_n2 = pods.iter().find(|p| p.node == n2).unwrap();
    let pod_n3 = pods.iter().find(|p| p.node == n3).unwrap();
    let flow = ping_flow(&pod_n2.netns, &pod_n3.v4, 40);
    std::thread::sleep(Duration::from_secs(2));
    let unblocked = Instant::now();
    nat::unblock(&n3_netns).expect("unblock");
    let moved = wait_until("n2 and n3 on their LAN", Duration::from_secs(30), || {
        let t = plugin::lab_status(&lab, H);
        plugin::path_cell(&plugin::status_row(&t, &n2, &n3)) == "lan"
            && plugin::path_cell(&plugin::status_row(&t, &n3, &n2)) == "lan"
    });
    eprintln!(
        "public mappings -> lan {:?} after the rule went ({moved:?} of waiting)",
        unblocked.elapsed()
    );
    for (node, peer, lan) in [(&n2, &n3, n3_lan), (&n3, &n2, n2_lan)] {
        let key = lab.wg_public_key(peer).unwrap();
        let seen = lab
            .wg_dump(node)
            .unwrap()
            .into_iter()
            .find(|p| p.public_key == key)
            .unwrap();
        assert_eq!(seen.endpoint, format!("{lan}:51820"), "{node}: {seen:?}");
    }
    // Settled on the LAN: the router loops nothing of theirs any more.
    std::thread::sleep(Duration::from_secs(5));
    let before = nat::looped_packets(&router).unwrap();
    let (sent, received) = flow.join().unwrap();
    let after = nat::looped_packets(&router).unwrap();
    let lost = sent - received;
    eprintln!(
        "flow through the move: {received} of {sent} pings answered ({lost} lost); looped packets {before} -> {after}"
    );
    assert!(sent > 400, "{sent} pings sent");
    assert!(
        lost * 20 <= sent,
        "moving up lost {lost} of {sent} pings (more than 5%)"
    );
    assert_eq!(
        before, after,
        "no packet of the pair looped through the router"
    );
    let t = plugin::lab_status(&lab, H);
    eprintln!("{t}");
    let failures = ping::all_pairs(&pods);
    assert!(failures.is_empty(), "{failures:?}");
    trellis_e2e::down(H);
}
