"""ICEB: the ImageNet Concept Editing Benchmark for text-to-image diffusion models."""
__version__ = "0.1.0"
