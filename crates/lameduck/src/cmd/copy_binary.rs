//! `lameduck copy-binary`: copies this executable into a directory, so that an init container
//! can bring the gate into an engine's image through a shared `emptyDir` (`inject --mode
//! wrapper`).

use std::path::PathBuf;

use anyhow::Context;

/// `lameduck copy-binary DIR`.
#[derive(Debug, clap::Args)]
pub struct CopyBinaryArgs {
    /// Directory to copy `lameduck` into (created if missing).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
}

/// Copies the running executable to `DIR/lameduck`, executable by everyone.
pub fn run(args: CopyBinaryArgs) -> anyhow::Result<i32> {
    let me = std::env::current_exe().context("cannot find this executable's path")?;
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("{}: cannot create the directory", args.dir.display()))?;
    let to = args.dir.join("lameduck");
    // Copy to a temporary name and rename, so an engine never sees half a binary.
    let tmp = args.dir.join(".lameduck.tmp");
    std::fs::copy(&me, &tmp)
        .with_context(|| format!("cannot copy {} to {}", me.display(), tmp.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("{}: cannot make it executable", tmp.display()))?;
    }
    std::fs::rename(&tmp, &to)
        .with_context(|| format!("cannot move {} to {}", tmp.display(), to.display()))?;
    println!("{}", to.display());
    Ok(0)
}
