//! Tools from package registries that the tests run against the platform,
//! as users' own tools would meet it: installed by `scripts/test` under
//! `.local/` (`ORDERS_LOCAL_DIR`) from the pins in `tests/tools/`, and run
//! with the scripts kept there.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Where `scripts/test` keeps what it installs.
pub fn local_dir() -> PathBuf {
    std::env::var_os("ORDERS_LOCAL_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../.local"),
        PathBuf::from,
    )
}

/// A program of the Python tools' virtual environment.
pub fn python_bin(name: &str) -> PathBuf {
    local_dir().join("python/bin").join(name)
}

/// The scripts in `tests/tools/`.
fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tools")
        .join(name)
}

/// Runs `tests/tools/<name>` with Node.js and the npm tools, `input` on its
/// standard input; panics with its output unless it succeeds.
pub fn node(name: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
    let modules = local_dir().join("node/node_modules");
    assert!(
        modules.exists(),
        "{} is missing: scripts/test installs the npm test tools there",
        modules.display()
    );
    let mut command = Command::new("node");
    command
        .arg(script(name))
        .args(args)
        .env("NODE_PATH", modules);
    succeed(command, input)
}

/// Runs `tests/tools/<name>` with the Python tools' interpreter, `input` on
/// its standard input; panics with its output unless it succeeds.
pub fn python(name: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
    let interpreter = python_bin("python");
    assert!(
        interpreter.exists(),
        "{} is missing: scripts/test installs the Python test tools there",
        interpreter.display()
    );
    let mut command = Command::new(interpreter);
    command.arg(script(name)).args(args);
    succeed(command, input)
}

fn succeed(mut command: Command, input: &[u8]) -> Vec<u8> {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"));
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let output: Output = child.wait_with_output().expect("the tool ran");
    let _ = writer.join();
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}
