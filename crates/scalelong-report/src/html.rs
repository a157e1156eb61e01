//! The report page: one self-contained HTML file. Figures and samples are embedded as PNG data URIs
//! (the page needs nothing else to display offline) and also linked as the files beside it.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use scalelong_analysis::theorems::Verdict;

use super::ReportContent;
use super::claims::paragraph;
use super::figures::Figure;
use super::format_number;

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
.supported { color: #1a7f37; font-weight: bold; } .refuted { color: #b42318; font-weight: bold; }
.inconclusive { color: #9a6700; font-weight: bold; }
.samples img { image-rendering: pixelated; width: 192px; display: block; }
#claims { font-size: 1.05em; }
</style>"#;

/// A table cell: text, or a number right-aligned.
pub enum Cell {
    Text(String),
    Number(Option<f64>),
    /// Trusted markup built by this module (swatches, images).
    Html(String),
}

pub fn render(content: &ReportContent) -> String {
    let sweep = content.sweep;
    let mut page = String::new();
    page.push_str(&format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>ScaleLong report: {}</title>\n{STYLE}\n</head>\n<body>\n",
        escape(&sweep.name)
    ));
    page.push_str(&format!("<h1>ScaleLong report: {}</h1>\n", escape(&sweep.name)));
    let strategies: Vec<String> =
        content.strategies.iter().map(|(_, label)| format!("{}{}", swatch(content, label), escape(label))).collect();
    page.push_str(&format!(
        "<p class=\"meta\">{} runs read from <code>{}</code>. Models: {}. Strategies: {}.{}</p>\n",
        sweep.runs.len(),
        escape(&content.sweep_dir.display().to_string()),
        escape(&content.models.join(", ")),
        strategies.join(", "),
        if sweep.not_started.is_empty() {
            String::new()
        } else {
            format!(" Listed in sweep.json but not started: {}.", escape(&sweep.not_started.join(", ")))
        }
    ));

    page.push_str("<h2>What held in this sweep</h2>\n");
    page.push_str(&format!("<p id=\"claims\">{}</p>\n", escape(&paragraph(content.claims))));

    summary_section(content, &mut page);

    page.push_str("<h2>1. Training loss</h2>\n");
    optional_figure(&mut page, content.loss_figure.as_ref(), "No run logged a training loss");
    page.push_str("<h2>2. Hidden-feature norm (the paper's Figure 1)</h2>\n");
    optional_figure(&mut page, content.feature_norm_figure.as_ref(), "The feature norm of the last decoder block was");
    page.push_str("<h2>3. Per-LSC feature and gradient norms</h2>\n");
    figures_or_note(&mut page, content.heatmap_figures, "Per-LSC feature and gradient norms were");
    gates_section(content, &mut page);
    theorems_section(content, &mut page);
    samples_section(content, &mut page);

    page.push_str(
        "<footer class=\"meta\"><p>Images on this page: <span id=\"image-count\">not counted (scripts off)</span>; \
         failed to decode: <span id=\"broken-images\">not counted (scripts off)</span>.</p></footer>\n",
    );
    page.push_str(IMAGE_CHECK_SCRIPT);
    page.push_str("\n</body>\n</html>\n");
    page
}

fn summary_section(content: &ReportContent, page: &mut String) {
    page.push_str("<h2>Summary of the runs</h2>\n");
    page.push_str(
        "<p>Final loss: mean of the last 10% of the logged training losses. Held-out loss, FD and classifier \
         accuracy: last line of eval.jsonl (blank when none). Target: the final smoothed training loss of the \
         strategy-1 run with the same other settings (model, seed, learning rate...); steps to target: the first \
         logged step whose smoothed loss is at or below it; speed-up: strategy 1's steps to target divided by this \
         run's (blank when either never reached it).</p>\n",
    );
    let rows: Vec<Vec<Cell>> = content
        .summary
        .iter()
        .map(|row| {
            vec![
                Cell::Text(row.run_id.clone()),
                Cell::Text(row.model.clone()),
                Cell::Html(format!("{}{}", swatch(content, &row.strategy_label), escape(&row.strategy_label))),
                Cell::Text(row.seed.to_string()),
                Cell::Number(Some(row.lr)),
                Cell::Text(row.status.clone()),
                Cell::Number(row.final_loss),
                Cell::Number(row.heldout_loss),
                Cell::Number(row.fd),
                Cell::Number(row.classifier_accuracy),
                Cell::Number(row.steps_to_target.map(|steps| steps as f64)),
                Cell::Number(row.speedup_vs_1),
            ]
        })
        .collect();
    page.push_str(&table(
        &[
            "run",
            "model",
            "strategy",
            "seed",
            "lr",
            "status",
            "final loss",
            "held-out loss",
            "FD",
            "classifier accuracy",
            "steps to target",
            "speed-up vs 1",
        ],
        &rows,
    ));
    page.push_str(&table_links(&content.table_files.summary));
    page.push_str("<h3>Largest stable learning rate</h3>\n");
    match content.stable_lr {
        None => page.push_str(&note("The sweep has no optimizer.lr axis, so the largest stable learning rate was")),
        Some(stable_rows) => {
            page.push_str(
                "<p>The largest learning rate at which every run of the strategy completed without diverging.</p>\n",
            );
            let rows: Vec<Vec<Cell>> = stable_rows
                .iter()
                .map(|row| {
                    vec![
                        Cell::Text(row.model.clone()),
                        Cell::Html(format!("{}{}", swatch(content, &row.strategy_label), escape(&row.strategy_label))),
                        row.largest_stable_lr.map_or(Cell::Text("none".to_string()), |lr| Cell::Number(Some(lr))),
                        Cell::Text(row.lrs_tried.iter().map(|lr| format_number(*lr)).collect::<Vec<_>>().join(", ")),
                    ]
                })
                .collect();
            page.push_str(&table(&["model", "strategy", "largest stable lr", "learning rates run"], &rows));
            page.push_str(&table_links(&content.table_files.stable_lr));
        }
    }
}

fn gates_section(content: &ReportContent, page: &mut String) {
    page.push_str("<h2>4. LS gates</h2>\n");
    if !content.has_ls_runs {
        page.push_str(&note("The sweep has no LS run, so LS gates were"));
        return;
    }
    if content.gate_fits.is_empty() {
        page.push_str(&note("The LS runs' gate statistics were"));
        return;
    }
    let rows: Vec<Vec<Cell>> = content
        .gate_fits
        .iter()
        .map(|gates| {
            vec![
                Cell::Text(gates.model.clone()),
                Cell::Html(format!("{}{}", swatch(content, &gates.strategy_label), escape(&gates.strategy_label))),
                Cell::Text(gates.final_means.iter().map(|gate| format_number(*gate)).collect::<Vec<_>>().join(", ")),
                Cell::Number(gates.fit.map(|fit| fit.a)),
                Cell::Number(gates.fit.map(|fit| fit.kappa_hat)),
                Cell::Number(gates.fit.map(|fit| fit.r2)),
            ]
        })
        .collect();
    page.push_str(&table(&["model", "strategy", "final mean gate, LSC 1..N", "a", "kappa_hat", "R^2"], &rows));
    page.push_str(&table_links(&content.table_files.gate_fits));
    for figure in content.gate_figures {
        page.push_str(&figure_html(figure));
    }
}

fn theorems_section(content: &ReportContent, page: &mut String) {
    page.push_str("<h2>5. Theorem checks</h2>\n");
    page.push_str(
        "<p>Each check pairs a measured quantity with the bound's variable part (constants dropped) and tests \
         orderings: Supported needs Spearman &ge; 0.5 and the strategies in the bound's order; Refuted means \
         Spearman &le; 0 or the strategies with the largest and smallest bound in reverse.</p>\n",
    );
    page.push_str(&table_links(&content.table_files.theorem_rows));
    for (model_checks, figures) in content.model_checks.iter().zip(content.theorem_figures) {
        for (check, figure) in model_checks.checks.iter().zip(figures) {
            page.push_str(&format!("<h3>{} on {}</h3>\n", escape(check.theorem), escape(&model_checks.model)));
            if check.rows.is_empty() {
                page.push_str(&note(&format!("The diagnostics {} needs were", check.theorem)));
                continue;
            }
            let class = match check.verdict {
                Verdict::Supported => "supported",
                Verdict::Refuted => "refuted",
                Verdict::Inconclusive => "inconclusive",
            };
            page.push_str(&format!(
                "<p>Claim: {}.<br>Verdict: <span class=\"{class}\">{}</span>. {}</p>\n",
                escape(&check.claim),
                escape(&format!("{:?}", check.verdict)),
                escape(&check.explanation)
            ));
            if let Some(figure) = figure {
                page.push_str(&figure_html(figure));
            }
            let rows: Vec<Vec<Cell>> = check
                .rows
                .iter()
                .map(|row| {
                    vec![
                        Cell::Text(row.run_id.clone()),
                        Cell::Html(format!("{}{}", swatch(content, &row.strategy), escape(&row.strategy))),
                        Cell::Text(row.layer_or_bin.clone()),
                        Cell::Number(Some(row.measured)),
                        Cell::Number(Some(row.predicted)),
                    ]
                })
                .collect();
            page.push_str(&format!(
                "<details><summary>The {} rows</summary>\n{}</details>\n",
                check.rows.len(),
                table(&["run", "strategy", "layer or bin", "measured", "predicted"], &rows)
            ));
        }
    }
}

fn samples_section(content: &ReportContent, page: &mut String) {
    page.push_str("<h2>6. Samples</h2>\n");
    if content.samples.is_empty() {
        page.push_str(&note("Sample grids were"));
        return;
    }
    page.push_str("<p>The newest sample grid of every run (EMA weights, fixed noise), strategies side by side.</p>\n");
    for model in content.models {
        let columns: Vec<&str> = content
            .strategies
            .iter()
            .map(|(_, label)| label.as_str())
            .filter(|label| {
                content.samples.iter().any(|sample| sample.model == *model && sample.strategy_label == *label)
            })
            .collect();
        if columns.is_empty() {
            continue;
        }
        let cells: Vec<Cell> = columns
            .iter()
            .map(|label| {
                let images: String = content
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
                Cell::Html(images)
            })
            .collect();
        let headers: Vec<String> =
            columns.iter().map(|label| format!("{}{}", swatch(content, label), escape(label))).collect();
        page.push_str(&format!("<h3>{}</h3>\n<table class=\"samples\"><tr>", escape(model)));
        for header in headers {
            page.push_str(&format!("<th>{header}</th>"));
        }
        page.push_str("</tr>\n<tr>");
        for cell in &cells {
            page.push_str(&cell_html(cell));
        }
        page.push_str("</tr></table>\n");
    }
}

fn optional_figure(page: &mut String, figure: Option<&Figure>, missing_subject: &str) {
    match figure {
        Some(figure) => page.push_str(&figure_html(figure)),
        None => page.push_str(&note(missing_subject)),
    }
}

fn figures_or_note(page: &mut String, figures: &[Figure], missing_subject: &str) {
    if figures.is_empty() {
        page.push_str(&note(missing_subject));
    }
    for figure in figures {
        page.push_str(&figure_html(figure));
    }
}

/// `<subject> not recorded in this sweep.`
fn note(subject: &str) -> String {
    format!("<p class=\"note\">{} not recorded in this sweep.</p>\n", escape(subject))
}

fn figure_html(figure: &Figure) -> String {
    format!(
        "<figure><img src=\"{}\" alt=\"{}\"><figcaption><b>{}.</b> {} <a href=\"figures/{}\">PNG file</a></figcaption></figure>\n",
        data_uri(&figure.png),
        escape(&figure.title),
        escape(&figure.title),
        escape(&figure.caption),
        escape(&figure.file_name)
    )
}

fn table_links(files: &[String]) -> String {
    if files.is_empty() {
        return String::new();
    }
    let links: Vec<String> =
        files.iter().map(|file| format!("<a href=\"{}\">{}</a>", escape(file), escape(file))).collect();
    format!("<p class=\"meta\">As files: {}.</p>\n", links.join(", "))
}

fn table(headers: &[&str], rows: &[Vec<Cell>]) -> String {
    let mut html = String::from("<table>\n<tr>");
    for header in headers {
        html.push_str(&format!("<th>{}</th>", escape(header)));
    }
    html.push_str("</tr>\n");
    for row in rows {
        html.push_str("<tr>");
        for cell in row {
            html.push_str(&cell_html(cell));
        }
        html.push_str("</tr>\n");
    }
    html.push_str("</table>\n");
    html
}

fn cell_html(cell: &Cell) -> String {
    match cell {
        Cell::Text(text) => format!("<td>{}</td>", escape(text)),
        Cell::Number(value) => format!("<td class=\"number\">{}</td>", value.map(format_number).unwrap_or_default()),
        Cell::Html(html) => format!("<td>{html}</td>"),
    }
}

fn swatch(content: &ReportContent, label: &str) -> String {
    format!("<span class=\"swatch\" style=\"background:{}\"></span>", content.palette.css(label))
}

fn data_uri(png: &[u8]) -> String {
    format!("data:image/png;base64,{}", BASE64.encode(png))
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}
