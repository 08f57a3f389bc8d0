"""Layer 3: how examples meet a backbone: images or arrays (`input_kind`), decided once per run.
Data sources themselves are `transfer.datasets` (the repo's `datasets/`)."""
