//! The reading behind claim (e), whether a learned skip profile decays with the LSC index, for
//! every learned profile a sweep has (LS gates, one module shared by all LSCs or one per LSC;
//! learned scalars), and what the LS gates see: each LSC's pooled gate input at the last record,
//! which says whether a gate shared by all LSCs could give them different coefficients at all
//! (docs/method.md §3.4). Its claim rows, tables and figures are in
//! `sections/learned_coefficients.rs`.

use std::collections::BTreeMap;

use scalelong_analysis::stats::mean;
use scalelong_analysis::verdict::{ClaimedEffect, Verdict, claimed_magnitude_excluded, verdict};
use scalelong_schema::{GateInput, Quantity, Record, SkipScaling};

use crate::analysis::{DECAY_KAPPA_MAX, GateFit};
use crate::format_number;
use crate::run_group::RunGroup;

/// What claim (e) tests on a profile's per-run `kappa_hat`: below 1 (a decay), of interest at
/// most [`DECAY_KAPPA_MAX`].
const DECAY: ClaimedEffect = ClaimedEffect { null: 1.0, claimed: DECAY_KAPPA_MAX };

/// What the learned coefficients of a strategy are called, by the quantity that holds them:
/// `gates` for LS, `learned scalars`.
pub fn learned_subject(strategy: SkipScaling) -> &'static str {
    if strategy.learned_quantity() == Some(Quantity::GateMean) { "gates" } else { "learned scalars" }
}

/// Claim (e) read off one learned profile's per-run `kappa_hat` interval.
#[derive(Debug, Clone, PartialEq)]
pub struct DecayReading {
    /// Held when the interval lies below 1 (a decay is established), the profile moved from its
    /// start, and a learned scalar started at CS's profile ends decaying more steeply than it.
    pub verdict: Verdict,
    /// Whether the interval lies wholly above [`DECAY_KAPPA_MAX`]: a decay of interest excluded.
    pub decay_of_interest_excluded: bool,
    /// Why the verdict is not the interval's alone, when it is not.
    pub note: String,
}

/// `None` without a `kappa_hat` interval (fewer than 2 runs with coefficients on LSCs 1..N).
pub fn decay_reading(profile: &GateFit) -> Option<DecayReading> {
    let interval = profile.kappa.as_ref()?;
    let decay_of_interest_excluded = claimed_magnitude_excluded(interval, &DECAY);
    let subject = learned_subject(profile.strategy);
    if !profile.any_moved() {
        return Some(DecayReading {
            verdict: Verdict::Inconclusive,
            decay_of_interest_excluded,
            note: format!(
                "no LSC's {subject} moved from their start by more than their seed-to-seed spread: the fit describes \
                 the initialisation, not anything learned"
            ),
        });
    }
    let decay = verdict(interval, &DECAY);
    // A learned scalar starts at CS's kappa^(i-1) (LS gates start near 0.5 on every LSC): a decay at
    // the end is learned only where it is steeper than that start.
    match profile.strategy {
        SkipScaling::LearnedScalar { kappa } if kappa < 1.0 && decay == Verdict::Held && interval.high >= kappa => {
            Some(DecayReading {
                verdict: Verdict::Inconclusive,
                decay_of_interest_excluded,
                note: format!(
                    "the {subject} started at kappa^(i-1) with kappa {}: the decay at the end is not steeper than \
                     the start's, so it need not be learned",
                    format_number(kappa)
                ),
            })
        }
        _ => Some(DecayReading { verdict: decay, decay_of_interest_excluded, note: String::new() }),
    }
}

/// What the LS gates of one model and strategy saw, per LSC: each run's last record, mean over the
/// runs.
pub struct GateInputProfile {
    pub model: String,
    pub strategy_label: String,
    /// Runs with gate-input records.
    pub runs: usize,
    /// In LSC order, 1 (outermost) first.
    pub lscs: Vec<LscGateInput>,
}

pub struct LscGateInput {
    pub lsc: u32,
    /// The mean gate this LSC got (`gate_mean`), and its spread over tokens and samples (`gate_std`).
    pub gate_mean: Option<f64>,
    pub gate_sd: Option<f64>,
    /// Indexed by [`GateInput`] (in [`GateInput::ALL`] order); `None` where no run recorded it.
    pub inputs: [Option<f64>; GateInput::ALL.len()],
}

impl LscGateInput {
    pub fn input(&self, input: GateInput) -> Option<f64> {
        self.inputs[input as usize]
    }
}

/// One profile per model and LS strategy whose runs recorded their gates' inputs (`groups`: per
/// model and strategy).
pub fn gate_input_profiles(groups: &[RunGroup]) -> Vec<GateInputProfile> {
    let mut profiles = Vec::new();
    for group in groups {
        let runs: Vec<&[Record]> = group
            .run_data()
            .map(|run| run.diagnostics.as_slice())
            .filter(|records| records.iter().any(|record| record.quantity == GateInput::Rms.quantity()))
            .collect();
        if runs.is_empty() {
            continue;
        }
        let mean_over_runs = |quantity: Quantity| -> BTreeMap<u32, f64> {
            let mut values: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
            for records in &runs {
                for (lsc, value) in last_per_lsc(records, quantity) {
                    values.entry(lsc).or_default().push(value);
                }
            }
            values.into_iter().filter_map(|(lsc, v)| Some((lsc, mean(&v)?))).collect()
        };
        let gate_means = mean_over_runs(Quantity::GateMean);
        let gate_sds = mean_over_runs(Quantity::GateStd);
        let inputs: Vec<BTreeMap<u32, f64>> =
            GateInput::ALL.iter().map(|input| mean_over_runs(input.quantity())).collect();
        let lscs = inputs[GateInput::Rms as usize]
            .keys()
            .map(|&lsc| LscGateInput {
                lsc,
                gate_mean: gate_means.get(&lsc).copied(),
                gate_sd: gate_sds.get(&lsc).copied(),
                inputs: std::array::from_fn(|index| inputs[index].get(&lsc).copied()),
            })
            .collect();
        profiles.push(GateInputProfile {
            model: group.model.to_string(),
            strategy_label: group.strategy_label.to_string(),
            runs: runs.len(),
            lscs,
        });
    }
    profiles
}

/// Per LSC, the value of `quantity` (whole probe batch) at its last record; a step recorded twice
/// (a resumed run) reads the record written last.
fn last_per_lsc(records: &[Record], quantity: Quantity) -> BTreeMap<u32, f64> {
    let mut last: BTreeMap<u32, (u64, f64)> = BTreeMap::new();
    for record in records.iter().filter(|record| record.quantity == quantity && record.t_bin.is_none()) {
        if let (Some(lsc), Some(value)) = (record.lsc, record.value) {
            let entry = last.entry(lsc).or_insert((record.step, value));
            if record.step >= entry.0 {
                *entry = (record.step, value);
            }
        }
    }
    last.into_iter().map(|(lsc, (_, value))| (lsc, value)).collect()
}

/// How far the gate inputs of LSCs 2..N lie from LSC 1's, over LSCs 2..N as (smallest, largest).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Separation {
    /// The distance to LSC 1's input over the spread of LSC 1's input over probe samples: below 1,
    /// two LSCs' inputs differ less than two images' inputs at one LSC.
    pub distance_over_spread: (f64, f64),
    pub cosine: (f64, f64),
    /// RMS over LSC 1's RMS.
    pub rms_ratio: (f64, f64),
}

/// `None` without LSC 1 and at least one other LSC with every summary recorded.
pub fn separation(profile: &GateInputProfile) -> Option<Separation> {
    let outermost = profile.lscs.iter().find(|lsc| lsc.lsc == 1)?;
    let (spread, rms) = (outermost.input(GateInput::SampleSd)?, outermost.input(GateInput::Rms)?);
    let others: Vec<(f64, f64, f64)> = profile
        .lscs
        .iter()
        .filter(|lsc| lsc.lsc != 1)
        .map(|lsc| {
            Some((
                lsc.input(GateInput::DistanceToLsc1)? / spread,
                lsc.input(GateInput::CosineToLsc1)?,
                lsc.input(GateInput::Rms)? / rms,
            ))
        })
        .collect::<Option<_>>()?;
    Some(Separation {
        distance_over_spread: span(others.iter().map(|o| o.0))?,
        cosine: span(others.iter().map(|o| o.1))?,
        rms_ratio: span(others.iter().map(|o| o.2))?,
    })
}

/// `(smallest, largest)`; `None` when empty.
fn span(values: impl Iterator<Item = f64> + Clone) -> Option<(f64, f64)> {
    Some((values.clone().reduce(f64::min)?, values.reduce(f64::max)?))
}

/// Whether a gate shared by the LSCs can tell them apart, read off their recorded inputs.
pub fn separation_text(profile: &GateInputProfile) -> String {
    let Some(separation) = separation(profile) else {
        return "Not every LSC's input summaries were recorded (the cosine and distance to LSC 1 need equal widths), \
                so how far apart the LSCs' inputs lie is unknown."
            .to_string();
    };
    let range = |(low, high): (f64, f64)| format!("{} to {}", format_number(low), format_number(high));
    let measured = format!(
        "The pooled inputs of LSCs 2..N lie {} times the spread of LSC 1's input over probe samples from LSC 1's \
         (cosine {}, RMS {} times LSC 1's).",
        range(separation.distance_over_spread),
        range(separation.cosine),
        range(separation.rms_ratio)
    );
    let shared = profile.strategy_label == "LS";
    let reading = match separation.distance_over_spread {
        (_, high) if high < 1.0 => {
            if shared {
                "Two LSCs' inputs differ less than two images' inputs at one LSC: the one shared gate maps them to \
                 nearly the same coefficients unless it responds to that small difference and not to the larger \
                 one between images, so at this scale it cannot tell the LSCs apart."
            } else {
                "Two LSCs' inputs differ less than two images' inputs at one LSC: a gate shared by all LSCs could not \
                 tell them apart; these gates are one per LSC, so their differences come from their own weights."
            }
        }
        (low, _) if low >= 1.0 => {
            "Every LSC's input differs from LSC 1's by more than images do at one LSC: a shared gate can tell the \
             LSCs apart at this scale; whether it learned to is claim (e)."
        }
        _ => {
            "Some LSCs' inputs differ from LSC 1's by more than images do at one LSC, others by less: a shared gate \
             can tell only the former apart from LSC 1."
        }
    };
    let within: Vec<f64> = profile.lscs.iter().filter_map(|lsc| lsc.gate_sd).collect();
    let response = match (span(profile.lscs.iter().filter_map(|lsc| lsc.gate_mean)), mean(&within)) {
        (Some((low, high)), Some(sd)) => format!(
            " What the gates made of it: mean gates from {} to {} across LSCs, against a standard deviation of {} \
             within an LSC (over tokens and samples).",
            format_number(low),
            format_number(high),
            format_number(sd)
        ),
        _ => String::new(),
    };
    format!("{measured} {reading}{response}")
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use scalelong_schema::{RunConfig, write_json_atomic};

    use super::*;
    use crate::analysis::gate_fit;
    use crate::assess::judge;
    use crate::sections::learned_coefficients::{decay_claim, gate_input_cells, gate_inputs_frame};
    use crate::sweep_data::read_sweep;

    const LSCS: u32 = 8;
    const SEEDS: [u64; 3] = [0, 1, 2];

    /// One strategy's planted coefficient on LSC `lsc` at diagnostics record `index` (0 first,
    /// 1 last) of the run with `seed`.
    type Planted = fn(lsc: u32, index: usize, seed: u64) -> f64;

    /// A sweep folder with three seeds of each strategy, every run recording its learned
    /// coefficients per LSC at two steps (`gate_mean` for LS, `coef` for learned scalars), plus any
    /// `extra` records; returns the folder.
    fn planted_sweep(
        test_name: &str,
        strategies: &[(SkipScaling, Planted)],
        extra: impl Fn(SkipScaling, u64) -> Vec<Record>,
    ) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("scalelong-learned-{}-{test_name}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
        let mut runs = Vec::new();
        for &(strategy, planted) in strategies {
            for seed in SEEDS {
                let id = format!("{}_seed{seed}", strategy.label());
                let run_dir = dir.join(&id);
                std::fs::create_dir_all(&run_dir).unwrap();
                let config = RunConfig { seed, strategy, ..RunConfig::default() };
                write_json_atomic(&run_dir.join("config.json"), &config).unwrap();
                let quantity = strategy.learned_quantity().expect("the fixture plants learned strategies");
                let mut records: Vec<Record> = [25, 300]
                    .into_iter()
                    .enumerate()
                    .flat_map(|(index, step)| {
                        (1..=LSCS).map(move |lsc| Record {
                            step,
                            quantity,
                            layer: Some(format!("dec.{}", LSCS - lsc)),
                            lsc: Some(lsc),
                            t_bin: None,
                            value: Some(planted(lsc, index, seed)),
                        })
                    })
                    .collect();
                records.extend(extra(strategy, seed));
                let lines: String =
                    records.iter().map(|record| format!("{}\n", serde_json::to_string(record).unwrap())).collect();
                std::fs::write(run_dir.join("diagnostics.jsonl"), lines).unwrap();
                runs.push(serde_json::json!({ "id": id, "overrides": { "seed": seed } }));
            }
        }
        let manifest = serde_json::json!({ "name": test_name, "axes": { "seed": [0, 1, 2] }, "runs": runs });
        write_json_atomic(&dir.join("sweep.json"), &manifest).unwrap();
        dir
    }

    fn fits(sweep_dir: &Path) -> Vec<GateFit> {
        let sweep = read_sweep(sweep_dir).unwrap();
        RunGroup::per_strategy(&judge(&sweep)).iter().filter_map(gate_fit).collect()
    }

    /// The gate-input profiles of the sweep folder `sweep_dir`.
    fn profiles_of(sweep_dir: &Path) -> Vec<GateInputProfile> {
        let sweep = read_sweep(sweep_dir).unwrap();
        gate_input_profiles(&RunGroup::per_strategy(&judge(&sweep)))
    }

    fn reading_of<'a>(fits: &'a [GateFit], label: &str) -> (&'a GateFit, DecayReading) {
        let fit = fits.iter().find(|fit| fit.strategy_label == label).unwrap_or_else(|| panic!("no fit of {label}"));
        (fit, decay_reading(fit).unwrap_or_else(|| panic!("{label}: no reading")))
    }

    /// A small seed-dependent factor: intervals narrow but not empty.
    fn jitter(seed: u64) -> f64 {
        1.0 + 0.004 * (seed as f64 - 1.0)
    }

    #[test]
    fn a_planted_decay_is_found_and_flat_or_inherited_profiles_read_no_learned_decay() {
        let strategies: [(SkipScaling, Planted); 4] = [
            // Shared LS gates: from 0.5 everywhere to 0.9 * 0.6^(i-1).
            (SkipScaling::Learnable { shared: true, reduction: 16 }, |lsc, index, seed| {
                if index == 0 { 0.5 } else { 0.9 * (0.6 * jitter(seed)).powi(lsc as i32 - 1) }
            }),
            // Non-shared gates: from 0.5 to 0.55 on every LSC, as the flat gates observed.
            (SkipScaling::Learnable { shared: false, reduction: 16 }, |_, index, seed| {
                if index == 0 { 0.5 } else { 0.55 * jitter(seed) }
            }),
            // Learned scalars from flat 1.0 that stay flat, a little lower.
            (SkipScaling::LearnedScalar { kappa: 1.0 }, |lsc, index, seed| {
                if index == 0 { 1.0 } else { 0.8 * jitter(seed) * (1.0 + 0.001 * f64::from(lsc)) }
            }),
            // Learned scalars from CS's 0.5^(i-1), ending a little flatter: decaying because they started so.
            (SkipScaling::LearnedScalar { kappa: 0.5 }, |lsc, index, seed| {
                if index == 0 { 0.5f64.powi(lsc as i32 - 1) } else { 1.1 * jitter(seed) * 0.52f64.powi(lsc as i32 - 1) }
            }),
        ];
        let fits = fits(&planted_sweep("profiles", &strategies, |_, _| Vec::new()));
        assert_eq!(fits.len(), 4);

        let (ls, reading) = reading_of(&fits, "LS");
        let kappa = ls.kappa.unwrap();
        assert!(kappa.low < 0.6 && 0.6 < kappa.high && kappa.high < 0.62, "planted 0.6: {kappa:?}");
        assert_eq!(
            reading,
            DecayReading { verdict: Verdict::Held, decay_of_interest_excluded: false, note: String::new() }
        );
        assert_eq!(decay_claim(ls).name, "(e) LS gates decay with the LSC index on uvit-small");

        for flat in ["LS(non-shared)", "Scalar(1)"] {
            let (fit, reading) = reading_of(&fits, flat);
            assert!(fit.any_moved(), "{flat}");
            assert_ne!(reading.verdict, Verdict::Held, "{flat}: {:?}", fit.kappa);
            assert!(reading.decay_of_interest_excluded, "{flat}: a flat profile excludes a decay: {:?}", fit.kappa);
        }

        let (inherited, reading) = reading_of(&fits, "Scalar(0.5)");
        assert!(inherited.kappa.unwrap().high < 0.6, "the final profile decays like its start");
        assert_eq!(reading.verdict, Verdict::Inconclusive);
        assert!(reading.note.contains("started at kappa^(i-1) with kappa 0.5"), "{}", reading.note);
        let claim = decay_claim(inherited);
        assert_eq!(claim.name, "(e) Scalar(0.5) learned scalars decay with the LSC index on uvit-small");
        assert!(claim.effect.starts_with("kappa_hat 0.52 [0.52, 0.52]"), "{}", claim.effect);
    }

    #[test]
    fn gates_that_did_not_move_read_inconclusive_whatever_their_fit() {
        let strategies: [(SkipScaling, Planted); 1] =
            [(SkipScaling::Learnable { shared: false, reduction: 16 }, |lsc, _, seed| {
                0.5 * 0.7f64.powi(lsc as i32 - 1) * jitter(seed)
            })];
        let fits = fits(&planted_sweep("unmoved", &strategies, |_, _| Vec::new()));
        let (_, reading) = reading_of(&fits, "LS(non-shared)");
        assert_eq!(reading.verdict, Verdict::Inconclusive);
        assert!(reading.note.starts_with("no LSC's gates moved"), "{}", reading.note);
    }

    /// Gate-input records of one run at its last step: LSC i's input at `distance(i)` from LSC 1's,
    /// LSC 1's spread over samples 0.1.
    fn gate_inputs(seed: u64, distance: impl Fn(u32) -> f64) -> Vec<Record> {
        let record = |quantity: Quantity, lsc: u32, value: f64| Record {
            step: 300,
            quantity,
            layer: Some(format!("dec.{}", LSCS - lsc)),
            lsc: Some(lsc),
            t_bin: None,
            value: Some(value * jitter(seed)),
        };
        (1..=LSCS)
            .flat_map(|lsc| {
                [
                    record(GateInput::Mean.quantity(), lsc, 0.01),
                    record(GateInput::Rms.quantity(), lsc, 0.2),
                    record(GateInput::PositionSd.quantity(), lsc, 0.15),
                    record(GateInput::SampleSd.quantity(), lsc, 0.1),
                    record(GateInput::CosineToLsc1.quantity(), lsc, 1.0 - distance(lsc) / 10.0),
                    record(GateInput::DistanceToLsc1.quantity(), lsc, distance(lsc)),
                    record(Quantity::GateStd, lsc, 0.01),
                ]
            })
            .collect()
    }

    #[test]
    fn recorded_gate_inputs_say_whether_a_shared_gate_can_tell_lscs_apart() {
        let flat: Planted = |_, index, _| if index == 0 { 0.5 } else { 0.55 };
        let shared = SkipScaling::Learnable { shared: true, reduction: 16 };
        let close_inputs = planted_sweep("close", &[(shared, flat)], |_, seed| {
            gate_inputs(seed, |lsc| 0.02 * f64::from(lsc - 1) / f64::from(LSCS))
        });
        let profiles = profiles_of(&close_inputs);
        assert_eq!(profiles.len(), 1);
        let profile = &profiles[0];
        assert_eq!((profile.runs, profile.lscs.len()), (3, LSCS as usize));
        assert!((profile.lscs[0].gate_mean.unwrap() - 0.55).abs() < 1e-12);
        let separation = separation(profile).unwrap();
        assert!(separation.distance_over_spread.1 < 0.2, "{separation:?}");
        assert!((separation.rms_ratio.0 - 1.0).abs() < 1e-12);
        let text = separation_text(profile);
        assert!(text.contains("cannot tell the LSCs apart"), "{text}");
        assert!(
            text.contains("mean gates from 0.55 to 0.55 across LSCs, against a standard deviation of 0.01"),
            "{text}"
        );
        let frame = gate_inputs_frame(&profiles).unwrap();
        assert_eq!(frame.height(), LSCS as usize);
        assert_eq!(frame.width(), 6 + GateInput::ALL.len());
        assert_eq!(gate_input_cells(&profiles).len(), LSCS as usize);

        let far_inputs =
            planted_sweep("far", &[(shared, flat)], |_, seed| gate_inputs(seed, |lsc| 0.3 * f64::from(lsc)));
        let profiles = profiles_of(&far_inputs);
        assert!(separation_text(&profiles[0]).contains("a shared gate can tell the LSCs apart"));
    }
}
