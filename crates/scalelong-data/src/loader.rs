//! A seeded, shuffled, batched loader that prepares batches on a background thread.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{DataError, ImageSet};

/// How many prepared batches wait for the training step: enough to hide a slow batch, few enough
/// that memory stays small.
const PREFETCH_DEPTH: usize = 3;

/// One batch: `images` is NCHW with `shape = [batch, channels, height, width]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub images: Vec<f32>,
    pub labels: Vec<u32>,
    pub shape: [usize; 4],
}

/// An endless stream of batches, epoch after epoch.
///
/// Epoch `e` visits the images in the order of a permutation drawn from a ChaCha8 RNG keyed by
/// `seed` on stream `e` (ChaCha's 64-bit stream number, so epochs are independent and any epoch
/// can be regenerated on its own); with `flip`, the same RNG then draws one coin per position
/// to flip that image horizontally. Each epoch serves `len / batch_size` full batches; the
/// last partial batch is dropped so every batch has the same shape (its images are seen in other
/// epochs, in another order).
///
/// A background thread keeps 3 prepared batches in a bounded channel, so the training step
/// rarely waits. Dropping the loader closes the channel and joins the thread.
pub struct Loader {
    /// `Option` only so `Drop` can close the channel before joining the thread.
    receiver: Option<Receiver<Batch>>,
    worker: Option<JoinHandle<()>>,
    batches_per_epoch: u64,
    batches_served: u64,
}

/// What the worker needs to build any batch of any epoch.
struct BatchPlan {
    set: Arc<ImageSet>,
    batch_size: usize,
    seed: u64,
    flip: bool,
}

impl BatchPlan {
    fn batches_per_epoch(&self) -> u64 {
        (self.set.len() / self.batch_size) as u64
    }

    /// The visiting order of `epoch` and, per position, whether to flip that image.
    fn epoch_order(&self, epoch: u64) -> (Vec<usize>, Vec<bool>) {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(epoch);
        let mut order: Vec<usize> = (0..self.set.len()).collect();
        order.shuffle(&mut rng);
        let flips =
            if self.flip { (0..order.len()).map(|_| rng.random_bool(0.5)).collect() } else { vec![false; order.len()] };
        (order, flips)
    }

    fn build_batch(&self, order: &[usize], flips: &[bool]) -> Batch {
        let set = &self.set;
        let mut images = Vec::with_capacity(order.len() * set.image_len());
        for (&index, &flip) in order.iter().zip(flips) {
            let image = set.image(index);
            if flip {
                for row in image.chunks_exact(set.width) {
                    images.extend(row.iter().rev());
                }
            } else {
                images.extend_from_slice(image);
            }
        }
        Batch {
            images,
            labels: order.iter().map(|&index| set.labels[index]).collect(),
            shape: [order.len(), set.channels, set.height, set.width],
        }
    }

    /// Sends batches from global batch index `start` on until the receiver is gone.
    fn serve(self, start: u64, sender: SyncSender<Batch>) {
        let batches_per_epoch = self.batches_per_epoch();
        let mut epoch = start / batches_per_epoch;
        let mut first_batch_in_epoch = (start % batches_per_epoch) as usize;
        loop {
            let (order, flips) = self.epoch_order(epoch);
            for batch_in_epoch in first_batch_in_epoch..batches_per_epoch as usize {
                let positions = batch_in_epoch * self.batch_size..(batch_in_epoch + 1) * self.batch_size;
                let batch = self.build_batch(&order[positions.clone()], &flips[positions]);
                if sender.send(batch).is_err() {
                    return; // the loader was dropped
                }
            }
            epoch += 1;
            first_batch_in_epoch = 0;
        }
    }
}

impl Loader {
    /// A loader from the very first batch. See [`Loader::starting_at`].
    ///
    /// # Errors
    /// As [`Loader::starting_at`].
    pub fn new(set: Arc<ImageSet>, batch_size: usize, seed: u64, flip: bool) -> Result<Self, DataError> {
        Self::starting_at(set, batch_size, seed, flip, 0)
    }

    /// A loader that serves exactly what an uninterrupted loader with the same arguments would
    /// serve after `batches_already_served` batches: for resuming from a checkpoint.
    ///
    /// # Errors
    /// [`DataError::InvalidBatchSize`] unless `1 <= batch_size <= set.len()`;
    /// [`DataError::SpawnLoader`] if the thread cannot be started.
    pub fn starting_at(
        set: Arc<ImageSet>,
        batch_size: usize,
        seed: u64,
        flip: bool,
        batches_already_served: u64,
    ) -> Result<Self, DataError> {
        if batch_size == 0 || batch_size > set.len() {
            return Err(DataError::InvalidBatchSize { batch_size, set_len: set.len() });
        }
        let plan = BatchPlan { set, batch_size, seed, flip };
        let batches_per_epoch = plan.batches_per_epoch();
        let (sender, receiver) = sync_channel(PREFETCH_DEPTH);
        let worker = std::thread::Builder::new()
            .name("scalelong-loader".into())
            .spawn(move || plan.serve(batches_already_served, sender))
            .map_err(DataError::SpawnLoader)?;
        Ok(Self {
            receiver: Some(receiver),
            worker: Some(worker),
            batches_per_epoch,
            batches_served: batches_already_served,
        })
    }

    /// Full batches per epoch: `set.len() / batch_size`.
    pub fn batches_per_epoch(&self) -> u64 {
        self.batches_per_epoch
    }

    /// Batches served so far, counting the `batches_already_served` this loader started at: the
    /// number to save in a checkpoint and pass to [`Loader::starting_at`] on resume.
    pub fn batches_served(&self) -> u64 {
        self.batches_served
    }

    /// The next batch, waiting for the thread if it is not ready yet.
    ///
    /// # Panics
    /// If the loader thread panicked (re-raises its panic).
    pub fn next_batch(&mut self) -> Batch {
        let receiver = self.receiver.as_ref().expect("the receiver lives until drop");
        match receiver.recv() {
            Ok(batch) => {
                self.batches_served += 1;
                batch
            }
            // The worker only stops sending when the receiver is gone, which it is not here, so
            // it died: surface its panic instead of a vague "disconnected".
            Err(_) => match self.worker.take().expect("worker joined only once").join() {
                Err(panic) => std::panic::resume_unwind(panic),
                Ok(()) => unreachable!("the loader thread returned while its receiver was alive"),
            },
        }
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Closing the channel first makes the worker's blocked `send` fail, so it returns.
        drop(self.receiver.take());
        if let Some(worker) = self.worker.take() {
            // A worker panic already reached the caller through `next_batch`, or it is
            // irrelevant now that nobody wants batches.
            let _ = worker.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::channel;
    use std::time::Duration;

    use super::*;

    /// 10 images of 1x2x3, all values distinct, label = index.
    fn indexed_set() -> Arc<ImageSet> {
        Arc::new(ImageSet {
            channels: 1,
            height: 2,
            width: 3,
            pixels: (0..60).map(|value| value as f32).collect(),
            labels: (0..10).collect(),
        })
    }

    fn take(loader: &mut Loader, count: usize) -> Vec<Batch> {
        (0..count).map(|_| loader.next_batch()).collect()
    }

    #[test]
    fn each_epoch_is_a_permutation_without_the_partial_batch() {
        // 10 images, batch 3: 3 batches an epoch, 1 image left out each epoch.
        let mut loader = Loader::new(indexed_set(), 3, 1, false).unwrap();
        assert_eq!(loader.batches_per_epoch(), 3);
        let mut epoch_orders = Vec::new();
        for _ in 0..3 {
            let labels: Vec<u32> = take(&mut loader, 3).into_iter().flat_map(|b| b.labels).collect();
            let mut sorted = labels.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), 9, "9 distinct images an epoch: {labels:?}");
            epoch_orders.push(labels);
        }
        assert_ne!(epoch_orders[0], epoch_orders[1], "reshuffled every epoch");
        assert_eq!(loader.batches_served(), 9);
    }

    #[test]
    fn batch_holds_the_images_of_its_labels() {
        let set = indexed_set();
        let batch = Loader::new(set.clone(), 4, 3, false).unwrap().next_batch();
        assert_eq!(batch.shape, [4, 1, 2, 3]);
        let expected: Vec<f32> = batch.labels.iter().flat_map(|&l| set.image(l as usize).to_vec()).collect();
        assert_eq!(batch.images, expected);
    }

    #[test]
    fn same_seed_same_batches_other_seed_other_batches() {
        let first = take(&mut Loader::new(indexed_set(), 3, 5, true).unwrap(), 5);
        assert_eq!(first, take(&mut Loader::new(indexed_set(), 3, 5, true).unwrap(), 5));
        assert_ne!(first, take(&mut Loader::new(indexed_set(), 3, 6, true).unwrap(), 5));
    }

    #[test]
    fn resuming_gives_what_an_uninterrupted_loader_gives() {
        for flip in [false, true] {
            // 3 batches an epoch: batches 3..7 cross into epochs 1 and 2.
            let uninterrupted = take(&mut Loader::new(indexed_set(), 3, 9, flip).unwrap(), 7);
            let mut before = take(&mut Loader::new(indexed_set(), 3, 9, flip).unwrap(), 3);
            let mut resumed_loader = Loader::starting_at(indexed_set(), 3, 9, flip, 3).unwrap();
            before.extend(take(&mut resumed_loader, 4));
            assert_eq!(before, uninterrupted, "flip = {flip}");
            assert_eq!(resumed_loader.batches_served(), 7);
            // Resuming mid-epoch too.
            let mid_epoch = take(&mut Loader::starting_at(indexed_set(), 3, 9, flip, 4).unwrap(), 3);
            assert_eq!(mid_epoch, uninterrupted[4..7], "flip = {flip}");
        }
    }

    #[test]
    fn flip_mirrors_rows_of_some_images_only() {
        let set = indexed_set();
        let mut loader = Loader::new(set.clone(), 10, 2, true).unwrap();
        let (mut flipped, mut kept) = (0, 0);
        for batch in take(&mut loader, 4) {
            for (image, &label) in batch.images.chunks_exact(6).zip(&batch.labels) {
                let original = set.image(label as usize);
                let mirrored: Vec<f32> = original.chunks_exact(3).flat_map(|row| row.iter().rev().copied()).collect();
                if image == original {
                    kept += 1;
                } else {
                    assert_eq!(image, mirrored, "image {label} is neither itself nor mirrored");
                    flipped += 1;
                }
            }
        }
        assert!(flipped > 5 && kept > 5, "flipped {flipped}, kept {kept} of 40");
    }

    #[test]
    fn invalid_batch_sizes_are_errors() {
        for batch_size in [0, 11] {
            let error = Loader::new(indexed_set(), batch_size, 0, false).err().unwrap();
            assert!(matches!(error, DataError::InvalidBatchSize { set_len: 10, .. }), "{error:?}");
        }
    }

    #[test]
    fn dropping_the_loader_stops_its_thread() {
        let set = indexed_set();
        let mut loader = Loader::new(set.clone(), 2, 0, false).unwrap();
        loader.next_batch();
        // The worker is now blocked on a full channel. Drop on another thread so a worker that
        // never stops fails the test instead of hanging it.
        let (done_sender, done_receiver) = channel();
        std::thread::spawn(move || {
            drop(loader);
            done_sender.send(()).unwrap();
        });
        done_receiver.recv_timeout(Duration::from_secs(10)).expect("dropping the loader did not stop its thread");
        // The worker's clone of the set is gone, so the thread has really ended.
        assert_eq!(Arc::strong_count(&set), 1);
    }
}
