//! Smoke test: the builder fixture produces a validated, pinned, installed tree.
mod support;
use support::*;

#[test]
fn builder_state_is_valid() {
    let g = guest();
    let p = g.info(g.l4);
    assert!(p.pinned && p.validated);
    assert_eq!(p.type_count, 2, "pin + kernel root");
    // Validation rewrote the L1 entries: kernel mappings get US and bit 52.
    let e = g.read(g.pte_addr(va_of(0x300)));
    assert_eq!(e, (0x300 << 12) | P | A | RW | US | GK);
    // Reserved slots filled from the template.
    assert_eq!(g.read(g.l4.addr() + 256 * 8), M2P_SLOT);
}
