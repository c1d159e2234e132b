//! `meterflow inspect`: schema, files, counts and first rows of an output.

use std::path::Path as FsPath;

use arrow::util::pretty::pretty_format_batches;

use super::CommandError;
use crate::cli::InspectArgs;
use crate::inspect::Inspection;
use crate::sink::store;

/// A location plus, for a single local file, that file.
pub(crate) fn inspect_target(
    args: &InspectArgs,
) -> Result<(store::Location, Option<object_store::path::Path>), CommandError> {
    let path = FsPath::new(&args.location);
    if !args.location.contains("://") && path.is_file() {
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(FsPath::new("."));
        let location = store::open(&parent.to_string_lossy(), &args.s3.options())?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let only = location.child(&name);
        return Ok((location, Some(only)));
    }
    Ok((store::open(&args.location, &args.s3.options())?, None))
}

/// The text `inspect` prints.
pub fn render_inspection(inspection: &Inspection) -> Result<String, CommandError> {
    let mut text = String::new();
    text.push_str("Parquet schema:\n");
    text.push_str(&inspection.parquet_schema);
    text.push_str(&format!("\nFiles ({}):\n", inspection.files.len()));
    for file in &inspection.files {
        text.push_str(&format!(
            "  {:<56} {:>10} rows {:>12} bytes\n",
            file.path, file.rows, file.bytes
        ));
    }
    text.push_str(&format!(
        "Total rows: {}\nDead letters: {}\nFirst rows:\n{}\n",
        inspection.total_rows,
        inspection.dead_letters,
        pretty_format_batches(&inspection.first_rows).map_err(CommandError::Format)?
    ));
    Ok(text)
}
