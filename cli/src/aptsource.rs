//! `lockstep apt-source --keyring FILE`: writes the coordinator's public key in binary form (the
//! `.gpg` keyring apt's `signed-by` expects) and prints the one-line sources entry for the
//! repository of shipped packages.

use std::path::Path;

use anyhow::Context;
use lockstep_proto::signing::Keyring;

use crate::http::Api;

pub async fn run(api: &Api, keyring: &Path) -> anyhow::Result<()> {
    let bytes = api
        .get_bytes("/api/v1/keys/coordinator?format=binary")
        .await?;
    // Refuse to write something that is not a certificate.
    Keyring::parse_certs(&bytes).context("the coordinator sent no OpenPGP certificate")?;
    let abs = if keyring.is_absolute() {
        keyring.to_path_buf()
    } else {
        std::env::current_dir()
            .context("finding the current directory")?
            .join(keyring)
    };
    if let Some(dir) = abs.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&abs, &bytes).with_context(|| format!("writing {}", abs.display()))?;
    // Suite and component as the coordinator's aptrepo module publishes them.
    println!(
        "deb [signed-by={}] {}/apt lockstep main",
        abs.display(),
        api.base()
    );
    Ok(())
}
