//! `snapbpf strategies`: the registry as users and scripts see it.

mod common;
use common::*;

#[test]
fn strategies_lists_the_registry() {
    let v = json(&["strategies"]);
    let list = v["strategies"].as_array().expect("a strategies array");
    let names: Vec<&str> = list.iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(
        names,
        [
            "linux-nora",
            "linux-ra",
            "reap",
            "faasnap",
            "snapbpf",
            "sabre",
            "snapfaas"
        ]
    );
    let of = |name: &str| {
        list.iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("{name} listed"))
            .clone()
    };
    let snapbpf = of("snapbpf");
    assert_eq!(
        snapbpf["options"],
        serde_json::json!(["no-prefetch", "no-pv", "no-premap", "4k", "thp", "store"])
    );
    assert_eq!(snapbpf["record"], true);
    assert_eq!(snapbpf["artifacts"], serde_json::json!(["snapbpf.ws"]));
    assert_eq!(of("linux-ra")["options"], serde_json::json!(["thp"]));
    assert_eq!(of("linux-nora")["record"], false);
    assert_eq!(
        of("reap")["artifacts"],
        serde_json::json!(["reap.ws", "reap.trace"])
    );
    assert_eq!(
        of("sabre")["artifacts"],
        serde_json::json!(["sabre.parts", "sabre.stream"])
    );
    for s in list {
        assert!(
            s["description"].as_str().is_some_and(|d| !d.is_empty()),
            "{s} has a description"
        );
    }
    let text = ok(&["strategies"]);
    assert!(text.contains("snapbpf") && text.contains(":thp"), "{text}");
}

/// Options that contradict each other are refused before anything runs.
#[test]
fn contradicting_page_sizes_are_refused() {
    for spec in ["snapbpf:4k:thp", "snapbpf:thp:4k"] {
        fails(
            &[
                "bench",
                "--strategies",
                spec,
                "--out",
                "/var/tmp/snapbpf-never",
            ],
            "exclude each other",
        );
    }
}
