//! The loader's `tracing` events (issue #13): what a user of the loader alone sees with a subscriber.
//! A small capturing layer records each event's fields on the test's thread.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use imgloader::{Loader, Transform, ValAugment};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

type Fields = BTreeMap<String, String>;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Fields>>>);

struct Record<'a>(&'a mut Fields);

impl Visit for Record<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S: Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut fields = Fields::new();
        event.record(&mut Record(&mut fields));
        fields.insert("level".into(), event.metadata().level().to_string());
        self.0.lock().unwrap().push(fields);
    }
}

#[test]
fn building_a_loader_and_starting_an_epoch_are_events() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = imgfixtures::SynthConfig {
        classes: 3,
        train_per_class: 2,
        val_per_class: 2,
        min_side: 40,
        max_side: 48,
        ..Default::default()
    };
    imgfixtures::write_dataset(&cfg, dir.path()).unwrap();
    let source = imgloader::source::open(&dir.path().join("val"), &Default::default()).unwrap();
    let capture = Capture::default();
    let subscriber = tracing_subscriber::registry().with(capture.clone());
    tracing::subscriber::with_default(subscriber, || {
        let loader = Loader::builder(source)
            .batch_size(4)
            .threads(2)
            .transform(Transform::Val(ValAugment {
                resize: 36,
                crop: 32,
            }))
            .distributed(1, 2)
            .build()
            .unwrap();
        assert_eq!(loader.epoch(5).count(), 1);
    });
    let events = capture.0.lock().unwrap();
    let named = |m: &str| {
        events
            .iter()
            .find(|e| e["message"] == m)
            .unwrap_or_else(|| panic!("no {m:?} event in {events:#?}"))
            .clone()
    };
    let built = named("loader built");
    assert_eq!(built["level"], "INFO");
    for (field, value) in [
        ("samples", "6"),
        ("classes", "3"),
        ("threads", "2"),
        ("batch_size", "4"),
        ("sampler", "partition"),
        ("rank", "1"),
        ("world", "2"),
        ("per_epoch", "3"),
        ("shuffle", "false"),
    ] {
        assert_eq!(
            built.get(field).map(String::as_str),
            Some(value),
            "{field}: {built:?}"
        );
    }
    assert!(built["source"].contains("FolderSource"), "{built:?}");
    let epoch = named("epoch started");
    assert_eq!(epoch["level"], "DEBUG");
    assert_eq!(
        (epoch["epoch"].as_str(), epoch["batches"].as_str()),
        ("5", "1")
    );
    assert_eq!(epoch["samples"], "3");
}
