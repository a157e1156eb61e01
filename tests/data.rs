//! Loads the real Fashion-MNIST that `just data` (or SCALELONG_DATA) provides. Absent data is a
//! skip on a developer's machine and a failure on CI, which runs `just data` first; present but
//! wrong data fails everywhere.

use scalelong_data::{DataError, ImageSet, Split, fashion_mnist};
use scalelong_tests::available;

/// Loads `split` as the harness would from the workspace root, or `None` (skipped) if it is not
/// there.
fn load_from_workspace_root(split: Split) -> Option<ImageSet> {
    // `cargo test` runs tests in the package folder; the default search paths (data/...) are
    // relative to the workspace root, where the harness runs. This test binary holds only this
    // file's tests, so changing its current folder affects nothing else.
    std::env::set_current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).unwrap();
    match fashion_mnist(split) {
        Ok(set) => Some(set),
        Err(error @ DataError::MissingData { .. }) => {
            available("real_fashion_mnist_loads", Some(format!("Fashion-MNIST is absent (`just data`): {error}")));
            None
        }
        Err(error) => panic!("Fashion-MNIST is present but does not load: {error}"),
    }
}

fn check(set: &ImageSet, expected_len: usize) {
    assert_eq!((set.len(), set.channels, set.height, set.width), (expected_len, 1, 28, 28));
    assert_eq!(set.pixels.len(), expected_len * 28 * 28);
    assert!(set.pixels.iter().all(|v| (-1.0..=1.0).contains(v)), "a pixel is outside [-1, 1]");
    // Both extremes occur: black background, white highlights.
    assert!(set.pixels.contains(&-1.0) && set.pixels.contains(&1.0));
    // Fashion-MNIST is balanced: exactly len / 10 images of each of the 10 classes.
    let mut class_counts = [0; 10];
    for &label in &set.labels {
        assert!(label < 10, "label {label} is not a Fashion-MNIST class");
        class_counts[label as usize] += 1;
    }
    assert_eq!(class_counts, [expected_len / 10; 10]);
}

#[test]
fn real_fashion_mnist_loads_when_present() {
    let Some(train) = load_from_workspace_root(Split::Train) else {
        return;
    };
    check(&train, 60_000);
    let test = load_from_workspace_root(Split::Test).expect("train split present but not test");
    check(&test, 10_000);
}
