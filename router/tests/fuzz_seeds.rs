//! Replays the committed seeds of the wire fuzz targets (`fuzz/seeds/<target>/`) through the
//! same checks the targets run (`skiff_router::wire::fuzzing`, and
//! `skiff_router::link::proxy::fuzz_answer` for a proxy's answer), so `cargo test` keeps every
//! decoder property on every seed, crashes found by fuzzing included.

use std::fs;
use std::path::Path;

use bytes::BytesMut;
use skiff_router::wire::{ControlFrame, FlowHeader, FlowStatusFrame, fuzzing};

/// Replays `fuzz/seeds/<target>/` through `check` ([`skiff_certs::fuzzing::replay_seeds`]).
fn replay(target: &str, check: fn(&[u8])) {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
    skiff_certs::fuzzing::replay_seeds(&seeds, target, check);
}

#[test]
fn control_frame_seeds_hold() {
    replay("control_frame", fuzzing::control_frame);
}

#[test]
fn hello_seeds_hold() {
    replay("hello", fuzzing::hello);
}

#[test]
fn link_state_seeds_hold() {
    replay("link_state", fuzzing::link_state);
}

#[test]
fn flow_frames_seeds_hold() {
    replay("flow_frames", fuzzing::flow_frames);
}

#[test]
fn proxy_answer_seeds_hold() {
    replay("proxy_answer", skiff_router::link::proxy::fuzz_answer);
}

/// Reads one seed by name.
fn seed(target: &str, name: &str) -> BytesMut {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds")
        .join(target)
        .join(name);
    BytesMut::from(&fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))[..])
}

/// The seeds made from real frames still decode, so a decoder that came to refuse everything
/// could not pass the replay above by refusing the seeds too.
#[test]
fn real_frames_among_the_seeds_decode() {
    let mut stream = seed("control_frame", "stream-hello-keepalive-ack-close");
    let mut frames = Vec::new();
    while let Some(frame) = ControlFrame::decode(&mut stream).unwrap() {
        frames.push(frame);
    }
    assert_eq!(frames.len(), 5, "{frames:?}");
    assert!(matches!(frames[0], ControlFrame::Hello { cost: 5, .. }));
    assert!(matches!(&frames[3], ControlFrame::LinkState(ad) if ad.keys.len() == 1));

    let mut header = seed("flow_frames", "header-http-then-payload");
    let decoded = FlowHeader::decode(&mut header).unwrap().unwrap();
    assert_eq!((decoded.routing_key.as_str(), decoded.hops), ("backend", 3));
    assert!(header.starts_with(b"GET / HTTP/1.1"));
    // Link protocol 1.3: the client's address after the key, the payload untouched.
    let mut header = seed("flow_frames", "header-client-v4-then-payload");
    let decoded = FlowHeader::decode(&mut header).unwrap().unwrap();
    assert_eq!(decoded.client, Some("192.0.2.33:51234".parse().unwrap()));
    assert_eq!(&header[..], b"hello");
    let mut header = seed("flow_frames", "header-client-v6");
    let decoded = FlowHeader::decode(&mut header).unwrap().unwrap();
    assert_eq!(decoded.client, Some("[2001:db8::7]:443".parse().unwrap()));
    let mut status = seed("flow_frames", "status-refused");
    assert!(FlowStatusFrame::decode(&mut status).unwrap().is_some());
}

/// Every target of `fuzz/Cargo.toml` has a seed folder that is not empty (the replay tests of
/// the other crates name theirs; this catches a target added without seeds).
#[test]
fn every_fuzz_target_has_seeds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let manifest = fs::read_to_string(root.join("Cargo.toml")).expect("fuzz/Cargo.toml");
    let targets: Vec<&str> = manifest
        .split("[[bin]]")
        .skip(1)
        .filter_map(|bin| {
            bin.lines()
                .find_map(|l| l.trim().strip_prefix("name = "))
                .map(|n| n.trim_matches('"'))
        })
        .collect();
    assert!(targets.len() >= 7, "fuzz targets found: {targets:?}");
    for target in targets {
        let dir = root.join("seeds").join(target);
        let count = fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
        assert!(
            count > 0,
            "fuzz target {target} has no seeds in {}",
            dir.display()
        );
    }
}

#[test]
fn udp_datagrams_seeds_hold() {
    replay("udp_datagrams", fuzzing::udp_datagrams);
}
