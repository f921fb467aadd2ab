//! The README's first command, `broker demo`, run in-process: it must
//! succeed end to end on every build.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_end_to_end() {
    integration_tests::init_crypto();
    broker::demo::run().await.expect("the demo succeeds");
}
