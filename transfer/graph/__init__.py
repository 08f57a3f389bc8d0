"""Layer 1: a frozen graph as protobufs and as an imported `tf.Graph`, before any Keras.

Loading and checking files (`loading`, `safety`, `op_allowlist`, `memory`), what a graph holds
(`analysis`, `feature_info`, `inspection`), where it is fed and cut (`feeding`, `cuts`), and the
cut graph as a TF2 callable (`backbone`). Imports nothing from the layers above.
"""
