//! A figure of the report: a PNG and an SVG in memory, with its title and caption. The page embeds
//! the PNG; both files are written beside it.

use std::path::{Path, PathBuf};

use anyhow::Result;
use scalelong_schema::write_atomic;

use crate::plot::Rendered;

pub struct Figure {
    /// File name inside the report's `figures/` folder.
    pub file_name: String,
    pub title: String,
    pub caption: String,
    /// The figure as PNG (embedded in the page) and SVG (linked beside it).
    pub image: Rendered,
}

impl Figure {
    /// The SVG's file name beside the PNG's in `figures/`.
    pub fn svg_file_name(&self) -> String {
        Path::new(&self.file_name).with_extension("svg").to_string_lossy().into_owned()
    }

    /// Writes the PNG and the SVG into `figures_dir`; returns the PNG's path.
    pub fn write(&self, figures_dir: &Path) -> Result<PathBuf> {
        let path = figures_dir.join(&self.file_name);
        write_atomic(&path, &self.image.png)?;
        write_atomic(&figures_dir.join(self.svg_file_name()), self.image.svg.as_bytes())?;
        Ok(path)
    }
}
