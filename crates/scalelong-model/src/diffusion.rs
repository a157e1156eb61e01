//! The diffusion process: schedules, the forward process and loss, and samplers.

mod process;
mod sampler;
mod schedule;

pub use process::{NoisedBatch, noise_prediction_loss, per_sample_loss};
pub use sampler::{SamplerConfig, seeded_noise};
pub use schedule::{NoiseSchedule, ScheduleConfig};
