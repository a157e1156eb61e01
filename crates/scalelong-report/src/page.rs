//! The report page: one self-contained HTML file. Figures and samples are embedded as PNG data URIs
//! (the page needs nothing else to display offline) and also linked as the files beside it. Each
//! section appends its part through a [`Page`]; this module holds what the sections share: the
//! page's head and foot, tables, figures, notes and strategy swatches.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use scalelong_analysis::inference::Interval;

use crate::figures::Figure;
use crate::format_number;
use crate::plot::Palette;
use crate::sections::ReportContext;
use crate::tables::Table;

/// Counts the images that did not decode into `#broken-images` once the page has loaded, so a
/// headless browser's DOM dump shows whether every embedded image is valid.
const IMAGE_CHECK_SCRIPT: &str = r#"<script>
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (image) { return !(image.complete && image.naturalWidth > 0); });
  document.getElementById("image-count").textContent = String(images.length);
  document.getElementById("broken-images").textContent = String(broken.length);
});
</script>"#;

const STYLE: &str = r#"<style>
body { font-family: "DejaVu Sans", Verdana, sans-serif; margin: 2em auto; max-width: 1320px; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2em; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
.meta, figcaption, .note { color: #555; }
.note { font-style: italic; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
.swatch { display: inline-block; width: 0.9em; height: 0.9em; border-radius: 0.2em; margin-right: 0.3em; vertical-align: -0.1em; }
.held { color: #1a7f37; font-weight: bold; } .not-held { color: #b42318; font-weight: bold; }
.inconclusive { color: #9a6700; font-weight: bold; }
.flag { color: #b42318; font-weight: bold; }
.samples img { image-rendering: pixelated; width: 192px; display: block; }
#claims { font-size: 1.05em; }
</style>"#;

/// The page being written, section by section.
pub struct Page<'a> {
    html: String,
    palette: &'a Palette,
}

impl<'a> Page<'a> {
    /// The page's head, its title and the line naming the sweep's runs, models and strategies.
    pub fn new(ctx: &ReportContext<'a>) -> Self {
        let sweep = ctx.sweep;
        let mut page = Self { html: String::new(), palette: ctx.palette };
        page.push(&format!(
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>ScaleLong report: {}</title>\n{STYLE}\n</head>\n<body>\n",
            escape(&sweep.name)
        ));
        page.push(&format!("<h1>ScaleLong report: {}</h1>\n", escape(&sweep.name)));
        let strategies: Vec<String> = ctx.strategies.iter().map(|(_, label)| page.strategy(label)).collect();
        page.push(&format!(
            "<p class=\"meta\">{} runs read from <code>{}</code>. Models: {}. Strategies: {}.{}</p>\n",
            sweep.runs.len(),
            escape(&ctx.sweep_dir.display().to_string()),
            escape(&ctx.models.join(", ")),
            strategies.join(", "),
            if sweep.not_started.is_empty() {
                String::new()
            } else {
                format!(" Listed in sweep.json but not started: {}.", escape(&sweep.not_started.join(", ")))
            }
        ));
        page
    }

    /// The page's foot, with the count of images that decoded, and the closed document.
    pub fn finish(mut self) -> String {
        self.push(
            "<footer class=\"meta\"><p>Images on this page: <span id=\"image-count\">not counted (scripts off)</span>; \
             failed to decode: <span id=\"broken-images\">not counted (scripts off)</span>.</p></footer>\n",
        );
        self.push(IMAGE_CHECK_SCRIPT);
        self.push("\n</body>\n</html>\n");
        self.html
    }

    /// Appends trusted markup.
    pub fn push(&mut self, html: &str) {
        self.html.push_str(html);
    }

    /// `<subject> not recorded in this sweep.`
    pub fn note(&mut self, subject: &str) {
        self.push(&format!("<p class=\"note\">{} not recorded in this sweep.</p>\n", escape(subject)));
    }

    pub fn figure(&mut self, figure: &Figure) {
        self.push(&format!(
            "<figure><img src=\"{}\" alt=\"{}\"><figcaption><b>{}.</b> {} <a href=\"figures/{}\">PNG file</a>, \
             <a href=\"figures/{}\">SVG file</a></figcaption></figure>\n",
            data_uri(&figure.image.png),
            escape(&figure.title),
            escape(&figure.title),
            escape(&figure.caption),
            escape(&figure.file_name),
            escape(&figure.svg_file_name())
        ));
    }

    /// Every figure, or the note that `missing_subject` was not recorded when there is none.
    pub fn figures_or_note<'f>(&mut self, figures: impl IntoIterator<Item = &'f Figure>, missing_subject: &str) {
        let mut figures = figures.into_iter().peekable();
        if figures.peek().is_none() {
            self.note(missing_subject);
        }
        for figure in figures {
            self.figure(figure);
        }
    }

    pub fn html_table(&mut self, headers: &[&str], rows: &[Vec<TableCell>]) {
        let mut html = String::from("<table>\n<tr>");
        for header in headers {
            html.push_str(&format!("<th>{}</th>", escape(header)));
        }
        html.push_str("</tr>\n");
        for row in rows {
            html.push_str("<tr>");
            for cell in row {
                html.push_str(&cell.html());
            }
            html.push_str("</tr>\n");
        }
        html.push_str("</table>\n");
        self.push(&html);
    }

    /// Links to a table's files beside the page.
    pub fn table_links(&mut self, table: &Table) {
        let links: Vec<String> = table
            .file_names()
            .iter()
            .map(|file| format!("<a href=\"{}\">{}</a>", escape(file), escape(file)))
            .collect();
        self.push(&format!("<p class=\"meta\">As files: {}.</p>\n", links.join(", ")));
    }

    /// A strategy's colour in the figures, as a small square.
    pub fn swatch(&self, label: &str) -> String {
        format!("<span class=\"swatch\" style=\"background:{}\"></span>", self.palette.css(label))
    }

    /// A strategy's label after its swatch.
    pub fn strategy(&self, label: &str) -> String {
        format!("{}{}", self.swatch(label), escape(label))
    }
}

/// A table cell: text, or a number right-aligned.
pub enum TableCell {
    Text(String),
    Number(Option<f64>),
    /// Trusted markup built by a section (swatches, images).
    Html(String),
}

impl TableCell {
    /// `estimate [low, high]`, or blank.
    pub fn interval(interval: Option<&Interval>) -> Self {
        match interval {
            Some(i) => TableCell::Text(format!(
                "{} [{}, {}]",
                format_number(i.estimate),
                format_number(i.low),
                format_number(i.high)
            )),
            None => TableCell::Text(String::new()),
        }
    }

    /// The cell as a `<td>` element.
    pub fn html(&self) -> String {
        match self {
            TableCell::Text(text) => format!("<td>{}</td>", escape(text)),
            TableCell::Number(value) => {
                format!("<td class=\"number\">{}</td>", value.map(format_number).unwrap_or_default())
            }
            TableCell::Html(html) => format!("<td>{html}</td>"),
        }
    }
}

pub fn data_uri(png: &[u8]) -> String {
    format!("data:image/png;base64,{}", BASE64.encode(png))
}

pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}
