//! Writes a `vmm_hypercall` fuzzer input (a finding, a corpus entry) as a pvmmu trace
//! that `pvmmu replay` can replay:
//! `cargo run -p pvmmu-fuzzing --example fuzz_to_trace -- INPUT OUT.trc`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(input), Some(out)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: fuzz_to_trace INPUT OUT.trc");
        return ExitCode::from(2);
    };
    let data = match std::fs::read(input) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{input}: {e}");
            return ExitCode::from(1);
        }
    };
    let Some((header, records)) = pvmmu_fuzzing::vmm_calls::to_trace(&data) else {
        eprintln!("{input}: does not decode to a vmm_hypercall input");
        return ExitCode::from(1);
    };
    let written = platform::trace::TraceWriter::create(std::path::Path::new(out), &header)
        .and_then(|mut w| {
            for r in &records {
                w.record(r)?;
            }
            w.finish()
        });
    match written {
        Ok(()) => {
            println!("{out}: {} records", records.len());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{out}: {e}");
            ExitCode::from(1)
        }
    }
}
