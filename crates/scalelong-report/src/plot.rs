//! Drawing primitives of the report: each figure drawn as a PNG and an SVG ([`Canvas`]), the strategy palette, and
//! three kinds of panel (lines with bands, per-LSC heatmaps, scatter plots with fitted lines).
//! Text uses the DejaVu font compiled into the binary, so no system font is needed.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::OnceLock;

use anyhow::{Context, Result, ensure};
use plotters::coord::Shift;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use scalelong_schema::{ColourClass, SkipScaling};

use super::analysis::{BandPoint, LscGrid};
use super::canvas::Canvas;
use super::format_number;

pub type Area<'a> = DrawingArea<Canvas<'a>, Shift>;

/// The family name the embedded font is registered under.
const FONT: &str = "sans-serif";
/// One panel's size in pixels; figures are grids of panels.
pub const PANEL_SIZE: (u32, u32) = (640, 420);
const MAX_COLUMNS: usize = 2;
/// Width of the colour bar beside a set of heatmaps.
const COLOUR_BAR_WIDTH: u32 = 130;

/// Fixed colours of the strategies docs/method.md §3 names, the same in every figure.
const RED: RGBColor = RGBColor(214, 39, 40);
const ORANGE: RGBColor = RGBColor(255, 127, 14);
const BLUE: RGBColor = RGBColor(31, 119, 180);
const GREEN: RGBColor = RGBColor(44, 160, 44);
/// Further strategies (other kappas, non-shared LS) take these in turn.
const OTHER_COLOURS: [RGBColor; 6] = [
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
    RGBColor(188, 189, 34),
    RGBColor(127, 127, 127),
];
/// Viridis at five evenly spaced points: perceptually even and readable in grey.
const VIRIDIS: [RGBColor; 5] =
    [RGBColor(68, 1, 84), RGBColor(59, 82, 139), RGBColor(33, 145, 140), RGBColor(94, 201, 98), RGBColor(253, 231, 37)];
const MISSING_CELL: RGBColor = RGBColor(220, 220, 220);
const GRID_LINE: RGBColor = RGBColor(225, 225, 225);
const NOTE_GREY: RGBColor = RGBColor(110, 110, 110);
/// Header of a panel: the title line, then legend rows.
const TITLE_HEIGHT: u32 = 28;
const LEGEND_ROW_HEIGHT: u32 = 20;
/// Room for the line or dot in front of a legend label, and the gap after an entry.
const LEGEND_MARK_WIDTH: i32 = 26;
const LEGEND_GAP: i32 = 18;
/// Tick labels aimed for along an axis.
const TARGET_TICKS: f64 = 6.0;

/// One colour per strategy label: 1 red, 1/sqrt2 orange, the first CS blue, shared LS green, any
/// other strategy the next unused colour.
pub struct Palette(Vec<(String, RGBColor)>);

impl Palette {
    /// `strategies` in the order colours are handed out (see `analysis::strategies`).
    pub fn new(strategies: &[(SkipScaling, String)]) -> Self {
        let mut assigned: Vec<(String, RGBColor)> = Vec::new();
        let mut others = OTHER_COLOURS.iter().cycle();
        for (strategy, label) in strategies {
            let fixed = match strategy.colour_class() {
                ColourClass::Original => Some(RED),
                ColourClass::InvSqrt2 => Some(ORANGE),
                ColourClass::Constant => Some(BLUE),
                ColourClass::SharedGate => Some(GREEN),
                ColourClass::NextFree => None,
            }
            .filter(|colour| assigned.iter().all(|(_, taken)| taken != colour));
            let colour = fixed.unwrap_or_else(|| *others.next().expect("cycle is endless"));
            assigned.push((label.clone(), colour));
        }
        Self(assigned)
    }

    pub fn colour(&self, label: &str) -> RGBColor {
        self.0.iter().find(|(name, _)| name == label).map_or(BLACK, |(_, colour)| *colour)
    }

    /// The colour as CSS `#rrggbb`.
    pub fn css(&self, label: &str) -> String {
        let RGBColor(r, g, b) = self.colour(label);
        format!("#{r:02x}{g:02x}{b:02x}")
    }
}

/// A colour of the sequential (viridis) map, `fraction` in [0, 1].
pub fn sequential_colour(fraction: f64) -> RGBColor {
    let position = fraction.clamp(0.0, 1.0) * (VIRIDIS.len() - 1) as f64;
    let index = (position.floor() as usize).min(VIRIDIS.len() - 2);
    let within = position - index as f64;
    let (RGBColor(r0, g0, b0), RGBColor(r1, g1, b1)) = (VIRIDIS[index], VIRIDIS[index + 1]);
    let blend = |a: u8, b: u8| (f64::from(a) + within * (f64::from(b) - f64::from(a))).round() as u8;
    RGBColor(blend(r0, r1), blend(g0, g1), blend(b0, b1))
}

/// Pixel size of a figure holding `panels` panels in rows of at most two.
pub fn figure_size(panels: usize) -> (u32, u32) {
    let (rows, columns) = grid_shape(panels);
    (PANEL_SIZE.0 * columns as u32, PANEL_SIZE.1 * rows as u32)
}

/// Pixel size of a figure of [`draw_heatmaps`] with `panels` heatmaps.
pub fn heatmap_figure_size(panels: usize) -> (u32, u32) {
    let (width, height) = figure_size(panels);
    (width + COLOUR_BAR_WIDTH, height)
}

fn grid_shape(panels: usize) -> (usize, usize) {
    let columns = panels.clamp(1, MAX_COLUMNS);
    (panels.div_ceil(columns).max(1), columns)
}

/// `area` split into the grid of [`figure_size`], first `panels` cells.
pub fn panel_areas<'a>(area: &Area<'a>, panels: usize) -> Vec<Area<'a>> {
    let mut areas = area.split_evenly(grid_shape(panels));
    areas.truncate(panels);
    areas
}

/// One figure in both formats: the PNG the page embeds, the SVG linked beside it.
pub struct Rendered {
    pub png: Vec<u8>,
    pub svg: String,
}

/// Draws a figure of `size` pixels twice, into a bitmap encoded as PNG and into an SVG
/// ([`Canvas`]).
pub fn render(size: (u32, u32), draw: impl Fn(&Area) -> Result<()>) -> Result<Rendered> {
    register_font()?;
    let mut rgb = vec![255u8; size.0 as usize * size.1 as usize * 3];
    {
        let root = Canvas::Bitmap(BitMapBackend::with_buffer(&mut rgb, size)).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
    }
    let mut png = Vec::new();
    let mut encoder = png::Encoder::new(&mut png, size.0, size.1);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().context("cannot encode a figure as PNG")?;
    writer.write_image_data(&rgb).context("cannot encode a figure as PNG")?;
    writer.finish().context("cannot encode a figure as PNG")?;
    let mut svg = String::new();
    {
        let root = Canvas::Svg(SVGBackend::with_string(&mut svg, size)).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
    }
    Ok(Rendered { png, svg })
}

/// Without a registered font, plotters panics on the first text it draws on a bitmap.
fn register_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let registered = *REGISTERED
        .get_or_init(|| plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_ok());
    ensure!(registered, "cannot load the embedded DejaVu font");
    Ok(())
}

/// A panel whose data were not recorded: its title and a note instead of axes.
pub fn draw_empty_panel(area: &Area, title: &str) -> Result<()> {
    let (width, height) = area.dim_in_pixel();
    let body = panel_body(area, title, &[])?;
    let note_style = TextStyle::from((FONT, 15)).color(&NOTE_GREY).pos(Pos::new(HPos::Center, VPos::Center));
    body.draw_text(
        "not recorded in this sweep",
        &note_style,
        (width as i32 / 2, height as i32 / 2 - TITLE_HEIGHT as i32),
    )?;
    Ok(())
}

/// How a legend entry marks its series.
#[derive(Clone, Copy)]
enum Mark {
    Line,
    Dot,
}

struct LegendEntry<'a> {
    label: &'a str,
    colour: RGBColor,
    mark: Mark,
}

/// Draws the panel's title and legend above the plot, where they can never hide data, and returns
/// the area left for the plot.
fn panel_body<'a>(area: &Area<'a>, title: &str, legend: &[LegendEntry]) -> Result<Area<'a>> {
    let (width, _) = area.dim_in_pixel();
    let label_style = TextStyle::from((FONT, 13)).pos(Pos::new(HPos::Left, VPos::Center));
    // Lay the entries out left to right, wrapping to a new row when one would overflow.
    let mut positions = Vec::with_capacity(legend.len());
    let (mut x, mut row) = (LEGEND_GAP, 0);
    for entry in legend {
        let (text_width, _) = area.estimate_text_size(entry.label, &label_style)?;
        let entry_width = LEGEND_MARK_WIDTH + text_width as i32;
        if x > LEGEND_GAP && x + entry_width > width as i32 {
            (x, row) = (LEGEND_GAP, row + 1);
        }
        positions.push((x, row));
        x += entry_width + LEGEND_GAP;
    }
    let rows = positions.last().map_or(0, |(_, row)| row + 1);
    let (header, body) = area.split_vertically(TITLE_HEIGHT + rows * LEGEND_ROW_HEIGHT);
    let title_style = TextStyle::from((FONT, 18)).pos(Pos::new(HPos::Center, VPos::Top));
    header.draw_text(title, &title_style, (width as i32 / 2, 6))?;
    for (entry, (x, row)) in legend.iter().zip(positions) {
        let y = (TITLE_HEIGHT + row * LEGEND_ROW_HEIGHT + LEGEND_ROW_HEIGHT / 2) as i32;
        match entry.mark {
            Mark::Line => header.draw(&PathElement::new(vec![(x, y), (x + 20, y)], entry.colour.stroke_width(2)))?,
            Mark::Dot => header.draw(&Circle::new((x + 10, y), 4, entry.colour.filled()))?,
        }
        header.draw_text(entry.label, &label_style, (x + LEGEND_MARK_WIDTH, y))?;
    }
    Ok(body)
}

/// One axis of a chart: its span and tick positions in plotted coordinates, its tick labels and
/// description.
struct Axis<'f> {
    range: Range<f64>,
    ticks: Vec<f64>,
    label: Box<dyn Fn(f64) -> String + 'f>,
    desc: String,
}

impl Axis<'static> {
    /// An axis of `scale` spanning `plotted` (values already mapped by [`Scale::plotted`]).
    fn fitted(scale: Scale, desc: &str, plotted: impl Iterator<Item = f64>) -> Self {
        let range = padded_range(plotted);
        Axis {
            ticks: scale.ticks(&range),
            range,
            label: Box::new(move |coordinate| scale.tick_label(coordinate)),
            desc: scale.describe(desc),
        }
    }
}

/// A linear f64 coordinate whose ticks are exactly the given positions. plotters' own f64 axis
/// picks its ticks itself, and its key-point combinator loses the f64 label formatting.
struct TickedRange {
    range: Range<f64>,
    ticks: Vec<f64>,
}

impl Ranged for TickedRange {
    type ValueType = f64;
    type FormatOption = DefaultFormatting;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let fraction = (value - self.range.start) / (self.range.end - self.range.start);
        limit.0 + (f64::from(limit.1 - limit.0) * fraction).round() as i32
    }

    /// The ticks for bold lines and labels; no light lines.
    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() { Vec::new() } else { self.ticks.clone() }
    }

    fn range(&self) -> Range<f64> {
        self.range.clone()
    }
}

type Chart<'a, 'b> = ChartContext<'a, Canvas<'b>, Cartesian2d<TickedRange, TickedRange>>;

/// A chart on `area` with ticks and labels at the axes' round values; `grid_lines` draws a light
/// line at each tick.
fn chart<'a, 'b>(area: &'a Area<'b>, x: &Axis, y: &Axis, grid_lines: bool) -> Result<Chart<'a, 'b>> {
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .margin_top(4)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(
            TickedRange { range: x.range.clone(), ticks: x.ticks.clone() },
            TickedRange { range: y.range.clone(), ticks: y.ticks.clone() },
        )?;
    let x_label = |coordinate: &f64| (x.label)(*coordinate);
    let y_label = |coordinate: &f64| (y.label)(*coordinate);
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(&x.desc)
        .y_desc(&y.desc)
        .x_label_formatter(&x_label)
        .y_label_formatter(&y_label)
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 14))
        .bold_line_style(GRID_LINE);
    if !grid_lines {
        mesh.disable_mesh();
    }
    mesh.draw()?;
    Ok(chart)
}

/// A curve with an optional band: a band is drawn where `low < high`.
pub struct Curve {
    pub label: String,
    pub colour: RGBColor,
    pub points: Vec<BandPoint>,
}

pub struct BandPanel {
    pub title: String,
    /// What the x axis counts (`step`, `LSC i`, `timestep bin`); curves' points hold it in `step`.
    pub x_desc: String,
    pub curves: Vec<Curve>,
}

impl BandPanel {
    /// One line per LSC against step (`curves`: each LSC's `(step, value)` points), coloured
    /// along the sequential map from the outermost LSC, with no band.
    pub fn per_lsc(title: String, curves: &BTreeMap<u32, Vec<(u64, f64)>>) -> Self {
        let last = (curves.len().max(2) - 1) as f64;
        Self {
            title,
            x_desc: "step".to_string(),
            curves: curves
                .iter()
                .enumerate()
                .map(|(index, (lsc, points))| Curve {
                    label: format!("LSC {lsc}"),
                    colour: sequential_colour(index as f64 / last),
                    points: points
                        .iter()
                        .map(|&(step, mean)| BandPoint { step, mean, low: mean, high: mean })
                        .collect(),
                })
                .collect(),
        }
    }
}

/// Lines against the panel's x (step, unless it says otherwise), each with its shaded band, and a legend.
pub fn draw_band_panel(area: &Area, panel: &BandPanel, y_desc: &str) -> Result<()> {
    let points = || panel.curves.iter().flat_map(|curve| &curve.points);
    if points().next().is_none() {
        return draw_empty_panel(area, &panel.title);
    }
    let legend: Vec<LegendEntry> = panel
        .curves
        .iter()
        .map(|curve| LegendEntry { label: &curve.label, colour: curve.colour, mark: Mark::Line })
        .collect();
    let body = panel_body(area, &panel.title, &legend)?;
    let mut x = Axis::fitted(Scale::Linear, &panel.x_desc, points().map(|point| point.step as f64));
    // x is a count (step, LSC, bin): a tick between two counts labels nothing.
    x.ticks.retain(|tick| tick.fract() == 0.0);
    let y = Axis::fitted(Scale::Linear, y_desc, points().flat_map(|point| [point.low, point.high, point.mean]));
    let mut chart = chart(&body, &x, &y, true)?;
    for curve in panel.curves.iter().filter(|curve| curve.points.iter().any(|point| point.high > point.low)) {
        let upper = curve.points.iter().map(|point| (point.step as f64, point.high));
        let lower = curve.points.iter().rev().map(|point| (point.step as f64, point.low));
        chart.draw_series(std::iter::once(Polygon::new(
            upper.chain(lower).collect::<Vec<_>>(),
            curve.colour.mix(0.2).filled(),
        )))?;
    }
    for curve in &panel.curves {
        let line = curve.points.iter().map(|point| (point.step as f64, point.mean));
        chart.draw_series(LineSeries::new(line.clone(), curve.colour.stroke_width(2)))?;
        // A single point draws no line; mark it so it stays visible.
        if curve.points.len() == 1 {
            chart.draw_series(line.map(|point| Circle::new(point, 3, curve.colour.filled())))?;
        }
    }
    Ok(())
}

/// Per-LSC heatmaps (LSC index up, step across) sharing one logarithmic colour scale, and its bar.
pub fn draw_heatmaps(area: &Area, panels: &[(String, &LscGrid)], value_desc: &str) -> Result<()> {
    let log_values: Vec<f64> = panels
        .iter()
        .flat_map(|(_, grid)| grid.cells.values())
        .filter_map(|value| Scale::Log.plotted(*value))
        .collect();
    if log_values.is_empty() {
        return draw_empty_panel(area, value_desc);
    }
    let low = log_values.iter().copied().fold(f64::INFINITY, f64::min);
    let high = log_values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    // A constant field still needs a non-empty scale.
    let log_scale = low..high.max(low + 1e-6);
    let (panels_area, bar_area) = area.split_horizontally(area.dim_in_pixel().0.saturating_sub(COLOUR_BAR_WIDTH));
    for (panel_area, (title, grid)) in panel_areas(&panels_area, panels.len()).iter().zip(panels) {
        draw_heatmap_panel(panel_area, title, grid, &log_scale)?;
    }
    draw_colour_bar(&bar_area, &log_scale, value_desc)
}

fn draw_heatmap_panel(area: &Area, title: &str, grid: &LscGrid, log_scale: &Range<f64>) -> Result<()> {
    let (Some(&first_lsc), Some(&last_lsc)) = (grid.lscs.first(), grid.lscs.last()) else {
        return draw_empty_panel(area, title);
    };
    let body = panel_body(area, title, &[])?;
    let columns = grid.steps.len();
    // Ticks in the middle of every stride-th column, labelled with that column's step.
    let stride = (columns as f64 / TARGET_TICKS).ceil().max(1.0) as usize;
    let x = Axis {
        range: 0.0..columns as f64,
        ticks: (0..columns).step_by(stride).map(|column| column as f64 + 0.5).collect(),
        label: Box::new(|coordinate| {
            grid.steps.get(coordinate.max(0.0) as usize).map_or(String::new(), u64::to_string)
        }),
        desc: "step".to_string(),
    };
    let y = Axis {
        range: f64::from(first_lsc) - 0.5..f64::from(last_lsc) + 0.5,
        ticks: grid.lscs.iter().map(|&lsc| f64::from(lsc)).collect(),
        label: Box::new(|coordinate| format!("{}", coordinate.round())),
        desc: "LSC i (1 = outermost)".to_string(),
    };
    let mut chart = chart(&body, &x, &y, false)?;
    let span = log_scale.end - log_scale.start;
    chart.draw_series(grid.steps.iter().enumerate().flat_map(|(column, step)| {
        grid.lscs.iter().map(move |&lsc| {
            let colour = match grid.cells.get(&(lsc, *step)).and_then(|value| Scale::Log.plotted(*value)) {
                Some(log_value) => sequential_colour((log_value - log_scale.start) / span),
                None => MISSING_CELL,
            };
            let row = f64::from(lsc);
            Rectangle::new([(column as f64, row - 0.5), (column as f64 + 1.0, row + 0.5)], colour.filled())
        })
    }))?;
    Ok(())
}

/// The colour bar of a set of heatmaps: the strips on the left of `area`, their tick labels right
/// of them and the quantity's description right of those, all inside `area` (a plotters chart
/// puts its labels left of the plot, where the heatmap beside the bar would cover them, and cut
/// them at the figure's edge when moved right).
fn draw_colour_bar(area: &Area, log_scale: &Range<f64>, value_desc: &str) -> Result<()> {
    // An empty header keeps the bar level with the heatmaps beside it; the bottom margin matches
    // their x-axis label area.
    let body = panel_body(area, "", &[])?;
    let (_, height) = body.dim_in_pixel();
    let (top, bottom) = (4i32, height as i32 - 52);
    let (bar_left, bar_right) = (8i32, 30i32);
    let span = log_scale.end - log_scale.start;
    let y_of =
        |coordinate: f64| bottom - ((coordinate - log_scale.start) / span * (bottom - top) as f64).round() as i32;
    const STRIPS: usize = 100;
    for strip in 0..STRIPS {
        let fraction = |index: usize| index as f64 / STRIPS as f64;
        let (low, high) = (log_scale.start + fraction(strip) * span, log_scale.start + fraction(strip + 1) * span);
        body.draw(&Rectangle::new(
            [(bar_left, y_of(high)), (bar_right, y_of(low))],
            sequential_colour(fraction(strip)).filled(),
        ))?;
    }
    let label_style = TextStyle::from((FONT, 13)).pos(Pos::new(HPos::Left, VPos::Center));
    for tick in Scale::Log.ticks(log_scale) {
        let y = y_of(tick);
        body.draw(&PathElement::new(vec![(bar_right, y), (bar_right + 4, y)], BLACK.stroke_width(1)))?;
        body.draw_text(&Scale::Log.tick_label(tick), &label_style, (bar_right + 7, y))?;
    }
    let desc_style = TextStyle::from((FONT, 14))
        .transform(plotters::style::FontTransform::Rotate270)
        .pos(Pos::new(HPos::Center, VPos::Center));
    body.draw_text(&Scale::Log.describe(value_desc), &desc_style, (COLOUR_BAR_WIDTH as i32 - 18, (top + bottom) / 2))?;
    Ok(())
}

/// How an axis maps values; a log axis plots log10 of the value and labels ticks with the value.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    Linear,
    Log,
}

impl Scale {
    /// The plotted coordinate; `None` for a value the axis cannot show.
    fn plotted(self, value: f64) -> Option<f64> {
        match self {
            Scale::Linear => value.is_finite().then_some(value),
            Scale::Log => (value > 0.0 && value.is_finite()).then(|| value.log10()),
        }
    }

    /// Tick positions (plotted coordinates) at round values inside `range`: multiples of 1, 2 or 5
    /// times a power of ten on a linear axis; on a log axis powers of ten, with 2 and 5 (or every
    /// integer mantissa) between them when the axis spans few decades.
    fn ticks(self, range: &Range<f64>) -> Vec<f64> {
        let linear_ticks = || {
            let rough_step = (range.end - range.start) / TARGET_TICKS;
            let power = 10f64.powf(rough_step.log10().floor());
            let step = [1.0, 2.0, 5.0, 10.0]
                .map(|mantissa| mantissa * power)
                .into_iter()
                .find(|step| *step >= rough_step)
                .unwrap_or(power * 10.0);
            let (first, last) = ((range.start / step).ceil() as i64, (range.end / step).floor() as i64);
            (first..=last).map(|index| index as f64 * step).collect::<Vec<f64>>()
        };
        match self {
            Scale::Linear => linear_ticks(),
            Scale::Log => {
                let decades = range.end - range.start;
                let mantissas: &[f64] = match decades {
                    d if d > 4.0 => &[1.0],
                    d if d > 1.2 => &[1.0, 2.0, 5.0],
                    _ => &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0],
                };
                let ticks: Vec<f64> = (range.start.floor() as i32..=range.end.ceil() as i32)
                    .flat_map(|power| mantissas.iter().map(move |mantissa| (mantissa * 10f64.powi(power)).log10()))
                    .filter(|tick| range.contains(tick))
                    .collect();
                // Less than a factor of 2 wide: round values are too sparse, use even steps.
                if ticks.len() >= 2 { ticks } else { linear_ticks() }
            }
        }
    }

    fn tick_label(self, coordinate: f64) -> String {
        match self {
            Scale::Linear => format_number(coordinate),
            Scale::Log => format_number(10f64.powf(coordinate)),
        }
    }

    fn describe(self, desc: &str) -> String {
        match self {
            Scale::Linear => desc.to_string(),
            Scale::Log => format!("{desc} (log scale)"),
        }
    }
}

/// Points (drawn as dots) or a fitted curve (drawn as a line) in one colour with a legend label.
pub struct XySeries {
    pub label: String,
    pub colour: RGBColor,
    pub points: Vec<(f64, f64)>,
}

pub struct ScatterPanel {
    pub title: String,
    pub x_desc: String,
    pub y_desc: String,
    pub x_scale: Scale,
    pub y_scale: Scale,
    pub dots: Vec<XySeries>,
    pub lines: Vec<XySeries>,
}

pub fn draw_scatter_panel(area: &Area, panel: &ScatterPanel) -> Result<()> {
    let plotted = |series: &XySeries| -> Vec<(f64, f64)> {
        series
            .points
            .iter()
            .filter_map(|&(x, y)| Some((panel.x_scale.plotted(x)?, panel.y_scale.plotted(y)?)))
            .collect()
    };
    let dots: Vec<Vec<(f64, f64)>> = panel.dots.iter().map(plotted).collect();
    let lines: Vec<Vec<(f64, f64)>> = panel.lines.iter().map(plotted).collect();
    let all_points = || dots.iter().chain(&lines).flatten();
    if all_points().next().is_none() {
        return draw_empty_panel(area, &panel.title);
    }
    let legend: Vec<LegendEntry> = panel
        .lines
        .iter()
        .map(|series| LegendEntry { label: &series.label, colour: series.colour, mark: Mark::Line })
        .chain(panel.dots.iter().map(|series| LegendEntry {
            label: &series.label,
            colour: series.colour,
            mark: Mark::Dot,
        }))
        .collect();
    let body = panel_body(area, &panel.title, &legend)?;
    let x = Axis::fitted(panel.x_scale, &panel.x_desc, all_points().map(|point| point.0));
    let y = Axis::fitted(panel.y_scale, &panel.y_desc, all_points().map(|point| point.1));
    let mut chart = chart(&body, &x, &y, true)?;
    for (series, points) in panel.lines.iter().zip(lines) {
        chart.draw_series(LineSeries::new(points, series.colour.stroke_width(2)))?;
    }
    for (series, points) in panel.dots.iter().zip(dots) {
        chart.draw_series(points.into_iter().map(|point| Circle::new(point, 4, series.colour.filled())))?;
    }
    Ok(())
}

/// The span of `values` widened by 5% on each side (and to a small width when they are all equal).
fn padded_range(values: impl Iterator<Item = f64>) -> Range<f64> {
    let (low, high) = values
        .filter(|value| value.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(low, high), value| (low.min(value), high.max(value)));
    if low > high {
        return 0.0..1.0;
    }
    // All equal: 5% of the value (a twentieth of a decade on a log axis, where 1 plots at 0).
    let padding = match () {
        _ if high > low => 0.05 * (high - low),
        _ if low == 0.0 => 0.05,
        _ => 0.05 * low.abs(),
    };
    low - padding..high + padding
}
