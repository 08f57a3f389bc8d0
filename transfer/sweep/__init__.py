"""Layer 6: many settings over one extraction (`sweeping`), and the journal that lets a killed sweep
resume (`journal`)."""
