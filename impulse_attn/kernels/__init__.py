"""Fast paths: the Triton attention kernel and the compiled fit extension's Python side."""
