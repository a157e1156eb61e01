//! "Samples": each run's newest sample grid, strategies side by side per model, embedded in the page
//! and copied beside it as `samples/<run id>.png`.

use anyhow::{Context, Result};

use super::{ReportContext, Section};
use crate::page::{Page, TableCell, data_uri, escape};

/// A run's newest sample grid, copied beside the page.
pub struct SampleImage {
    run_id: String,
    model: String,
    strategy_label: String,
    seed: u64,
    step: u64,
    /// Path of the copy relative to the report folder.
    pub relative_path: String,
    pub png: Vec<u8>,
}

pub struct Samples<'a> {
    ctx: &'a ReportContext<'a>,
    samples: Vec<SampleImage>,
}

impl<'a> Samples<'a> {
    pub fn build(ctx: &'a ReportContext<'a>) -> Result<Self> {
        let mut samples = Vec::new();
        for run in &ctx.sweep.runs {
            let Some((step, source)) = &run.newest_sample else {
                continue;
            };
            let png = std::fs::read(source).with_context(|| format!("{}: cannot read", source.display()))?;
            samples.push(SampleImage {
                run_id: run.id.clone(),
                model: run.model.clone(),
                strategy_label: run.strategy_label.clone(),
                seed: run.seed,
                step: *step,
                relative_path: format!("samples/{}.png", run.id),
                png,
            });
        }
        Ok(Self { ctx, samples })
    }
}

impl Section for Samples<'_> {
    fn samples(&self) -> &[SampleImage] {
        &self.samples
    }

    fn render(&self, page: &mut Page) {
        page.push("<h2>Samples</h2>\n");
        if self.samples.is_empty() {
            page.note("Sample grids were");
            return;
        }
        page.push("<p>The newest sample grid of every run (EMA weights, fixed noise), strategies side by side.</p>\n");
        for model in self.ctx.models {
            let columns: Vec<&str> = self
                .ctx
                .strategies
                .iter()
                .map(|(_, label)| label.as_str())
                .filter(|label| {
                    self.samples.iter().any(|sample| sample.model == *model && sample.strategy_label == *label)
                })
                .collect();
            if columns.is_empty() {
                continue;
            }
            let cells: Vec<TableCell> = columns
                .iter()
                .map(|label| {
                    let images: String = self
                        .samples
                        .iter()
                        .filter(|sample| sample.model == *model && sample.strategy_label == *label)
                        .map(|sample| {
                            format!(
                                "<figure><img src=\"{}\" alt=\"samples of {}\"><figcaption>{} (seed {}, step {}) \
                                 <a href=\"{}\">file</a></figcaption></figure>",
                                data_uri(&sample.png),
                                escape(&sample.run_id),
                                escape(&sample.run_id),
                                sample.seed,
                                sample.step,
                                escape(&sample.relative_path)
                            )
                        })
                        .collect();
                    TableCell::Html(images)
                })
                .collect();
            let headers: Vec<String> = columns.iter().map(|label| page.strategy(label)).collect();
            page.push(&format!("<h3>{}</h3>\n<table class=\"samples\"><tr>", escape(model)));
            for header in headers {
                page.push(&format!("<th>{header}</th>"));
            }
            page.push("</tr>\n<tr>");
            for cell in &cells {
                page.push(&cell.html());
            }
            page.push("</tr></table>\n");
        }
    }
}
