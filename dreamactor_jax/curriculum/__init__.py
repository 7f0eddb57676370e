"""The two-stage curriculum as one driver: stage 1 (pose) -> synthesis -> stage 2 (RGB) -> export -> eval."""
