//! The masquerade ruleset: pod traffic leaving for a destination outside
//! the mesh is masqueraded; traffic between pod CIDRs never is. One table of
//! our own (`inet trellis`), replaced as a whole by one `nft -f` run (the
//! leading `table`/`delete table` pair makes the replacement atomic and
//! works whether or not the table exists).

use ipnet::IpNet;

use crate::model::Desired;

fn elements(cidrs: &[IpNet], v4: bool) -> Vec<String> {
    cidrs
        .iter()
        .filter(|c| c.addr().is_ipv4() == v4)
        .map(|c| c.to_string())
        .collect()
}

/// The ruleset for `desired`, in the table `table` (family inet).
pub fn masquerade_ruleset(desired: &Desired, table: &str) -> String {
    let iface = &desired.interface;
    let mut out = format!("table inet {table}\ndelete table inet {table}\ntable inet {table} {{\n");
    for (family, v4, addr_type) in [("v4", true, "ipv4_addr"), ("v6", false, "ipv6_addr")] {
        let mesh = elements(&desired.mesh_cidrs, v4);
        out.push_str(&format!(
            "\tset mesh_{family} {{\n\t\ttype {addr_type}\n\t\tflags interval\n"
        ));
        if !mesh.is_empty() {
            out.push_str(&format!("\t\telements = {{ {} }}\n", mesh.join(", ")));
        }
        out.push_str("\t}\n");
    }
    out.push_str(
        "\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n",
    );
    for (family, v4, ip) in [("v4", true, "ip"), ("v6", false, "ip6")] {
        let own = elements(&desired.own_pod_cidrs, v4);
        if !own.is_empty() {
            out.push_str(&format!(
                "\t\t{ip} saddr {{ {} }} {ip} daddr != @mesh_{family} oifname != \"{iface}\" masquerade\n",
                own.join(", ")
            ));
        }
    }
    out.push_str("\t}\n");
    // A probe (see crate::relay) goes to the network address of a peer's
    // pod range, which no pod has: the peer decrypts it and would route it
    // on by its default route, onto the underlay in plaintext. It ends here.
    out.push_str(
        "\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n",
    );
    for (v4, ip) in [(true, "ip"), (false, "ip6")] {
        let probed: Vec<String> = desired
            .own_pod_cidrs
            .iter()
            .filter(|c| c.addr().is_ipv4() == v4 && c.prefix_len() < c.max_prefix_len())
            .map(|c| c.network().to_string())
            .collect();
        if !probed.is_empty() {
            out.push_str(&format!(
                "\t\tiifname \"{iface}\" {ip} daddr {{ {} }} drop\n",
                probed.join(", ")
            ));
        }
    }
    out.push_str("\t}\n}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired(own: &[&str], mesh: &[&str]) -> Desired {
        Desired {
            interface: "trellis".into(),
            own_pod_cidrs: own.iter().map(|s| s.parse().unwrap()).collect(),
            mesh_cidrs: mesh.iter().map(|s| s.parse().unwrap()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn probes_to_this_node_end_here_instead_of_leaving_by_the_default_route() {
        let d = desired(
            &["10.244.1.0/24", "fd00:1::/64"],
            &["10.244.0.0/24", "10.244.1.0/24", "fd00:1::/64"],
        );
        let rules = masquerade_ruleset(&d, "trellis");
        assert!(
            rules.contains("type filter hook forward priority filter; policy accept;"),
            "{rules}"
        );
        assert!(
            rules.contains("iifname \"trellis\" ip daddr { 10.244.1.0 } drop"),
            "{rules}"
        );
        assert!(
            rules.contains("iifname \"trellis\" ip6 daddr { fd00:1:: } drop"),
            "{rules}"
        );
    }

    #[test]
    fn pods_masquerade_only_outside_the_mesh() {
        let d = desired(
            &["10.244.1.0/24", "fd00:1::/64"],
            &["10.244.0.0/24", "10.244.1.0/24", "fd00:1::/64"],
        );
        let rules = masquerade_ruleset(&d, "trellis");
        assert!(
            rules.starts_with("table inet trellis\ndelete table inet trellis\n"),
            "{rules}"
        );
        assert!(
            rules.contains("elements = { 10.244.0.0/24, 10.244.1.0/24 }"),
            "{rules}"
        );
        assert!(
            rules.contains(
                "ip saddr { 10.244.1.0/24 } ip daddr != @mesh_v4 oifname != \"trellis\" masquerade"
            ),
            "{rules}"
        );
        assert!(
            rules.contains("ip6 saddr { fd00:1::/64 } ip6 daddr != @mesh_v6"),
            "{rules}"
        );
    }

    #[test]
    fn a_family_without_cidrs_has_no_rule_and_no_empty_elements() {
        let rules = masquerade_ruleset(&desired(&["10.244.1.0/24"], &["10.244.1.0/24"]), "trellis");
        assert!(!rules.contains("ip6 saddr"), "{rules}");
        assert!(!rules.contains("elements = {  }"), "{rules}");
    }
}
