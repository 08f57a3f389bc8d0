"""Layer 5: training a head on features (`fitting`: `transfer.fit`), its settings, thaw schedules,
callbacks, optimizers and strategies, and what a run leaves: reports, predictions, TensorBoard."""
