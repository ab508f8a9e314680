//! The lease documents cross processes as JSON, and the operator grants a pod
//! more only when the `basis` the pod echoes equals the grant it holds, compared
//! exactly. A float must therefore read back from JSON as exactly the float
//! written (serde_json's `float_roundtrip`): without it about one sum in seven
//! came back one unit in the last place off, the pod's requests were never
//! answered again, and its budget stalled with money left (issue 13).
use policybind_crds::lease::{Demand, Ledger};

#[test]
fn grants_and_bases_read_back_from_json_exactly() {
    let mut grant = 0.0_f64;
    for i in 0..20_000 {
        // Slices as replicas ask for them: sums of estimates, never round.
        grant += 0.000_107 * (1 + i % 7) as f64 + if i % 10 == 0 { 0.000_19 } else { 0.0 };
        let ledger: Ledger = serde_json::from_value(serde_json::json!({
            "keys": {"ns/t|Day|2026-12-01T00:00:00Z|usd":
                {"limit": 1.0, "remaining": 1.0 - grant, "grants": {"pod": grant}}}
        }))
        .unwrap();
        let read: Ledger = serde_json::from_str(&serde_json::to_string(&ledger).unwrap()).unwrap();
        let held = read.granted("ns/t|Day|2026-12-01T00:00:00Z|usd", "pod");
        assert_eq!(held, grant, "grant {grant} read back as {held}");
        let demand = Demand {
            basis: held,
            ..Demand::default()
        };
        let echoed: Demand =
            serde_json::from_str(&serde_json::to_string(&demand).unwrap()).unwrap();
        assert_eq!(
            echoed.basis, grant,
            "basis {grant} read back as {}",
            echoed.basis
        );
    }
}
