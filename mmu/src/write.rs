//! The entry write primitive: how one page-table entry is stored (plain, keeping the
//! A/D bits a hardware walker set meanwhile, or only if it still holds an expected
//! value), shared by `mmu_update`, `update_va_mapping` and writable page tables.

use crate::entry::{Mfn, Pte};
use crate::table::PteBatch;

/// How a PTE write is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Store {
    /// A plain 8-byte store.
    Plain,
    /// Keep the A/D bits present at the moment of the store (PRESERVE_AD).
    PreserveAd,
    /// Store only if the entry still holds this value (ptwr CMPXCHG).
    IfEqual(u64),
}

/// One entry write: entry `idx` of table `table` becomes `new`, stored as `how`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EntryWrite {
    pub table: Mfn,
    pub idx: usize,
    pub new: u64,
    pub how: Store,
}

/// Result of a store that may be conditional.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stored {
    Done,
    /// `Store::IfEqual` found this value instead: nothing changed.
    Mismatch(u64),
}

pub(crate) fn store(batch: &mut PteBatch<'_>, i: usize, val: u64, how: Store) -> Stored {
    match how {
        Store::Plain => {
            batch.set(i, Pte(val));
            Stored::Done
        }
        Store::PreserveAd => {
            batch.set_preserving_ad(i, Pte(val));
            Stored::Done
        }
        Store::IfEqual(old) => match batch.compare_exchange(i, Pte(old), Pte(val)) {
            Ok(_) => Stored::Done,
            Err(seen) => Stored::Mismatch(seen.raw()),
        },
    }
}
