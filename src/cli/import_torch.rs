//! `pmad import-torch SRC DST`: convert a PyTorch checkpoint (zip or legacy format) to
//! safetensors, with no Python involved.

use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ImportTorchArgs {
    /// The `.pth` / `.pt` checkpoint.
    pub src: PathBuf,
    /// The `.safetensors` file to write (atomically).
    pub dst: PathBuf,
}

pub fn run(args: ImportTorchArgs) -> pmad::Result<()> {
    let n = pmad::weights::convert_torch_to_safetensors(&args.src, &args.dst)?;
    say!("{}: {n} tensors", args.dst.display());
    Ok(())
}
