"""Instruments for seeing inside a run: the per-op profile and MFU, the autograd graph as a picture, layer
statistics, attention maps and TensorBoard events (docs/instruments.md). All off unless used."""
from tinygpt.instruments.flops import gpt_step_flops, measure_peak_flops, mfu, operation_flops
from tinygpt.instruments.profile import Profile, profile

__all__ = ["Profile", "profile", "gpt_step_flops", "measure_peak_flops", "mfu", "operation_flops"]
