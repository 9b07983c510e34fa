//! A domain's grant mappings by handle (Xen's maptrack): what [`crate::grant`] records
//! for each mapping, kept with the domain.

use crate::entry::Mfn;

/// Largest number of grant mappings a domain holds at once (Xen's default
/// `max_maptrack_frames`, 1024 frames of 512 records).
pub const MAPTRACK_LIMIT: u32 = 1024 * 512;

/// One grant mapping (Xen's maptrack record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantMapping {
    /// The granting domain.
    pub granter: u16,
    /// The grant reference in its table.
    pub gref: u32,
    /// `GNTMAP_*` of the halves still mapped (device and/or host) and the map's other
    /// flags.
    pub flags: u32,
    /// The granted frame.
    pub mfn: Mfn,
}

/// A domain's grant mappings, by handle.
#[derive(Debug, Clone, Default)]
pub(crate) struct Maptrack {
    slots: Vec<Option<GrantMapping>>,
    free: Vec<u32>,
}

impl Maptrack {
    pub(crate) fn full(&self) -> bool {
        self.free.is_empty() && self.slots.len() >= MAPTRACK_LIMIT as usize
    }

    pub(crate) fn insert(&mut self, m: GrantMapping) -> Option<u32> {
        if let Some(h) = self.free.pop() {
            self.slots[h as usize] = Some(m);
            return Some(h);
        }
        if self.full() {
            return None;
        }
        self.slots.push(Some(m));
        Some(self.slots.len() as u32 - 1)
    }

    pub(crate) fn get(&self, h: u32) -> Option<&GrantMapping> {
        self.slots.get(h as usize).and_then(Option::as_ref)
    }

    pub(crate) fn get_mut(&mut self, h: u32) -> Option<&mut GrantMapping> {
        self.slots.get_mut(h as usize).and_then(Option::as_mut)
    }

    pub(crate) fn remove(&mut self, h: u32) {
        if let Some(s) = self.slots.get_mut(h as usize)
            && s.take().is_some()
        {
            self.free.push(h);
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &GrantMapping)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(h, m)| m.as_ref().map(|m| (h as u32, m)))
    }

    pub(crate) fn take_all(&mut self) -> Vec<GrantMapping> {
        self.free.clear();
        std::mem::take(&mut self.slots)
            .into_iter()
            .flatten()
            .collect()
    }
}
