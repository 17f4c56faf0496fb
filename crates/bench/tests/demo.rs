//! The README's main job, `veto-bench demo --once`, as a user runs it: a
//! local cluster and edges; the token verifies VALID at every edge, then
//! REVOKED after its revoke, with the propagation measured. (The demo
//! itself fails if any edge answers otherwise.)

#[test]
fn the_demo_runs_its_walkthrough() -> anyhow::Result<()> {
    let bin = env!("CARGO_BIN_EXE_veto-bench");
    let out = std::process::Command::new(bin)
        .args(["demo", "--once", "--samples", "20"])
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert_eq!(stdout.matches("OUTCOME_VALID").count(), 3, "{stdout}");
    assert!(stdout.matches("OUTCOME_REVOKED").count() >= 3, "{stdout}");
    assert!(stdout.contains("every live edge acknowledged"), "{stdout}");
    Ok(())
}
