//! A bounded fuzzing run of every parser: no input may make one panic.

use std::time::Duration;

#[test]
fn no_parser_panics_on_mutated_input() {
    for target in snapbpf_fuzz::targets() {
        let seeds = (target.seeds)();
        assert!(
            seeds.iter().all(|s| (target.run)(s)),
            "{}: every seed is a valid input",
            target.name
        );
        let out = snapbpf_fuzz::fuzz(&target, 20_000, Duration::from_secs(8), 0xC0FFEE);
        assert_eq!(
            out.crashes, 0,
            "{}: {} of {} inputs crashed the parser; first: {:?}",
            target.name, out.crashes, out.inputs, out.first_crash
        );
        assert!(
            out.inputs > 100,
            "{}: only {} inputs",
            target.name,
            out.inputs
        );
        assert!(
            out.accepted > 0 && out.accepted < out.inputs,
            "{}: the mutations reach both outcomes ({} of {} accepted)",
            target.name,
            out.accepted,
            out.inputs
        );
    }
}
