//! The kernel object's programs and maps, as [`Probes`](super::Probes) holds them: fresh from
//! aya's loader (parsed, relocated, verified now), or opened from their pins in bpffs (verified
//! by an earlier load; see [`pins`](super::pins)).

use std::collections::BTreeMap;

use aya::{Ebpf, maps::Map, programs::Program};

pub enum Object {
    /// Loaded by this process.
    Fresh(Ebpf),
    /// Opened from pins: the programs and maps by their names in the object.
    Pinned {
        programs: BTreeMap<String, Program>,
        maps: BTreeMap<String, Map>,
    },
}

impl Object {
    pub fn program_mut(&mut self, name: &str) -> Option<&mut Program> {
        match self {
            Object::Fresh(ebpf) => ebpf.program_mut(name),
            Object::Pinned { programs, .. } => programs.get_mut(name),
        }
    }

    pub fn programs(&self) -> Box<dyn Iterator<Item = (&str, &Program)> + '_> {
        match self {
            Object::Fresh(ebpf) => Box::new(ebpf.programs()),
            Object::Pinned { programs, .. } => {
                Box::new(programs.iter().map(|(name, p)| (name.as_str(), p)))
            }
        }
    }

    /// Takes map `name` out, for user space's handle on it.
    pub fn take_map(&mut self, name: &str) -> Option<Map> {
        match self {
            Object::Fresh(ebpf) => ebpf.take_map(name),
            Object::Pinned { maps, .. } => maps.remove(name),
        }
    }
}
