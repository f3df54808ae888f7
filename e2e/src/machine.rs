//! Machines outside every cluster — what a `Peer` describes: a namespace on
//! the underlay (routed like a node, but no Node object and no agent) whose
//! WireGuard is brought up the way its owner would, with `wg-quick up` and
//! the configuration `kubectl trellis peer add` printed. Without a kernel
//! module wg-quick falls back to wireguard-go by itself; the machine gets a
//! private /var/run/wireguard so its socket stays out of the host's.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use crate::lab::{Lab, LabError};
use crate::netns::Placement;
use crate::state::MachineState;
use crate::{cmd, plan, underlay};

/// The machine's WireGuard interface (wg-quick names it after the file).
pub const MACHINE_INTERFACE: &str = "tw0";

impl Lab {
    /// Adds machine `name` on the underlay, with a default route to the
    /// lab's "internet" like a node.
    pub fn add_machine(&mut self, name: &str) -> Result<MachineState, LabError> {
        plan::validate_node_name(name)?;
        if self.state.machines.iter().any(|m| m.name == name) {
            return Err(LabError::Invalid {
                what: "machine",
                name: name.into(),
                problem: "exists already".into(),
            });
        }
        let index = self.next_underlay_index()?;
        let netns_name = self.names().machine_netns(name);
        let dir = self.state.dir.join("machines").join(name);
        std::fs::create_dir_all(dir.join("run")).map_err(|source| LabError::Io {
            context: format!("creating {}", dir.display()),
            source,
        })?;
        crate::netns::create(&netns_name)?;
        let mut machine = MachineState {
            name: name.into(),
            netns: netns_name.clone(),
            underlay_index: index,
            v4: None,
            v6: None,
            dir,
        };
        self.state.machines.push(machine.clone());
        self.state.save()?;
        let addrs = underlay::attach(
            self.names(),
            &netns_name,
            self.state.slot,
            index,
            self.state.family,
            true,
        )?;
        machine.v4 = addrs.v4;
        machine.v6 = addrs.v6;
        if let Some(m) = self.state.machines.iter_mut().find(|m| m.name == name) {
            *m = machine.clone();
        }
        self.state.save()?;
        Ok(machine)
    }

    pub fn machine(&self, name: &str) -> Result<&MachineState, LabError> {
        self.state
            .machines
            .iter()
            .find(|m| m.name == name)
            .ok_or_else(|| LabError::Invalid {
                what: "machine",
                name: name.into(),
                problem: "is not in this lab".into(),
            })
    }

    fn machine_placement(&self, machine: &MachineState) -> Placement {
        Placement {
            netns: machine.netns.clone(),
            binds: vec![(
                machine.dir.join("run"),
                PathBuf::from(trellis_mesh::names::DEFAULT_WIREGUARD_RUN_DIR),
            )],
            read_only: vec![],
        }
    }

    /// Runs `program args` on the machine; its stdout.
    pub fn machine_exec(
        &self,
        name: &str,
        program: &str,
        args: &[&str],
    ) -> Result<String, LabError> {
        let machine = self.machine(name)?;
        let mut command = self.machine_placement(machine).command(program)?;
        command.args(args);
        Ok(cmd::output_of(
            command,
            format!("{program} {} on machine {name}", args.join(" ")),
        )?)
    }

    /// `wg-quick up` with `config` (the text `peer add` printed).
    pub fn machine_wg_quick_up(&self, name: &str, config: &str) -> Result<(), LabError> {
        let machine = self.machine(name)?;
        let path = machine.dir.join(format!("{MACHINE_INTERFACE}.conf"));
        let io = |source| LabError::Io {
            context: format!("writing {}", path.display()),
            source,
        };
        std::fs::write(&path, config).map_err(io)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        self.machine_exec(
            name,
            "wg-quick",
            &["up", path.to_str().expect("UTF-8 path")],
        )
        .map(drop)
    }
}
