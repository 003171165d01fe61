//! The bindings, proven on this machine: the committed Kotlin and Swift sources match
//! what UniFFI generates from the library now, and the Python binding (generated here)
//! connects, sends, receives and reconnects against a real topology.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, ensure};
use petrel_devkit::Topology;
use petrel_tests::TestTopology;

/// The built library, next to this test's binary (`target/debug/deps/`).
fn library() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let debug = exe
        .parent()
        .and_then(Path::parent)
        .context("the test binary's target directory")?;
    // `deps/` first: that is the one built with this test.
    for dir in [debug.join("deps"), debug.to_path_buf()] {
        let lib = dir.join("libpetrel_client_ffi.so");
        if lib.exists() {
            return Ok(lib);
        }
    }
    anyhow::bail!(
        "libpetrel_client_ffi.so not found under {}",
        debug.display()
    )
}

fn generate(language: &str, out: &Path) -> anyhow::Result<()> {
    let status = Command::new(env!("CARGO_BIN_EXE_uniffi-bindgen"))
        .args(["generate", "--library"])
        .arg(library()?)
        .args(["--language", language, "--no-format", "--out-dir"])
        .arg(out)
        .stdout(std::process::Stdio::null())
        .status()?;
    ensure!(status.success(), "uniffi-bindgen {language}: {status}");
    Ok(())
}

#[test]
fn the_committed_kotlin_and_swift_sources_match_the_library() -> anyhow::Result<()> {
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("bindings");
    let fresh = tempfile::tempdir()?;
    for language in ["kotlin", "swift"] {
        generate(language, &fresh.path().join(language))?;
    }
    let diff = Command::new("diff")
        .arg("-r")
        .arg(fresh.path())
        .arg(&committed)
        .output()?;
    ensure!(
        diff.status.success(),
        "client-ffi/bindings is not what the library generates: run scripts/bindings.sh\n{}",
        String::from_utf8_lossy(&diff.stdout)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_binding_connects_sends_receives_and_reconnects() -> anyhow::Result<()> {
    let topo = Topology::start(1).await?;
    let py = tempfile::tempdir()?;
    generate("python", py.path())?;
    std::fs::copy(library()?, py.path().join("libpetrel_client_ffi.so"))?;
    let quic = topo.endpoint(0, petrel_client::TransportKind::Quic);
    let ws = topo.endpoint(0, petrel_client::TransportKind::WebSocket);
    let petrel_client::Trust::CertSha256(hash) = quic.trust else {
        anyhow::bail!("the dev topology pins a certificate hash");
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/smoke.py");
    let out = tokio::process::Command::new("python3")
        .arg(&script)
        .env("PETREL_PY", py.path())
        .env("PETREL_QUIC", &quic.address)
        .env("PETREL_WS", &ws.address)
        .env("PETREL_CERT", hex(&hash))
        .env("ALICE_TOKEN", topo.token("alice"))
        .env("BOB_TOKEN", topo.token("bob"))
        .output()
        .await?;
    println!("{}", String::from_utf8_lossy(&out.stdout));
    ensure!(
        out.status.success(),
        "smoke.py failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
