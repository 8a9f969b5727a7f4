//! A running site applies changes to its folder without disturbing what did not change:
//! adding or deleting one link leaves the other links up and untouched.

use std::time::Duration;

use skiff_site_controller::site::delete_link;
use skiff_site_controller::token::reload_if_running;
use skiff_tests::{TestSite, is_up, link, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_and_deleting_links_leaves_other_links_untouched() {
    let west = TestSite::start("west", true).await;
    let south = TestSite::start("south", true).await;
    let mut east = TestSite::start("east", false).await;

    link(&east, &west, "to-west").await;
    wait_for(Duration::from_secs(5), "to-west up", || {
        is_up(&east.links(), "to-west")
    })
    .await;
    let before = east
        .links()
        .into_iter()
        .find(|l| l.name == "to-west")
        .unwrap();

    // A second link: the first keeps its connection (same `since`, still up).
    link(&east, &south, "to-south").await;
    wait_for(Duration::from_secs(5), "to-south up", || {
        is_up(&east.links(), "to-south")
    })
    .await;
    let after = east
        .links()
        .into_iter()
        .find(|l| l.name == "to-west")
        .unwrap();
    assert!(is_up(&east.links(), "to-west"));
    assert_eq!(
        after.since, before.since,
        "to-west was reconnected by the reload"
    );

    // Deleting one link closes it (at both ends) and leaves the other alone.
    delete_link(&east.folder, "to-south").unwrap();
    assert!(reload_if_running(&east.folder).await.unwrap());
    wait_for(Duration::from_secs(5), "to-south gone at east", || {
        !east.links().iter().any(|l| l.name == "to-south")
    })
    .await;
    wait_for(
        Duration::from_secs(10),
        "the inbound link gone at south",
        || south.links().is_empty(),
    )
    .await;
    let last = east
        .links()
        .into_iter()
        .find(|l| l.name == "to-west")
        .unwrap();
    assert!(is_up(&east.links(), "to-west"));
    assert_eq!(
        last.since, before.since,
        "to-west was disturbed by the delete"
    );

    east.stop().await;
}
