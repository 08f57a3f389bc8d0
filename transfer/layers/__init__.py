"""Layer 2: Keras layers and models around a backbone: `FeatureLayer`, `ThawedFeatureLayer`, the
classifier (preprocessing + features + head) and its exports. Reads `graph`; knows nothing of data
sources, caches or training runs."""
