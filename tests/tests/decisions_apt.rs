//! The signed apt repository of exactly what shipped: stock `apt-get` in a container of the build
//! image, configured verbatim with `lockstep apt-source`'s line and key, installs a shipped package
//! and runs it; a held package and a package held after it shipped cannot be installed.

mod decisions_support;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use decisions_support::*;

const IMAGE: &str = "lockstep-build:bookworm";

fn packages_index(fx: &Fixture, arch: &str) -> String {
    // The repository is regenerated off the attestation path; bring it up to date as a request
    // to /apt/ would.
    fx.service.refresh_apt().expect("regenerates");
    std::fs::read_to_string(
        fx.service
            .aptrepo
            .dists_file(&format!("lockstep/main/binary-{arch}/Packages"))
            .expect("the index exists"),
    )
    .expect("read index")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_apt_installs_a_shipped_package_and_cannot_install_held_ones() {
    let b1 = Builder::new("b1");
    let b2 = Builder::new("b2");
    let b3 = Builder::new("b3");
    let fx = Fixture::start("apt", &[&b1, &b2, &b3], 2).await;
    let work = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");

    // Shipped: two builders agree.
    let hello = fx.enqueue("lockstep-hello", "1.0").await;
    let deb = build_deb(work.path(), "lockstep-hello", "1.0", "hello from lockstep");
    for b in [&b1, &b2] {
        fx.attest(b, &hello, &[("lockstep-hello_1.0_all.deb", &deb)])
            .await;
    }
    // Held from the start: two builders disagree.
    let held = fx.enqueue("lockstep-held", "1.0").await;
    let h1 = build_deb(work.path(), "lockstep-held", "1.0", "one");
    let h2 = build_deb(work.path(), "lockstep-held", "1.0", "two");
    fx.attest(&b1, &held, &[("lockstep-held_1.0_all.deb", &h1)])
        .await;
    fx.attest(&b2, &held, &[("lockstep-held_1.0_all.deb", &h2)])
        .await;
    // Shipped, then held when a third builder disagrees.
    let gone = fx.enqueue("lockstep-gone", "1.0").await;
    let g = build_deb(work.path(), "lockstep-gone", "1.0", "gone");
    let g3 = build_deb(work.path(), "lockstep-gone", "1.0", "gone, differently");
    for b in [&b1, &b2] {
        fx.attest(b, &gone, &[("lockstep-gone_1.0_all.deb", &g)])
            .await;
    }
    let arch = hello.arch.clone();
    let before = packages_index(&fx, &arch);
    assert!(before.contains("Package: lockstep-gone"), "{before}");
    let (s, v) = fx
        .attest(&b3, &gone, &[("lockstep-gone_1.0_all.deb", &g3)])
        .await;
    assert_eq!(v["state"], "hold", "{s} {v}");

    let index = packages_index(&fx, &arch);
    assert!(index.contains("Package: lockstep-hello"), "{index}");
    assert!(index.contains("Filename: pool/main/l/lockstep-hello/lockstep-hello_1.0_all.deb"));
    assert!(
        !index.contains("lockstep-held"),
        "held packages are absent: {index}"
    );
    assert!(
        !index.contains("lockstep-gone"),
        "a later hold removes the package: {index}"
    );
    let pool = fx
        .http
        .get(format!(
            "{}/apt/pool/main/l/lockstep-gone/lockstep-gone_1.0_all.deb",
            fx.url
        ))
        .send()
        .await
        .expect("GET pool");
    assert_eq!(pool.status().as_u16(), 404);
    let (s, _) = fx.get_json("/api/v1/status?source=lockstep-gone").await;
    assert_eq!(s, 200);
    assert!(
        fx.service
            .archive
            .blob_path(&lockstep_proto::digest::Sha256Digest::of(&g))
            .is_some(),
        "the archive keeps everything"
    );

    // The sources line and key, used verbatim by stock apt in the build image.
    let keyring = work.path().join("lockstep.gpg");
    let out = Command::new(lockstep_tests::lockstep_bin("lockstep"))
        .args(["--coordinator", &fx.url, "apt-source", "--keyring"])
        .arg(&keyring)
        .output()
        .expect("lockstep apt-source");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_string();
    assert_eq!(
        line,
        format!(
            "deb [signed-by={}] {}/apt lockstep main",
            keyring.display(),
            fx.url
        )
    );
    std::fs::write(work.path().join("lockstep.list"), format!("{line}\n")).expect("list");
    let w = work.path().display().to_string();
    // Only our source: the container reaches nothing but the coordinator on loopback.
    let apt = format!(
        "-o Dir::Etc::SourceList={w}/lockstep.list -o Dir::Etc::SourceParts=/nonexistent \
         -o APT::Get::List-Cleanup=0"
    );
    let script = format!(
        "set -e; apt-get {apt} update; apt-get {apt} install -y lockstep-hello; \
         lockstep-hello; \
         if apt-get {apt} install -y lockstep-held; then echo HELD-INSTALLED; fi; \
         if apt-get {apt} install -y lockstep-gone; then echo GONE-INSTALLED; fi"
    );
    let started = std::time::Instant::now();
    let out = Command::new("docker")
        .args(["run", "--rm", "--network", "host", "--user", "0", "-v"])
        .arg(format!("{w}:{w}:ro"))
        .args([IMAGE, "sh", "-c", &script])
        .output()
        .expect("docker runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "apt-get in the container took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        out.status.success(),
        "apt in {IMAGE} failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("hello from lockstep"),
        "the installed program ran: {stdout}"
    );
    assert!(!stdout.contains("HELD-INSTALLED"), "{stdout}");
    assert!(!stdout.contains("GONE-INSTALLED"), "{stdout}");
    assert!(
        stderr.contains("Unable to locate package lockstep-held"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("NO_PUBKEY") && !stderr.contains("not signed"),
        "{stderr}"
    );
    fx.stop().await;
}
