"""Layer 6: many settings over one extraction. The grid and its axes (`grid`), one trial of a
setting (`trials`), every trial run and ranked (`ranking`), the files, plots and table a sweep
leaves (`report`), the journal that lets a killed sweep resume (`journal`), and `sweep` itself,
from backbone and data to the best setting retrained (`sweeping`)."""
