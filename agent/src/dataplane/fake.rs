//! A recording dataplane for unit tests: an in-memory node (compiled for
//! tests only).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::SystemTime;

use trellis_mesh::{Observed, Plan};

use super::{Dataplane, DataplaneError, Observation};
use crate::wg::DeviceState;

/// An in-memory node that records what it was asked to do.
#[derive(Debug, Default)]
pub struct FakeDataplane {
    pub observed: Observed,
    /// What the device reports besides (handshakes, counters).
    pub device: DeviceState,
    pub applied: Vec<Plan>,
    /// How many times it was observed.
    pub observations: usize,
    /// The addresses of each `probe` call.
    pub probed: Vec<Vec<IpAddr>>,
    /// The targets of the last `echo` call.
    pub echo_targets: Vec<IpAddr>,
    /// When each echo target last answered, as observed.
    pub echo_answers: BTreeMap<IpAddr, SystemTime>,
    /// Makes the next observe fail with this message (the device is gone).
    pub fail_observe: Option<String>,
    /// Makes every observe fail with this message until cleared.
    pub broken: Option<String>,
    /// The interface is taken down (or deleted) behind the agent's back:
    /// it stays down whatever a plan says.
    pub interface_gone: bool,
    /// The underlay's MTU.
    pub underlay_mtu: Option<u32>,
}

impl Dataplane for FakeDataplane {
    async fn observe(&mut self) -> Result<Observation, DataplaneError> {
        self.observations += 1;
        if let Some(msg) = self.fail_observe.take().or_else(|| self.broken.clone()) {
            return Err(DataplaneError::Other(msg));
        }
        Ok(Observation {
            observed: self.observed.clone(),
            device: self.device.clone(),
            echo_answers: self.echo_answers.clone(),
        })
    }

    async fn apply(&mut self, plan: &Plan) -> Result<(), DataplaneError> {
        self.observed = plan.applied_to(&self.observed);
        self.applied.push(plan.clone());
        Ok(())
    }

    async fn probe(&mut self, addresses: &[IpAddr]) {
        self.probed.push(addresses.to_vec());
    }

    async fn echo(&mut self, targets: &[IpAddr]) {
        self.echo_targets = targets.to_vec();
    }

    async fn interface_up(&mut self) -> bool {
        self.observed.up && !self.interface_gone
    }

    async fn underlay_mtu(&mut self, _address: IpAddr) -> Option<u32> {
        self.underlay_mtu
    }
}
