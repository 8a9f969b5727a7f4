//! `skiff demo`, the README's first command: two sites on this machine, linked with a token, a
//! service reached across them, and the flow record the listener's site kept of it.

use std::process::Command;
use std::time::Instant;

#[test]
fn the_demo_links_two_sites_serves_across_them_and_shows_the_flow_record() {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .arg("demo")
        .output()
        .expect("run skiff demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "skiff demo failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for want in [
        "is up on both sides over",
        "got back in",
        "\"hello from west, you said: ping from east\"",
        "9. east recorded it",
        "key greeting to west, outcome ok, 15 bytes sent, 41 back",
        "done: two sites, one token",
    ] {
        assert!(stdout.contains(want), "no {want:?} in:\n{stdout}\n{stderr}");
    }
    // Its temporary folder is gone.
    let folder = stdout
        .lines()
        .find_map(|l| l.split(" in ").nth(1))
        .expect("the demo names its folder");
    assert!(
        !std::path::Path::new(folder.trim()).exists(),
        "the demo left {folder} behind"
    );
    eprintln!("skiff demo took {:?}", started.elapsed());
}
