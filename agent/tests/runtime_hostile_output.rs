//! T22 (outputs): a build that leaves a symlink named like a package pointing at a host secret
//! is refused with `BadOutput`, and the agent does not read through it.

mod common;

use lockstep_agent::runtime::RuntimeError;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlinked_deb_pointing_at_etc_shadow_is_refused() {
    let root = tempfile::tempdir().expect("tempdir");
    let pkg = common::synthetic_package(
        root.path(),
        "lockstep-hostile",
        &[],
        &["ln -s /etc/shadow ../evil.deb"],
    );
    let (rt, image) = common::runtime(common::test_config()).await;
    let work = tempfile::tempdir().expect("tempdir");
    let req = common::request(
        "hostile-1",
        &pkg.name,
        &pkg.version,
        &pkg.dsc_name,
        &pkg.source_dir,
        work.path(),
        &image,
    );
    match rt.build(&req, CancellationToken::new()).await {
        Err(RuntimeError::BadOutput(why)) => {
            assert!(why.contains("evil.deb"), "{why}");
            assert!(why.contains("symbolic link"), "{why}");
        }
        other => panic!("expected BadOutput, got {other:?}"),
    }
    let evil = work.path().join("build/reproducible-path/evil.deb");
    let meta = std::fs::symlink_metadata(&evil).expect("the symlink is still there");
    assert!(
        meta.file_type().is_symlink(),
        "left as the build made it, not followed"
    );
    assert!(rt.live_containers().is_empty(), "containers removed");
}
