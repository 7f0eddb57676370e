"""Flow matching as Wan trains it: noising, timestep sampling and shift, the loss."""
