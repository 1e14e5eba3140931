"""The image blocks (registry, weights, architectures) and the two-input network."""
