"""Layer 4: features made from data: extraction (`inputs`, `extraction`, `pooled_cuts`), the disk
cache (`cache`, `storage`), what runs the frozen graph (`engines`) and where (`runners`, `beam`),
and scikit-learn's `FeatureExtractor` (`estimators`)."""
