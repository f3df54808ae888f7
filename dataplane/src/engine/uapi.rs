//! The device's answers on the UAPI socket: `get` renders its state,
//! `set` is parsed whole, then applied (nothing changes when a line is
//! wrong). One request at a time.

use std::sync::{Arc, Mutex};

use super::protocol::{parse_set, render_get};
use super::Device;
use crate::uapi::Answer;

/// The device as the UAPI socket sees it.
#[derive(Debug, Clone)]
pub(crate) struct DeviceAnswer {
    device: Arc<Device>,
    serial: Arc<Mutex<()>>,
}

impl DeviceAnswer {
    pub(crate) fn new(device: Arc<Device>) -> Self {
        DeviceAnswer {
            device,
            serial: Arc::default(),
        }
    }
}

impl Answer for DeviceAnswer {
    fn answer(&self, request: &str) -> String {
        let _one = self.serial.lock().expect("serial lock");
        let (first, body) = request.split_once('\n').unwrap_or((request, ""));
        match first {
            "get=1" => render_get(&self.device.view()),
            "set=1" => {
                let applied = parse_set(body)
                    .map_err(super::EngineError::from)
                    .and_then(|set| self.device.configure(set));
                match applied {
                    Ok(()) => "errno=0\n\n".to_string(),
                    Err(e) => {
                        eprintln!("trellis-wg: refused a UAPI set: {e}");
                        format!("errno={}\n\n", e.errno())
                    }
                }
            }
            _ => "errno=22\n\n".to_string(),
        }
    }
}
