"""Benchmarks (`hvdfast bench …`): they measure and report with the hardware; tests never time anything."""
