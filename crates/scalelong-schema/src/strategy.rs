//! How each long skip connection (LSC) is scaled before it is fused with the main path: the
//! strategy a run config names (docs/method.md §3). The networks apply it (`scalelong-model`'s
//! `ScaleSkip`).
//!
//! LSC index `i` runs from 1 (the OUTERMOST skip: first encoder block -> last decoder block) to
//! `N` (the innermost, next to the middle block). Decoder block `k` (0-based, execution order)
//! consumes LSC `N - k`.
//!
//! # In a config
//!
//! | TOML                                   | strategy                                  |
//! |----------------------------------------|-------------------------------------------|
//! | `strategy = "1"`                       | [`SkipScaling::Original`]                 |
//! | `strategy = "1/sqrt2"`                 | [`SkipScaling::InvSqrt2`]                 |
//! | `strategy = "cs"` / `{ cs = 0.7 }`     | [`SkipScaling::Constant`], kappa 0.5 / 0.7 |
//! | `strategy = "ls"`                      | [`SkipScaling::Learnable`], shared, r = 16 |
//! | `strategy = "ls-nonshared"`            | learnable, one gate module per LSC        |
//! | `strategy = { ls = { shared = false, reduction = 8 } }` | learnable, explicit fields |
//! | `strategy = "mp-cat"` / `{ mp-cat = 0.3 }` | [`SkipScaling::MpCat`], balance 0.5 / 0.3 |
//! | `strategy = "learned-scalar"` / `{ learned-scalar = 0.7 }` | [`SkipScaling::LearnedScalar`], from kappa 0.5 / 0.7 |

use crate::records::Quantity;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The reference code's default kappa for constant scaling.
pub const DEFAULT_KAPPA: f64 = 0.5;
/// The reference code's SE reduction ratio (`Attentionlayer(dim, r=16)`).
pub const DEFAULT_REDUCTION: usize = 16;
/// EDM2's default balance of magnitude-preserving concatenation.
pub const DEFAULT_BALANCE: f64 = 0.5;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "SkipScalingSpec", into = "SkipScalingSpec")]
pub enum SkipScaling {
    /// Every LSC carries coefficient 1 (the standard UNet).
    Original,
    /// Every LSC carries 2^-1/2, as Imagen and others do.
    InvSqrt2,
    /// CS: LSC `i` carries `kappa^(i-1)`, kappa in (0, 1].
    Constant { kappa: f64 },
    /// LS: an SE-style gate computed from the skip itself; `shared` uses one gate module for every
    /// LSC (the reference default), otherwise one per LSC.
    Learnable { shared: bool, reduction: usize },
    /// EDM2's magnitude-preserving concatenation: `cat[w_a a, w_b b]` of the main path `a` and the
    /// skip `b` (widths `N_a`, `N_b`) with `w_a = C (1 - t) / sqrt(N_a)`, `w_b = C t / sqrt(N_b)`,
    /// `C = sqrt((N_a + N_b) / ((1 - t)^2 + t^2))`: unit-RMS inputs give a unit-RMS concatenation,
    /// `t` in (0, 1) tilts it toward the skip. The one strategy that scales the main path too.
    MpCat { t: f64 },
    /// One learnable coefficient per LSC, initialised at CS's `kappa^(i-1)`: between CS (fixed
    /// values) and LS (values computed from the skip).
    LearnedScalar { kappa: f64 },
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SkipScalingError {
    #[error("strategy: kappa must lie in (0, 1], got {0}")]
    KappaOutOfRange(f64),
    #[error("strategy: reduction must be at least 1, got 0")]
    ZeroReduction,
    #[error("strategy: the mp-cat balance t must lie in (0, 1), got {0}")]
    BalanceOutOfRange(f64),
    #[error(
        "strategy: unknown name {0:?}; expected \"1\", \"1/sqrt2\", \"cs\", \"ls\", \"ls-nonshared\", \"mp-cat\", \"learned-scalar\", {{ cs = kappa }}, {{ ls = {{ shared, reduction }} }}, {{ mp-cat = t }} or {{ learned-scalar = kappa }}"
    )]
    UnknownName(String),
}

impl SkipScaling {
    /// Checks the invariants a config can break.
    pub fn validate(self) -> Result<Self, SkipScalingError> {
        match self {
            Self::Constant { kappa } | Self::LearnedScalar { kappa } if !(kappa > 0.0 && kappa <= 1.0) => {
                Err(SkipScalingError::KappaOutOfRange(kappa))
            }
            Self::MpCat { t } if !(t > 0.0 && t < 1.0) => Err(SkipScalingError::BalanceOutOfRange(t)),
            Self::Learnable { reduction: 0, .. } => Err(SkipScalingError::ZeroReduction),
            other => Ok(other),
        }
    }

    /// The fixed coefficient of LSC `i` (1-based, 1 = outermost) on the skip alone; `None` for the
    /// strategies whose coefficient is learned, computed from the input or from the widths.
    pub fn coefficient(self, lsc: usize) -> Option<f64> {
        assert!(lsc >= 1, "LSC indices are 1-based");
        match self {
            Self::Original => Some(1.0),
            Self::InvSqrt2 => Some(std::f64::consts::FRAC_1_SQRT_2),
            Self::Constant { kappa } => Some(kappa.powi(lsc as i32 - 1)),
            Self::Learnable { .. } | Self::MpCat { .. } | Self::LearnedScalar { .. } => None,
        }
    }

    /// The initial value of a learned scalar on LSC `i` (`kappa^(i-1)`); `None` for the others.
    pub fn initial_scalar(self, lsc: usize) -> Option<f64> {
        match self {
            Self::LearnedScalar { kappa } => Some(kappa.powi(lsc as i32 - 1)),
            Self::Original | Self::InvSqrt2 | Self::Constant { .. } | Self::Learnable { .. } | Self::MpCat { .. } => {
                None
            }
        }
    }

    /// `(w_a, w_b)` of magnitude-preserving concatenation for a main path of width `main` and a
    /// skip of width `skip`; `None` for the others.
    pub fn mp_cat_weights(self, main: usize, skip: usize) -> Option<(f64, f64)> {
        let Self::MpCat { t } = self else { return None };
        let (na, nb) = (main as f64, skip as f64);
        let c = ((na + nb) / ((1.0 - t).powi(2) + t * t)).sqrt();
        Some((c * (1.0 - t) / na.sqrt(), c * t / nb.sqrt()))
    }

    /// The coefficient on the skip consumed by decoder block `k` (0-based) of a network with
    /// `n_skips` LSCs.
    pub fn decoder_coefficient(self, k: usize, n_skips: usize) -> Option<f64> {
        self.coefficient(lsc_of_decoder_block(k, n_skips))
    }

    /// Number of gate modules a network with `n_skips` LSCs holds.
    pub fn gate_count(self, n_skips: usize) -> usize {
        match self {
            Self::Learnable { shared: true, .. } => 1,
            Self::Learnable { shared: false, .. } => n_skips,
            Self::Original
            | Self::InvSqrt2
            | Self::Constant { .. }
            | Self::MpCat { .. }
            | Self::LearnedScalar { .. } => 0,
        }
    }

    /// Where the report lists the strategy: docs/method.md §3's order (1, 1/sqrt2, CS, LS, LS
    /// non-shared, mp-cat, learned scalar), then by its parameter (CS by kappa).
    pub fn rank(self) -> (u8, f64) {
        match self {
            Self::Original => (0, 0.0),
            Self::InvSqrt2 => (1, 0.0),
            Self::Constant { kappa } => (2, kappa),
            Self::Learnable { shared: true, .. } => (3, 0.0),
            Self::Learnable { shared: false, .. } => (4, 0.0),
            Self::MpCat { t } => (5, t),
            Self::LearnedScalar { kappa } => (6, kappa),
        }
    }

    /// Which colour the report's figures give the strategy: the paper's four strategies keep
    /// theirs in every figure of every sweep; the others take the next free one.
    pub fn colour_class(self) -> ColourClass {
        match self {
            Self::Original => ColourClass::Original,
            Self::InvSqrt2 => ColourClass::InvSqrt2,
            Self::Constant { .. } => ColourClass::Constant,
            Self::Learnable { shared: true, .. } => ColourClass::SharedGate,
            Self::Learnable { shared: false, .. } | Self::MpCat { .. } | Self::LearnedScalar { .. } => {
                ColourClass::NextFree
            }
        }
    }

    /// Whether the PyTorch reference's code has the strategy, so that its checkpoints can hold it
    /// and ours of it can be exported there. MP-cat and the learned scalar are scalelong's own
    /// (docs/method.md §3.5).
    pub fn in_pytorch_reference(self) -> bool {
        match self {
            Self::Original | Self::InvSqrt2 | Self::Constant { .. } | Self::Learnable { .. } => true,
            Self::MpCat { .. } | Self::LearnedScalar { .. } => false,
        }
    }

    /// The SE gate's reduction ratio (LS only): its hidden width is the gated width over it.
    pub fn gate_reduction(self) -> Option<usize> {
        match self {
            Self::Learnable { reduction, .. } => Some(reduction),
            Self::Original
            | Self::InvSqrt2
            | Self::Constant { .. }
            | Self::MpCat { .. }
            | Self::LearnedScalar { .. } => None,
        }
    }

    /// The kappa of the CS family `kappa^(i-1)` the strategy is a member of (strategy 1 is
    /// kappa 1): the dose of the bounds' dose-responses; `None` outside the family.
    pub fn cs_kappa(self) -> Option<f64> {
        match self {
            Self::Original => Some(1.0),
            Self::Constant { kappa } => Some(kappa),
            Self::InvSqrt2 | Self::Learnable { .. } | Self::MpCat { .. } | Self::LearnedScalar { .. } => None,
        }
    }

    /// The diagnostics quantity that holds the learned coefficient of each LSC: the LS gates'
    /// mean, a learned scalar's value; `None` where the coefficients are set, not learned.
    pub fn learned_quantity(self) -> Option<Quantity> {
        match self {
            Self::Learnable { .. } => Some(Quantity::GateMean),
            Self::LearnedScalar { .. } => Some(Quantity::Coef),
            Self::Original | Self::InvSqrt2 | Self::Constant { .. } | Self::MpCat { .. } => None,
        }
    }

    /// The short name used in tables and figure legends.
    pub fn label(self) -> String {
        match self {
            Self::Original => "1".into(),
            Self::InvSqrt2 => "1/sqrt2".into(),
            Self::Constant { kappa } => format!("CS({kappa})"),
            Self::Learnable { shared: true, .. } => "LS".into(),
            Self::Learnable { shared: false, .. } => "LS(non-shared)".into(),
            Self::MpCat { t } => format!("MP-cat({t})"),
            Self::LearnedScalar { kappa } => format!("Scalar({kappa})"),
        }
    }
}

/// The colour a strategy keeps in the report's figures ([`SkipScaling::colour_class`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColourClass {
    /// Strategy 1.
    Original,
    /// 1/sqrt(2).
    InvSqrt2,
    /// CS, whatever its kappa (the first CS of a sweep).
    Constant,
    /// LS with one gate for every LSC.
    SharedGate,
    /// The next colour no strategy of the sweep has.
    NextFree,
}

/// LSC index (1-based) consumed by decoder block `k` (0-based) of a network with `n_skips` LSCs.
pub fn lsc_of_decoder_block(k: usize, n_skips: usize) -> usize {
    assert!(k < n_skips, "decoder block {k} of a network with {n_skips} skips");
    n_skips - k
}

/// A strategy by its config name (`"cs"`, `"ls-nonshared"`, ...), as `strategy = "..."` reads it.
impl std::str::FromStr for SkipScaling {
    type Err = SkipScalingError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::try_from(SkipScalingSpec::Name(name.to_string()))
    }
}

impl fmt::Display for SkipScaling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label())
    }
}

/// What a user writes in a config; see the module docs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum SkipScalingSpec {
    Name(String),
    /// `strategy = 1` (TOML, or `--set strategy=1`, reads the bare 1 as a number).
    Number(f64),
    Constant {
        cs: f64,
    },
    Learnable {
        ls: LearnableSpec,
    },
    MpCat {
        #[serde(rename = "mp-cat")]
        mp_cat: f64,
    },
    LearnedScalar {
        #[serde(rename = "learned-scalar")]
        learned_scalar: f64,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LearnableSpec {
    #[serde(default = "default_shared")]
    shared: bool,
    #[serde(default = "default_reduction")]
    reduction: usize,
}

fn default_shared() -> bool {
    true
}
fn default_reduction() -> usize {
    DEFAULT_REDUCTION
}

impl TryFrom<SkipScalingSpec> for SkipScaling {
    type Error = SkipScalingError;

    fn try_from(spec: SkipScalingSpec) -> Result<Self, Self::Error> {
        let scaling = match spec {
            SkipScalingSpec::Name(name) => match name.to_ascii_lowercase().as_str() {
                "1" | "original" => Self::Original,
                "1/sqrt2" | "1/sqrt(2)" | "invsqrt2" => Self::InvSqrt2,
                "cs" => Self::Constant { kappa: DEFAULT_KAPPA },
                "ls" => Self::Learnable { shared: true, reduction: DEFAULT_REDUCTION },
                "ls-nonshared" => Self::Learnable { shared: false, reduction: DEFAULT_REDUCTION },
                "mp-cat" => Self::MpCat { t: DEFAULT_BALANCE },
                "learned-scalar" => Self::LearnedScalar { kappa: DEFAULT_KAPPA },
                _ => return Err(SkipScalingError::UnknownName(name)),
            },
            SkipScalingSpec::Number(1.0) => Self::Original,
            SkipScalingSpec::Number(n) => return Err(SkipScalingError::UnknownName(n.to_string())),
            SkipScalingSpec::Constant { cs } => Self::Constant { kappa: cs },
            SkipScalingSpec::Learnable { ls } => Self::Learnable { shared: ls.shared, reduction: ls.reduction },
            SkipScalingSpec::MpCat { mp_cat } => Self::MpCat { t: mp_cat },
            SkipScalingSpec::LearnedScalar { learned_scalar } => Self::LearnedScalar { kappa: learned_scalar },
        };
        scaling.validate()
    }
}

impl From<SkipScaling> for SkipScalingSpec {
    fn from(scaling: SkipScaling) -> Self {
        match scaling {
            SkipScaling::Original => Self::Name("1".into()),
            SkipScaling::InvSqrt2 => Self::Name("1/sqrt2".into()),
            SkipScaling::Constant { kappa } => Self::Constant { cs: kappa },
            SkipScaling::Learnable { shared, reduction } => Self::Learnable { ls: LearnableSpec { shared, reduction } },
            SkipScaling::MpCat { t } => Self::MpCat { mp_cat: t },
            SkipScaling::LearnedScalar { kappa } => Self::LearnedScalar { learned_scalar: kappa },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coefficients(s: SkipScaling, n: usize) -> Vec<f64> {
        (1..=n).map(|i| s.coefficient(i).unwrap()).collect()
    }

    #[test]
    fn cs_half_with_six_skips_halves_from_outermost_to_innermost() {
        let c = coefficients(SkipScaling::Constant { kappa: 0.5 }, 6);
        assert_eq!(c, vec![1.0, 0.5, 0.25, 0.125, 0.0625, 0.03125]);
    }

    #[test]
    fn fixed_strategies_for_every_depth() {
        for n in 1..=8 {
            assert!(coefficients(SkipScaling::Original, n).iter().all(|&c| c == 1.0));
            let inv = coefficients(SkipScaling::InvSqrt2, n);
            assert!(inv.iter().all(|&c| (c * c - 0.5).abs() < 1e-15));
            let kappa = 0.7;
            let cs = coefficients(SkipScaling::Constant { kappa }, n);
            for (i, c) in cs.iter().enumerate() {
                assert!((c - kappa.powi(i as i32)).abs() < 1e-15);
            }
            // Decoder block k consumes LSC N - k: the first decoder block gets the innermost.
            let first = SkipScaling::Constant { kappa }.decoder_coefficient(0, n).unwrap();
            let last = SkipScaling::Constant { kappa }.decoder_coefficient(n - 1, n).unwrap();
            assert!((first - kappa.powi(n as i32 - 1)).abs() < 1e-15);
            assert_eq!(last, 1.0);
            assert_eq!(SkipScaling::Learnable { shared: true, reduction: 4 }.coefficient(1), None);
        }
    }

    #[derive(Deserialize, Serialize)]
    struct Holder {
        strategy: SkipScaling,
    }

    fn parse(text: &str) -> Result<SkipScaling, String> {
        toml::from_str::<Holder>(text).map(|h| h.strategy).map_err(|e| e.to_string())
    }

    #[test]
    fn config_names_parse_and_round_trip() {
        let cases = [
            ("strategy = \"1\"", SkipScaling::Original),
            ("strategy = 1", SkipScaling::Original),
            ("strategy = \"mp-cat\"", SkipScaling::MpCat { t: 0.5 }),
            ("strategy = { mp-cat = 0.3 }", SkipScaling::MpCat { t: 0.3 }),
            ("strategy = \"learned-scalar\"", SkipScaling::LearnedScalar { kappa: 0.5 }),
            ("strategy = { learned-scalar = 0.7 }", SkipScaling::LearnedScalar { kappa: 0.7 }),
            ("strategy = \"1/sqrt2\"", SkipScaling::InvSqrt2),
            ("strategy = \"cs\"", SkipScaling::Constant { kappa: 0.5 }),
            ("strategy = { cs = 0.7 }", SkipScaling::Constant { kappa: 0.7 }),
            ("strategy = \"ls\"", SkipScaling::Learnable { shared: true, reduction: 16 }),
            ("strategy = \"ls-nonshared\"", SkipScaling::Learnable { shared: false, reduction: 16 }),
            (
                "strategy = { ls = { shared = false, reduction = 8 } }",
                SkipScaling::Learnable { shared: false, reduction: 8 },
            ),
        ];
        for (text, expected) in cases {
            let parsed = parse(text).unwrap();
            assert_eq!(parsed, expected, "{text}");
            let back = toml::to_string(&Holder { strategy: parsed }).unwrap();
            assert_eq!(parse(&back).unwrap(), expected, "round trip of {text}: {back}");
        }
    }

    #[test]
    fn names_parse_as_a_config_reads_them_and_the_order_is_the_method_pages() {
        assert_eq!("cs".parse(), Ok(SkipScaling::Constant { kappa: DEFAULT_KAPPA }));
        assert_eq!("ls".parse(), Ok(SkipScaling::Learnable { shared: true, reduction: DEFAULT_REDUCTION }));
        assert_eq!("1".parse(), Ok(SkipScaling::Original));
        assert!(matches!("cs2".parse::<SkipScaling>(), Err(SkipScalingError::UnknownName(_))));
        let mut strategies = [
            SkipScaling::LearnedScalar { kappa: 0.5 },
            SkipScaling::Constant { kappa: 0.7 },
            SkipScaling::Learnable { shared: true, reduction: 16 },
            SkipScaling::Constant { kappa: 0.5 },
            SkipScaling::Original,
        ];
        strategies.sort_by(|a, b| a.rank().0.cmp(&b.rank().0).then(a.rank().1.total_cmp(&b.rank().1)));
        let labels: Vec<String> = strategies.iter().map(|s| s.label()).collect();
        assert_eq!(labels, ["1", "CS(0.5)", "CS(0.7)", "LS", "Scalar(0.5)"]);
        assert!(!SkipScaling::MpCat { t: 0.5 }.in_pytorch_reference());
        assert!(SkipScaling::Learnable { shared: false, reduction: 8 }.in_pytorch_reference());
    }

    #[test]
    fn bad_configs_name_the_problem() {
        let err = parse("strategy = { cs = 1.5 }").unwrap_err();
        assert!(err.contains("kappa must lie in (0, 1]") && err.contains("1.5"), "{err}");
        assert!(parse("strategy = { cs = 0.0 }").unwrap_err().contains("kappa"));
        let err = parse("strategy = { ls = { reduction = 0 } }").unwrap_err();
        assert!(err.contains("reduction"), "{err}");
        assert!(parse("strategy = \"2\"").unwrap_err().contains("unknown name"));
        assert!(parse("strategy = { mp-cat = 1.0 }").unwrap_err().contains("balance t must lie in (0, 1)"));
        assert!(parse("strategy = { learned-scalar = 0.0 }").unwrap_err().contains("kappa"));
    }
}

#[cfg(test)]
mod mp_cat_tests {
    use super::*;

    /// Unit-RMS parts weighted by mp-cat make a unit-RMS concatenation, at any balance and widths:
    /// `N_a w_a^2 + N_b w_b^2 = N_a + N_b`.
    #[test]
    fn mp_cat_keeps_unit_rms_for_unit_rms_inputs() {
        for t in [0.1, 0.3, 0.5, 0.7, 0.9] {
            for (na, nb) in [(64, 64), (16, 48), (32, 16), (1, 100)] {
                let (wa, wb) = SkipScaling::MpCat { t }.mp_cat_weights(na, nb).unwrap();
                let mean_square = (na as f64 * wa * wa + nb as f64 * wb * wb) / (na + nb) as f64;
                assert!((mean_square - 1.0).abs() < 1e-12, "t {t}, widths {na}/{nb}: {mean_square}");
                // The balance: the skip's share of the energy is t^2 / ((1 - t)^2 + t^2).
                let share = nb as f64 * wb * wb / (na + nb) as f64;
                assert!((share - t * t / ((1.0 - t).powi(2) + t * t)).abs() < 1e-12);
            }
        }
        assert_eq!(SkipScaling::Original.mp_cat_weights(4, 4), None);
    }
}
