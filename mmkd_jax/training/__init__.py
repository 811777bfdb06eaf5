"""Training a student: its setup (data, model, method, optimiser), the pure jitted steps, how they
reach the devices, the one epoch loop, and the run's lifecycle from setup to summary."""
